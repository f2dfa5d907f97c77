package leasering

import (
	"fmt"
	"testing"
	"time"
)

// The schedule's rules, each at chosen instants: a heartbeat of 1s, a TTL
// of 10s (a fence margin of 1s), and the largest jitter, so that it shows.
func TestSchedule(t *testing.T) {
	const hb = time.Second
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }

	// renewal sent at sent, answered at recv (and taken then) with a lease
	// of 10s, changed by how.
	type ev func(s *schedule)
	renewed := func(sent, recv time.Duration, how ...func(r *renewal)) ev {
		return func(s *schedule) {
			r := renewal{sent: at(sent), recv: at(recv), lease: 10 * time.Second, nextExpiry: -1}
			for _, f := range how {
				f(&r)
			}
			s.renewed(at(recv), r)
		}
	}
	scanned := func(next time.Duration) func(*renewal) {
		return func(r *renewal) { r.scanned, r.nextExpiry = true, next }
	}
	busy := func(r *renewal) { r.busy = true }
	members := func(n int) func(*renewal) { return func(r *renewal) { r.members = n } }
	failed := func(d time.Duration) ev { return func(s *schedule) { s.failed(at(d)) } }
	timedOut := func(d time.Duration) ev { return func(s *schedule) { s.timedOut(at(d)) } }
	probed := func(d time.Duration) ev { return func(s *schedule) { s.probed(at(d)) } }
	skipped := func(d time.Duration) ev { return func(s *schedule) { s.skipped(at(d)) } }
	woken := func(d time.Duration) ev { return func(s *schedule) { s.wake(at(d)) } }
	launched := func(d time.Duration) ev { return func(s *schedule) { s.launch(at(d)) } }
	handedOff := func(h handoffTimes) ev { return func(s *schedule) { s.handedOff(h) } }

	for _, tc := range []struct {
		name   string
		events []ev
		next   time.Duration // from t0
	}{
		{"nothing yet: at once", nil, -1},
		{"a renewal: one heartbeat after its send",
			[]ev{launched(0), renewed(0, ms(20))}, hb},
		{"another lease ends first: just after it, jittered by up to a tenth of a heartbeat",
			[]ev{launched(0), renewed(0, ms(20), scanned(ms(300)))}, ms(20 + 300 + 1 + 100)},
		{"on a ring of 500 members: jittered by up to half a heartbeat",
			[]ev{launched(0), renewed(0, ms(20), scanned(ms(300)), members(500))}, ms(20 + 300 + 1 + 500)},
		{"on a ring of 2,000 members: the heartbeat comes first",
			[]ev{launched(0), renewed(0, ms(20), scanned(ms(300)), members(2000))}, hb},
		{"another lease ends at once: not before a twentieth of a heartbeat after the answer",
			[]ev{launched(0), renewed(0, ms(20), scanned(ms(5)))}, ms(20 + 50 + 100)},
		{"another lease had ended already: a tenth of a heartbeat after the answer",
			[]ev{launched(0), renewed(0, ms(20), scanned(0))}, ms(20 + 100 + 100)},
		{"and still had at the next: a fifth",
			[]ev{launched(0), renewed(0, ms(20), scanned(0)), launched(ms(220)), renewed(ms(220), ms(240), scanned(0))}, ms(240 + 200 + 100)},
		{"and at the next: two fifths, and no later",
			[]ev{launched(0), renewed(0, ms(20), scanned(0)), renewed(ms(220), ms(240), scanned(0)), renewed(ms(540), ms(560), scanned(0)),
				renewed(ms(1060), ms(1080), scanned(0))}, ms(1080 + 400 + 100)},
		{"a lease that ends later starts over",
			[]ev{launched(0), renewed(0, ms(20), scanned(0)), renewed(ms(220), ms(240), scanned(0)), renewed(ms(540), ms(560), scanned(ms(5)))},
			ms(560 + 50 + 100)},
		{"another lease ends after the next heartbeat: the heartbeat",
			[]ev{launched(0), renewed(0, ms(20), scanned(ms(5000)))}, hb},
		{"no other lease: the heartbeat",
			[]ev{launched(0), renewed(0, ms(20), scanned(-1))}, hb},
		{"a renewal that did not scan keeps the expiry it was told of",
			[]ev{launched(0), renewed(0, ms(20), scanned(ms(1500))), launched(hb), renewed(hb, hb+ms(20))},
			ms(20 + 1500 + 1 + 100)},
		{"a drain ends first: then",
			[]ev{launched(0), renewed(0, ms(20), func(r *renewal) { r.handoff.release, r.handoff.revoking = at(ms(150)), true })}, ms(150)},
		{"a release that may go at once: at once",
			[]ev{launched(0), renewed(0, ms(20), func(r *renewal) { r.handoff.release, r.handoff.revoking = at(ms(20)), true })}, ms(20)},
		{"partitions wait to be handed on during a hold: just after it ends",
			[]ev{launched(0), renewed(0, ms(20), func(r *renewal) { r.hold, r.handoff.revoking = ms(400), true })}, ms(20 + 400 + 1)},
		{"a look for incoming partitions comes first: then",
			[]ev{launched(0), renewed(0, ms(20), func(r *renewal) { r.handoff.look = at(ms(320)) })}, ms(320)},
		{"a look after the heartbeat: the heartbeat",
			[]ev{launched(0), renewed(0, ms(20), func(r *renewal) { r.handoff.look = at(ms(1320)) })}, hb},
		{"a burst of joins settles first where the node owns partitions: just after",
			[]ev{launched(0), renewed(0, ms(20), func(r *renewal) { r.handoff.settle = at(ms(600)) })}, ms(600 + 2)},
		{"a burst settled already, its rebalance not made: a twentieth of a heartbeat after the launch",
			[]ev{launched(0), renewed(0, ms(3), func(r *renewal) { r.handoff.settle = at(ms(1)) })}, ms(50)},
		{"views read apart after it keep the settle the heartbeat's answer said",
			[]ev{launched(0), renewed(0, ms(20), func(r *renewal) { r.handoff.settle = at(ms(600)) }), handedOff(handoffTimes{})}, ms(600 + 2)},
		{"a burst that settles after the heartbeat: the heartbeat",
			[]ev{launched(0), renewed(0, ms(20), func(r *renewal) { r.handoff.settle = at(ms(1500)) })}, hb},
		{"a hold with nothing to hand on: the heartbeat",
			[]ev{launched(0), renewed(0, ms(20), func(r *renewal) { r.hold = ms(400) })}, hb},
		{"a failure: half of an eighth of a heartbeat, and up to as much jitter",
			[]ev{launched(0), failed(ms(20))}, ms(20 + 125)},
		{"failures back off, doubling",
			[]ev{failed(0), failed(ms(100)), failed(ms(300))}, ms(300 + 500)},
		{"up to one heartbeat",
			[]ev{failed(0), failed(0), failed(0), failed(0), failed(0), failed(ms(10))}, ms(10) + hb},
		{"a timeout backs off like a failure",
			[]ev{launched(0), timedOut(ms(5000))}, ms(5000 + 125)},
		{"a probe answered in time: a renewal at once",
			[]ev{launched(0), timedOut(ms(5000)), launched(ms(5125)), probed(ms(5140))}, ms(5140)},
		{"a renewal after failures: the heartbeat, from its send",
			[]ev{failed(0), failed(ms(100)), launched(ms(300)), renewed(ms(300), ms(320))}, ms(300) + hb},
		{"too many calls hang: a heartbeat later",
			[]ev{launched(0), renewed(0, ms(20)), skipped(hb)}, 2 * hb},
		{"a wake: at once, a twentieth of a heartbeat after the last launch",
			[]ev{launched(0), renewed(0, ms(20)), woken(ms(30))}, ms(50)},
		{"a later wake: at once",
			[]ev{launched(0), renewed(0, ms(20)), woken(ms(400))}, ms(400)},
		{"a wake during a backoff brings the retry forward",
			[]ev{launched(0), failed(ms(20)), woken(ms(60))}, ms(60)},
		{"the wakes before a launch are spent",
			[]ev{launched(0), woken(ms(10)), launched(ms(50)), renewed(ms(50), ms(70))}, ms(50) + hb},
		{"a wake after a skip",
			[]ev{launched(0), woken(ms(10)), skipped(ms(50)), woken(ms(60))}, ms(60)},
		{"a view behind a busy lock: a twentieth of a heartbeat after the launch",
			[]ev{launched(0), renewed(0, ms(20), busy)}, ms(50)},
		{"behind a busy lock again: twice as long",
			[]ev{launched(0), renewed(0, ms(20), busy), launched(ms(50)), renewed(ms(50), ms(70), busy)}, ms(50 + 100)},
		{"behind a busy lock five times: eight times, and no more",
			[]ev{renewed(0, ms(20), busy), renewed(0, ms(20), busy), renewed(0, ms(20), busy), renewed(0, ms(20), busy),
				launched(ms(50)), renewed(ms(50), ms(70), busy)}, ms(50 + 400)},
		{"a view that comes starts over: a wake then goes a twentieth of a heartbeat after the launch",
			[]ev{renewed(0, ms(20), busy), renewed(0, ms(20), busy), renewed(0, ms(20), busy),
				launched(ms(50)), renewed(ms(50), ms(70)), woken(ms(70))}, ms(50 + 50)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &schedule{heartbeat: hb, margin: time.Second, jitter: func(n time.Duration) time.Duration { return n }}
			for _, e := range tc.events {
				e(s)
			}
			want := at(tc.next)
			if tc.next < 0 {
				want = time.Time{}
			}
			if got := s.next(); !got.Equal(want) {
				t.Errorf("next heartbeat at %v, want %v", got.Sub(t0), want.Sub(t0))
			}
		})
	}
}

func TestWakeSpreadGrowsWithMembers(t *testing.T) {
	const hb = 2 * time.Second
	for _, tc := range []struct {
		members int
		want    time.Duration
	}{{0, hb / 10}, {1, hb / 10}, {100, hb / 10}, {101, 202 * time.Millisecond}, {500, hb / 2}, {1000, hb}, {2000, hb}} {
		if got := wakeSpread(hb, tc.members); got != tc.want {
			t.Errorf("wakeSpread(%v, %d) = %v, want %v", hb, tc.members, got, tc.want)
		}
	}
}

// TestScheduleCallsAndWakes: what each heartbeat asks for, whether the
// node may report, its state, and when the loop wakes.
func TestScheduleCallsAndWakes(t *testing.T) {
	const hb = time.Second
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	s := &schedule{heartbeat: hb, margin: time.Second, jitter: func(time.Duration) time.Duration { return 0 }}
	check := func(now time.Duration, inflight time.Duration, state string, live bool, wake time.Duration) {
		t.Helper()
		if got := s.state(at(now)); got != state {
			t.Errorf("at %v: state %s, want %s", now, got, state)
		}
		if got := s.live(at(now)); got != live {
			t.Errorf("at %v: live %v, want %v", now, got, live)
		}
		if got := s.wakeAt(at(now), inflight > 0, at(inflight)); !got.Equal(at(wake)) {
			t.Errorf("at %v: the loop wakes at %v, want %v", now, got.Sub(t0), wake)
		}
	}

	if o := s.launch(t0); o != (renewOpts{scan: true}) {
		t.Errorf("the first heartbeat asks %+v, want a scan (no other lease end known)", o)
	}
	// Granted 10s from its send, less the 1s margin: live until 9s, after
	// a hold of 200ms; another lease ends in 3s.
	s.renewed(at(ms(20)), renewal{sent: t0, recv: at(ms(20)), lease: 10 * time.Second, hold: ms(200),
		scanned: true, nextExpiry: ms(3000)})
	check(ms(100), 0, stateHeld, false, ms(220))         // the end of the hold
	check(ms(500), 0, stateLive, true, hb)               // the next heartbeat
	check(ms(1500), 0, stateLive, true, hb)              // overdue: at once
	check(ms(1500), ms(6500), stateLive, true, ms(6500)) // in flight: its timeout...
	check(ms(8000), ms(9500), stateLive, true, ms(9000)) // ...or the deadline, first
	check(ms(9000), 0, stateLapsed, false, hb)

	if o := s.launch(at(ms(2999))); o.scan {
		t.Error("a heartbeat scans before the other lease's end (3s): it could evict nobody")
	}
	if o := s.launch(at(ms(3000))); !o.scan {
		t.Error("a heartbeat does not scan once the other lease's end has passed")
	}
	s.failed(at(ms(3100)))
	check(ms(3100), 0, stateLate, true, ms(3100)+hb/16) // half the backoff, without jitter
	s.timedOut(at(ms(3200)))
	check(ms(3200), 0, stateProbing, true, ms(3200+125))
	if o := s.launch(at(ms(3325))); !o.probe {
		t.Error("the heartbeat after a timeout is not a probe")
	}
	s.failed(at(ms(3400))) // a probe that fails: still probing
	if o := s.launch(at(ms(4000))); !o.probe {
		t.Error("a failed probe is not followed by a probe")
	}
	s.probed(at(ms(4010)))
	if o := s.launch(at(ms(4010))); o.probe {
		t.Error("a probe answered in time is followed by a probe, not a renewal")
	}
}

// TestRenewalSpreadsWakesByTheBiggestRing: an answered renewal draws the
// wake's jitter from the most members of any of the node's rings.
func TestRenewalSpreadsWakesByTheBiggestRing(t *testing.T) {
	db, _ := newMock(t)
	c, err := NewClient(db, WithNodeID("a"), WithLogger(discard()), WithHeartbeat(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	small, err := c.Lease("small", 16)
	if err != nil {
		t.Fatal(err)
	}
	big, err := c.Lease("big", 16)
	if err != nil {
		t.Fatal(err)
	}
	withMembers := func(n int) *routeTable {
		views := make([]memberView, n)
		for i := range views {
			views[i] = memberView{ID: fmt.Sprintf("n%04d", i), VNodes: 1, Positions: []uint32{uint32(i)}}
		}
		r := &routeTable{}
		r.setMembers(views, nil)
		return r
	}
	small.route.Store(withMembers(3))
	big.route.Store(withMembers(600))
	c.hb.jitter = func(n time.Duration) time.Duration { return n } // the most it may be
	now := time.Now()
	c.renewed(renewResult{sent: now, recv: now, lease: 10 * time.Second, nextExpiry: -1, status: statusOK}, now)
	if want := wakeSpread(time.Second, 600); c.hb.spread != want || want != 600*time.Millisecond {
		t.Errorf("spread %v, want %v (600 members)", c.hb.spread, want)
	}
}
