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
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	"github.com/leasering/leasering"
	"github.com/leasering/leasering/internal/faultproxy"
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
	os.Exit(runTests(m))
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

// env is one test's world: a schema, an admin connection, and nodes, each
// with its own pool behind its own fault proxy.
type env struct {
	t         testing.TB
	dsn       string
	schema    string
	admin     *sql.DB
	ttl       time.Duration
	heartbeat time.Duration
	driver    string // the nodes' database/sql driver; "": the test driver
	trace     bool   // nodes keep their debug records too (one per heartbeat), for a failure's message

	inv invariantState // the invariant check at the end (invariants_test.go)

	mu    sync.Mutex
	nodes []*node // registered: watched by waits and checkers
	all   []*node // every node made, for cleanup
}

type node struct {
	id     string
	client *leasering.Client
	db     *sql.DB
	proxy  *faultproxy.Proxy
	leases map[string]*leasering.Lease // filled before the node is registered
	down   atomic.Bool                 // crashed or closed: not expected to report
	// warnings keeps the client's recent warnings and errors (with
	// env.trace, every record), for a failure's message (nil when a test
	// gave the client its own logger).
	warnings *nodeLog
}

// logger is a client's logger that keeps its warnings and errors in l
// (and, with LEASERING_TEST_LOG, writes every record to stderr).
func (l *nodeLog) logger() *slog.Logger {
	if os.Getenv("LEASERING_TEST_LOG") != "" {
		return quietLogger()
	}
	return slog.New(l)
}

// recent is the node's last warnings and errors (with env.trace, its last
// records), one per line, for a failure's message.
func (n *node) recent() string {
	if n.warnings == nil {
		return "(no log kept)"
	}
	n.warnings.mu.Lock()
	defer n.warnings.mu.Unlock()
	keep := 8
	if !n.warnings.warnings {
		keep = 60
	}
	es := n.warnings.entries[max(len(n.warnings.entries)-keep, 0):]
	if len(es) == 0 {
		return "(no warning logged)"
	}
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "\n\t%s %s", e.at.Format("15:04:05.000"), e.line)
	}
	return b.String()
}

// newEnv makes an env on the test server.
func newEnv(t testing.TB, ttl, heartbeat time.Duration) *env {
	t.Helper()
	return newEnvOn(t, needDB(t), ttl, heartbeat)
}

// newEnvOn makes an env on the server at dsn (a private cluster, say).
func newEnvOn(t testing.TB, dsn string, ttl, heartbeat time.Duration) *env {
	t.Helper()
	admin := openDB(t, dsn)
	e := &env{t: t, dsn: dsn, schema: "lrt_" + randomSuffix(), admin: admin, ttl: ttl, heartbeat: heartbeat}
	e.inv.adminDSN = dsn
	t.Cleanup(func() {
		e.checkInvariants("at the end, the nodes running")
		e.mu.Lock()
		nodes := e.all
		e.mu.Unlock()
		for _, n := range nodes {
			_ = n.client.Close()
			n.proxy.SetMode(faultproxy.Refuse)
			_ = n.db.Close()
			_ = n.proxy.Close()
		}
		e.checkInvariants("at the end, the nodes closed")
		if _, err := admin.Exec(`DROP SCHEMA IF EXISTS "` + e.schema + `" CASCADE`); err != nil {
			t.Errorf("dropping schema %s: %v", e.schema, err)
		}
		_ = admin.Close()
	})
	return e
}

// proxiedDSN points dsn at addr.
func proxiedDSN(t testing.TB, dsn, addr string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parsing DSN: %v", err)
	}
	u.Host = addr
	return u.String()
}

// quietLogger discards every record, unless LEASERING_TEST_LOG is set:
// then it writes to stderr those at its level ("debug", "info", "warn",
// "error"; any other value: every record).
func quietLogger() *slog.Logger {
	if v := os.Getenv("LEASERING_TEST_LOG"); v != "" {
		var level slog.Level // "1", "debug": every record; "info", "warn", "error": from that level
		if level.UnmarshalText([]byte(v)) != nil {
			level = slog.LevelDebug
		}
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newNode makes a client with its own proxy and pool. It is not started.
func (e *env) newNode(id string, opts ...leasering.Option) *node {
	e.t.Helper()
	target := strings.TrimPrefix(must(url.Parse(e.dsn)).Host, "")
	p, err := faultproxy.New(target)
	if err != nil {
		e.t.Fatal(err)
	}
	driver := e.driver
	if driver == "" {
		driver = testDriver
	}
	db := openDBWith(e.t, driver, proxiedDSN(e.t, e.dsn, p.Addr()))
	warnings := &nodeLog{warnings: !e.trace}
	all := append([]leasering.Option{
		leasering.WithNodeID(id),
		leasering.WithSchema(e.schema),
		leasering.WithTTL(e.ttl),
		leasering.WithHeartbeat(e.heartbeat),
		leasering.WithLogger(warnings.logger()),
	}, opts...)
	c, err := leasering.NewClient(db, all...)
	if err != nil {
		e.t.Fatal(err)
	}
	n := &node{id: id, client: c, db: db, proxy: p, leases: map[string]*leasering.Lease{}, warnings: warnings}
	e.mu.Lock()
	e.all = append(e.all, n)
	e.mu.Unlock()
	return n
}

// register makes waits and checkers watch n. Its leases must be open.
func (e *env) register(n *node) {
	e.mu.Lock()
	e.nodes = append(e.nodes, n)
	e.mu.Unlock()
}

// unregister stops waits and checkers watching n (it reports nothing any
// more: closed).
func (e *env) unregister(n *node) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, m := range e.nodes {
		if m == n {
			e.nodes = append(e.nodes[:i:i], e.nodes[i+1:]...)
			return
		}
	}
}

// startNode makes a node with one lease on ring and starts it.
func (e *env) startNode(id, ring string, size int, lopts ...leasering.LeaseOption) *node {
	e.t.Helper()
	return e.startNodeWith(id, nil, ring, size, lopts...)
}

// startNodeWith is startNode with client options.
func (e *env) startNodeWith(id string, opts []leasering.Option, ring string, size int, lopts ...leasering.LeaseOption) *node {
	e.t.Helper()
	n := e.newNode(id, opts...)
	l, err := n.client.Lease(ring, size, lopts...)
	if err != nil {
		e.t.Fatal(err)
	}
	n.leases[ring] = l
	e.register(n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.client.Start(ctx); err != nil {
		e.t.Fatalf("start %s: %v", id, err)
	}
	return n
}

// crash cuts the node off the database with a blackhole: its connections
// hang, nothing is reset. The client keeps running and must fence itself.
func (n *node) crash() {
	n.proxy.SetMode(faultproxy.Blackhole)
	n.down.Store(true)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// live returns the nodes that are expected to report.
func (e *env) live() []*node {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*node
	for _, n := range e.nodes {
		if !n.down.Load() {
			out = append(out, n)
		}
	}
	return out
}

// owners maps each partition of ring to the nodes reporting it now.
func owners(nodes []*node, ring string, size int) [][]string {
	out := make([][]string, size)
	for _, n := range nodes {
		l := n.leases[ring]
		if l == nil {
			continue
		}
		for _, p := range l.Values() {
			out[p] = append(out[p], n.id)
		}
	}
	return out
}

// assignment is partition -> owner for a converged ring.
type assignment []string

// converged reports whether every partition of ring has exactly one owner
// among nodes and every node holds floor or ceil of its weighted share.
func converged(nodes []*node, ring string, size int, weights map[string]int) (assignment, bool) {
	own := owners(nodes, ring, size)
	a := make(assignment, size)
	count := map[string]int{}
	for p, o := range own {
		if len(o) != 1 {
			return nil, false
		}
		a[p] = o[0]
		count[o[0]]++
	}
	total := 0
	for _, n := range nodes {
		total += weightOf(weights, n.id)
	}
	for _, n := range nodes {
		w := weightOf(weights, n.id)
		lo := size * w / total
		hi := lo
		if size*w%total != 0 {
			hi++
		}
		if count[n.id] < lo || count[n.id] > hi {
			return nil, false
		}
	}
	return a, true
}

func weightOf(weights map[string]int, id string) int {
	if w, ok := weights[id]; ok {
		return w
	}
	return leasering.DefaultVNodes
}

// waitConverged waits until the live nodes converge on ring, or fails.
func (e *env) waitConverged(ring string, size int, weights map[string]int, within time.Duration) (assignment, time.Duration) {
	e.t.Helper()
	start := time.Now()
	var a assignment
	ok := waitFor(within, func() bool {
		var good bool
		a, good = converged(e.live(), ring, size, weights)
		return good
	})
	if !ok {
		e.t.Fatalf("ring %s did not converge within %v: %s", ring, within, describe(e.live(), ring, size))
	}
	return a, time.Since(start)
}

func describe(nodes []*node, ring string, size int) string {
	own := owners(nodes, ring, size)
	count := map[string]int{}
	none, dup := 0, 0
	for _, o := range own {
		switch {
		case len(o) == 0:
			none++
		case len(o) > 1:
			dup++
		}
		for _, id := range o {
			count[id]++
		}
	}
	ids := make([]string, 0, len(count))
	for id := range count {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var b strings.Builder
	fmt.Fprintf(&b, "unowned=%d doubly-owned=%d counts:", none, dup)
	for _, id := range ids {
		fmt.Fprintf(&b, " %s=%d", id, count[id])
	}
	return b.String()
}

// waitFor polls cond every millisecond until it holds or within passes.
func waitFor(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}
