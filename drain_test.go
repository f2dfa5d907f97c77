package leasering

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/fakesql"
)

// TestDrainRule: when a revoked partition may be confirmed released, with
// a drain of 100ms and a max drain of 1s. A key locked counts as locked
// until the max drain, even during the drain: a release sent ahead of the
// drain's end must not go while a Lock may outlast it (Unlock wakes the
// loop, which reads the end again).
func TestDrainRule(t *testing.T) {
	const drain, maxDrain = 100 * time.Millisecond, time.Second
	stopped := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tc := range []struct {
		name    string
		stopped time.Time
		locked  bool
		end     time.Duration // after stopped; -1: at once (never reported)
	}{
		{"never reported: at once", time.Time{}, false, -1},
		{"never reported, a key locked: at once", time.Time{}, true, -1},
		{"the drain", stopped, false, ms(100)},
		{"a key locked: the max drain", stopped, true, maxDrain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := stopped.Add(tc.end)
			if tc.end < 0 {
				want = time.Time{}
			}
			got := drainEnd(tc.stopped, tc.locked, drain, maxDrain)
			if !got.Equal(want) {
				t.Errorf("drainEnd = %v after the stop, want %v", got.Sub(stopped), want.Sub(stopped))
			}
		})
	}
}

// TestLeaseReleases: the heartbeat's releases and the next drain's end
// come from the same rule.
func TestLeaseReleases(t *testing.T) {
	const drain, maxDrain = 100 * time.Millisecond, time.Second
	l := newLease(nil, "r", 8, 8)
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	l.publish(snap(8, 1, 2, 3, 4), ErrRevoked)
	k := keyIn(t, 4, 8)
	if _, err := l.Lock(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	l.view.revokedAt = map[int]time.Time{
		5: {},                    // never reported
		1: now.Add(-time.Second), // drained
		2: now.Add(-drain / 2),   // half drained
		3: now.Add(-drain / 4),   // a quarter drained
		4: now.Add(-2 * drain),   // drained, but a key is locked
	}
	ready, by, next := l.releases(now, 0, drain, maxDrain)
	if !reflect.DeepEqual(ready, []int{1, 5}) || !by.IsZero() || !next.Equal(now.Add(drain/2)) {
		t.Errorf("releases = %v by %v, next in %v; want [1 5] by now, next in %v", ready, by, next.Sub(now), drain/2)
	}
	// A lead of 60ms takes the half drained one too, due in 50ms: the
	// database commits its release no earlier.
	ready, by, next = l.releases(now, 60*time.Millisecond, drain, maxDrain)
	if !reflect.DeepEqual(ready, []int{1, 2, 5}) || !by.Equal(now.Add(drain/2)) || !next.Equal(now.Add(3*drain/4)) {
		t.Errorf("releases with a lead of 60ms = %v by %v, next in %v; want [1 2 5] by %v, next in %v",
			ready, by.Sub(now), next.Sub(now), drain/2, 3*drain/4)
	}
	// The locked one is not released ahead, whatever the lead short of the max drain.
	if ready, _, _ := l.releases(now, 700*time.Millisecond, drain, maxDrain); !reflect.DeepEqual(ready, []int{1, 2, 3, 5}) {
		t.Errorf("releases with a lead of 700ms = %v, want [1 2 3 5]", ready)
	}
	l.Unlock(k)
	if ready, _, _ := l.releases(now, 0, drain, maxDrain); !reflect.DeepEqual(ready, []int{1, 4, 5}) {
		t.Errorf("releases after Unlock = %v, want [1 4 5]", ready)
	}
	if ready, _, next := l.releases(now.Add(time.Second), 0, drain, maxDrain); len(ready) != 5 || !next.IsZero() {
		t.Errorf("releases a second later = %v, next at %v; want all, none next", ready, next)
	}
}

// TestReleaseLead: a round trip and 5ms ahead, and 40µs more per
// partition waiting, within 200ms and a quarter of a heartbeat.
func TestReleaseLead(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tc := range []struct {
		rtt, heartbeat time.Duration
		revoked        int
		want           time.Duration
	}{
		{ms(4), time.Second, 0, ms(9)},
		{ms(4), time.Second, 1000, ms(49)},
		{ms(30), time.Second, 3686, 182440 * time.Microsecond},
		{ms(30), time.Second, 5000, ms(200)},
		{ms(4), ms(200), 3686, ms(50)},
		{ms(4), ms(20), 0, ms(5)},
	} {
		if got := releaseLead(tc.rtt, tc.heartbeat, tc.revoked); got != tc.want {
			t.Errorf("releaseLead(%v, %v, %d) = %v, want %v", tc.rtt, tc.heartbeat, tc.revoked, got, tc.want)
		}
	}
}

// TestNextLook: when a node renews to hear of partitions handed to it, with
// a heartbeat of 1s (a poll of 10ms). The look goes just after the due,
// whatever the round trip: it waits in the database for the release.
func TestNextLook(t *testing.T) {
	const hb = time.Second
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	for _, tc := range []struct {
		name string
		dues []time.Time
		now  time.Time
		want time.Time // zero: no look
	}{
		{"nothing incoming", nil, at(0), time.Time{}},
		{"due ahead: the slack after it", []time.Time{at(300)}, at(0), at(302)},
		{"the earliest of several", []time.Time{at(300), at(120)}, at(0), at(122)},
		{"due, its look passed: a poll later", []time.Time{at(300)}, at(306), at(316)},
		{"late by less than a look waits and its slack: a poll later", []time.Time{at(300)}, at(376), at(386)},
		{"late by more: half as long again as past that", []time.Time{at(300)}, at(550), at(640)},
		{"a heartbeat overdue: the regular heartbeats look", []time.Time{at(300)}, at(1300), time.Time{}},
		{"one a heartbeat overdue, one ahead", []time.Time{at(0), at(1200)}, at(1100), at(1202)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nextLook(tc.dues, tc.now, hb); !got.Equal(tc.want) {
				t.Errorf("nextLook = %v, want %v", got.Sub(t0), tc.want.Sub(t0))
			}
		})
	}
	// A short heartbeat: the poll has a floor.
	if got := nextLook([]time.Time{at(0)}, at(6), 100*time.Millisecond); !got.Equal(at(16)) {
		t.Errorf("heartbeat 100ms, 6ms overdue: look at %v, want 16ms (a poll of 10ms)", got.Sub(t0))
	}
	if got := nextLook([]time.Time{at(0)}, at(100), 100*time.Millisecond); !got.IsZero() {
		t.Errorf("heartbeat 100ms, 100ms overdue: look at %v, want none", got.Sub(t0))
	}
}

// TestLookAwait: a look may wait in the database for a release that is
// due until two round trips and 20ms after its due, at most a quarter of
// a heartbeat and 50ms; not for one not due yet, nor one later than that.
func TestLookAwait(t *testing.T) {
	const hb, rtt = time.Second, 4 * time.Millisecond
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	for _, tc := range []struct {
		name string
		dues []time.Time
		now  time.Time
		hb   time.Duration
		want time.Duration
	}{
		{"nothing incoming", nil, at(0), hb, 0},
		{"not due yet", []time.Time{at(300)}, at(0), hb, 0},
		{"the look a round trip after the due", []time.Time{at(300)}, at(306), hb, 22 * time.Millisecond},
		{"the latest end of the dues passed; none for one ahead", []time.Time{at(300), at(290), at(900)}, at(306), hb, 22 * time.Millisecond},
		{"past its end", []time.Time{at(300)}, at(330), hb, 0},
		{"a quarter of a short heartbeat", []time.Time{at(300)}, at(300), 40 * time.Millisecond, 10 * time.Millisecond},
		{"at most 50ms", []time.Time{at(300)}, at(300), hb, 28 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := lookAwait(tc.dues, tc.now, rtt, tc.hb); got != tc.want {
				t.Errorf("lookAwait = %v, want %v", got, tc.want)
			}
		})
	}
	if got := lookAwait([]time.Time{at(300)}, at(300), 40*time.Millisecond, hb); got != 50*time.Millisecond {
		t.Errorf("round trips of 40ms: %v, want the cap of 50ms", got)
	}
}

// TestNextRelease: a release the last heartbeat did not carry goes at once
// once it may (a drain that ended while that heartbeat was on its way was
// heard of only with its answer, and waited up to a heartbeat more); one it
// carried (marked during a hold) is not sent again at once. With a lead,
// the heartbeat goes that long before the drain's end.
func TestNextRelease(t *testing.T) {
	const drain, maxDrain = 100 * time.Millisecond, time.Second
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	for _, tc := range []struct {
		name      string
		revokedAt map[int]time.Time
		releasing []int
		now       time.Time
		want      time.Time
		lead      time.Duration
	}{
		{"nothing revoked", nil, nil, at(50), time.Time{}, 0},
		{"draining: its end", map[int]time.Time{3: t0}, nil, at(50), at(100), 0},
		{"drained while the last heartbeat flew: at once", map[int]time.Time{3: t0}, nil, at(120), at(120), 0},
		{"drained and carried by the last heartbeat: no hurry", map[int]time.Time{3: t0}, []int{3}, at(120), time.Time{}, 0},
		{"carried, and another draining: the other's end", map[int]time.Time{3: t0, 5: at(60)}, []int{3}, at(120), at(160), 0},
		{"never reported: at once", map[int]time.Time{3: {}}, nil, at(0), at(0), 0},
		{"a lead of 20ms: 20ms before its end", map[int]time.Time{3: t0}, nil, at(50), at(80), 20 * time.Millisecond},
		{"within the lead of its end: at once", map[int]time.Time{3: t0}, nil, at(85), at(85), 20 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLease(nil, "r", 8, 8)
			for p, stopped := range tc.revokedAt {
				l.view.revokedAt[p] = stopped
			}
			l.view.releasing = tc.releasing
			if got := l.nextRelease(tc.now, tc.lead, drain, maxDrain); !got.Equal(tc.want) {
				t.Errorf("nextRelease = %v, want %v", got.Sub(t0), tc.want.Sub(t0))
			}
		})
	}
	// A drain of 0: at once.
	l := newLease(nil, "r", 8, 8)
	l.view.revokedAt[3] = t0
	if got := l.nextRelease(t0, 0, 0, maxDrain); !got.Equal(t0) {
		t.Errorf("drain 0: nextRelease = %v, want at once", got.Sub(t0))
	}
}

// TestIncomingDuesCountFromMidRoundTrip: the dues a heartbeat's answer
// gives count from halfway through its round trip, when the database most
// likely measured them, not from the answer's arrival: on a 70 ms round
// trip, a due the database gave as 21 ms past is 35 ms - 21 ms after the
// heartbeat was sent. Counted from the arrival, the due came 35 ms late,
// and the look after it waited a round trip more (CI: a handoff with no
// drain took 129 ms against a limit of 128).
func TestIncomingDuesCountFromMidRoundTrip(t *testing.T) {
	db, _ := newMock(t)
	c := newTestClient(t, db)
	l, err := c.Lease("orders", 4)
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	recv := sent.Add(70 * time.Millisecond)
	for _, ch := range []ringChange{
		{Ring: "orders", Status: ringIncoming, Incoming: []int64{-21}},
		{Ring: "orders", Version: 2, Status: statusOK, Partitions: []int{0}, Epochs: []int64{1}, Incoming: []int64{-21}},
	} {
		c.applyChanges(renewResult{sent: sent, recv: recv, changes: []ringChange{ch}}, recv)
		c.mu.Lock()
		got := append([]time.Time(nil), l.view.incoming...)
		c.mu.Unlock()
		if want := sent.Add(14 * time.Millisecond); len(got) != 1 || !got[0].Equal(want) {
			t.Errorf("%s answer: dues %v after the send, want [14ms]", ch.Status, offsets(got, sent))
		}
	}
	if got := incomingMeasured(time.Time{}, recv); !got.Equal(recv) {
		t.Errorf("no send time: measured at %v, want the answer's arrival", got)
	}
}

func offsets(ts []time.Time, from time.Time) []time.Duration {
	out := make([]time.Duration, len(ts))
	for i, t := range ts {
		out[i] = t.Sub(from)
	}
	return out
}

// TestReleaseAfterCountsFromTheSend: a heartbeat that carries releases
// ahead of their drain's end says how long the drain has left as the call
// goes, not as the heartbeat was built: what the call spent meanwhile (a
// pool's queue, encoding thousands of releases, a goroutine waiting for a
// CPU) would push the commit past the end by as much. In a roll-out of 10
// nodes under -race beside a busy core, a release of 3,686 partitions went
// about 100 ms after its heartbeat was built, and committed that much
// after the drain's end (TestRollout).
func TestReleaseAfterCountsFromTheSend(t *testing.T) {
	db, mock := fakesql.New()
	defer db.Close()
	c, err := NewClient(db, WithNodeID("a"), WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock()
	c.clock = clk
	for _, tc := range []struct {
		left time.Duration // of the drain, as the call goes
		want int64         // release_after_ms: rounded up; 0 once it has ended
	}{
		{50 * time.Millisecond, 50},
		{49500 * time.Microsecond, 50},
		{0, 0},
		{-time.Millisecond, 0},
	} {
		mock.ExpectQuery(`renew_and_read`).
			WithArgs("a", fakesql.AnyArg(), fakesql.AnyArg(), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 5, Released: []int{3}, ReleaseAfterMS: tc.want}}, false, false, fakesql.AnyArg(), fakesql.AnyArg()).
			WillReturnRows(renewRow(2000, 0, nil, "ok", nil, nil))
		// Built 80 ms before the end, and sent now.
		rings := []ringRequest{{Ring: "orders", Size: 4, VNodes: 8, Version: 5, Released: []int{3}, ReleaseAfterMS: 80, releaseBy: clk.Now().Add(tc.left)}}
		if res := c.renew(context.Background(), rings, renewOpts{}); res.err != nil {
			t.Errorf("%v left: %v", tc.left, res.err)
		}
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}
