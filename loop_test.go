package leasering

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/fakesql"
)

// startOn400msLease starts a client with a 400ms lease and a 50ms
// heartbeat, given partitions 0 and 1 of ring "orders" by its first
// heartbeat; the heartbeats after it fail with the errors given. start is
// when Start was called, on the fake clock.
func startOn400msLease(t *testing.T, failures ...string) (c *testNode, db *serialDB, mock *fakesql.Mock, l *Lease, start time.Time) {
	t.Helper()
	db, mock = newMock(t)
	c = newTestClient(t, db, WithTTL(400*time.Millisecond), WithHeartbeat(50*time.Millisecond))
	l, _ = c.Lease("orders", 4)
	view := changesJSON(t, ringChange{Ring: "orders", Version: 2, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}})
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(400, 0, nil, "ok", view, nil))
	for _, f := range failures {
		mock.ExpectQuery(`renew_and_read`).WillReturnError(errors.New(f))
	}
	start = c.clk.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c, db, mock, l, start
}

// TestSelfFencing: once the renewals fail, Values empties before the
// granted lease ends, and fills again when a renewal succeeds (a lost
// answer is harmless: the next one carries the same state).
func TestSelfFencing(t *testing.T) {
	c, db, mock, l, start := startOn400msLease(t, "connection reset", "connection reset", "connection reset", "answer lost")
	if len(l.Values()) != 2 {
		t.Fatalf("Values() = %v after Start", l.Values())
	}
	c.runUntil(time.Second, "Values to empty", func() bool { return len(l.Values()) == 0 })
	if took := c.elapsed(start); took != 360*time.Millisecond {
		t.Errorf("stopped reporting %v after the renew; want 360ms, the 400ms lease less TTL/10", took)
	}
	c.runUntil(time.Second, "all failing renewals", func() bool { return met(db, mock) })
	db.expect(func() {
		mock.ExpectQuery(`renew_and_read`).
			WithArgs("a", fakesql.AnyArg(), int64(400), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 2}}, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
			WillReturnRows(renewRow(400, 0, nil, "ok", nil, nil))
	})
	c.runUntil(time.Second, "Values to come back", func() bool { return len(l.Values()) == 2 })
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestRevokedAfterLeaseLossWaitsForLock: a partition revoked after the
// lease was lost and regained is not in Values, but it was reported until
// the loss: a Lock taken on one of its keys before then still holds its
// release back until Unlock (the lock's context ended, its holder may not
// have stopped yet).
func TestRevokedAfterLeaseLossWaitsForLock(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(400*time.Millisecond), WithHeartbeat(50*time.Millisecond),
		WithDrain(50*time.Millisecond), WithMaxDrain(time.Minute))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(400, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 2, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}}), nil))
	for i := 0; i < 3; i++ {
		mock.ExpectQuery(`renew_and_read`).WillReturnError(errors.New("connection reset"))
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("key-%d", i); PartitionOf(k, 4) == 1 {
			key = k
		}
	}
	lockCtx, err := l.Lock(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	c.runUntil(time.Second, "the lease to be lost", func() bool { return len(l.Values()) == 0 })
	if !errors.Is(context.Cause(lockCtx), ErrLeaseLost) {
		t.Errorf("lock context cause %v, want ErrLeaseLost", context.Cause(lockCtx))
	}
	c.runUntil(time.Second, "the failing renewals", func() bool { return met(db, mock) })
	db.expect(func() {
		mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(400, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 3, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}, Revoking: []int{1}}), nil))
		for i := 0; i < 3; i++ { // the lock is held: no release
			mock.ExpectQuery(`renew_and_read`).
				WithArgs("a", fakesql.AnyArg(), int64(400), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 3}}, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
				WillReturnRows(renewRow(400, 0, nil, "ok", nil, nil))
		}
	})
	c.runUntil(time.Second, "the regained lease's heartbeats", func() bool { return met(db, mock) })
	if got := l.Values(); !reflect.DeepEqual(got, []int{0}) {
		t.Errorf("Values() = %v after the revoke, want [0]", got)
	}
	db.expect(func() {
		mock.ExpectQuery(`renew_and_read`).
			WithArgs("a", fakesql.AnyArg(), int64(400), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 3, Released: []int{1}}}, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
			WillReturnRows(renewRow(400, 0, nil, "ok",
				changesJSON(t, ringChange{Ring: "orders", Version: 4, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}}), nil))
	})
	unlocked := c.clk.Now()
	l.Unlock(key)
	c.runUntil(time.Second, "the release after Unlock", func() bool { return met(db, mock) })
	if took := c.elapsed(unlocked); took > 50*time.Millisecond/20 {
		t.Errorf("release sent %v after Unlock; want at once, or a twentieth of a heartbeat after the last", took)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

func TestFencedClientStops(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(time.Second), WithHeartbeat(100*time.Millisecond))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(1000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{2}, Epochs: []int64{4}}), nil))
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(0, 0, nil, "fenced", `{"incarnation":"other"}`, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.runUntil(time.Second, "fencing", func() bool { return errors.Is(c.Err(), ErrFenced) })
	if len(l.Values()) != 0 || !errors.Is(l.Err(), ErrFenced) || !strings.Contains(l.Err().Error(), "other") {
		t.Errorf("after fencing: Values %v, Err %v", l.Values(), l.Err())
	}
	if err := c.Close(); err != nil { // no leave: the id is someone else's now
		t.Errorf("Close after fencing: %v", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// scanArg records the heartbeat's p_scan argument and when it was sent.
type scanArg struct {
	clk   clock
	mu    sync.Mutex
	at    []time.Time
	scans []bool
}

func (s *scanArg) Match(v driver.Value) bool {
	b, ok := v.(bool)
	if ok {
		s.mu.Lock()
		s.at = append(s.at, s.clk.Now())
		s.scans = append(s.scans, b)
		s.mu.Unlock()
	}
	return ok
}

// TestScanOnlyAfterKnownExpiry: the scan for lapsed leases, the one part of
// a heartbeat whose cost grows with the nodes, is skipped until the
// earliest other lease end the database reported has passed.
func TestScanOnlyAfterKnownExpiry(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second), WithHeartbeat(100*time.Millisecond))
	_, _ = c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg(), int64(2000), "", fakesql.AnyArg(), true, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(2000, 0, 300, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}}), nil))
	rec := &scanArg{clk: c.clk}
	const beats = 8
	for i := 0; i < beats; i++ {
		mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg(), int64(2000), "", fakesql.AnyArg(), false, rec, fakesql.AnyArg(), fakesql.AnyArg()).
			WillReturnRows(renewRow(2000, 0, nil, "ok", nil, nil))
	}
	start := c.clk.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.runUntil(time.Second, "the heartbeats", func() bool { return met(db, mock) })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i, at := range rec.at {
		if at.Sub(start) < 300*time.Millisecond && rec.scans[i] {
			t.Errorf("heartbeat %d, %v after start, scanned before the reported expiry (300ms)", i, at.Sub(start).Round(time.Millisecond))
		}
	}
	if !rec.scans[beats-1] {
		t.Errorf("heartbeat %d, %v after start, did not scan after the reported expiry (300ms)", beats-1, rec.at[beats-1].Sub(start).Round(time.Millisecond))
	}
	if rec.scans[0] {
		t.Error("the first heartbeat after start scanned although the next expiry was 300ms away")
	}
	if i := slices.Index(rec.scans, true); i >= 0 && rec.at[i].Sub(start) != 301*time.Millisecond {
		t.Errorf("the first scan went %v after start; want just after the reported expiry (301ms)", rec.at[i].Sub(start))
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestProbeAfterTimeout: a heartbeat that timed out may have extended the
// lease without the client knowing, so the next call is a probe that
// extends nothing (TTL 0); once a probe is answered in time the client
// renews at once.
func TestProbeAfterTimeout(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(4*time.Second), WithHeartbeat(500*time.Millisecond))
	_, _ = c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(4000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}}), nil))
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg(), int64(0), "", `[]`, false, false, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(1500, 0, nil, "ok", nil, nil))
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg(), int64(4000), "", fakesql.AnyArg(), false, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(4000, 0, nil, "ok", nil, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	db.hang() // the next heartbeat: until the client gives up on it
	c.step()
	launched := c.clk.Now()
	c.step()
	if took := c.elapsed(launched); took != 2*time.Second {
		t.Errorf("gave up on the heartbeat %v after it went, want the 2s timeout (TTL/2)", took)
	}
	c.runUntil(time.Second, "the probe, then the renewal", func() bool { return met(db, mock) })
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestRejoinWithoutViewForgets: after its lease lapsed, a node may have lost
// partitions to others; if the answer that rejoins it carries no fresh view
// of a ring (its work was skipped), the lease reports nothing and asks for
// the whole view.
func TestRejoinWithoutViewForgets(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second), WithHeartbeat(50*time.Millisecond))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 3, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}}), nil))
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "rejoined", nil, nil))
	mock.ExpectQuery(`renew_and_read`).
		WithArgs("a", fakesql.AnyArg(), int64(2000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 0}}, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(2000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 5, Status: "ok", Partitions: []int{1}, Epochs: []int64{2}}), nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.runUntil(time.Second, "Values to empty after the rejoin", func() bool { return len(l.Values()) == 0 })
	if l.view.version != 0 {
		t.Errorf("the lease keeps version %d after a rejoin without its view; want 0, to ask for the whole view", l.view.version)
	}
	c.runUntil(time.Second, "the fresh view", func() bool { return reflect.DeepEqual(l.Values(), []int{1}) })
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestReadsEmptyAtDeadlineWhileLoopHeldUp: the read methods stop reporting
// at the lease deadline by themselves. The scheduler may hold the loop up
// past it (a starved process, a CPU quota): the clock passes the deadline
// here while the loop stays parked, and the snapshot it published is still
// in place.
func TestReadsEmptyAtDeadlineWhileLoopHeldUp(t *testing.T) {
	c, db, mock, l, start := startOn400msLease(t, "connection reset", "connection reset", "connection reset")
	c.settle()
	holdUp := func(to time.Duration) { // move the clock without waking the loop
		c.clk.mu.Lock()
		c.clk.now = start.Add(to)
		c.clk.mu.Unlock()
	}
	holdUp(360*time.Millisecond - time.Nanosecond) // the 400ms lease less TTL/10
	if got := l.Values(); len(got) != 2 {
		t.Fatalf("Values() = %v just before the deadline, want [0 1]", got)
	}
	holdUp(360 * time.Millisecond)
	if l.snap.Load() == emptySnapshot {
		t.Fatal("the loop ran: the test holds nothing up")
	}
	if got := l.Values(); len(got) != 0 {
		t.Errorf("Values() = %v at the deadline with the loop held up, want []", got)
	}
	if l.Owns(0) || len(l.Partitions()) != 0 || l.OwnsKey("k") {
		t.Errorf("Owns(0) = %v, Partitions() = %v, OwnsKey = %v at the deadline, want nothing", l.Owns(0), l.Partitions(), l.OwnsKey("k"))
	}
	if _, ok := l.Epoch(0); ok {
		t.Error("Epoch(0) answers at the deadline")
	}
	c.runUntil(time.Second, "the loop to hide the lease too", func() bool { return l.snap.Load() == emptySnapshot })
	c.runUntil(time.Second, "all failing renewals", func() bool { return met(db, mock) })
	db.expect(func() {
		mock.ExpectQuery(`renew_and_read`).WillReturnError(errors.New("connection reset"))
		mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1))
	})
}
