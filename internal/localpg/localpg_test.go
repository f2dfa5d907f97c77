package localpg

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
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

func TestFindExplicitDSN(t *testing.T) {
	ctx := context.Background()
	t.Setenv("LOCALPG_TEST_A", "")
	t.Setenv("LOCALPG_TEST_B", "postgres://b")
	docker := func(context.Context) (string, func(), error) {
		t.Error("Docker called despite an explicit DSN")
		return "", nil, nil
	}

	s, err := Find(ctx, Options{DSNEnv: []string{"LOCALPG_TEST_A", "LOCALPG_TEST_B"}, Docker: docker})
	if err != nil || s.DSN != "postgres://b" || s.Source != "dsn from $LOCALPG_TEST_B" {
		t.Errorf("env: %+v, %v", s, err)
	}
	s, err = Find(ctx, Options{DSN: "postgres://flag", DSNEnv: []string{"LOCALPG_TEST_B"}, Docker: docker})
	if err != nil || s.DSN != "postgres://flag" || s.Source != "dsn given explicitly" {
		t.Errorf("flag: %+v, %v", s, err)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("Stop of an explicit DSN: %v", err)
	}
}

func TestFindDocker(t *testing.T) {
	stops := 0
	s, err := Find(context.Background(), Options{
		DSNEnv: []string{"LOCALPG_TEST_UNSET"},
		Docker: func(context.Context) (string, func(), error) {
			return "postgres://docker", func() { stops++ }, nil
		},
	})
	if err != nil || s.DSN != "postgres://docker" || !strings.HasPrefix(s.Source, "docker") || s.Cluster != nil {
		t.Fatalf("%+v, %v", s, err)
	}
	_ = s.Stop()
	_ = s.Stop()
	if stops != 1 {
		t.Errorf("container removed %d times, want 1", stops)
	}
}

// TestFindLocal: a Docker engine that fails sends Find to a private cluster.
func TestFindLocal(t *testing.T) {
	needServer(t)
	isolateTemp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Find(ctx, Options{Docker: func(context.Context) (string, func(), error) {
		return "", nil, errors.New("pull refused")
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(s.Source)
	if s.Cluster == nil || s.DSN != s.Cluster.DSN ||
		!strings.HasPrefix(s.Source, "private cluster at "+s.Cluster.Dir+": ") ||
		!strings.HasSuffix(s.Source, "(docker failed: pull refused)") {
		t.Errorf("Find = %+v", s)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Cluster.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after Stop", s.Cluster.Dir)
	}
}

// writeScript writes an executable shell script.
func writeScript(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// fakeServer makes dir hold fake initdb and postgres.
func fakeServer(t *testing.T, dir string) string {
	t.Helper()
	writeScript(t, filepath.Join(dir, "initdb"), "exit 0")
	writeScript(t, filepath.Join(dir, "postgres"), "exit 0")
	return dir
}

func TestBinDirOrder(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	p := func(parts ...string) string { return filepath.Join(append([]string{root}, parts...)...) }

	// Packaged versions, found by pattern, newest first by number.
	fakeServer(t, p("lib/postgresql/9.6/bin"))
	fakeServer(t, p("lib/postgresql/15/bin"))
	writeScript(t, p("lib/postgresql/16/bin/initdb"), "exit 0") // no postgres: skipped
	fakeServer(t, p("brew/postgresql@14/bin"))
	fakeServer(t, p("brew/postgresql@17/bin"))
	globs := []string{p("lib/postgresql/*/bin"), p("brew/postgresql*/bin")}

	// A PATH directory whose initdb is a link into a directory with postgres.
	fakeServer(t, p("real/bin"))
	if err := os.MkdirAll(p("linked"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(p("real/bin/initdb"), p("linked/initdb")); err != nil {
		t.Fatal(err)
	}
	// pg_config pointing at a directory with the server.
	fakeServer(t, p("pgconfig/target"))
	writeScript(t, p("pgconfig/bin/pg_config"), "echo "+p("pgconfig/target"))
	// A PATH directory with initdb but no postgres.
	writeScript(t, p("half/initdb"), "exit 0")

	for _, tc := range []struct {
		name, path string
		globs      []string
		want       string
	}{
		{"PATH", p("real/bin"), globs, p("real/bin")},
		{"PATH before pg_config", p("pgconfig/bin") + ":" + p("real/bin"), globs, p("real/bin")},
		{"PATH link resolved", p("linked"), globs, p("real/bin")},
		{"pg_config", p("pgconfig/bin"), globs, p("pgconfig/target")},
		{"initdb without postgres skipped", p("half"), globs, p("lib/postgresql/15/bin")},
		{"newest packaged version", "", globs, p("lib/postgresql/15/bin")},
		{"patterns in order", "", globs[1:], p("brew/postgresql@17/bin")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := search{path: tc.path, globs: tc.globs}.binDir(ctx)
			if err != nil || got != tc.want {
				t.Errorf("binDir = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestNothingFound(t *testing.T) {
	empty := t.TempDir()
	s := search{path: empty, globs: []string{filepath.Join(empty, "*/bin")}}
	_, err := s.binDir(context.Background())
	if !errors.Is(err, ErrNoPostgres) {
		t.Fatalf("err = %v, want ErrNoPostgres", err)
	}
	t.Log(err)
	for _, want := range []string{"initdb and postgres", installHint(), filepath.Join(empty, "*/bin")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if !strings.Contains(installHint(), "apt-get install -y postgresql") && !strings.Contains(installHint(), "brew install postgresql@16") {
		t.Errorf("install hint %q", installHint())
	}
	if supported {
		if _, err := start(context.Background(), s); !errors.Is(err, ErrNoPostgres) {
			t.Errorf("start: %v, want ErrNoPostgres", err)
		}
	}
}

// TestFindNothing: with no DSN, no Docker and no binaries, Find's error is
// one line that says what is missing, the command that installs it and the
// variable that names a server instead, and what Docker said.
func TestFindNothing(t *testing.T) {
	empty := t.TempDir()
	s := search{path: empty, globs: []string{filepath.Join(empty, "*/bin")}}
	t.Setenv("LOCALPG_TEST_UNSET", "")
	_, err := find(context.Background(), Options{
		DSNEnv: []string{"LOCALPG_TEST_UNSET"},
		Docker: func(context.Context) (string, func(), error) { return "", nil, errors.New("pull refused") },
	}, s)
	if !errors.Is(err, ErrNoPostgres) {
		t.Fatalf("err = %v, want ErrNoPostgres", err)
	}
	t.Log(err)
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error is more than one line: %q", msg)
	}
	for _, want := range []string{"initdb and postgres", "install them with: " + installHint(),
		"or set $LOCALPG_TEST_UNSET to a server's DSN", "docker failed too: pull refused"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
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

// TestHelperProcess is the child of the signal tests: it starts a cluster,
// prints its directory and postmaster pid, and waits to be signalled. Run
// on its own it does nothing (and passes rather than skips, so that a skip
// in CI's output always means a test that did not run).
func TestHelperProcess(t *testing.T) {
	if os.Getenv("LOCALPG_HELPER") != "1" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	StopOnSignal(c)
	fmt.Println("CLUSTER", c.Dir, pidOf(c), c.Port)
	time.Sleep(time.Minute) // the parent signals long before
	_ = c.Stop()
	os.Exit(3)
}

// startHelper runs TestHelperProcess and returns it with its cluster's
// directory, postmaster pid and port.
func startHelper(t *testing.T) (*exec.Cmd, string, int, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "LOCALPG_HELPER=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "CLUSTER ") || strings.HasPrefix(sc.Text(), "ERROR ") {
				lines <- sc.Text()
				break
			}
		}
		close(lines)
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(30 * time.Second):
		t.Fatal("helper did not start a cluster in 30s")
	}
	var dir string
	var pid, port int
	if _, err := fmt.Sscanf(line, "CLUSTER %s %d %d", &dir, &pid, &port); err != nil {
		t.Fatalf("helper said %q", line)
	}
	return cmd, dir, pid, port
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStopOnSignal(t *testing.T) {
	needServer(t)
	isolateTemp(t)
	cmd, dir, pid, _ := startHelper(t)
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 130 {
			t.Errorf("helper exited with %v, want status 130", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("helper still runs 20s after SIGINT")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after SIGINT: %v", dir, err)
	}
	if processRuns(pid) {
		t.Errorf("postmaster %d still runs after SIGINT", pid)
	}
}

// TestParentDeath: a SIGKILLed parent takes its postmaster down (Linux),
// and the next Start removes the directory left behind.
func TestParentDeath(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the parent-death signal is Linux only")
	}
	needServer(t)
	isolateTemp(t)
	cmd, dir, pid, port := startHelper(t)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitFor(t, "postmaster gone after its parent's SIGKILL", 10*time.Second, func() bool { return !processRuns(pid) })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still takes connections", addr)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("expected %s to be left behind: %v", dir, err)
	}

	old := staleAge
	staleAge = 0
	defer func() { staleAge = old }()
	sweepStale()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after sweepStale: %v", dir, err)
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
