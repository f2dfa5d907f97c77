package main

import (
	"bytes"
	"context"
	"database/sql"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

func TestCompact(t *testing.T) {
	for _, tc := range []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{4}, "4"},
		{[]int{0, 1, 2, 3, 7, 9, 10}, "0-3,7,9-10"},
	} {
		if got := compact(tc.in); got != tc.want {
			t.Errorf("compact(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// testDSN returns the test database's DSN, or skips the test without one
// (fails it under LEASERING_REQUIRE_DB=1).
func testDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("LEASERING_TEST_DSN")
	if dsn == "" {
		if os.Getenv("LEASERING_REQUIRE_DB") == "1" {
			t.Fatal("LEASERING_REQUIRE_DB=1 but no database: set LEASERING_TEST_DSN")
		}
		t.Skip("no PostgreSQL: set LEASERING_TEST_DSN")
	}
	return dsn
}

// run runs ringnode with args and returns its exit code and output.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = cli(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// freshDatabase creates an empty database on the test server, drops it
// when the test ends, and returns a DSN for it.
func freshDatabase(t *testing.T) string {
	t.Helper()
	dsn := testDSN(t)
	admin, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	name := "lrt_db_" + randomHex(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping database %s: %v", name, err)
		}
	})
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Path = "/" + name
		return u.String()
	}
	return dsn + " dbname=" + name // key=value: the last value of a key counts
}

// TestDemoRunsEndToEnd runs the README's first command, faster, against
// the test database: every step converges and the summary is printed. Then
// status shows the demo's ring in its schema.
func TestDemoRunsEndToEnd(t *testing.T) {
	dsn := freshDatabase(t)
	code, out, errOut := run(t, "demo", "-dsn", dsn, "-ttl", "500ms", "-size", "32")
	if code != 0 {
		t.Fatalf("demo exited %d: %s\n%s", code, errOut, out)
	}
	for _, want := range []string{"start a b c d e", "join f", "crash b", "blackhole c", "close d", "summary", "ownership snapshots read"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	t.Log("\n" + out)

	for _, args := range [][]string{{"status", "-dsn", dsn}, {"status", "-dsn", dsn, "-schema", demoSchema}} {
		code, out, errOut = run(t, args...)
		if code != 0 {
			t.Fatalf("%v exited %d: %s", args, code, errOut)
		}
		if !strings.Contains(out, "schema "+demoSchema+" ") || !strings.Contains(out, "\ndemo ") || !strings.Contains(out, " 32 ") {
			t.Errorf("%v does not show ring demo (32 partitions) in schema %s:\n%s", args, demoSchema, out)
		}
		t.Logf("%v:\n%s", args, out)
	}
}
