package integration

import (
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The harness's own promises: a server that does not answer fails the
// whole binary within 10 s with the server's reason, and a change of
// LEASERING_TEST_DSN runs the tests again rather than giving go test's
// cached result.

// TestMarkerNeedsDB is the test the child runs of the tests below start.
func TestMarkerNeedsDB(t *testing.T) { needDB(t) }

// goTool is the go command of the toolchain running the tests.
func goTool() string { return filepath.Join(runtime.GOROOT(), "bin", "go") }

// childEnv is the environment minus the variables the children set.
func childEnv(set ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LEASERING_TEST_DSN=") && !strings.HasPrefix(kv, "GOFLAGS=") {
			env = append(env, kv)
		}
	}
	return append(env, set...)
}

func TestUnreachableDSNFailsFast(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "integration.test")
	if out, err := exec.Command(goTool(), "test", "-c", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building the test binary: %v\n%s", err, out)
	}
	u, _ := url.Parse(needDB(t))
	u.Path = "/lrt_no_such_db"
	for _, tc := range []struct{ dsn, reason string }{
		{"postgres://postgres@127.0.0.1:1/test?sslmode=disable", "refused"},
		{u.String(), `database "lrt_no_such_db" does not exist`},
	} {
		cmd := exec.Command(bin, "-test.run=^TestMarkerNeedsDB$")
		cmd.Env = childEnv("LEASERING_TEST_DSN=" + tc.dsn)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		took := time.Since(start)
		if err == nil {
			t.Errorf("with %s the tests passed:\n%s", tc.dsn, out)
		}
		if took > 10*time.Second {
			t.Errorf("with %s the binary took %v to fail, want under 10s", tc.dsn, took)
		}
		if !strings.Contains(string(out), tc.reason) || strings.Count(strings.TrimSpace(string(out)), "\n") > 0 {
			t.Errorf("with %s the binary said %q, want one line with %q", tc.dsn, out, tc.reason)
		}
	}
}

func TestDSNChangeRerunsTests(t *testing.T) {
	t.Parallel()
	dsn := needDB(t)
	run := func(app string) string {
		t.Helper()
		cmd := exec.Command(goTool(), "test", "-run", "^TestMarkerNeedsDB$", ".")
		cmd.Env = childEnv("LEASERING_TEST_DSN=" + withParam(dsn, "application_name", app))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go test: %v\n%s", err, out)
		}
		return string(out)
	}
	a, b := "lrt_"+randomSuffix(), "lrt_"+randomSuffix()
	if out := run(a); strings.Contains(out, "(cached)") {
		t.Fatalf("first run with a new DSN was cached: %s", out)
	}
	if out := run(a); !strings.Contains(out, "(cached)") {
		t.Fatalf("second run with the same DSN was not cached, so this test proves nothing: %s", out)
	}
	if out := run(b); strings.Contains(out, "(cached)") {
		t.Errorf("a run with another LEASERING_TEST_DSN gave the cached result: %s", out)
	}
}
