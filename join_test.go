package leasering

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/fakesql"
)

// TestStartJoinsRingsInTheirOwnStatement: the first heartbeat says to join
// a ring; Start joins it with join_rings, a statement of its own, then
// reads the view with a second heartbeat, and returns once the lease shows
// it and the node is live.
func TestStartJoinsRingsInTheirOwnStatement(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg(), fakesql.AnyArg(), "", fakesql.AnyArg(), true, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(2000, 0, nil, "ok", `[{"ring": "orders", "status": "join"}]`, nil))
	// The join says the node's heartbeat and drain (by default a tenth of
	// the TTL and one heartbeat), for the handoff timeline.
	drain := int64(200)
	mock.ExpectQuery(`join_rings`).WithArgs("a", fakesql.AnyArg(), ringsArg{{Ring: "orders", Size: 4, VNodes: 8, HeartbeatMS: 200, DrainMS: &drain}}, fakesql.AnyArg()).
		WillReturnRows(fakesql.NewRows([]string{"join_rings"}).AddRow(`[{"ring": "orders", "status": "ok", "size": 4}]`))
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg(), fakesql.AnyArg(), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8}}, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(2000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 2, Status: "ok", Partitions: []int{0, 1, 2, 3}, Epochs: []int64{1, 1, 1, 1}}), nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if got := l.Values(); len(got) != 4 {
		t.Errorf("Values() = %v after Start, want all 4", got)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestStartRefusesJoinOfOtherSize: join_rings finds the ring with another
// size (created meanwhile): Start fails with ErrRingSizeMismatch, and
// leaves.
func TestStartRefusesJoinOfOtherSize(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(time.Hour))
	if _, err := c.Lease("orders", 4); err != nil {
		t.Fatal(err)
	}
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(3600000, 0, nil, "ok", `[{"ring": "orders", "status": "join"}]`, nil))
	mock.ExpectQuery(`join_rings`).
		WillReturnRows(fakesql.NewRows([]string{"join_rings"}).AddRow(`[{"ring": "orders", "status": "size_mismatch", "size": 16}]`))
	mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1))
	err := c.Start(context.Background())
	if !errors.Is(err, ErrRingSizeMismatch) {
		t.Fatalf("Start: %v, want ErrRingSizeMismatch", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// TestStartRefusesHeartbeatsLongerThanTheLease: heartbeats that leave the
// node no live lease are refused, with the figures, rather than a Start
// that returns nil with nothing reported.
func TestStartRefusesHeartbeatsLongerThanTheLease(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(time.Second))
	if _, err := c.Lease("orders", 1); err != nil {
		t.Fatal(err)
	}
	view := changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}})
	expectSchemaCurrent(mock)
	for i := 0; i < maxUnliveStarts; i++ {
		mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(50, 0, nil, "ok", view, nil)) // 50 ms left: under TTL/10
	}
	mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1))
	err := c.Start(context.Background())
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Start: %v, want ErrUnsupported", err)
	}
	t.Log(err)
}

// TestLaterViewsComeWithTheNextHeartbeat: a heartbeat that ran out of time
// answers "later" for a ring; the next heartbeat goes at once and brings it.
func TestLaterViewsComeWithTheNextHeartbeat(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second))
	l, _ := c.Lease("orders", 2)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok", `[{"ring": "orders", "status": "later"}]`, nil))
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 3, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}}), nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if len(l.Values()) != 2 {
		t.Errorf("Values() = %v", l.Values())
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestJoinAnswerForgetsTheView: a heartbeat that says to join a ring the
// lease has a view of (the node was evicted while cut off, and the answer
// that said so was lost) empties the lease at once: its partitions may
// belong to others now. Seen as a double report in the chaos test.
func TestJoinAnswerForgetsTheView(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second))
	l, _ := c.Lease("orders", 2)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 3, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}}), nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if len(l.Values()) != 2 {
		t.Fatalf("Values() = %v after Start", l.Values())
	}
	db.expect(func() {
		mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok", `[{"ring": "orders", "status": "join"}]`, nil))
		mock.ExpectQuery(`join_rings`).WillReturnError(errors.New("hold the join"))
	})
	c.Wake()
	// Well before the lease's deadline (1.8 s after the last renewal).
	c.runUntil(500*time.Millisecond, "Values to empty after the join answer", func() bool { return len(l.Values()) == 0 })
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestHeartbeatOmitsRingsToJoin: a ring the last heartbeat said to join is
// left out of the heartbeats until join_rings has joined it; join_rings
// says how it stands. Asked in every heartbeat, each such ring cost a call
// of ring_work: 114,000 of them while 5 clients of 1,000 rings started.
func TestHeartbeatOmitsRingsToJoin(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second))
	l, _ := c.Lease("a-ring", 2)
	if _, err := c.Lease("orders", 4); err != nil {
		t.Fatal(err)
	}
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).
		WithArgs("a", fakesql.AnyArg(), fakesql.AnyArg(), "", ringsArg{{Ring: "a-ring", Size: 2, VNodes: 8}, {Ring: "orders", Size: 4, VNodes: 8}}, true, true, fakesql.AnyArg(), fakesql.AnyArg()).
		WillReturnRows(renewRow(2000, 0, nil, "ok", changesJSON(t,
			ringChange{Ring: "a-ring", Version: 3, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}},
			ringChange{Ring: "orders", Status: "join"}), nil))
	mock.ExpectQuery(`join_rings`).WillReturnRows(fakesql.NewRows([]string{"join_rings"}).AddRow(`[{"ring": "orders", "status": "busy", "size": 4}]`))
	if err := c.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if len(l.Values()) != 2 {
		t.Fatalf("Values() = %v after Start", l.Values())
	}
	db.expect(func() {
		mock.ExpectQuery(`renew_and_read`).
			WithArgs("a", fakesql.AnyArg(), fakesql.AnyArg(), "", ringsArg{{Ring: "a-ring", Size: 2, VNodes: 8, Version: 3}}, false, fakesql.AnyArg(), fakesql.AnyArg(), fakesql.AnyArg()).
			WillReturnRows(renewRow(2000, 0, nil, "ok", "", nil))
	})
	c.Wake()
	c.runUntil(time.Second, "a heartbeat without the ring to join", func() bool { return met(db, mock) })
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestViewReadForARingToJoinIsDropped: a read_views answer that comes
// after a heartbeat said to join the ring is dropped, and the read it was
// for is off: the ring is left out of the heartbeats until join_rings has
// joined it, so a view applied then would stay, with the epochs that the
// reclaim raises.
func TestViewReadForARingToJoinIsDropped(t *testing.T) {
	db, _ := newMock(t)
	n := newTestClient(t, db)
	c := n.Client
	l, _ := c.Lease("orders", 4)
	now := c.clock.Now()
	l.view.read = true // a heartbeat said: read it with read_views
	c.applyChanges(renewResult{changes: []ringChange{{Ring: "orders", Status: ringToJoin}}}, now)
	if l.view.read || l.view.join != toJoin {
		t.Fatalf("after the join answer: read %v, join %v; want no read and the ring to join", l.view.read, l.view.join)
	}
	c.viewed(sideResult{views: []ringViewed{{Known: 0, View: ringChange{Ring: "orders", Version: 5, Status: statusOK,
		Partitions: []int{0, 1, 2, 3}, Epochs: []int64{1, 1, 1, 1}}}}}, now)
	if l.view.version != 0 || len(l.view.current.values) != 0 {
		t.Errorf("a view read before the join was applied: version %d, partitions %v", l.view.version, l.view.current.values)
	}
}

// TestJoinsRecordedStayRecorded: rings whose join the first join_rings
// call recorded, and that the second call's budget did not reach, are not
// recorded again: the next round makes only the second call, for them.
// Recording 1,000 rings again on every round took 0.5 s a call, and made
// 5 clients of 1,000 rings start in 34 s instead of 8.5 s (BENCHMARKS.md).
func TestJoinsRecordedStayRecorded(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second))
	for _, r := range []string{"a", "b"} {
		l, err := c.Lease(r, 4)
		if err != nil {
			t.Fatal(err)
		}
		l.view.join = toJoin // as a heartbeat's "join" answer leaves it
	}
	drain := int64(200)
	req := func(ring string) ringRequest {
		return ringRequest{Ring: ring, Size: 4, VNodes: 8, HeartbeatMS: 200, DrainMS: &drain}
	}
	answer := func(js string) *fakesql.Rows { return fakesql.NewRows([]string{"join_rings"}).AddRow(js) }
	db.expect(func() {
		mock.ExpectQuery(`join_rings`).WithArgs("a", fakesql.AnyArg(), ringsArg{req("a"), req("b")}, int64(0)).
			WillReturnRows(answer(`[{"ring": "a", "status": "waiting", "size": 4}, {"ring": "b", "status": "waiting", "size": 4}]`))
		// The budget (a fortieth of the TTL) ran out after ring a.
		mock.ExpectQuery(`join_rings`).WithArgs("a", fakesql.AnyArg(), ringsArg{req("a"), req("b")}, int64(50)).
			WillReturnRows(answer(`[{"ring": "a", "status": "ok", "size": 4}]`))
		mock.ExpectQuery(`join_rings`).WithArgs("a", fakesql.AnyArg(), ringsArg{req("b")}, int64(50)).
			WillReturnRows(answer(`[{"ring": "b", "status": "ok", "size": 4}]`))
	})
	for round := 1; round <= 2; round++ {
		res := c.joinRings(context.Background(), c.joinRequests())
		if res.err != nil {
			t.Fatalf("round %d: %v", round, res.err)
		}
		c.joined(res, time.Now())
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
	for _, r := range []string{"a", "b"} {
		if got := c.leases[r].view.join; got != joined {
			t.Errorf("ring %s: join state %v, want joined", r, got)
		}
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestNoRingsAnnouncedAsAnEmptyArray: a join_rings answer that joined
// nothing announces nothing. The list of rings was a nil slice, JSON's
// null, which announce sent: the database failed every such NOTIFY
// ("cannot extract elements from a scalar"), 12,867 times in two minutes
// of 100 nodes starting on one ring.
func TestNoRingsAnnouncedAsAnEmptyArray(t *testing.T) {
	var none []string
	if got := ringsJSON(none...); got != "[]" {
		t.Errorf("ringsJSON of no rings = %s, want [] (which announce skips)", got)
	}
	if got := ringsJSON("a", "b"); got != `["a","b"]` {
		t.Errorf(`ringsJSON("a", "b") = %s, want ["a","b"]`, got)
	}
}

// TestJoinPollsBackOff: while another call makes a batch of joins that
// includes this node's, the client looks again soon at first (a batch on a
// small ring takes milliseconds), then twice as late each time, up to 2/5
// of a heartbeat; an answer that is not "waiting" starts over. A batch on a
// ring of 65,536 takes seconds, and in a roll-out of 100 nodes the waiting
// nodes' polls, every 5-15 ms each, took more of the database's time than
// anything else.
func TestJoinPollsBackOff(t *testing.T) {
	const heartbeat = 100 * time.Millisecond
	c := &Client{}
	c.cfg.heartbeat = heartbeat
	s := sideCall{apply: func(*Client, sideResult, time.Time) bool { return true }}
	waiting := sideResult{joins: []ringJoin{{Ring: "r", Status: ringWaiting}}}
	now := time.Unix(0, 0)
	gap := func(res sideResult) time.Duration {
		s.finish(c, res, now)
		d := s.after.Sub(now)
		now = s.after
		return d
	}
	for round := range 2 {
		polls, elapsed := 0, time.Duration(0)
		for elapsed < 2*time.Second {
			d := gap(waiting)
			base := heartbeat / 20 << min(polls, 3)
			if d < base || d > 2*base {
				t.Fatalf("round %d, poll %d: looked again %v later, want %v to %v", round, polls, d, base, 2*base)
			}
			polls++
			elapsed += d
		}
		// Each look at least its base apart (checked above): at most 53
		// during a batch of 2 s, where looks every 5-15 ms took 130-400.
		if polls > 53 {
			t.Errorf("round %d: %d looks during a batch of 2 s at heartbeat %v, want at most 53", round, polls, heartbeat)
		}
		t.Logf("round %d: %d looks during a batch of 2 s", round, polls)
		if d := gap(sideResult{}); d != heartbeat/2 {
			t.Fatalf("after an answer that is not waiting: looked again %v later, want %v", d, heartbeat/2)
		}
	}
}
