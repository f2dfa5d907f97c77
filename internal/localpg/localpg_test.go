package localpg

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/lib/pq"
)

// needServer skips when this machine has no PostgreSQL binaries.
func needServer(t testing.TB) {
	t.Helper()
	if !supported {
		t.Skip("private clusters are not supported on " + runtime.GOOS)
	}
	if _, err := defaultSearch().binDir(context.Background()); err != nil {
		t.Skip(err)
	}
}

// isolateTemp makes the clusters of this test go to a fresh temporary
// directory that the postgres OS user can enter when the test runs as root.
func isolateTemp(t *testing.T) string {
	t.Helper()
	dir := openDir(t)
	t.Setenv("TMPDIR", dir)
	return dir
}

// openDir is a t.TempDir that other OS users can enter.
func openDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestStartStop(t *testing.T) {
	needServer(t)
	tmp := isolateTemp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started in %v in %s with %s", c.StartTime, c.Dir, c.BinDir)
	if filepath.Dir(c.Dir) != tmp {
		t.Errorf("Dir = %s, want it in %s", c.Dir, tmp)
	}
	want := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?sslmode=disable", c.Port)
	if c.DSN != want {
		t.Errorf("DSN = %q, want %q", c.DSN, want)
	}

	db, err := sql.Open("postgres", c.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var dbname, user, fsync string
	if err := db.QueryRowContext(ctx, "SELECT current_database(), current_user, current_setting('fsync')").
		Scan(&dbname, &user, &fsync); err != nil {
		t.Fatal(err)
	}
	if dbname != "test" || user != "postgres" || fsync != "off" {
		t.Errorf("database, user, fsync = %s, %s, %s; want test, postgres, off", dbname, user, fsync)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (k int PRIMARY KEY); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	// The wire-protocol helper reports server errors, FATAL ones included.
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port))
	var pe *pgError
	if err := execSQL(ctx, addr, "postgres", "postgres", "CREATE DATABASE test"); !errors.As(err, &pe) || pe.Code != "42P04" {
		t.Errorf("creating test twice: %v, want SQLSTATE 42P04", err)
	}
	if err := execSQL(ctx, addr, "postgres", "nosuchdb", "SELECT 1"); !errors.As(err, &pe) || pe.Code != "3D000" {
		t.Errorf("connecting to a missing database: %v, want SQLSTATE 3D000", err)
	}

	pid := pidOf(c)
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after Stop: %v", c.Dir, err)
	}
	if processRuns(pid) {
		t.Errorf("postmaster %d still runs after Stop", pid)
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still takes connections after Stop", addr)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// pidOf returns the pid of c's postmaster, or 0 while it is shut down.
func pidOf(c *Cluster) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv == nil {
		return 0
	}
	return c.srv.cmd.Process.Pid
}

// TestRestart: Restart and Shutdown keep the port, the DSN and the data,
// end the sessions and the old postmaster, and refuse after Stop; a port
// taken meanwhile makes Restart fail with a message that says so, and a
// later Restart works.
func TestRestart(t *testing.T) {
	needServer(t)
	isolateTemp(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	dsn, port, addr := c.DSN, c.Port, net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port))
	db, err := sql.Open("postgres", c.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (k int PRIMARY KEY); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	session, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	var backend int
	if err := session.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		t.Fatal(err)
	}
	// rowsLeft reads t through a new connection.
	rowsLeft := func() int {
		t.Helper()
		db.SetMaxIdleConns(0) // no connection from before the restart
		db.SetMaxIdleConns(2)
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatalf("reading t: %v", err)
		}
		return n
	}

	pid := pidOf(c)
	t0 := time.Now()
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted in %v", time.Since(t0).Round(time.Millisecond))
	if c.Port != port || c.DSN != dsn {
		t.Errorf("port, DSN = %d, %s after Restart; want %d, %s", c.Port, c.DSN, port, dsn)
	}
	if processRuns(pid) {
		t.Errorf("old postmaster %d still runs after Restart", pid)
	}
	if pidOf(c) == pid || !processRuns(pidOf(c)) {
		t.Errorf("postmaster %d after Restart, was %d", pidOf(c), pid)
	}
	if err := session.PingContext(ctx); err == nil {
		t.Errorf("backend %d's session still answers after Restart", backend)
	}
	if n := rowsLeft(); n != 1 {
		t.Errorf("%d rows in t after Restart, want 1", n)
	}
	if log, err := os.ReadFile(filepath.Join(c.Dir, logName)); err != nil ||
		bytes.Count(log, []byte("database system is ready to accept connections")) != 2 {
		t.Errorf("the server log does not show both starts (%v):\n%s", err, log)
	}

	// Shutdown, then Restart: nothing listens in between.
	pid = pidOf(c)
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if processRuns(pid) || pidOf(c) != 0 {
		t.Errorf("postmaster %d still runs after Shutdown", pid)
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s takes connections after Shutdown", addr)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}

	// A port taken meanwhile: Restart says so and leaves the server down.
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Restart(ctx)
	l.Close()
	if want := fmt.Sprintf("port %d is taken by another process", port); err == nil || !strings.Contains(err.Error(), want) ||
		!strings.Contains(err.Error(), "could not bind") {
		t.Errorf("Restart on a taken port: %v; want an error saying %q with the server log", err, want)
	} else {
		t.Log(err)
	}
	if pidOf(c) != 0 {
		t.Errorf("postmaster %d runs after a failed Restart", pidOf(c))
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if n := rowsLeft(); n != 1 {
		t.Errorf("%d rows in t after Shutdown and Restart, want 1", n)
	}

	pid = pidOf(c)
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if processRuns(pid) {
		t.Errorf("postmaster %d still runs after Stop", pid)
	}
	if err := c.Restart(ctx); !errors.Is(err, ErrStopped) {
		t.Errorf("Restart after Stop: %v, want ErrStopped", err)
	}
	if err := c.Shutdown(ctx); !errors.Is(err, ErrStopped) {
		t.Errorf("Shutdown after Stop: %v, want ErrStopped", err)
	}
}

// processRuns tells whether pid is a running process (not a zombie).
func processRuns(pid int) bool {
	if runtime.GOOS == "linux" {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		_, rest, _ := strings.Cut(string(b), ") ")
		return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
	}
	return pidAlive(pid)
}

// TestStartFailures: the error carries the program's own output, hung
// programs are ended at the context's deadline, and the directory is
// removed.
func TestStartFailures(t *testing.T) {
	if !supported {
		t.Skip("private clusters are not supported on " + runtime.GOOS)
	}
	for _, tc := range []struct {
		name, initdb, postgres string
		timeout                time.Duration
		want                   string
	}{
		{"initdb fails", `echo "initdb: error: fake disk full" >&2; exit 1`, "exit 0", 30 * time.Second,
			"initdb: error: fake disk full"},
		{"postgres fails", `mkdir -p "$2"`, `echo "FATAL:  fake bad setting" >&2; exit 1`, 30 * time.Second,
			"FATAL:  fake bad setting"},
		{"initdb hangs", `echo "fake initdb starting"; sleep 60`, "exit 0", 300 * time.Millisecond,
			"context deadline exceeded\ninitdb output:\n\tfake initdb starting"},
		{"postgres hangs", `mkdir -p "$2"`, `echo "LOG:  fake server starting" >&2; sleep 60`, 300 * time.Millisecond,
			"context deadline exceeded\nserver log:\n\tLOG:  fake server starting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := isolateTemp(t)
			bin := openDir(t)
			writeScript(t, filepath.Join(bin, "initdb"), tc.initdb)
			writeScript(t, filepath.Join(bin, "postgres"), tc.postgres)
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			t0 := time.Now()
			_, err := start(ctx, search{path: bin})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
			t.Logf("after %v: %v", time.Since(t0).Round(time.Millisecond), err)
			if d := time.Since(t0); d > tc.timeout+5*time.Second {
				t.Errorf("start returned %v after its deadline", d-tc.timeout)
			}
			if left, _ := filepath.Glob(filepath.Join(tmp, dirPrefix+"*")); len(left) > 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
}

// TestSweepKeepsLive: sweepStale leaves a running cluster alone.
func TestSweepKeepsLive(t *testing.T) {
	needServer(t)
	isolateTemp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	old := staleAge
	staleAge = 0
	defer func() { staleAge = old }()
	sweepStale()
	if _, err := os.Stat(filepath.Join(c.Dir, "data", "postmaster.pid")); err != nil {
		t.Errorf("sweepStale touched a live cluster: %v", err)
	}
}

// BenchmarkStart measures Start (initdb, server start, CREATE DATABASE) and
// Stop; ms/start is Start alone.
func BenchmarkStart(b *testing.B) {
	needServer(b)
	ctx := context.Background()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		c, err := Start(ctx)
		if err != nil {
			b.Fatal(err)
		}
		total += c.StartTime
		if err := c.Stop(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/start")
}
