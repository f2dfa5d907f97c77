package integration

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// The tests of this file run nodes behind a real PgBouncer: soaks in
// session and transaction mode with the driver settings the README
// recommends, the errors of unsafe settings and how the client reports
// them, and statement mode.

var pgBouncerSoak = flag.Duration("pgbouncer.soak", 60*time.Second, "how long TestPgBouncerSoak's nodes run behind PgBouncer")

// bouncerDriver is one database/sql driver with the DSN settings a test
// gives it.
type bouncerDriver struct {
	name   string   // for the subtest
	driver string   // database/sql driver: "postgres" is lib/pq, "pgx" pgx's stdlib
	params []string // DSN parameters, name and value pairs
}

// safeInTransactionMode are the settings the README recommends behind a
// pooler in transaction mode: each call in one round trip, no statement
// that outlives it.
var safeInTransactionMode = []bouncerDriver{
	{"pq_binary_parameters", "postgres", []string{"binary_parameters", "yes"}},
	{"pgx_exec", "pgx", []string{"default_query_exec_mode", "exec"}},
	{"pgx_simple_protocol", "pgx", []string{"default_query_exec_mode", "simple_protocol"}},
}

// driverDefaults are the drivers' defaults: fine in session mode, unsafe in
// transaction mode, where lib/pq splits a call over two round trips and
// pgx keeps prepared statements on the connection.
var driverDefaults = []bouncerDriver{
	{"pq_default", "postgres", nil},
	{"pgx_default", "pgx", nil},
}

// TestPgBouncerSoak runs five nodes behind PgBouncer for -pgbouncer.soak
// (60s by default), TTL 2s and heartbeat 200ms, on a ring of 64: in
// session mode with each driver's defaults, and in transaction mode with
// the recommended settings, behind a pool of 3 server connections handed
// out round robin, so that consecutive round trips of one node land on
// different server connections. The schema is new, so the first Start
// migrates through PgBouncer too. During the soak not one heartbeat may
// fail, no lease be lost, and the ring must be exactly balanced, with no
// partition moved. It runs alone (not parallel), as TestScale does.
func TestPgBouncerSoak(t *testing.T) {
	type combo struct {
		mode string
		d    bouncerDriver
	}
	var combos []combo
	for _, d := range driverDefaults {
		combos = append(combos, combo{"session", d})
	}
	for _, d := range safeInTransactionMode {
		combos = append(combos, combo{"transaction", d})
	}
	// All at once, whatever -parallel says: each is 5 light clients, and
	// one after the other they would add minutes to every run. But not
	// beside the rest of the suite: it measures time (no heartbeat may be
	// late), and under -race on two cores, with one kept busy, heartbeats
	// of its nodes took 300-800 ms there while they started, and a lease
	// of 2 s ran out (a heartbeat answered past a quarter of it extends
	// nothing).
	var wg sync.WaitGroup
	for _, c := range combos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(c.mode+"/"+c.d.name, func(t *testing.T) {
				cfg := bouncerConfig{mode: c.mode, poolSize: 50}
				if c.mode == "transaction" {
					cfg.poolSize, cfg.roundRobin = 3, true
				}
				soakBehindPgBouncer(t, startPgBouncer(t, cfg), c.d)
			})
		}()
	}
	wg.Wait()
}

func soakBehindPgBouncer(t *testing.T, b *pgBouncer, d bouncerDriver) {
	const ring, size, nodes = "soak", 64, 5
	e := newEnv(t, 2*time.Second, 200*time.Millisecond)
	e.dsn, e.driver = b.dsn(d.params...), d.driver
	e.trace = true // a failure shows the node's last heartbeats
	// Start them all at once: concurrent migrations through the pooler.
	var wg sync.WaitGroup
	errs := make([]error, nodes)
	for i := range nodes {
		n := e.newNode(fmt.Sprintf("n%d", i))
		l, err := n.client.Lease(ring, size)
		if err != nil {
			t.Fatal(err)
		}
		n.leases[ring] = l
		e.register(n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			errs[i] = n.client.Start(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("start: %v", err)
	}
	before, took := e.waitConverged(ring, size, nil, 15*time.Second)
	t.Logf("%s, %s mode: %d nodes converged %v after starting through PgBouncer", d.name, b.mode, nodes, took.Round(time.Millisecond))

	// The soak, judged from here: the start (the five combinations' 25
	// clients at once, migrating through PgBouncer) is judged by Start
	// returning live, and what it cost is logged. Under -race on two
	// cores with one kept busy, heartbeats took up to 800 ms there, and a
	// lease of 2 s ran out before Start returned (regained at once).
	base := map[string]leasering.Stats{}
	for _, n := range e.live() {
		s := n.client.Stats()
		base[n.id] = s
		if s.RenewFailures > 0 || s.LeaseLosses > 0 {
			t.Logf("%s, %s mode: node %s, while starting: %d failed heartbeats, %d lease losses; its last warnings:%s",
				d.name, b.mode, n.id, s.RenewFailures, s.LeaseLosses, n.recent())
		}
	}
	// The test only waits, polling the counters so that it stops at the
	// first failure.
	end := time.Now().Add(*pgBouncerSoak)
	waitFor(*pgBouncerSoak, func() bool {
		for _, n := range e.live() {
			if s, b := n.client.Stats(), base[n.id]; s.RenewFailures > b.RenewFailures || s.LeaseLosses > b.LeaseLosses || s.Fenced {
				return true
			}
		}
		time.Sleep(10 * time.Millisecond) // polling interval
		return !time.Now().Before(end)
	})

	var renewals int64
	for _, n := range e.live() {
		s, b := n.client.Stats(), base[n.id]
		failures, losses, soaked := s.RenewFailures-b.RenewFailures, s.LeaseLosses-b.LeaseLosses, s.Renewals-b.Renewals
		renewals += soaked
		if failures != 0 || losses != 0 || s.Fenced {
			t.Errorf("node %s, during the soak: %d failed heartbeats, %d lease losses, fenced %v (of %d renewals; the last took %v, sent %v ago; lease left %v); its last warnings:%s",
				n.id, failures, losses, s.Fenced, soaked, s.LastRenewLatency, s.LastRenewAge, s.LeaseLeft, n.recent())
		}
		if least := int64(*pgBouncerSoak / e.heartbeat / 2); soaked < least {
			t.Errorf("node %s renewed %d times in %v, want at least %d", n.id, soaked, *pgBouncerSoak, least)
		}
	}
	if clients, servers := b.connections(t); servers > b.poolSize || clients < nodes {
		t.Errorf("PgBouncer shows %d client and %d server connections; want at least %d clients (one per node) on at most %d servers",
			clients, servers, nodes, b.poolSize)
	} else {
		t.Logf("%s, %s mode: %d client connections on %d server connections", d.name, b.mode, clients, servers)
	}
	after, ok := converged(e.live(), ring, size, nil)
	if !ok {
		t.Fatalf("ring not exactly balanced after the soak: %s", describe(e.live(), ring, size))
	}
	for p := range after {
		if after[p] != before[p] {
			t.Errorf("partition %d moved from %s to %s during the soak", p, before[p], after[p])
		}
	}
	t.Logf("%s, %s mode: %d renewals by %d nodes in %v, none failed; every node holds %d or %d of %d partitions",
		d.name, b.mode, renewals, nodes, *pgBouncerSoak, size/nodes, size/nodes+1, size)
}

// TestPgBouncerUnsafeSettingsDetected: behind a transaction-mode PgBouncer
// with two server connections handed out round robin, so that a call's
// second round trip lands on the other one, the drivers' defaults fail
// Start at once with ErrUnsupported naming the settings, and the client
// logs the advice once at Error.
func TestPgBouncerUnsafeSettingsDetected(t *testing.T) {
	for _, d := range driverDefaults {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			b := startPgBouncer(t, bouncerConfig{mode: "transaction", poolSize: 2, roundRobin: true})
			warmServerConnections(t, b, 2)
			e := newEnv(t, 2*time.Second, 200*time.Millisecond)
			e.dsn, e.driver = b.dsn(d.params...), d.driver
			logs := &errorLines{}
			n := e.newNode("a", leasering.WithLogger(slog.New(logs)))
			if _, err := n.client.Lease("r", 8); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := n.client.Start(ctx)
			t.Logf("Start: %v", err)
			if !errors.Is(err, leasering.ErrUnsupported) {
				t.Fatalf("Start: %v; want ErrUnsupported", err)
			}
			if ctx.Err() != nil {
				t.Errorf("Start retried until its context ended")
			}
			for _, want := range []string{"binary_parameters=yes", "default_query_exec_mode=exec"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Start's error does not name %s", want)
				}
			}
			if got := logs.lines(); len(got) != 1 || !strings.Contains(got[0], "binary_parameters=yes") {
				t.Errorf("Error-level log lines: %q; want the advice once", got)
			}
		})
	}
}

// warmServerConnections makes the bouncer open n server connections, by
// holding n transactions open at once.
func warmServerConnections(t *testing.T, b *pgBouncer, n int) {
	t.Helper()
	db := openDBWith(t, "postgres", b.dsn())
	defer db.Close()
	var txs []*sql.Tx
	for range n {
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("SELECT 1"); err != nil {
			t.Fatal(err)
		}
		txs = append(txs, tx)
	}
	for _, tx := range txs {
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

// errorLines keeps the Error-level records a client logs, with their err.
type errorLines struct {
	mu  sync.Mutex
	all []string
}

func (h *errorLines) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelError }
func (h *errorLines) Handle(_ context.Context, r slog.Record) error {
	line := r.Message
	r.Attrs(func(a slog.Attr) bool {
		line += " " + a.Key + "=" + a.Value.String()
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	h.all = append(h.all, line)
	return nil
}
func (h *errorLines) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *errorLines) WithGroup(string) slog.Handler      { return h }

func (h *errorLines) lines() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.all...)
}

// TestPgBouncerStatementMode: statement mode refuses explicit
// transactions, which the client needs where the default isolation is not
// READ COMMITTED. With pgx, Start then fails at once with ErrUnsupported
// saying so. lib/pq turns PgBouncer's refusal (a FATAL error that closes
// the connection) into driver.ErrBadConn, which a retry may cure, so
// Start retries until its context ends and says "bad connection".
func TestPgBouncerStatementMode(t *testing.T) {
	admin := openPool(t, needDB(t))
	role := scratchRole(t, admin, "lrt_serializable_", "SUPERUSER")
	execAll(t, admin, `ALTER ROLE `+role+` SET default_transaction_isolation = 'serializable'`)
	for _, d := range safeInTransactionMode {
		t.Run(d.name, func(t *testing.T) {
			b := startPgBouncer(t, bouncerConfig{mode: "statement", poolSize: 3, users: []string{role}})
			e := newEnv(t, 2*time.Second, 200*time.Millisecond)
			e.dsn, e.driver = dsnWith(t, b.dsn(d.params...), role, ""), d.driver
			logs := &errorLines{}
			n := e.newNode("a", leasering.WithLogger(slog.New(logs)))
			if _, err := n.client.Lease("r", 8); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			err := n.client.Start(ctx)
			t.Logf("Start: %v", err)
			if d.driver == "postgres" {
				if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "bad connection") {
					t.Fatalf("Start: %v; want the deadline and a bad connection", err)
				}
				return
			}
			if !errors.Is(err, leasering.ErrUnsupported) || !strings.Contains(err.Error(), "statement mode") {
				t.Fatalf("Start: %v; want ErrUnsupported naming statement mode", err)
			}
			if ctx.Err() != nil {
				t.Errorf("Start retried until its context ended")
			}
			if got := logs.lines(); len(got) != 1 || !strings.Contains(got[0], "statement mode") {
				t.Errorf("Error-level log lines: %q; want the advice once", got)
			}
		})
	}
}
