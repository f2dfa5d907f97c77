package integration

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// TestStaleOwnerWriteIsFenced: after a takeover, a write guarded by the old
// owner's epoch with holds() changes nothing, and the new owner's works.
func TestStaleOwnerWriteIsFenced(t *testing.T) {
	t.Parallel()
	const q = 4
	e := newEnv(t, time.Second, 100*time.Millisecond)
	table := `"` + e.schema + `".accounts`
	if _, err := e.admin.Exec(`CREATE SCHEMA IF NOT EXISTS "` + e.schema + `"; CREATE TABLE ` + table + ` (id int PRIMARY KEY, balance int)`); err != nil {
		t.Fatal(err)
	}
	a := e.startNode("a", "orders", q)
	e.waitConverged("orders", q, nil, 10*time.Second)
	if _, err := e.admin.Exec(`INSERT INTO ` + table + ` VALUES (1, 100)`); err != nil {
		t.Fatal(err)
	}
	p := leasering.PartitionOf("1", q)
	staleEpoch, ok := a.leases["orders"].Epoch(p)
	if !ok {
		t.Fatal("a does not own the partition")
	}
	write := func(epoch int64) int64 {
		res, err := e.admin.Exec(`UPDATE `+table+` SET balance = balance + 1
			WHERE id = 1 AND "`+e.schema+`".holds('orders', "`+e.schema+`".partition_of('1', $1), $2)`, q, epoch)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := res.RowsAffected()
		return n
	}
	if n := write(staleEpoch); n != 1 {
		t.Fatalf("owner's fenced write changed %d rows, want 1", n)
	}
	a.crash()
	b := e.startNode("b", "orders", q)
	e.waitConverged("orders", q, nil, 10*time.Second)
	newEpoch, ok := b.leases["orders"].Epoch(p)
	if !ok || newEpoch <= staleEpoch {
		t.Fatalf("b's epoch %d (owned %v), want above %d", newEpoch, ok, staleEpoch)
	}
	if n := write(staleEpoch); n != 0 {
		t.Errorf("stale owner's fenced write changed %d rows after the takeover, want 0", n)
	}
	if n := write(newEpoch); n != 1 {
		t.Errorf("new owner's fenced write changed %d rows, want 1", n)
	}
}

// TestHoldsDelaysHandoffUntilCommit: a transaction that checked holds()
// keeps its partition from changing owner until it ends, so its writes
// land before the new owner starts.
func TestHoldsDelaysHandoffUntilCommit(t *testing.T) {
	t.Parallel()
	const q = 2
	e := newEnv(t, time.Second, 50*time.Millisecond)
	a := e.startNode("a", "orders", q)
	e.waitConverged("orders", q, nil, 10*time.Second)
	tx, err := e.admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	for p := 0; p < q; p++ {
		epoch, _ := a.leases["orders"].Epoch(p)
		var ok bool
		if err := tx.QueryRow(`SELECT "`+e.schema+`".holds('orders', $1, $2)`, p, epoch).Scan(&ok); err != nil || !ok {
			t.Fatalf("holds(%d, %d) = %v, %v", p, epoch, ok, err)
		}
	}
	b := e.startNode("b", "orders", q)
	// For many heartbeats b gets nothing: the partition it should get is
	// held by the open transaction.
	start := time.Now()
	for time.Since(start) < 20*e.heartbeat {
		if got := b.leases["orders"].Values(); len(got) != 0 {
			t.Fatalf("b owns %v while a transaction holds it", got)
		}
		time.Sleep(time.Millisecond)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	_, took := e.waitConverged("orders", q, nil, 10*time.Second)
	t.Logf("handoff completed %v after the holding transaction committed", took.Round(time.Millisecond))
}

// TestLockHoldsHandoffAndIsCancelled: locks on keys of a partition that is
// revoked are cancelled at once (ErrRevoked), and the partition is not
// handed over until they are unlocked.
func TestLockHoldsHandoffAndIsCancelled(t *testing.T) {
	t.Parallel()
	const q = 8
	e := newEnv(t, 2*time.Second, 50*time.Millisecond)
	a := e.startNode("a", "orders", q)
	e.waitConverged("orders", q, nil, 10*time.Second)
	la := a.leases["orders"]
	keys := make([]string, q)
	ctxs := make([]context.Context, q)
	for p := range keys {
		for i := 0; keys[p] == ""; i++ {
			if k := fmt.Sprint("k", i); la.PartitionOf(k) == p {
				keys[p] = k
			}
		}
		ctx, err := la.Lock(context.Background(), keys[p])
		if err != nil {
			t.Fatal(err)
		}
		ctxs[p] = ctx
	}
	b := e.startNode("b", "orders", q)
	if !waitFor(5*time.Second, func() bool { return len(la.Values()) == q/2 }) {
		t.Fatalf("a still reports %v", la.Values())
	}
	cancelled := 0
	for p, ctx := range ctxs {
		if la.Owns(p) {
			if ctx.Err() != nil {
				t.Errorf("lock on kept partition %d cancelled", p)
			}
			continue
		}
		cancelled++
		if !errors.Is(context.Cause(ctx), leasering.ErrRevoked) {
			t.Errorf("lock on revoked partition %d: cause %v, want ErrRevoked", p, context.Cause(ctx))
		}
	}
	if cancelled != q/2 {
		t.Fatalf("%d locks cancelled, want %d", cancelled, q/2)
	}
	start := time.Now()
	for time.Since(start) < 10*e.heartbeat {
		if got := b.leases["orders"].Values(); len(got) != 0 {
			t.Fatalf("b owns %v while a still holds locks on them", got)
		}
		time.Sleep(time.Millisecond)
	}
	unlocked := time.Now()
	for _, k := range keys {
		la.Unlock(k)
	}
	_, took := e.waitConverged("orders", q, nil, 10*time.Second)
	t.Logf("handoff completed %v after Unlock", time.Since(unlocked).Round(time.Millisecond))
	_ = took
}

// TestWithRing runs a one-ring program and leaves when it returns.
func TestWithRing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Second, 100*time.Millisecond)
	n := e.newNode("probe") // gives the DSN and schema; its client is not used
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var owned []int
	err := leasering.WithRing(ctx, n.db, "jobs", 16, func(ctx context.Context, l *leasering.Lease) error {
		if err := l.Wait(ctx); err != nil {
			return err
		}
		owned = l.Values()
		return nil
	}, leasering.WithSchema(e.schema), leasering.WithNodeID("solo"), leasering.WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(owned) != 16 {
		t.Errorf("a lone member owned %d of 16", len(owned))
	}
	var members int
	if err := e.admin.QueryRow(`SELECT count(*) FROM "` + e.schema + `".members`).Scan(&members); err != nil || members != 0 {
		t.Errorf("members after WithRing returned: %d (%v), want 0", members, err)
	}
}
