package localpg

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

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
