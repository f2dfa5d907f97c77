package leasering

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
)

// TestHandoffReleaseAfterDrain: a revoked partition leaves Values at once
// and is reported released only after the drain time.
func TestHandoffReleaseAfterDrain(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second), WithHeartbeat(500*time.Millisecond), WithDrain(150*time.Millisecond))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 4, Status: "ok", Partitions: []int{0, 3}, Epochs: []int64{1, 1}}), nil))
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 5, Status: "ok", Partitions: []int{0, 3}, Epochs: []int64{1, 1}, Revoking: []int{3}}), nil))
	mock.ExpectQuery(`renew_and_read`).
		WithArgs("a", sqlmock.AnyArg(), int64(2000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 5, Released: []int{3}}}, false, true, sqlmock.AnyArg()).
		WillReturnRows(renewRow(2000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 6, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}}), nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.runUntil(time.Second, "the revoke", func() bool { return reflect.DeepEqual(l.Values(), []int{0}) })
	revoked := c.clk.Now()
	c.runUntil(time.Second, "the release", func() bool { return met(db, mock) })
	if took := c.elapsed(revoked); took != 150*time.Millisecond {
		t.Errorf("release sent %v after the revoke; want when the 150ms drain ends, before the next heartbeat", took)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

// TestNeverReportedReleasedAtOnce: a partition revoked in the same view
// that gave it (a newcomer's join retargeted it before this node heard) was
// never in Values, so its release goes at once, without a drain.
func TestNeverReportedReleasedAtOnce(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(time.Second), WithDrain(time.Second))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 5, Status: "ok", Partitions: []int{0, 3}, Epochs: []int64{1, 1}, Revoking: []int{3}}), nil))
	mock.ExpectQuery(`renew_and_read`).
		WithArgs("a", sqlmock.AnyArg(), int64(10000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 5, Released: []int{3}}}, false, true, sqlmock.AnyArg()).
		WillReturnRows(renewRow(10000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 6, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}}), nil))
	start := c.clk.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := l.Values(); !reflect.DeepEqual(got, []int{0}) {
		t.Fatalf("Values() = %v, want [0]", got)
	}
	c.runUntil(time.Second, "the release", func() bool { return met(db, mock) })
	if took := c.elapsed(start); took != 0 {
		t.Errorf("release sent %v after the view; want at once, not after the 1s drain or the 1s heartbeat", took)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

func TestHoldDelaysReporting(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second), WithHeartbeat(time.Second))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 200, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{1}, Epochs: []int64{9}}), nil))
	start := c.clk.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(l.Values()) != 0 {
		t.Fatal("reported during the hold")
	}
	c.runUntil(time.Second, "the end of the hold", func() bool { return len(l.Values()) == 1 })
	if took := c.elapsed(start); took != 200*time.Millisecond {
		t.Errorf("reported %v after start; want when the 200ms hold ends", took)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

// TestRevokedDuringHoldReleasedAtOnce: partitions a node holds (a new
// process on a taken-over id) are not in Values, so one revoked during the
// hold is released at once, without a drain; the database hands it on when
// the hold ends.
func TestRevokedDuringHoldReleasedAtOnce(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(300*time.Millisecond), WithDrain(2*time.Second))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 5000, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{1, 2}, Epochs: []int64{9, 9}}), nil))
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 4500, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 2, Status: "ok", Partitions: []int{1, 2}, Epochs: []int64{9, 9}, Revoking: []int{2}}), nil))
	mock.ExpectQuery(`renew_and_read`).
		WithArgs("a", sqlmock.AnyArg(), int64(10000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 2, Released: []int{2}}}, false, true, sqlmock.AnyArg()).
		WillReturnRows(renewRow(10000, 4000, nil, "ok", nil, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.runUntil(time.Second, "the revoke", func() bool { return l.view.version == 2 })
	revoked := c.clk.Now()
	c.runUntil(time.Second, "the release", func() bool { return met(db, mock) })
	if took := c.elapsed(revoked); took != 0 {
		t.Errorf("release sent %v after the revoke; want at once, not after the 2s drain or the next heartbeat", took)
	}
	if len(l.Values()) != 0 {
		t.Error("reported during the hold")
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

// TestReleaseResentWhenHoldEnds: a release sent during a hold only marks
// the partition; the client sends it again as soon as the hold is over,
// when it hands the partition on, rather than a heartbeat later.
func TestReleaseResentWhenHoldEnds(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(2*time.Second))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 400, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{1, 2}, Epochs: []int64{9, 9}, Revoking: []int{2}}), nil))
	release := ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 1, Released: []int{2}}}
	mock.ExpectQuery(`renew_and_read`). // at once, during the hold: marks it
						WithArgs("a", sqlmock.AnyArg(), int64(10000), "", release, false, true, sqlmock.AnyArg()).
						WillReturnRows(renewRow(10000, 400, nil, "ok", nil, nil))
	// The wake the new lease left brings one more forward (a twentieth of
	// a heartbeat after the last), still during the hold.
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", sqlmock.AnyArg(), int64(10000), "", release, false, true, sqlmock.AnyArg()).
		WillReturnRows(renewRow(10000, 300, nil, "ok", nil, nil))
	mock.ExpectQuery(`renew_and_read`). // when the hold is over: hands it on
						WithArgs("a", sqlmock.AnyArg(), int64(10000), "", release, false, true, sqlmock.AnyArg()).
						WillReturnRows(renewRow(10000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 2, Status: "ok", Partitions: []int{1}, Epochs: []int64{9}}), nil))
	start := c.clk.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.runUntil(time.Second, "the release after the hold", func() bool { return met(db, mock) })
	if took := c.elapsed(start); took != 401*time.Millisecond {
		t.Errorf("release resent %v after Start; want just after the 400ms hold ends (401ms), well before the 2s heartbeat", took)
	}
	c.runUntil(time.Second, "partition 1 to be reported", func() bool { return reflect.DeepEqual(l.Values(), []int{1}) })
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}
