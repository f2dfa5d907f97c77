package integration

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/leasering/leasering"
	"github.com/leasering/leasering/internal/faultproxy"
)

// epochsOf returns the epochs a node reports for its partitions.
func epochsOf(l *leasering.Lease) map[int]int64 {
	out := map[int]int64{}
	for _, p := range l.Values() {
		if e, ok := l.Epoch(p); ok {
			out[p] = e
		}
	}
	return out
}

// TestSameIDTakesOverWithoutMoving starts a second process with the id of a
// live node. The old one is fenced (ErrFenced) and the new one reports
// exactly the old one's partitions, under higher epochs, only once the old
// one has stopped: no partition moves to another node, and none is ever
// reported twice.
func TestSameIDTakesOverWithoutMoving(t *testing.T) {
	t.Parallel()
	const q = 256
	e := newEnv(t, time.Second, 100*time.Millisecond)
	for _, id := range []string{"a", "b", "c"} {
		e.startNode(id, "orders", q)
	}
	before, _ := e.waitConverged("orders", q, nil, 10*time.Second)
	chk := e.startChecker("orders", q, e.ttl+e.heartbeat)
	var old *node
	for _, n := range e.live() {
		if n.id == "b" {
			old = n
		}
	}
	oldEpochs := epochsOf(old.leases["orders"])
	a, c := e.live()[0], e.live()[2]
	aVals, cVals := a.leases["orders"].Values(), c.leases["orders"].Values()

	replacement := e.startNode("b", "orders", q)
	if !waitFor(5*time.Second, func() bool { return errors.Is(old.client.Err(), leasering.ErrFenced) }) {
		t.Fatalf("old process not fenced; Err() = %v", old.client.Err())
	}
	if err := old.leases["orders"].Err(); !errors.Is(err, leasering.ErrFenced) {
		t.Errorf("old lease Err() = %v, want ErrFenced", err)
	}
	if n := len(old.leases["orders"].Values()); n != 0 {
		t.Errorf("fenced process still reports %d partitions", n)
	}
	old.down.Store(true)
	after, _ := e.waitConverged("orders", q, nil, 10*time.Second)
	if moved := diff(before, after); moved != 0 {
		t.Errorf("%d partitions moved on a same-id restart, want 0", moved)
	}
	if !equalInts(a.leases["orders"].Values(), aVals) || !equalInts(c.leases["orders"].Values(), cVals) {
		t.Error("other nodes' partitions changed during the takeover")
	}
	for p, e2 := range epochsOf(replacement.leases["orders"]) {
		if e2 <= oldEpochs[p] {
			t.Errorf("partition %d: epoch %d after takeover, not above the old %d", p, e2, oldEpochs[p])
		}
	}
	chk.finish()
}

// TestRestartAfterCrashKeepsPartitions: a node cut off and restarted under
// the same id within the TTL gets its own partitions back; the others are
// untouched.
func TestRestartAfterCrashKeepsPartitions(t *testing.T) {
	t.Parallel()
	const q = 128
	e := newEnv(t, 2*time.Second, 100*time.Millisecond)
	for _, id := range []string{"a", "b", "c"} {
		e.startNode(id, "orders", q)
	}
	before, _ := e.waitConverged("orders", q, nil, 10*time.Second)
	chk := e.startChecker("orders", q, e.ttl+e.heartbeat)
	e.live()[1].crash()
	e.startNode("b", "orders", q)
	after, _ := e.waitConverged("orders", q, nil, 10*time.Second)
	if moved := diff(before, after); moved != 0 {
		t.Errorf("%d partitions moved across a restart under the same id, want 0", moved)
	}
	chk.finish()
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestChurnKeepsOneOwner runs joins, leaves, crashes, refused and
// blackholed connections and recoveries under the checker: no partition is
// ever reported by two nodes (G2), none goes unowned longer than
// TTL + heartbeat (G3), and the ring converges after each step (G4).
func TestChurnKeepsOneOwner(t *testing.T) {
	t.Parallel()
	const q = 256
	ttl, hb := time.Second, 100*time.Millisecond
	e := newEnv(t, ttl, hb)
	for i := 0; i < 4; i++ {
		e.startNode(fmt.Sprintf("n%d", i), "orders", q)
	}
	e.waitConverged("orders", q, nil, 10*time.Second)
	chk := e.startChecker("orders", q, ttl+hb)
	step := func(what string, f func()) {
		f()
		_, took := e.waitConverged("orders", q, nil, 10*time.Second)
		t.Logf("%-40s converged in %v", what, took.Round(time.Millisecond))
	}
	step("join n4, n5", func() {
		e.startNode("n4", "orders", q)
		e.startNode("n5", "orders", q)
	})
	step("close n0", func() {
		n := e.live()[0]
		if err := n.client.Close(); err != nil {
			t.Error(err)
		}
		n.down.Store(true)
	})
	step("blackhole n1", func() { e.live()[0].crash() })
	step("refuse n2 for half a TTL (keeps its lease)", func() {
		n := e.live()[0]
		n.proxy.SetMode(faultproxy.Refuse)
		time.Sleep(ttl / 2) // the outage itself, not a wait for a condition
		n.proxy.SetMode(faultproxy.Pass)
	})
	step("join n6 while n3 is blackholed", func() {
		e.live()[0].crash()
		e.startNode("n6", "orders", q)
	})
	step("n1 and n3 come back", func() {
		e.mu.Lock()
		nodes := e.nodes
		e.mu.Unlock()
		for _, n := range nodes {
			if n.id == "n1" || n.id == "n3" {
				n.proxy.SetMode(faultproxy.Pass)
				n.down.Store(false)
			}
		}
	})
	chk.finish()
}

// TestBadInputWritesNothing: a ring size that disagrees with the ring's,
// a schema newer than the library and a missing schema with migration off
// are refused with their sentinel errors, and nothing is written.
func TestBadInputWritesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Second, 100*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	count := func(query string, args ...any) int {
		var n int
		if err := e.admin.QueryRow(query, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// Migration off on an empty database: refused, no schema created.
	off := e.newNode("off", leasering.WithoutMigration())
	if err := off.client.Start(ctx); !errors.Is(err, leasering.ErrSchemaMissing) {
		t.Errorf("Start without migration on an empty schema: %v, want ErrSchemaMissing", err)
	}
	if n := count(`SELECT count(*) FROM pg_namespace WHERE nspname = $1`, e.schema); n != 0 {
		t.Errorf("schema created by a refused Start")
	}

	e.startNode("x", "orders", 64)

	// Size mismatch at Start: refused, the node not written.
	y := e.newNode("y")
	if _, err := y.client.Lease("orders", 32); err != nil {
		t.Fatal(err)
	}
	if err := y.client.Start(ctx); !errors.Is(err, leasering.ErrRingSizeMismatch) {
		t.Errorf("Start with the wrong ring size: %v, want ErrRingSizeMismatch", err)
	}
	if n := count(`SELECT count(*) FROM "` + e.schema + `".nodes WHERE node_id = 'y'`); n != 0 {
		t.Errorf("refused Start wrote the node row")
	}

	// Size mismatch on a running client: the lease fails, no member row.
	z := e.newNode("z")
	if err := z.client.Start(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := z.client.Lease("orders", 16)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Wait(ctx); !errors.Is(err, leasering.ErrRingSizeMismatch) {
		t.Errorf("Wait on a lease with the wrong size: %v, want ErrRingSizeMismatch", err)
	}
	if n := count(`SELECT count(*) FROM "` + e.schema + `".members WHERE node_id = 'z'`); n != 0 {
		t.Errorf("mismatched lease wrote a member row")
	}

	// Migration off with the schema in place: works.
	w := e.newNode("w", leasering.WithoutMigration())
	if err := w.client.Start(ctx); err != nil {
		t.Errorf("Start without migration on a migrated schema: %v", err)
	}

	// A schema from a newer library: refused, with or without migration.
	if _, err := e.admin.Exec(`UPDATE "` + e.schema + `".schema_version SET version = 99`); err != nil {
		t.Fatal(err)
	}
	v := e.newNode("v")
	if err := v.client.Start(ctx); !errors.Is(err, leasering.ErrSchemaVersion) {
		t.Errorf("Start on a newer schema: %v, want ErrSchemaVersion", err)
	}
}

// TestMigrationSQLAppliesAsShipped applies the SQL of a new schema exactly
// as a migration tool would (default schema, one transaction), twice, then
// sql/functions.sql alone, and rolls it back, leaving any default schema
// already in the database as it was.
func TestMigrationSQLAppliesAsShipped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Second, 100*time.Millisecond)
	tx, err := e.admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`DROP SCHEMA IF EXISTS leasering CASCADE`); err != nil {
		t.Fatal(err)
	}
	fresh, err := leasering.MigrationSQL(0)
	if err != nil {
		t.Fatal(err)
	}
	for i, script := range []string{fresh, fresh, leasering.FunctionsSQL()} {
		if _, err := tx.Exec(script); err != nil {
			t.Fatalf("applying script %d: %v", i+1, err)
		}
	}
	var v int
	if err := tx.QueryRow(`SELECT version FROM leasering.schema_version`).Scan(&v); err != nil || v != leasering.SchemaVersion {
		t.Fatalf("schema_version = %d (%v), want %d", v, err, leasering.SchemaVersion)
	}
}

// TestEpochsFenceInSQL: every move raises the partition's epoch (G6), and
// holds(ring, partition, epoch) is true only for the current owner's epoch.
// A partition that stays keeps its epoch, unless its owner's lease lapsed
// meanwhile: then the owner reclaims it under a new epoch, so that the
// fencing tokens handed out before die (a CI run under load saw that at a
// TTL of 1 s).
func TestEpochsFenceInSQL(t *testing.T) {
	t.Parallel()
	const q = 32
	e := newEnv(t, 2*time.Second, 100*time.Millisecond)
	a := e.startNode("a", "orders", q)
	e.waitConverged("orders", q, nil, 10*time.Second)
	before := epochsOf(a.leases["orders"])
	b := e.startNode("b", "orders", q)
	e.waitConverged("orders", q, nil, 10*time.Second)
	holds := func(p int, epoch int64) bool {
		var ok bool
		if err := e.admin.QueryRow(`SELECT "`+e.schema+`".holds('orders', $1, $2)`, p, epoch).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	moved := 0
	for p, old := range epochsOf(b.leases["orders"]) {
		moved++
		if old <= before[p] {
			t.Errorf("partition %d moved to b with epoch %d, not above a's %d", p, old, before[p])
		}
		if holds(p, before[p]) {
			t.Errorf("holds(%d, %d) is true for a's epoch after the move", p, before[p])
		}
		if !holds(p, old) {
			t.Errorf("holds(%d, %d) is false for b's current epoch", p, old)
		}
	}
	if moved == 0 {
		t.Fatal("nothing moved to b")
	}
	lapsed := a.client.Stats().LeaseLosses > 0
	for p, ep := range epochsOf(a.leases["orders"]) {
		if ep < before[p] || (ep != before[p] && !lapsed) || !holds(p, ep) {
			t.Errorf("partition %d stayed with a: epoch %d (was %d; a's lease lapsed: %v), holds %v", p, ep, before[p], lapsed, holds(p, ep))
		}
	}
}
