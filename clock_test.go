package leasering

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand. Its After channels fire
// when the clock passes them. The heartbeat loop's timer (NewTimer) also
// parks the loop each time the loop resets it, that is each time the loop
// is about to wait, until the test releases it (see testNode): so the test
// knows when the loop has done all it can without the clock moving.
type fakeClock struct {
	mu       sync.Mutex
	now      time.Time
	afters   []fakeAfter
	added    chan struct{} // closed and replaced when an After is added
	loop     *fakeTimer
	handover bool          // Reset parks the loop
	park     chan struct{} // the loop parks: it sends, then waits on unpark
	unpark   chan struct{}
	freed    chan struct{} // closed when handover ends
}

type fakeAfter struct {
	at time.Time
	c  chan time.Time
}

type fakeTimer struct {
	clk *fakeClock
	c   chan time.Time
	at  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Now(), added: make(chan struct{}), handover: true,
		park: make(chan struct{}), unpark: make(chan struct{}), freed: make(chan struct{})}
}

func (k *fakeClock) Now() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.now
}

func (k *fakeClock) Since(t time.Time) time.Duration { return k.Now().Sub(t) }

func (k *fakeClock) After(d time.Duration) <-chan time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := make(chan time.Time, 1)
	if d <= 0 {
		c <- k.now
		return c
	}
	k.afters = append(k.afters, fakeAfter{at: k.now.Add(d), c: c})
	close(k.added)
	k.added = make(chan struct{})
	return c
}

func (k *fakeClock) NewTimer(d time.Duration) timer {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.loop = &fakeTimer{clk: k, c: make(chan time.Time, 1), at: k.now.Add(d)}
	return k.loop
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }
func (t *fakeTimer) Stop()               {}

func (t *fakeTimer) Reset(d time.Duration) {
	k := t.clk
	k.mu.Lock()
	select {
	case <-t.c:
	default:
	}
	t.at = k.now.Add(d)
	if d <= 0 {
		t.c <- k.now
	}
	handover := k.handover
	k.mu.Unlock()
	if handover {
		select {
		case k.park <- struct{}{}:
			<-k.unpark
		case <-k.freed:
		}
	}
}

// advance moves the clock d forward and fires what it passed. It reports
// whether the loop's timer fired.
func (k *fakeClock) advance(d time.Duration) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.now = k.now.Add(d)
	kept := k.afters[:0]
	for _, a := range k.afters {
		if a.at.After(k.now) {
			kept = append(kept, a)
			continue
		}
		a.c <- k.now
	}
	k.afters = kept
	if k.loop != nil && !k.loop.at.After(k.now) && len(k.loop.c) == 0 {
		k.loop.c <- k.now
		return true
	}
	return false
}

// nextAfter is when the first After channel fires (false: none waits),
// and a channel closed when another is added.
func (k *fakeClock) nextAfter() (time.Time, bool, <-chan struct{}) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var first time.Time
	for _, a := range k.afters {
		if first.IsZero() || a.at.Before(first) {
			first = a.at
		}
	}
	return first, !first.IsZero(), k.added
}

// waitAfter waits until an After channel that fires at at (any, if at is
// zero) waits on the clock.
func waitAfter(t *testing.T, k *fakeClock, at time.Time) {
	t.Helper()
	deadline := time.After(guard)
	for {
		k.mu.Lock()
		found := false
		for _, a := range k.afters {
			found = found || at.IsZero() || a.at.Equal(at)
		}
		added := k.added
		k.mu.Unlock()
		if found {
			return
		}
		select {
		case <-added:
		case <-deadline:
			t.Fatalf("no wait on the clock until %v within %v", at, guard)
		}
	}
}

// testNode is a client on a mocked database with a fake clock, which the
// test drives: the loop moves only when the test moves the clock or acts,
// and each helper returns once the loop has done all it can.
type testNode struct {
	*Client
	t      *testing.T
	clk    *fakeClock
	db     *serialDB
	parked bool // the loop waits in Reset for the test
	exited bool // the loop has returned
	freed  sync.Once
}

// guard bounds the real time a test waits for the loop to do what it can
// do at once. It is never reached unless the test is wrong.
const guard = 10 * time.Second

// drive gives c a fake clock, and no jitter, and returns the node that
// drives it.
func drive(t *testing.T, c *Client, db *serialDB) *testNode {
	clk := newFakeClock()
	c.clock, c.epoch = clk, clk.Now()
	c.hb.jitter = func(time.Duration) time.Duration { return 0 }
	n := &testNode{Client: c, t: t, clk: clk, db: db}
	t.Cleanup(n.free) // before the Close that newTestClient registered
	return n
}

// free lets the loop run without the test from now on.
func (n *testNode) free() {
	n.freed.Do(func() {
		n.clk.mu.Lock()
		n.clk.handover = false
		close(n.clk.freed)
		n.clk.mu.Unlock()
		n.release()
	})
}

// release lets a parked loop go on.
func (n *testNode) release() {
	if n.parked {
		n.parked = false
		n.clk.unpark <- struct{}{}
	}
}

// quiet reports whether the parked loop, once released, would only wait:
// no wake or timer is pending, and no answer it awaits is coming. An
// awaited call still running is waited for here, the loop parked, until
// it answers or hangs (see serialDB.hang): database calls on the mock take
// microseconds.
func (n *testNode) quiet() bool {
	n.t.Helper()
	hb := &n.hb
	if len(n.wake) > 0 || len(n.clk.loop.c) > 0 {
		return false
	}
	var answers []func() int
	if hb.beat != nil {
		answers = append(answers, func() int { return len(hb.beat.result) })
	}
	for _, s := range []*sideCall{&hb.join, &hb.views} {
		if s.running != nil {
			answers = append(answers, func() int { return len(s.running) })
		}
	}
	for _, answered := range answers {
		deadline := time.Now().Add(guard)
		for answered() == 0 && n.db.hanging() == 0 {
			if time.Now().After(deadline) {
				n.t.Fatalf("a database call neither answered nor hung within %v", guard)
			}
			runtime.Gosched()
		}
		if answered() > 0 {
			return false
		}
	}
	return true
}

// settle returns once the loop has done all it can without the clock
// moving: it is parked and quiet, or it has returned.
func (n *testNode) settle() {
	n.t.Helper()
	for !n.exited {
		if n.parked {
			if n.quiet() {
				return
			}
			n.release()
		}
		select {
		case <-n.clk.park:
			n.parked = true
		case <-n.done:
			n.exited = true
		case <-time.After(guard):
			n.t.Fatalf("the heartbeat loop did not come back to wait within %v", guard)
		}
	}
}

// advance moves the clock d forward and lets the loop do what that brings.
func (n *testNode) advance(d time.Duration) {
	n.t.Helper()
	n.settle()
	if n.clk.advance(d) {
		n.settle()
	}
}

// next is the instant the settled loop waits for.
func (n *testNode) next() time.Time {
	n.clk.mu.Lock()
	defer n.clk.mu.Unlock()
	return n.clk.loop.at
}

// step moves the clock to the loop's next instant.
func (n *testNode) step() {
	n.t.Helper()
	n.settle()
	if n.exited {
		n.t.Fatal("step: the heartbeat loop has returned")
	}
	n.advance(max(n.next().Sub(n.clk.Now()), 0))
}

// runUntil steps the clock, event by event, until cond holds; it fails
// the test if that takes more than within on the fake clock.
func (n *testNode) runUntil(within time.Duration, what string, cond func() bool) {
	n.t.Helper()
	limit := n.clk.Now().Add(within)
	for {
		n.settle()
		if cond() {
			return
		}
		if n.exited || n.next().After(limit) {
			n.t.Fatalf("%s: not within %v of the fake clock", what, within)
		}
		n.step()
	}
}

// elapsed is the fake time since t.
func (n *testNode) elapsed(t time.Time) time.Duration { return n.clk.Now().Sub(t) }

// Start starts the client and moves the clock while Start waits for it:
// to the end of its retry's backoff, to the loop's next instant.
func (n *testNode) Start(ctx context.Context) error {
	n.t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- n.Client.Start(ctx) }()
	for {
		var stopped <-chan struct{} // Start failed: its Close stops the loop
		if n.parked {
			switch {
			case !n.quiet():
				n.release()
			case n.ready != nil: // Start waits for the clock
				n.clk.advance(max(n.next().Sub(n.clk.Now()), 0))
				n.release()
			default:
				stopped = n.stop
			}
		}
		at, ok, added := n.clk.nextAfter()
		if ok && !n.loopRuns() { // a retry's backoff
			n.clk.advance(at.Sub(n.clk.Now()))
			continue
		}
		select {
		case err := <-errc:
			return err
		case <-added:
		case <-n.clk.park:
			n.parked = true
		case <-stopped:
			n.release()
		case <-time.After(guard):
			n.t.Fatalf("Start did not return within %v", guard)
		}
	}
}

// loopRuns reports whether the heartbeat loop has started.
func (n *testNode) loopRuns() bool {
	n.clk.mu.Lock()
	defer n.clk.mu.Unlock()
	return n.clk.loop != nil
}

// Close closes the client, the loop running freely.
func (n *testNode) Close() error {
	n.free()
	return n.Client.Close()
}

// TestDBClockRestsOnTheFastestAnswer: one answer slow on its way back must
// not make the next heartbeats read as sent late (the database extends
// nothing for a heartbeat older than a quarter of a lease); a forward step
// of the database's clock is followed at once, a backward one within two
// windows.
func TestDBClockRestsOnTheFastestAnswer(t *testing.T) {
	const ttl = 2 * time.Second
	t0 := time.Date(2026, 12, 5, 7, 0, 0, 0, time.UTC)
	db := t0.Add(time.Hour) // the database's clock runs an hour ahead of the local one
	var k dbClock
	k.window = ttl
	if _, ok := k.at(t0); ok {
		t.Fatal("an estimate before any answer")
	}
	// An answer that leaves the database back before it arrives, after the
	// database's clock stepped by step.
	answer := func(local time.Time, back, step time.Duration) {
		k.observe(local.Add(time.Hour-back+step), local)
	}
	want := func(local time.Time, step time.Duration, what string) {
		t.Helper()
		got, ok := k.at(local)
		if w := local.Add(time.Hour + step); !ok || got.Sub(w).Abs() > 2*time.Millisecond {
			t.Errorf("%s: estimate %v, want %v", what, got.Sub(db), w.Sub(db))
		}
	}
	answer(t0, time.Millisecond, 0)
	answer(t0.Add(200*time.Millisecond), 900*time.Millisecond, 0) // held up 900 ms on its way back
	want(t0.Add(300*time.Millisecond), 0, "after a slow answer")
	// A window of slow answers: the fast one of the window before still
	// counts.
	answer(t0.Add(2100*time.Millisecond), 800*time.Millisecond, 0)
	answer(t0.Add(2300*time.Millisecond), 700*time.Millisecond, 0)
	want(t0.Add(2400*time.Millisecond), 0, "a window of slow answers after a window with a fast one")

	// A forward step of 5 s is followed by the first answer after it.
	answer(t0.Add(3*time.Second), time.Millisecond, 5*time.Second)
	want(t0.Add(3100*time.Millisecond), 5*time.Second, "after a forward step")

	// A backward step of 5 s: followed once two windows began after it.
	local := t0.Add(3200 * time.Millisecond)
	for ; local.Before(t0.Add(10 * time.Second)); local = local.Add(200 * time.Millisecond) {
		answer(local, time.Millisecond, 0)
	}
	want(local, 0, "two windows after a backward step")
}
