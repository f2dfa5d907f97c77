package leasering

import (
	"slices"
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
//
// The node sends the release a lead (releaseLead: about a round trip)
// before the drain ends, not with its next heartbeat, and says how long
// the drain has left as it sends (release_after_ms): the database writes
// the change of owner, then waits that long from the statement's start
// before it commits, which is never before the drain's end on this node's
// clock, whatever the two clocks read. Sent at the drain's end, the change
// committed most of a round trip after it, and a release of thousands of
// rows the time of their writes later still (TestRollout: 1.10-1.42 s
// unowned with a drain of 1 s).
//
// The other side: a partition moved to this node has no reporter from the
// moment its owner stops until this node hears it is its own. Each view
// says when the partitions pending to this node are due (the owner told,
// plus its drain; see the handoff timeline in sql/functions.sql), and
// nextLook renews just after that, then looks again while it is late, so
// that the gap is
// the drain and a few milliseconds rather than the drain and up to a
// heartbeat.

// drainEnd is when a partition may be confirmed released. stopped is when
// this node stopped reporting it (zero: never reported, at once); locked
// says whether a Lock on one of its keys is held: then the max drain,
// since the Lock may outlast the drain (Unlock wakes the loop, which reads
// the end again). A release is sent ahead of its end only as far as a
// Lock cannot change it: none can be taken on a revoked partition.
func drainEnd(stopped time.Time, locked bool, drain, maxDrain time.Duration) time.Time {
	switch {
	case stopped.IsZero():
		return stopped
	case locked:
		return stopped.Add(maxDrain)
	}
	return stopped.Add(drain)
}

// Releasing ahead of the drain's end (see releaseLead).
const (
	leadSlack  = 5 * time.Millisecond   // the lead is a round trip and this
	perRelease = 40 * time.Microsecond  // and this for each partition it may carry (sql/functions.sql's release_work)
	maxLead    = 200 * time.Millisecond // and never more than this (nor a quarter of a heartbeat)
)

// releaseLead is how long before a drain's end the release goes, for a
// node whose last round trip took rtt and that has revoked partitions
// waiting: long enough for the call to reach the database and write them
// before the end (the database starts them as long before it as it
// estimates they take: release_work), so that it commits at the end; at
// most maxLead or a quarter of a heartbeat, since the call holds a pooled
// connection while it waits.
func releaseLead(rtt, heartbeat time.Duration, revoked int) time.Duration {
	return min(rtt+leadSlack+time.Duration(revoked)*perRelease, heartbeat/4, maxLead)
}

// releaseAfterMS is a release's release_after_ms for a call sent at now
// whose drains end by: what is left, rounded up (the database waits at
// least that), 0 once it has passed.
func releaseAfterMS(by, now time.Time) int64 {
	if !by.After(now) {
		return 0
	}
	return int64((by.Sub(now) + time.Millisecond - 1) / time.Millisecond)
}

// releaseLead is lease l's lead now: the schedule (handoff) and the
// heartbeat's argument (ringRequests) must read the same one.
func (c *Client) releaseLead(l *Lease) time.Duration {
	return releaseLead(c.hb.lastRTT, c.cfg.heartbeat, len(l.view.revokedAt))
}

// nextRelease is when a heartbeat should next carry releases, as known at
// now with a lead of lead (zero: none waits): now if one may go that the
// last heartbeat did not carry (never reported, a drain of 0, or a drain
// that ended while that heartbeat was on its way), else the lead before
// the next drain end. One the last heartbeat carried and that is still
// revoked waits for what it waits for (a hold's end, which the schedule
// knows), or goes with the next heartbeat.
func (l *Lease) nextRelease(now time.Time, lead, drain, maxDrain time.Duration) time.Time {
	ready, _, next := l.releases(now, lead, drain, maxDrain)
	for _, p := range ready {
		if _, sent := slices.BinarySearch(l.view.releasing, p); !sent {
			return now
		}
	}
	if next.IsZero() {
		return next
	}
	return next.Add(-lead)
}

// releases lists the revoked partitions that may go with a heartbeat sent
// at now, sorted: those whose drain ends within lead of now. by is the
// latest of their ends (zero if none is after now): the database commits
// their release no earlier. next is the earliest end of the others (zero:
// none). Called by the heartbeat loop.
func (l *Lease) releases(now time.Time, lead, drain, maxDrain time.Duration) (ready []int, by, next time.Time) {
	if len(l.view.revokedAt) == 0 {
		return nil, time.Time{}, time.Time{}
	}
	locked := l.locks.partitions()
	horizon := now.Add(lead)
	for p, stopped := range l.view.revokedAt {
		end := drainEnd(stopped, locked[p], drain, maxDrain)
		switch {
		case !end.After(horizon):
			ready = append(ready, p)
			if end.After(now) && end.After(by) {
				by = end
			}
		case next.IsZero() || end.Before(next):
			next = end
		}
	}
	sort.Ints(ready)
	return ready, by, next
}

// Looking for incoming partitions (see nextLook and lookAwait).
const (
	lookSlack   = 2 * time.Millisecond  // a look goes this long after the due time
	minLookPoll = 10 * time.Millisecond // the least time between two looks at an overdue partition
	awaitSlack  = 20 * time.Millisecond // a look waits for a release until two round trips and this after its due
	maxAwait    = 50 * time.Millisecond // and never longer than this (nor a quarter of a heartbeat)
	// maxOnItsWay bounds a look's wait while the release is on its way
	// (awaitOnItsWay): a release goes at most maxLead ahead, and
	// its writes take tens of milliseconds more.
	maxOnItsWay = 250 * time.Millisecond
	// pollWhileLate: a release missing up to this long past its due
	// (the longest a look waits for it, and the slack) is looked for
	// every poll; later, half as long again as it is late past that
	// (nextLook).
	pollWhileLate = maxAwait + awaitSlack
)

// setIncoming records a view's (or an incoming answer's) due times of the
// partitions pending to this node, which the database gave as offsets from
// its clock while it answered: measured is that instant on the local
// clock. A heartbeat's answer takes it halfway through the round trip
// (incomingMeasured). Taken at the answer's arrival, every due came late by
// up to the round trip, and the look after it waited that round trip again
// (CI: a look answered in 70 ms moved the next 50 ms later, and a handoff
// with no drain took 129 ms).
func (v *ringState) setIncoming(ch ringChange, measured time.Time) {
	v.incoming = v.incoming[:0]
	for _, ms := range ch.Incoming {
		v.incoming = append(v.incoming, measured.Add(time.Duration(ms)*time.Millisecond))
	}
	v.waiting = len(ch.Incoming)+ch.IncomingUnknown > 0
}

// incomingMeasured is when, on the local clock, the database most likely
// measured the dues of an answer to a call sent at sent and answered at
// recv: halfway. (For a look that waited in the database, sent is moved
// on by the wait: the dues are measured after it.)
func incomingMeasured(sent, recv time.Time) time.Time {
	if sent.IsZero() || recv.Before(sent) {
		return recv
	}
	return sent.Add(recv.Sub(sent) / 2)
}

// nextLook is when the node should next renew to hear of incoming
// partitions due at dues, as known at now; zero: no look (the regular
// heartbeats ask, and each answers the dues afresh). A look goes lookSlack
// after a due time and waits in the database for the owner's release
// (lookAwait), which the owner sends when its drain ends and which lands
// about a round trip after the due; the look is answered within a few
// milliseconds of its commit. (Sent a round trip after the due, as before
// the look could wait, it came back a round trip and a half after it: a
// join's gaps reached 576 ms, drain 500 ms, under -race beside a busy
// core.) One still missing is looked for again a poll later (a
// heartbeat's hundredth, at least minLookPoll) while it is late by up to
// pollWhileLate, and then half as long after as it is late past that, so
// that a release a little later than a look could wait for is heard
// within a poll, and a later one within about half its own lateness more,
// at a cost of a few looks (17 at most with a heartbeat of 500 ms, 19
// at 1 s: 10 and 12 before), until it is a
// heartbeat overdue: then
// the owner holds a Lock (the max drain) or holds for an older process,
// and the regular heartbeats look. (Each answer says the dues afresh: an
// owner told later than the database guessed gets its real due time.)
func nextLook(dues []time.Time, now time.Time, heartbeat time.Duration) time.Time {
	poll := max(heartbeat/100, minLookPoll)
	var next time.Time
	for _, due := range dues {
		at := due.Add(lookSlack)
		if !at.After(now) {
			overdue := now.Sub(due)
			if overdue >= heartbeat {
				continue
			}
			// CI, a join with no drain: a look gave up 4 ms before the
			// release committed, 76 ms past the due, and the next, at
			// overdue/2, came 38 ms later: 100 ms against a bound of 92.
			at = now.Add(max(poll, (overdue-pollWhileLate)/2))
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next
}

// lookAwait is how long a look sent at now may wait in the database for a
// release due at one of dues (zero: not at all): until two round trips
// (rtt, the last heartbeat's) and awaitSlack after the due, at most a
// quarter of a heartbeat and maxAwait. The owner sends its release at its
// drain's end and it commits about a round trip later, on a busy machine a
// little more; a look that came just before that waits for the commit
// (await_release) and hears of it within a few milliseconds, where a look
// answered a moment too early waited a poll and more for the next (CI: a
// heal's gap 13 ms past its bound). A release later than that waits for a
// Lock or a hold: the polls of nextLook find it, and the wait, which holds
// a pooled connection, is not spent on it.
func lookAwait(dues []time.Time, now time.Time, rtt, heartbeat time.Duration) time.Duration {
	var wait time.Duration
	for _, due := range dues {
		if !due.After(now) {
			wait = max(wait, due.Add(2*rtt+awaitSlack).Sub(now))
		}
	}
	return min(wait, heartbeat/4, maxAwait)
}

// awaitOnItsWay is how long a look may wait in all while the call of the
// owner that releases what it waits for is on its way (the database sees
// that call's advisory lock, await_release): a quarter of a heartbeat, at
// most maxOnItsWay, and never past what else the schedule has to do (the
// caller's bound). The owner drains from when its answer reached it, and
// its due was set when it was told in the database: for the view of a
// rebalance of a whole ring the answer came 90-190 ms later (TestRollout),
// so a look bounded by lookAwait alone gave up a few milliseconds before
// the commit, and the next came a poll later.
func awaitOnItsWay(heartbeat time.Duration) time.Duration {
	return min(heartbeat/4, maxOnItsWay)
}
