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

// staleAge is how long a directory left by a dead process must have been
// untouched before sweepStale removes it. Tests shorten it.
var staleAge = time.Minute

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

// Stop stops the server at once (an immediate shutdown: it is throwaway)
// and removes Dir. It is safe to call more than once and from several
// goroutines; later calls return the first call's result.
func (c *Cluster) Stop() error {
	c.once.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Cluster) stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	var errs []error
	if s := c.srv; s != nil {
		c.srv = nil
		if !s.kill() {
			errs = append(errs, fmt.Errorf("postgres (pid %d) ignored SIGQUIT for %v and was killed", s.cmd.Process.Pid, stopWait))
		}
	}
	if c.lock != nil {
		_ = c.lock.Close()
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("localpg: stopping cluster at %s: %w", c.Dir, err)
	}
	return nil
}

// kill sends SIGQUIT (immediate shutdown) to the postmaster, waits for it
// to exit, SIGKILLs its process group when it does not in stopWait and, in
// any case, once it has exited, to take stray backends down too. It
// returns false when SIGKILL was needed.
func (s *server) kill() bool {
	clean := true
	select {
	case <-s.exited:
	default:
		_ = quit(s.cmd.Process)
		t := time.NewTimer(stopWait)
		defer t.Stop()
		select {
		case <-s.exited:
		case <-t.C:
			clean = false
			killGroup(s.cmd.Process.Pid)
			<-s.exited
		}
	}
	killGroup(s.cmd.Process.Pid)
	return clean
}

// ErrStopped is returned by Shutdown and Restart after Stop.
var ErrStopped = errors.New("localpg: cluster stopped")

// Shutdown stops the server with PostgreSQL's fast shutdown (SIGINT: open
// sessions are ended, a checkpoint is written) and keeps the data
// directory, for Restart. Until then connections to Port are refused.
// When the server has not exited by ctx's deadline, it is killed
// (immediate shutdown, then SIGKILL), its data is still kept, and the
// error wraps ctx.Err(). Shutdown of a server already shut down does
// nothing; after Stop it returns ErrStopped.
func (c *Cluster) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return ErrStopped
	}
	return c.shutdown(ctx)
}

// shutdown is Shutdown with c.mu held.
func (c *Cluster) shutdown(ctx context.Context) error {
	s := c.srv
	if s == nil {
		return nil
	}
	c.srv = nil
	t0 := time.Now()
	select {
	case <-s.exited:
	default:
		_ = fastShutdown(s.cmd.Process)
		select {
		case <-s.exited:
		case <-ctx.Done():
			s.kill()
			return fmt.Errorf("localpg: shutting down the server at %s: not down after %v, killed: %w",
				c.Dir, time.Since(t0).Round(time.Millisecond), ctx.Err())
		}
	}
	killGroup(s.cmd.Process.Pid)
	return nil
}

// Restart shuts the server down as Shutdown does, if it runs, and starts it
// again on the same data directory, port and socket directory; it returns
// when database test takes connections. Sessions are lost, data is kept.
// The server log goes on in the same file. Restart fails when another
// process has taken the port meanwhile; the server then stays shut down
// (Stop still removes everything). Without a deadline in ctx, Restart gives
// up after a minute. After Stop it returns ErrStopped.
func (c *Cluster) Restart(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return ErrStopped
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultWait)
		defer cancel()
	}
	if err := c.shutdown(ctx); err != nil {
		return err
	}
	logPath := filepath.Join(c.Dir, logName)
	var logFrom int64
	if fi, err := os.Stat(logPath); err == nil {
		logFrom = fi.Size()
	}
	// The port may be held for a moment by another process looking for a
	// free one (see freePort): try again for up to bindRetry.
	bindUntil := time.Now().Add(bindRetry)
	for {
		err := c.startServer(ctx, c.Port, logFrom)
		if err == nil {
			break
		}
		log := readFrom(logPath, logFrom)
		if bytes.Contains(log, []byte("could not bind")) {
			if ctx.Err() == nil && time.Now().Before(bindUntil) {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			err = fmt.Errorf("port %d is taken by another process: %v", c.Port, err)
		}
		return fmt.Errorf("localpg: restarting %s: %v%s", filepath.Join(c.BinDir, "postgres"), err, lastLines("server log", log))
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port))
	if err := whileStarting(ctx, func() error { return execSQL(ctx, addr, "postgres", "test", "SELECT 1") }); err != nil {
		return fmt.Errorf("localpg: connecting to %s after the restart: %v%s", addr, err,
			lastLines("server log", readFrom(logPath, logFrom)))
	}
	return nil
}

// bindRetry is how long Restart tries to bind a port held by another
// process.
const bindRetry = time.Second

// readFrom returns the file at path from offset on, or nothing.
func readFrom(path string, offset int64) []byte {
	b, _ := os.ReadFile(path)
	if offset > int64(len(b)) {
		return nil
	}
	return b[offset:]
}

// sweepStale removes the directories that earlier Starts left behind in the
// temporary directory when their process died without Stop (a SIGKILL, a
// crash): those whose lock is free, whose postmaster is not running and
// which have not changed for staleAge. Errors are ignored.
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		fi, err := os.Lstat(d)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < staleAge {
			continue
		}
		f, err := os.OpenFile(filepath.Join(d, lockName), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		if tryLockFile(f) && !postmasterAlive(filepath.Join(d, "data", "postmaster.pid")) {
			_ = os.RemoveAll(d)
		}
		_ = f.Close()
	}
}

// postmasterAlive tells whether the process named in a postmaster.pid file
// runs.
func postmasterAlive(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	return err == nil && pidAlive(pid)
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
