package integration

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leasering/leasering"
	"github.com/leasering/leasering/internal/faultproxy"
)

// The harness's test environments: a schema of its own, and nodes started in it.

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
	pool   *sql.DB // pooledNodes: the pool the client uses (db is then nil)
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
		if os.Getenv("LEASERING_TEST_KEEP_SCHEMA") != "" { // to read its statistics after the run
			t.Logf("schema %s kept (LEASERING_TEST_KEEP_SCHEMA)", e.schema)
		} else if _, err := admin.Exec(`DROP SCHEMA IF EXISTS "` + e.schema + `" CASCADE`); err != nil {
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
