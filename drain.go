package leasering

import (
	"sort"
	"time"
)

// The drain and handoff rule.
//
// A partition this node reported and the database now moves to another node
// is revoked: it leaves Values at once and its Locks' contexts end, but work
// begun on it may still run. The node confirms the release, and the
// database hands the partition on, only once
//
//   - the drain (WithDrain) has passed since the node stopped reporting it,
//   - and no Lock on one of its keys is held, or the max drain
//     (WithMaxDrain) has passed.
//
// A partition the node never reported (given and taken back before it
// heard, or given during a hold) has nothing to drain: its release goes at
// once. drainEnd is the rule; the heartbeat's argument (releases) and its
// schedule (the next drain end) both read it.

// drainEnd is when a partition may be confirmed released, as known at now.
// stopped is when this node stopped reporting it (zero: never reported);
// locked says whether a Lock on one of its keys is held. A time not after
// now means at once.
func drainEnd(stopped time.Time, locked bool, now time.Time, drain, maxDrain time.Duration) time.Time {
	if stopped.IsZero() {
		return stopped
	}
	end := stopped.Add(drain)
	if locked && !end.After(now) {
		// Unlock wakes the loop; the max drain bounds the wait.
		end = stopped.Add(maxDrain)
	}
	return end
}

// releases lists the revoked partitions that may be confirmed released at
// now, sorted, and the earliest time after now at which another one may
// (zero: none). Called by the heartbeat loop.
func (l *Lease) releases(now time.Time, drain, maxDrain time.Duration) (ready []int, next time.Time) {
	if len(l.view.revokedAt) == 0 {
		return nil, time.Time{}
	}
	locked := l.locks.partitions()
	for p, stopped := range l.view.revokedAt {
		end := drainEnd(stopped, locked[p], now, drain, maxDrain)
		switch {
		case !end.After(now):
			ready = append(ready, p)
		case next.IsZero() || end.Before(next):
			next = end
		}
	}
	sort.Ints(ready)
	return ready, next
}
