package leasering

import (
	"sync"
	"time"
)

// clock is the time the client reads and waits on: the heartbeat loop,
// Start's retries and Close's wait. A client uses the system's monotonic
// clock; the unit tests give it a fake one that they move by hand, so that
// no test waits for real time to pass.
//
// The database calls' own contexts keep real deadlines: they bound a
// driver, not the protocol.
type clock interface {
	Now() time.Time
	// Since is Now().Sub(t), which the system clock reads from the
	// monotonic clock alone: the lease's read methods call it each time
	// (see Lease.shown).
	Since(t time.Time) time.Duration
	// NewTimer is the heartbeat loop's one timer, which it resets before
	// each wait.
	NewTimer(d time.Duration) timer
	// After is a one-off wait.
	After(d time.Duration) <-chan time.Time
}

// timer is the part of *time.Timer the loop uses.
type timer interface {
	C() <-chan time.Time
	Reset(d time.Duration)
	Stop()
}

// systemClock is the real clock.
type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) Since(t time.Time) time.Duration        { return time.Since(t) }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (systemClock) NewTimer(d time.Duration) timer         { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time   { return t.t.C }
func (t systemTimer) Reset(d time.Duration) { t.t.Reset(d) }
func (t systemTimer) Stop()                 { t.t.Stop() }

// dbClock estimates the database's clock, on which a heartbeat says when
// it was sent (the database extends nothing for a heartbeat older than a
// quarter of a lease). Each answer carries the database's time as it left,
// paired here with the local time it arrived: an answer slow on its way
// back makes its pair read the database's clock late, never early. So the
// estimate rests on the pair that reads it latest among the answers of the
// current and the previous window of one TTL each, not on the last answer:
// one answer held up on its way back (a busy pooler, a starved process)
// would otherwise make the next heartbeats look late by as much, and
// extend nothing. A step of the database's clock is followed at once when
// forward, within two windows when backward; meanwhile heartbeats read as
// sent later than they were, and the database counts their leases from
// their arrival (renew_and_read takes the earlier of the two).
type dbClock struct {
	window time.Duration

	mu        sync.Mutex
	cur, prev clockPair // the latest-reading pairs of this window and the one before
	curStart  time.Time // local time the current window began (zero: no answer yet)
}

// clockPair is a time read from the database's clock with the local
// (monotonic) time its answer arrived.
type clockPair struct{ db, local time.Time }

// later reports whether p reads the database's clock later than q does.
func (p clockPair) later(q clockPair) bool { return p.db.Sub(q.db) > p.local.Sub(q.local) }

// observe records an answer's database time db, which arrived at local.
func (k *dbClock) observe(db, local time.Time) {
	p := clockPair{db, local}
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case k.curStart.IsZero():
		k.cur, k.prev, k.curStart = p, p, local
	case local.Sub(k.curStart) >= k.window:
		k.prev, k.cur, k.curStart = k.cur, p, local
	case p.later(k.cur):
		k.cur = p
	}
}

// at estimates the database's time at local; ok is false before any
// answer.
func (k *dbClock) at(local time.Time) (t time.Time, ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.curStart.IsZero() {
		return time.Time{}, false
	}
	best := k.cur
	if k.prev.later(best) {
		best = k.prev
	}
	return best.db.Add(local.Sub(best.local)), true
}
