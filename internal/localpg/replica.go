package localpg

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Config is what StartWith adds to Start's defaults.
type Config struct {
	// Settings are server settings, each "name=value", given after Start's
	// own (fsync=off, synchronous_commit=off, ...), so that they win.
	Settings []string
	// Archive turns WAL archiving on, into Dir/archive, for Recover.
	Archive bool
}

// StartWith is Start with cfg's additions.
func StartWith(ctx context.Context, cfg Config) (*Cluster, error) {
	settings := cfg.Settings
	if cfg.Archive {
		// The command runs as the server's OS user, in Dir's data
		// directory; Dir's path comes from os.MkdirTemp and has no quote.
		settings = append(settings, "archive_mode=on",
			`archive_command=mkdir -p ../archive && test ! -f ../archive/%f && cp %p ../archive/%f`)
	}
	return start(ctx, defaultSearch(), settings...)
}

// Addr is the server's TCP address, 127.0.0.1:Port.
func (c *Cluster) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port)) }

// ArchiveDir is where a cluster started with Config.Archive archives its
// WAL.
func (c *Cluster) ArchiveDir() string { return filepath.Join(c.Dir, "archive") }

// Standby makes a streaming standby of c: a base backup taken through addr
// (host:port: c's own, or a relay in front of it) with pg_basebackup -R, so
// that the standby goes on streaming through addr, started on a port of its
// own with settings added as StartWith adds them. It returns once the
// standby takes read-only connections; Promote makes it a primary. The
// caller must call Stop.
func (c *Cluster) Standby(ctx context.Context, addr string, settings ...string) (*Cluster, error) {
	s, err := c.backup(ctx, addr, true, settings)
	if err != nil {
		return nil, err
	}
	// A hot standby's postmaster.pid says "ready" once it takes
	// connections.
	if err := s.startOnFreePort(ctx); err != nil {
		_ = s.Stop()
		return nil, err
	}
	if err := whileStarting(ctx, func() error { return execSQL(ctx, s.Addr(), "postgres", "test", "SELECT 1") }); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("localpg: connecting to the standby at %s: %w", s.Addr(), err)
	}
	s.DSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?sslmode=disable", s.Port)
	return s, nil
}

// Backup takes a base backup of c now, with the WAL it needs, into a new
// directory, and returns it as a cluster that does not run: Recover starts
// it. The caller must call Stop.
func (c *Cluster) Backup(ctx context.Context) (*Cluster, error) {
	return c.backup(ctx, c.Addr(), false, nil)
}

// backup runs pg_basebackup of c, through addr, into a new cluster
// directory; standby adds -R (a standby.signal and primary_conninfo).
func (c *Cluster) backup(ctx context.Context, addr string, standby bool, settings []string) (*Cluster, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("localpg: %w", err)
	}
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("localpg: %w", err)
	}
	b := &Cluster{Dir: dir, BinDir: c.BinDir, user: c.user, settings: settings}
	if err := b.claimDir(); err != nil {
		_ = b.Stop()
		return nil, err
	}
	args := []string{"-D", filepath.Join(dir, "data"), "-h", host, "-p", port, "-U", "postgres",
		"-X", "stream", "-c", "fast", "--no-sync"}
	if standby {
		args = append(args, "-R")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "pg_basebackup"), args...)
	cmd.Dir = dir
	cmd.Env = childEnv()
	cmd.SysProcAttr = procAttr(c.user, false)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = b.Stop()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("localpg: %s failed: %v%s", cmd.Path, err, lastLines("pg_basebackup output", out))
	}
	return b, nil
}

// Recover starts c, a Backup of from, as a copy of from at an earlier
// point: it replays from's archived WAL (from must run with Config.Archive)
// up to target, a recovery_target_time such as from's now() at some
// moment, then ends recovery on a new timeline and takes connections, as a
// point-in-time restore does. It returns once the copy takes read-write
// connections. The archive must already hold WAL past target: recovery
// fails otherwise.
func (c *Cluster) Recover(ctx context.Context, from *Cluster, target string) error {
	if strings.ContainsAny(target, "'\\") {
		return fmt.Errorf("localpg: bad recovery target %q", target)
	}
	c.settings = append(c.settings,
		"restore_command=cp "+from.ArchiveDir()+"/%f %p",
		"recovery_target_time="+target,
		"recovery_target_action=promote")
	signal := filepath.Join(c.Dir, "data", "recovery.signal")
	if err := os.WriteFile(signal, nil, 0o600); err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	if c.user.set {
		if err := os.Chown(signal, c.user.uid, c.user.gid); err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
	}
	if err := c.startOnFreePort(ctx); err != nil {
		return err
	}
	if err := c.waitWritable(ctx); err != nil {
		return fmt.Errorf("localpg: recovering %s: %w", c.Addr(), err)
	}
	c.DSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?sslmode=disable", c.Port)
	return nil
}

// Promote ends a standby's recovery (pg_promote) and returns once it takes
// writes.
func (c *Cluster) Promote(ctx context.Context) error {
	// Without pg_promote's own wait, which looks every 100 ms.
	if err := execSQL(ctx, c.Addr(), "postgres", "postgres", "SELECT pg_catalog.pg_promote(false)"); err != nil {
		return fmt.Errorf("localpg: promoting %s: %w", c.Addr(), err)
	}
	if err := c.waitWritable(ctx); err != nil {
		return fmt.Errorf("localpg: promoting %s: %w", c.Addr(), err)
	}
	return nil
}

// waitWritable waits until the server has left recovery. A hot standby
// takes connections, and its postmaster.pid says "ready", long before.
func (c *Cluster) waitWritable(ctx context.Context) error {
	const check = `DO $$ BEGIN
	IF pg_catalog.pg_is_in_recovery() THEN
		RAISE EXCEPTION 'still in recovery' USING ERRCODE = '` + cannotConnectNow + `';
	END IF;
END $$`
	return whileStarting(ctx, func() error { return execSQL(ctx, c.Addr(), "postgres", "postgres", check) })
}

// Kill kills the server and all its processes at once (SIGKILL), as a
// machine dies, and keeps the data directory (Restart starts it again,
// after crash recovery). Kill of a server that is not running does
// nothing; after Stop it returns ErrStopped.
func (c *Cluster) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return ErrStopped
	}
	if s := c.srv; s != nil {
		c.srv = nil
		killGroup(s.cmd.Process.Pid)
		<-s.exited
	}
	return nil
}
