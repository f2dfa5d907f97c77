package leasering

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/fakesql"
)

// TestHandoffReleaseAfterDrain: a revoked partition leaves Values at once
// and is reported released only after the drain time: the release goes a
// lead ahead of the drain's end (round trips here take no time: 5ms, and
// 40µs for the one partition waiting), and says how long the drain has
// left, rounded up, for the database to wait before it commits.
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
		WithArgs("a", fakesql.AnyArg(), int64(2000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 5, Released: []int{3}, ReleaseAfterMS: 6}}, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(2000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 6, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}}), nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.runUntil(time.Second, "the revoke", func() bool { return reflect.DeepEqual(l.Values(), []int{0}) })
	revoked := c.clk.Now()
	c.runUntil(time.Second, "the release", func() bool { return met(db, mock) })
	if took, want := c.elapsed(revoked), 150*time.Millisecond-5040*time.Microsecond; took != want {
		t.Errorf("release sent %v after the revoke; want %v, a lead of 5.04ms before the 150ms drain ends", took, want)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
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
		WithArgs("a", fakesql.AnyArg(), int64(10000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 5, Released: []int{3}}}, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
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
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
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
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
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
		WithArgs("a", fakesql.AnyArg(), int64(10000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 2, Released: []int{2}}}, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
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
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
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
						WithArgs("a", fakesql.AnyArg(), int64(10000), "", release, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
						WillReturnRows(renewRow(10000, 400, nil, "ok", nil, nil))
	// The wake the new lease left brings one more forward (a twentieth of
	// a heartbeat after the last), still during the hold.
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg(), int64(10000), "", release, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(10000, 300, nil, "ok", nil, nil))
	mock.ExpectQuery(`renew_and_read`). // when the hold is over: hands it on
						WithArgs("a", fakesql.AnyArg(), int64(10000), "", release, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
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
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestDrainZeroReleasedAtOnce: with a drain of 0, a partition the node
// reported is released by a heartbeat sent as soon as the view revoking it
// came, not with the next heartbeat.
func TestDrainZeroReleasedAtOnce(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(time.Second), WithDrain(0))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 4, Status: "ok", Partitions: []int{0, 3}, Epochs: []int64{1, 1}}), nil))
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 5, Status: "ok", Partitions: []int{0, 3}, Epochs: []int64{1, 1}, Revoking: []int{3}}), nil))
	// The release leaves the node after the partition left Values.
	release := sentWhen{ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 5, Released: []int{3}}}, func() {
		if l.Owns(3) {
			t.Error("the release was sent while partition 3 was still reported")
		}
	}}
	mock.ExpectQuery(`renew_and_read`).
		WithArgs("a", fakesql.AnyArg(), int64(10000), "", release, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(10000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 6, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}}), nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.runUntil(2*time.Second, "the revoke", func() bool { return reflect.DeepEqual(l.Values(), []int{0}) })
	revoked := c.clk.Now()
	c.runUntil(time.Second, "the release", func() bool { return met(db, mock) })
	if took := c.elapsed(revoked); took != 0 {
		t.Errorf("release sent %v after the revoke; want at once (drain 0), not with the next heartbeat", took)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestNewOwnerLooksWhenDue: a view that says partitions are due to this
// node in 300ms brings a heartbeat a round trip after that, each
// heartbeat asks about them (incoming) meanwhile, the look lets the
// database wait for them a little (await); an answer that says they are
// overdue brings another a poll later; the view that gives them ends the
// looks.
func TestNewOwnerLooksWhenDue(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(time.Second))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 4, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}, Incoming: []int64{300}}), nil))
	waiting := ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 4, Incoming: true}}
	// The wake Start leaves (a twentieth of a heartbeat): still due in 250ms.
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg(), int64(10000), "", waiting, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(10000, 0, nil, "ok", changesJSON(t, ringChange{Ring: "orders", Status: ringIncoming, Incoming: []int64{250}}), nil))
	// The look, at 302ms, may wait in the database for the release until
	// two round trips (0 here) and 20ms after the due: 18ms, and while the
	// release is on its way a quarter of a heartbeat. It comes back at
	// once: 10ms overdue.
	look := ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 4, Incoming: true, AwaitMS: 18, AwaitReleaseMS: 250}}
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg(), int64(10000), "", look, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(10000, 0, nil, "ok", changesJSON(t, ringChange{Ring: "orders", Status: ringIncoming, Incoming: []int64{-10}}), nil))
	// The next look, a poll later, is past the due plus 20ms: no wait.
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg(), int64(10000), "", waiting, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(10000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 5, Status: "ok", Partitions: []int{0, 3}, Epochs: []int64{1, 2}}), nil))
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg(), int64(10000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 5}}, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(10000, 0, nil, "ok", nil, nil))
	start := c.clk.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.runUntil(2*time.Second, "partition 3", func() bool { return reflect.DeepEqual(l.Values(), []int{0, 3}) })
	// The mock answers at once: round trips of 0, so a look at 300 + 2ms
	// (the slack), then, told it is overdue, a poll of 10ms later.
	if took := c.elapsed(start); took != 312*time.Millisecond {
		t.Errorf("partition 3 reported %v after Start; want 312ms (a look at 302ms, a poll 10ms later)", took)
	}
	c.runUntil(2*time.Second, "the next heartbeat", func() bool { return met(db, mock) })
	if took := c.elapsed(start); took != 312*time.Millisecond+time.Second {
		t.Errorf("the heartbeat after the handoff went %v after Start; want a heartbeat after the last (1.312s)", took)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestOwnerRenewsWhenJoinsSettle: an answer that says a burst of joins
// settles in 300ms in a ring where this node owns partitions (schema
// version 20) brings a heartbeat just after that, not a heartbeat later:
// that heartbeat tells the node what to give up to the newcomers.
func TestOwnerRenewsWhenJoinsSettle(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(time.Second))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 4, Status: "ok", Partitions: []int{0, 1, 2, 3}, Epochs: []int64{1, 1, 1, 1}},
			ringChange{Ring: "orders", Status: ringSettling, SettlesMS: 300}), nil))
	// The wake Start leaves (a twentieth of a heartbeat): settling still, in 250ms.
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Status: ringSettling, SettlesMS: 250}), nil))
	// Just after: the view that revokes 2 and 3.
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 5, Status: "ok", Partitions: []int{0, 1, 2, 3}, Epochs: []int64{1, 1, 1, 1}, Revoking: []int{2, 3}}), nil))
	start := c.clk.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.runUntil(2*time.Second, "the revoke", func() bool { return reflect.DeepEqual(l.Values(), []int{0, 1}) })
	if took := c.elapsed(start); took != 302*time.Millisecond {
		t.Errorf("told to give 2 and 3 up %v after Start; want 302ms (the burst settles at 300ms, and the slack)", took)
	}
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 0, nil, "ok", nil, nil))
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestReleasesOverOneHeartbeatAreSpaced: more releases than one heartbeat
// carries go with heartbeats a wake apart (a twentieth of a heartbeat),
// not back to back: those left out of a heartbeat count as carried. (They
// did not, and a node whose first 1,024 releases stayed unconfirmed, as
// during a hold, sent heartbeats at the rate of its round trips.)
func TestReleasesOverOneHeartbeatAreSpaced(t *testing.T) {
	db, _ := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(time.Second))
	l, _ := c.Lease("big", 4096)
	now := c.clk.Now()
	for p := range maxReleasesPerHeartbeat + 500 {
		l.view.revokedAt[p] = time.Time{} // never reported: ready at once
	}
	rings := c.ringRequests(now, false)
	if len(rings) != 1 || len(rings[0].Released) != maxReleasesPerHeartbeat {
		t.Fatalf("the heartbeat carries %d releases, want %d", len(rings[0].Released), maxReleasesPerHeartbeat)
	}
	if h := c.handoff(now); !h.release.IsZero() {
		t.Errorf("after a heartbeat that carried %d of %d releases, the next release is due at %v, want none (the wake sends the rest)",
			maxReleasesPerHeartbeat, maxReleasesPerHeartbeat+500, h.release.Sub(now))
	}
	if c.hb.woken.IsZero() {
		t.Error("no wake for the releases left out")
	}
}

// TestRingRequestsOfALook: every ring request says the client backs off
// from a busy 'later' and renews when a burst of joins settles; a look lets the database wait for a due release
// (lookAwait), but never past what else the schedule has to do, and not at
// all when the heartbeat carries releases of its own, which the wait would
// hold back from the nodes that wait for them.
func TestRingRequestsOfALook(t *testing.T) {
	db, _ := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(time.Second))
	a, _ := c.Lease("a", 8)
	b, _ := c.Lease("b", 8)
	now := c.clk.Now()
	c.hb.last, c.hb.sent, c.hb.lastRTT = outcomeRenewed, now.Add(-300*time.Millisecond), 4*time.Millisecond
	a.view.waiting, a.view.incoming = true, []time.Time{now.Add(-5 * time.Millisecond)} // due 5ms ago
	b.view.revokedAt[3] = time.Time{}                                                   // never reported: ready at once

	await := func(rings []ringRequest) int64 {
		t.Helper()
		for _, r := range rings {
			if !r.LaterIfBusy {
				t.Errorf("ring %s's request does not say later_if_busy", r.Ring)
			}
			if !r.SettleWake {
				t.Errorf("ring %s's request does not say settle_wake", r.Ring)
			}
		}
		if len(rings) != 2 || rings[0].Ring != "a" {
			t.Fatalf("rings %+v, want a and b", rings)
		}
		return rings[0].AwaitMS
	}
	if rings := c.ringRequests(now, true); await(rings) != 0 || rings[0].AwaitReleaseMS != 0 {
		t.Errorf("a look that carries b's release waits %dms, %dms while a release is on its way; want 0", rings[0].AwaitMS, rings[0].AwaitReleaseMS)
	}
	delete(b.view.revokedAt, 3)
	// Two round trips and 20ms after the due: 28 - 5 = 23ms; while the
	// release is on its way, a quarter of a heartbeat (at most 250ms).
	if rings := c.ringRequests(now, true); await(rings) != 23 || rings[0].AwaitReleaseMS != 250 {
		t.Errorf("a look waits %dms, %dms while the release is on its way; want 23 and 250", rings[0].AwaitMS, rings[0].AwaitReleaseMS)
	}
	if got := await(c.ringRequests(now, false)); got != 0 {
		t.Errorf("a regular heartbeat waits %dms, want 0", got)
	}
	c.hb.release = now.Add(7 * time.Millisecond) // a drain ends first
	if rings := c.ringRequests(now, true); await(rings) != 7 || rings[0].AwaitReleaseMS != 7 {
		t.Errorf("a look with a drain ending in 7ms waits %dms, %dms while the release is on its way; want 7 and 7", rings[0].AwaitMS, rings[0].AwaitReleaseMS)
	}
	c.hb.release, c.hb.otherExpiry = time.Time{}, now.Add(-time.Millisecond) // a takeover is due
	if got := await(c.ringRequests(now, true)); got != 0 {
		t.Errorf("a look with another lease ended waits %dms, want 0", got)
	}
}

// TestRingRequestsSayOwnOnlyAfterAView: a ring whose routing nobody has
// read (routingWanted) asks for own views; once read, the first read
// having woken the client, a ring whose routing came within
// routingEvery heartbeats asks for own views (schema version 17: no
// routing) from the version of its last view, and only for changes of the
// node's own unless the node waits for partitions; one whose routing is
// older, or that has none yet, asks from the routing's version for the
// whole view. An own view moves the version the ring asks from, not the
// routing's, nor when the routing came.
func TestRingRequestsSayOwnOnlyAfterAView(t *testing.T) {
	db, _ := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(time.Second))
	l, _ := c.Lease("a", 8)
	now := c.clk.Now()
	request := func(routedAgo time.Duration) ringRequest {
		t.Helper()
		if routedAgo >= 0 {
			l.view.routedAt = now.Add(-routedAgo)
		}
		rings := c.ringRequests(now, false)
		if len(rings) != 1 {
			t.Fatalf("rings %+v, want a", rings)
		}
		// Whatever asks for the routing asks for its owners by id
		// (schema version 18); an own view has no routing.
		if r := rings[0]; r.OwnerIDs == r.OwnView {
			t.Errorf("request %+v: owner_ids %v with own_view %v, want one of them", r, r.OwnerIDs, r.OwnView)
		}
		return rings[0]
	}
	if r := request(-1); r.OwnOnly || r.OwnView {
		t.Errorf("a ring with no view yet asks %+v, want the whole view", r)
	}
	l.applyView(ringChange{Ring: "a", Version: 7, Status: statusOK}, now.Add(-time.Second))
	if l.view.routedAt != now.Add(-time.Second) || l.view.routed != 7 {
		t.Errorf("a whole view of version 7 applied at %v: routing noted as version %d at %v", now.Add(-time.Second), l.view.routed, l.view.routedAt)
	}
	// Nobody read the routing yet: own views only, however old it is;
	// own_only while the last view of any kind is less than ownViewEvery
	// heartbeats old, so that the version follows the ring's.
	for _, ago := range []time.Duration{0, 4 * time.Second, time.Hour} {
		if r := request(ago); !r.OwnOnly || !r.OwnView || r.Version != 7 {
			t.Errorf("routing %v old and never read: own_only %v, own_view %v, version %d; want true, true, 7", ago, r.OwnOnly, r.OwnView, r.Version)
		}
	}
	viewedAt := l.view.viewedAt
	for _, c := range []struct {
		ago     time.Duration
		ownOnly bool
	}{{ownViewEvery*time.Second - time.Millisecond, true}, {ownViewEvery * time.Second, false}, {time.Hour, false}} {
		l.view.viewedAt = now.Add(-c.ago)
		if r := request(time.Hour); r.OwnOnly != c.ownOnly || !r.OwnView || r.Version != 7 {
			t.Errorf("routing never read, the last view %v old: own_only %v, own_view %v, version %d; want %v, true, 7", c.ago, r.OwnOnly, r.OwnView, r.Version, c.ownOnly)
		}
	}
	l.view.viewedAt = viewedAt
	// The first read wakes the client; later reads do not.
	select {
	case <-c.wake:
	default:
	}
	l.Owner("k")
	select {
	case <-c.wake:
	default:
		t.Error("the first read of the routing did not wake the client")
	}
	l.Members()
	select {
	case <-c.wake:
		t.Error("a second read of the routing woke the client")
	default:
	}
	for _, c := range []struct {
		ago  time.Duration
		want bool
	}{{0, true}, {4*time.Second - time.Millisecond, true}, {4 * time.Second, false}, {time.Hour, false}} {
		if r := request(c.ago); r.OwnOnly != c.want || r.OwnView != c.want || r.Version != 7 {
			t.Errorf("routing %v old: own_only %v, own_view %v, version %d; want %v, %v, 7", c.ago, r.OwnOnly, r.OwnView, r.Version, c.want, c.want)
		}
	}

	routedAt := now.Add(-2 * time.Second)
	l.view.routedAt = routedAt
	l.applyView(ringChange{Ring: "a", Version: 9, Status: statusOK, OwnView: true, Partitions: []int{3}, Epochs: []int64{1}}, now)
	if l.view.viewedAt != now {
		t.Errorf("an own view applied at %v: the last view noted at %v", now, l.view.viewedAt)
	}
	if l.view.version != 9 || l.view.routed != 7 || l.view.routedAt != routedAt {
		t.Errorf("after an own view of version 9: version %d, routing version %d at %v; want 9, 7 at %v", l.view.version, l.view.routed, l.view.routedAt, routedAt)
	}
	if got := l.view.current.values; len(got) != 1 || got[0] != 3 {
		t.Errorf("an own view giving partition 3: the view allows %v", got)
	}
	if r := request(-1); !r.OwnView || r.Version != 9 {
		t.Errorf("fresh routing after an own view: own_view %v from version %d, want true from 9", r.OwnView, r.Version)
	}
	if r := request(4 * time.Second); r.OwnView || r.OwnOnly || r.Version != 7 {
		t.Errorf("routing due after an own view: own_view %v, own_only %v from version %d; want the whole view from 7", r.OwnView, r.OwnOnly, r.Version)
	}

	l.view.waiting = true // a look waits for the version it holds to move
	if r := request(0); r.OwnOnly || !r.OwnView || r.Version != 9 {
		t.Errorf("a node that waits for partitions asks own_only %v, own_view %v from %d; want false, true, 9", r.OwnOnly, r.OwnView, r.Version)
	}
	l.view.waiting = false
	l.rejoin.Store(true) // a view that did not fit: the whole view again
	if r := request(0); r.OwnOnly || r.OwnView || r.Version != 0 {
		t.Errorf("a request for the whole view asks %+v, want version 0 and no own flags", r)
	}
}

// TestRoutingEveryGrowsWithMembers: a node takes the routing every four
// heartbeats at most, and on a ring of more than 1,000 members every
// members/250, so that the ring's members take at most 250 whole views a
// heartbeat between them; the views in between carry what it owns.
func TestRoutingEveryGrowsWithMembers(t *testing.T) {
	for _, c := range []struct{ members, every int }{{0, 4}, {1, 4}, {1000, 4}, {1001, 5}, {1250, 5}, {2000, 8}, {2001, 9}} {
		if got := routingEvery(c.members); got != c.every {
			t.Errorf("routingEvery(%d) = %d, want %d", c.members, got, c.every)
		}
	}

	db, _ := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(time.Second))
	l, _ := c.Lease("a", 8)
	now := c.clk.Now()
	views := make([]memberView, 2000)
	ids := make([]string, len(views))
	for i := range views {
		ids[i] = fmt.Sprintf("m%04d", i)
		views[i] = memberView{ID: ids[i], VNodes: 1, Positions: []uint32{uint32(i)}}
	}
	l.applyView(ringChange{Ring: "a", Version: 7, Status: statusOK, MemberIDs: ids, Members: views}, now)
	if got := len(l.Members()); got != 2000 {
		t.Fatalf("%d members after the view, want 2000", got)
	}
	for _, c2 := range []struct {
		ago  time.Duration
		want bool
	}{{4 * time.Second, true}, {8*time.Second - time.Millisecond, true}, {8 * time.Second, false}} {
		l.view.routedAt = now.Add(-c2.ago)
		if r := c.ringRequests(now, false)[0]; r.OwnView != c2.want {
			t.Errorf("2,000 members, routing %v old: own_view %v, want %v", c2.ago, r.OwnView, c2.want)
		}
	}
}
