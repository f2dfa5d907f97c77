package localpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Cluster is a private throwaway PostgreSQL cluster made by Start.
type Cluster struct {
	// DSN is postgres://postgres@127.0.0.1:PORT/test?sslmode=disable: user
	// postgres (superuser, no password) and database test.
	DSN string
	// Dir is the temporary directory that holds the data directory
	// (Dir/data), the server log (Dir/postgres.log) and the Unix socket.
	// Stop removes it.
	Dir string
	// Port is the TCP port on 127.0.0.1.
	Port int
	// BinDir is the directory of the initdb and postgres that were run.
	BinDir string
	// StartTime is how long Start took, from its call until database test
	// took connections.
	StartTime time.Duration

	user     runAs    // who initdb and postgres run as
	lock     *os.File // held while the cluster lives; see sweepStale
	settings []string // server settings (name=value) after the defaults; see StartWith

	mu      sync.Mutex // guards srv and stopped; held by Shutdown, Restart and Stop throughout
	srv     *server    // the running postmaster; nil while shut down
	stopped bool       // Stop was called

	once    sync.Once
	stopErr error
}

// server is one run of the postmaster.
type server struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the postmaster has exited
	waitErr error         // its exit status, set before exited is closed
}

const (
	dirPrefix   = "localpg-"
	lockName    = "localpg.lock"
	logName     = "postgres.log"
	defaultWait = time.Minute // for Start when ctx has no deadline
	stopWait    = 10 * time.Second
)

// Start makes and starts a private PostgreSQL cluster from the binaries
// found on this machine and returns when its database test takes
// connections. It takes initdb and postgres from the first of: the
// directory of initdb in $PATH (links resolved), pg_config --bindir,
// /usr/lib/postgresql/*/bin (newest version first), then Homebrew's
// /opt/homebrew/opt/postgresql*/bin, /usr/local/opt/postgresql*/bin,
// /opt/homebrew/bin and /usr/local/bin. When none has them, the error
// wraps ErrNoPostgres and says how to install them.
//
// It runs initdb -A trust -U postgres --no-sync -E UTF8 --locale=C in a new
// temporary directory, then postgres with listen_addresses=127.0.0.1, a
// free port, unix_socket_directories in that directory and fsync,
// synchronous_commit and full_page_writes off, then creates database test.
// When the process runs as root, initdb and postgres run as the OS user
// postgres, since both refuse root.
//
// Without a deadline in ctx, Start gives up after a minute. On failure
// everything is removed and the error includes the last lines of initdb's
// or the server's output. The caller must call Stop.
func Start(ctx context.Context) (*Cluster, error) {
	return start(ctx, defaultSearch())
}

func start(ctx context.Context, s search, settings ...string) (*Cluster, error) {
	t0 := time.Now()
	if !supported {
		return nil, fmt.Errorf("localpg: private clusters need Linux or macOS, not %s", runtime.GOOS)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultWait)
		defer cancel()
	}
	bin, err := s.binDir(ctx)
	if err != nil {
		return nil, err
	}
	u, err := serverUser()
	if err != nil {
		return nil, err
	}
	sweepStale()

	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("localpg: %w", err)
	}
	c := &Cluster{Dir: dir, BinDir: bin, user: u, settings: settings}
	if err := c.setup(ctx); err != nil {
		_ = c.Stop()
		return nil, err
	}
	c.StartTime = time.Since(t0)
	return c, nil
}

// claimDir locks c.Dir and gives it to the OS user the server runs as.
func (c *Cluster) claimDir() error {
	u := c.user
	f, err := os.OpenFile(filepath.Join(c.Dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("localpg: %w", err)
	}
	c.lock = f
	if err := lockFile(f); err != nil {
		return fmt.Errorf("localpg: locking %s: %w", f.Name(), err)
	}
	if u.set {
		if err := os.Chown(c.Dir, u.uid, u.gid); err != nil {
			return fmt.Errorf("localpg: giving %s to OS user %s: %w", c.Dir, u.name, err)
		}
	}
	return nil
}

// setup does Start's work in c.Dir.
func (c *Cluster) setup(ctx context.Context) error {
	u := c.user
	if err := c.claimDir(); err != nil {
		return err
	}

	data := filepath.Join(c.Dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(c.BinDir, "initdb"),
		"-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C")
	initdb.Dir = c.Dir
	initdb.Env = childEnv()
	initdb.SysProcAttr = procAttr(u, false)
	initdb.Cancel = func() error { // take initdb's own postgres children too
		killGroup(initdb.Process.Pid)
		return nil
	}
	if out, err := initdb.CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("localpg: %s failed: %v%s", initdb.Path, err, lastLines("initdb output", out))
	}

	if err := c.startOnFreePort(ctx); err != nil {
		return err
	}

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port))
	if err := whileStarting(ctx, func() error { return execSQL(ctx, addr, "postgres", "postgres", "CREATE DATABASE test") }); err != nil {
		log, _ := os.ReadFile(filepath.Join(c.Dir, logName))
		return fmt.Errorf("localpg: creating database test on %s: %v%s", addr, err, lastLines("server log", log))
	}
	c.DSN = fmt.Sprintf("postgres://postgres@%s/test?sslmode=disable", addr)
	return nil
}

// startOnFreePort starts the server on a free port and sets c.Port.
func (c *Cluster) startOnFreePort(ctx context.Context) error {
	// A free port may be taken before postgres binds it: then try another.
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("localpg: %w", err)
		}
		c.mu.Lock()
		err = c.startServer(ctx, port, 0)
		c.mu.Unlock()
		if err == nil {
			c.Port = port
			return nil
		}
		log, _ := os.ReadFile(filepath.Join(c.Dir, logName))
		if attempt < 5 && ctx.Err() == nil && bytes.Contains(log, []byte("could not bind")) {
			continue
		}
		return fmt.Errorf("localpg: %s: %v%s", filepath.Join(c.BinDir, "postgres"), err, lastLines("server log", log))
	}
}

// whileStarting calls f until it does not fail with "the database system is
// starting up" or ctx is done, and returns its last error.
func whileStarting(ctx context.Context, f func() error) error {
	for {
		err := f()
		var pe *pgError
		if err == nil || ctx.Err() != nil || !errors.As(err, &pe) || pe.Code != cannotConnectNow {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// startServer starts the postmaster on port and waits until its
// postmaster.pid says it is ready. The server log is appended to from
// logFrom on (0: a new log). On failure the postmaster is ended and c.srv
// is nil. The caller holds c.mu.
func (c *Cluster) startServer(ctx context.Context, port int, logFrom int64) error {
	data := filepath.Join(c.Dir, "data")
	sockDir := c.Dir
	if len(filepath.Join(sockDir, ".s.PGSQL.65535")) > 100 { // sun_path is 104 bytes on macOS
		sockDir = ""
	}
	logf, err := os.OpenFile(filepath.Join(c.Dir, logName), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	if err := logf.Truncate(logFrom); err != nil {
		return err
	}
	if _, err := logf.Seek(logFrom, io.SeekStart); err != nil {
		return err
	}

	cmd := exec.Command(filepath.Join(c.BinDir, "postgres"), "-D", data,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port="+strconv.Itoa(port),
		"-c", "unix_socket_directories="+sockDir,
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off")
	for _, kv := range c.settings {
		cmd.Args = append(cmd.Args, "-c", kv)
	}
	cmd.Dir = c.Dir
	cmd.Env = childEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = procAttr(c.user, true)
	s := &server{cmd: cmd, exited: make(chan struct{})}

	// The parent-death signal (Linux) fires when the thread that forked the
	// child exits, not the process. Go ends a thread only when a goroutine
	// locked to it returns, so the child is forked from a goroutine that
	// holds its thread until the postmaster has exited.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	if err := <-started; err != nil {
		return err
	}
	c.srv = s

	t0 := time.Now()
	pidFile := filepath.Join(data, "postmaster.pid")
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if pidFileReady(pidFile, cmd.Process.Pid) {
			return nil
		}
		select {
		case <-s.exited:
			c.srv.kill()
			c.srv = nil
			return fmt.Errorf("exited before taking connections: %v", s.waitErr)
		case <-ctx.Done():
			c.srv.kill()
			c.srv = nil
			return fmt.Errorf("not ready after %v: %w", time.Since(t0).Round(time.Millisecond), ctx.Err())
		case <-tick.C:
		}
	}
}

// pidFileReady tells whether postmaster.pid belongs to pid and its status
// line (the 8th) says "ready", as pg_ctl checks.
func pidFileReady(path string, pid int) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	lines := strings.Split(string(b), "\n")
	return len(lines) >= 8 && strings.TrimSpace(lines[0]) == strconv.Itoa(pid) &&
		strings.TrimSpace(lines[7]) == "ready"
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port on 127.0.0.1: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// childEnv is this process's environment without the PG* variables, which
// could redirect initdb or postgres, and with the C locale.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "LC_ALL=") {
			env = append(env, kv)
		}
	}
	return append(env, "LC_ALL=C")
}

// lastLines formats the last lines of a program's output for an error.
func lastLines(what string, out []byte) string {
	const n = 20
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return "; " + what + " is empty"
	}
	head := what + ":"
	if len(lines) > n {
		lines = lines[len(lines)-n:]
		head = fmt.Sprintf("last %d lines of %s:", n, what)
	}
	return "\n" + head + "\n\t" + strings.Join(lines, "\n\t")
}

// runAs is the OS user that initdb and postgres run as; set is false for
// the current user.
type runAs struct {
	set      bool
	name     string
	uid, gid int
}
