// Package integration tests leasering against a real PostgreSQL.
//
// TestMain finds the server (internal/localpg): LEASERING_TEST_DSN when it
// is set, else Docker through dockertest when an engine answers, else a
// private throwaway cluster made from the local PostgreSQL binaries and
// removed at the end. A DSN that does not answer within 10 s, or a machine
// with no PostgreSQL at all, fails the whole binary at once with one line
// that says why. Each test works in a schema of its own and drops it at the
// end, so tests run in parallel and leave nothing behind.
//
// LEASERING_TEST_DRIVER picks the database/sql driver of every connection
// the tests open: "pq" (lib/pq, the default) or "pgx" (pgx's stdlib).
// The notifier follows the driver: pqnotify with lib/pq, pgxnotify with pgx.
package integration

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	"github.com/leasering/leasering/internal/localpg"
	_ "github.com/lib/pq" // registers "postgres"
	"github.com/ory/dockertest/v3"
)

var (
	testDSN    string // set by TestMain; empty: no database
	testDriver string // set by TestMain: the database/sql driver name
)

// testDrivers maps LEASERING_TEST_DRIVER's values to driver names.
var testDrivers = map[string]string{
	"":    "postgres",
	"pq":  "postgres",
	"pgx": "pgx",
}

func TestMain(m *testing.M) {
	v := os.Getenv("LEASERING_TEST_DRIVER")
	driver, ok := testDrivers[v]
	if !ok {
		fmt.Fprintf(os.Stderr, "LEASERING_TEST_DRIVER=%q: unknown driver; use \"pq\" (lib/pq, the default) or \"pgx\" (pgx's stdlib)\n", v)
		os.Exit(2)
	}
	testDriver = driver
	flag.Parse()
	parallelByDefault(defaultParallel)
	os.Exit(runTests(m))
}

// defaultParallel is how many parallel tests run at once unless
// -test.parallel says: go test's default is GOMAXPROCS, 2 on the CI
// machine, and these tests spend their time waiting for heartbeats and for
// their nodes to leave, not on the CPU. The ones that measure gaps and
// takeover times (handoff, roll-out, scale, chaos, takeover, failover) do
// not call t.Parallel, so they run before any parallel one starts.
const defaultParallel = 4

// parallelByDefault sets -test.parallel to n unless the command line set it.
func parallelByDefault(n int) {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", fmt.Sprint(n))
	}
}

// runTests finds the server, runs the tests and says how many skipped.
func runTests(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	srv, err := localpg.Find(ctx, localpg.Options{DSNEnv: []string{"LEASERING_TEST_DSN"}, Docker: dockerPostgres})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer srv.Stop()
	defer localpg.StopOnSignal(srv)()
	if err := ping(srv.DSN, 10*time.Second); err != nil {
		fmt.Fprintf(os.Stderr, "integration: PostgreSQL from %s does not answer: %v\n", srv.Source, err)
		return 1
	}
	testDSN = srv.DSN
	fmt.Fprintf(os.Stderr, "integration: PostgreSQL from %s\n", srv.Source)
	code := m.Run()
	if n := skipped.Load(); n == 1 {
		fmt.Fprintln(os.Stderr, "integration: 1 test skipped (run with -v to see why)")
	} else if n > 1 {
		fmt.Fprintf(os.Stderr, "integration: %d tests skipped (run with -v to see why)\n", n)
	}
	return code
}

// ping checks that the server at dsn answers within d, with its own reason
// if it does not.
func ping(dsn string, d time.Duration) error {
	db, err := sqlOpen(dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return db.PingContext(ctx)
}

// dockerPostgres starts PostgreSQL in Docker when an engine answers.
func dockerPostgres(ctx context.Context) (string, func(), error) {
	pool, err := dockertest.NewPool("")
	if err != nil || pool.Client.Ping() != nil {
		return "", nil, nil // no engine
	}
	res, err := pool.Run("postgres", "15", []string{"POSTGRES_HOST_AUTH_METHOD=trust", "POSTGRES_DB=test"})
	if err != nil {
		return "", nil, err
	}
	dsn := "postgres://postgres@" + res.GetHostPort("5432/tcp") + "/test?sslmode=disable"
	pool.MaxWait = time.Minute
	if err := pool.Retry(func() error { return ping(dsn, 5*time.Second) }); err != nil {
		_ = pool.Purge(res)
		return "", nil, err
	}
	return dsn, func() { _ = pool.Purge(res) }, nil
}

// sqlOpen opens dsn with the test driver.
func sqlOpen(dsn string) (*sql.DB, error) {
	return sql.Open(testDriver, dsn)
}

// openDB opens dsn with the test driver or fails the test.
func openDB(t testing.TB, dsn string) *sql.DB {
	t.Helper()
	return openDBWith(t, testDriver, dsn)
}

// openDBWith opens dsn with driver ("postgres" or "pgx") or fails the test.
func openDBWith(t testing.TB, driver, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatalf("opening %s with driver %s: %v", dsn, driver, err)
	}
	return db
}

// skipped counts the tests that skipped, for TestMain's closing line.
var skipped atomic.Int32

// skip skips t and counts it.
func skip(t testing.TB, args ...any) {
	t.Helper()
	skipped.Add(1)
	t.Skip(args...)
}

// privateCluster starts a private cluster for t alone, stopped at its end,
// for tests that change the server (its configuration, a restart). It
// skips t (counted) when this machine has no PostgreSQL binaries, as when
// the test server comes from a DSN or Docker.
func privateCluster(t testing.TB) *localpg.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := localpg.Start(ctx)
	if errors.Is(err, localpg.ErrNoPostgres) {
		skip(t, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// needDB returns the test server's DSN. It reads the variables that choose
// the server again, inside the test, so that go test's cache, which keys a
// result on the variables a test reads, runs the tests again when they
// change (TestMain's reads happen before the cache records anything).
func needDB(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"LEASERING_TEST_DSN", "LEASERING_TEST_DRIVER", "LEASERING_REQUIRE_DB"} {
		_ = os.Getenv(name)
	}
	if testDSN == "" {
		t.Fatal("no PostgreSQL (TestMain found none)")
	}
	return testDSN
}

func randomSuffix() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
