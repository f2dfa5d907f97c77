package leasering

import "time"

// The heartbeat schedule: when the next heartbeat goes, what it asks for,
// and when the loop must wake.
//
// The loop records what happened (an answer, a failure, a probe's answer,
// a wake, a launch) and asks next when to send the next heartbeat. next is
// the one place that decides, and it reads only those records: no clock
// and no randomness (the jitter is drawn when a record is made), so
// schedule_test.go checks each rule at chosen instants.
//
// The rules, in next:
//
//   - After a renewal: one heartbeat after it was sent; sooner, just after
//     another node's lease ends (jittered), so that a dead node's
//     partitions are taken over at once; a lead before a revoked
//     partition's drain ends (drain.go's releaseLead); at once when a
//     release may go that the last heartbeat did not carry (never
//     reported, a drain of 0, a drain that ended while it flew); just after a hold ends while partitions wait to be handed on;
//     when a partition handed to this node is due (a look, drain.go's
//     nextLook), never closer than minLookPoll to the last launch; just
//     after a burst of joins settles in a ring where the node owns
//     partitions (that heartbeat tells it what to give up), never closer
//     than a twentieth of a heartbeat to the last launch.
//   - After a failure: a jittered exponential backoff, an eighth of a
//     heartbeat doubling up to one heartbeat.
//   - After a probe answered in time: at once, to renew.
//   - After a launch refused because calls hang: one heartbeat later.
//   - A wake (a new lease, an Unlock, a ring announced changed, a "later"
//     answer, more releases than one heartbeat carries) brings the next
//     heartbeat forward, but never to less than a twentieth of a heartbeat
//     after the last launch.
//   - A view left behind a busy lock ("later", busy): a twentieth of a
//     heartbeat after the launch, twice as long for each such answer in a
//     row, up to 8 times.

// outcome is what the last heartbeat came to, as far as the schedule cares.
type outcome int

const (
	outcomeNone    outcome = iota // nothing yet: a heartbeat at once
	outcomeRenewed                // a renewal was answered
	outcomeFailed                 // failed, timed out, or answered too late to count
	outcomeProbed                 // a probe was answered in time
	outcomeSkipped                // not launched: too many calls hang
)

// schedule is the heartbeat loop's record of time. Owned by the loop (and
// by Start before the loop runs).
type schedule struct {
	heartbeat time.Duration
	margin    time.Duration                       // the deadline is this much before the granted lease ends
	jitter    func(n time.Duration) time.Duration // uniform in [0, n]

	// The lease the last renewal granted, as far as it is on disk
	// (ondisk.go).
	deadline  time.Time // report nothing from this time on
	holdUntil time.Time // nor before this (a node id taken over from a live process)

	// Renewals committed without waiting for the disk (ondisk.go).
	asyncFloor time.Duration // ask for that only while the lease on disk has this long left (0: never)
	onDisk     time.Time     // the deadline of the latest renewal known to be on disk (zero: none)
	unplaced   time.Time     // the deadline of the last renewal if not on disk, until the next answer places it (zero: none)
	placed     []walDeadline // renewals not known on disk, oldest first

	// The earliest end of another node's lease, as an early and a late
	// estimate (zero: unknown). No scan before the early one (nothing
	// could be evicted); a renewal just after the late one.
	scanAfter, otherExpiry time.Time

	probe    bool // a heartbeat went unanswered in time: extend nothing until a probe is answered in time
	failures int  // in a row
	lapsed   int  // scanned answers in a row in which another lease had ended already
	behind   int  // renewals in a row that left a view behind a busy lock ("later", busy)

	// The last outcome, and what it says about the next heartbeat.
	last         outcome
	at           time.Time     // when the loop took it
	sent         time.Time     // renewed: when that heartbeat was sent
	recv         time.Time     // renewed: when its answer came
	spread       time.Duration // the jitter drawn for it (wakeSpread)
	handoffTimes               // renewed: what the views ask (drain.go's rules)

	launched time.Time // the last heartbeat's launch
	woken    time.Time // the first wake since then (zero: none)
}

// renewal is what an answered renewal tells the schedule.
type renewal struct {
	sent, recv time.Time
	lease      time.Duration // granted, counted from sent
	hold       time.Duration // report nothing for this long after recv
	wal        walPlace      // where the WAL stood: whether the lease is on disk
	scanned    bool          // nextExpiry is known
	nextExpiry time.Duration // another node's lease ends this long after the answer (-1: none)
	handoff    handoffTimes
	busy       bool // a ring's view did not come: a lock was busy ("later", busy)
	members    int  // the most members of any of the node's rings (wakeSpread)
}

// handoffTimes is what the leases' views ask of the schedule.
type handoffTimes struct {
	release  time.Time // when a revoked partition may next be confirmed released (zero: none)
	revoking bool      // partitions wait to be handed on
	look     time.Time // when to renew to hear of partitions handed to this node (zero: no look)
	// settle: when a burst of joins settles in a ring where this node owns
	// partitions (zero: none does); the heartbeat just after it tells the
	// node what to give up.
	settle time.Time
}

// renewOpts says what one renew_and_read call asks for.
type renewOpts struct {
	claim bool // take the node id over (Start's first heartbeat)
	scan  bool // evict lapsed nodes and report the earliest other lease end
	probe bool // only ask how long the lease has left, extending nothing
	look  bool // sent before the heartbeat was due, to hear of partitions handed to this node (counted in Stats)
	async bool // a steady renewal may commit without waiting for the disk (ondisk.go)
}

// renewed records an answered renewal taken at now.
func (s *schedule) renewed(now time.Time, r renewal) {
	s.failures = 0
	s.deadline = s.countOnDisk(r.sent.Add(r.lease-s.margin), r.wal)
	s.holdUntil = r.recv.Add(r.hold)
	if r.scanned {
		// No other node: scan every time (it is cheap then).
		s.scanAfter, s.otherExpiry = time.Time{}, time.Time{}
		if r.nextExpiry >= 0 {
			s.scanAfter, s.otherExpiry = r.sent.Add(r.nextExpiry), r.recv.Add(r.nextExpiry)
		}
		if r.nextExpiry == 0 { // ended already: another heartbeat is evicting, or cannot yet
			s.lapsed++
		} else {
			s.lapsed = 0
		}
	}
	if r.busy {
		s.behind++
	} else {
		s.behind = 0
	}
	s.last, s.at, s.sent, s.recv = outcomeRenewed, now, r.sent, r.recv
	s.handoffTimes = r.handoff
	s.spread = s.jitter(wakeSpread(s.heartbeat, r.members))
}

// wakeSpread is the most by which a node's wake for another lease's end is
// jittered: a tenth of a heartbeat up to 100 members, growing with the
// members to a whole heartbeat at 1,000. Every node that scanned while a
// lease was the earliest to end learns the same end, and a node whose
// heartbeats stall stays the earliest while they do: at 2,000 nodes
// (heartbeat 2 s, TTL 20 s) some 110 nodes scan each second, so a stall of
// a few seconds gathers hundreds of wakes into a tenth of a heartbeat,
// several times the steady heartbeats' rate. Spread over a heartbeat they
// come no faster than those; the first of n wakes still comes about a
// heartbeat/n after the end, and a node's own heartbeat scans anyway once
// the end it was told of has passed.
func wakeSpread(heartbeat time.Duration, members int) time.Duration {
	if members <= 100 {
		return heartbeat / 10
	}
	return min(heartbeat, heartbeat/10*time.Duration(members)/100)
}

// handedOff records what views read off the heartbeat ask (read_views).
func (s *schedule) handedOff(h handoffTimes) {
	if s.last == outcomeRenewed {
		h.settle = s.settle // the heartbeat's answer said it; views read apart do not
		s.handoffTimes = h
	}
}

// failed records a failed heartbeat.
func (s *schedule) failed(now time.Time) {
	s.failures++
	s.last, s.at = outcomeFailed, now
	s.spread = s.jitter(s.backoff() / 2)
}

// timedOut records a heartbeat whose answer did not come in time: it may
// have extended the lease unknown to us, so only probes go until one is
// answered in time.
func (s *schedule) timedOut(now time.Time) {
	s.probe = true
	s.failed(now)
}

// probed records a probe answered in time.
func (s *schedule) probed(now time.Time) {
	s.probe = false
	s.last, s.at = outcomeProbed, now
}

// skipped records a heartbeat not launched because calls hang.
func (s *schedule) skipped(now time.Time) {
	s.last, s.at = outcomeSkipped, now
	s.woken = time.Time{}
}

// wake asks for a heartbeat soon.
func (s *schedule) wake(now time.Time) {
	if s.woken.IsZero() {
		s.woken = now
	}
}

// launch records a heartbeat launched at now and says what it asks for.
func (s *schedule) launch(now time.Time) renewOpts {
	s.launched, s.woken = now, time.Time{}
	look := s.last == outcomeRenewed && !s.look.IsZero() && !now.Before(s.look) && now.Before(s.sent.Add(s.heartbeat))
	return renewOpts{scan: s.scanAfter.IsZero() || !now.Before(s.scanAfter), probe: s.probe, look: look, async: s.mayGoAsync(now)}
}

// backoff is the delay after the failures so far, before jitter: the
// retry goes between half of it and all of it.
func (s *schedule) backoff() time.Duration {
	return min(s.heartbeat/8<<min(s.failures-1, 3), s.heartbeat)
}

// next is when the next heartbeat goes.
func (s *schedule) next() time.Time {
	var t time.Time // outcomeNone: at once
	switch s.last {
	case outcomeRenewed:
		t = s.sent.Add(s.heartbeat)
		if !s.otherExpiry.IsZero() {
			// Just after another lease ends, so that if its node died we
			// take over at once; the jitter keeps the survivors from all
			// arriving in the same instant. While a lease that ended stays
			// lapsed (one heartbeat at a time evicts, and one waits for it:
			// scan_and_evict), twice as late each time, up to 8 times: with
			// a hundred nodes every one renewed every 5-15 ms while an
			// eviction ran.
			t = earliest(t, latest(s.otherExpiry.Add(time.Millisecond), s.recv.Add(s.heartbeat/20<<min(s.lapsed, 3))).Add(s.spread))
		}
		if !s.release.IsZero() {
			t = earliest(t, s.release)
		}
		if !s.look.IsZero() {
			// Never closer than a poll to the last launch: owners told at
			// different times make dues milliseconds apart.
			t = earliest(t, latest(s.look, s.launched.Add(minLookPoll)))
		}
		if !s.settle.IsZero() {
			// Never closer than a wake's spacing to the last launch: a
			// burst that settled while its rebalance waits for the ring's
			// lock (a user's holds(), a batch of joins) says so again
			// with each answer.
			t = earliest(t, latest(s.settle.Add(lookSlack), s.launched.Add(s.heartbeat/20)))
		}
		if s.revoking && s.holdUntil.After(s.at) {
			// Releases sent during a hold only mark the partitions; one
			// sent once it is over hands them on.
			t = earliest(t, s.holdUntil.Add(time.Millisecond))
		}
		if retry := s.retryBusy(); !retry.IsZero() {
			t = earliest(t, retry)
		}
	case outcomeFailed:
		t = s.at.Add(s.backoff()/2 + s.spread)
	case outcomeProbed:
		t = s.at
	case outcomeSkipped:
		t = s.at.Add(s.heartbeat)
	}
	if !s.woken.IsZero() {
		t = earliest(t, latest(s.launched.Add(s.heartbeat/20), s.woken))
	}
	return t
}

// retryBusy is when a view left behind a busy lock is asked for again
// (zero: none is): a twentieth of a heartbeat after the launch, twice as
// long for each such answer in a row after the first, up to 8 times. A
// lock held by a batch of joins (seconds, with a hundred nodes) must not
// bring a heartbeat every few milliseconds; a heartbeat out of time for
// its rings ("later", not busy) made progress, and wakes the loop as any
// other.
func (s *schedule) retryBusy() time.Time {
	if s.behind == 0 {
		return time.Time{}
	}
	return s.launched.Add(s.heartbeat / 20 << min(s.behind-1, 3))
}

// quietFor is how long from now nothing but a look is due: the longest a
// look may wait in the database (lookAwait) without holding up a release,
// a takeover, the end of a hold or the next heartbeat. Zero: something is
// due now.
func (s *schedule) quietFor(now time.Time) time.Duration {
	t := s.sent.Add(s.heartbeat)
	if !s.otherExpiry.IsZero() {
		t = earliest(t, s.otherExpiry)
	}
	if !s.release.IsZero() {
		t = earliest(t, s.release)
	}
	if s.revoking && s.holdUntil.After(now) {
		t = earliest(t, s.holdUntil)
	}
	if !s.settle.IsZero() {
		t = earliest(t, s.settle)
	}
	return max(t.Sub(now), 0)
}

// due reports whether the next heartbeat should go at now.
func (s *schedule) due(now time.Time) bool { return !now.Before(s.next()) }

// live reports whether the leases may report their views at now.
func (s *schedule) live(now time.Time) bool {
	return now.Before(s.deadline) && !now.Before(s.holdUntil)
}

// wakeAt is when the loop must look again: the next heartbeat (or the
// timeout of the one in flight), the deadline, the end of the hold.
func (s *schedule) wakeAt(now time.Time, inflight bool, timeout time.Time) time.Time {
	t := s.next()
	if inflight {
		t = timeout
	}
	for _, u := range []time.Time{s.deadline, s.holdUntil} {
		if u.After(now) {
			t = earliest(t, u)
		}
	}
	return t
}

// Node states, as the package documentation's table names them.
const (
	stateLive    = "live"    // the lease runs: the leases report their views
	stateHeld    = "held"    // the lease runs, but the node id's previous process may still report
	stateLate    = "late"    // heartbeats fail; the lease still runs
	stateProbing = "probing" // a heartbeat timed out; only probes go until one is answered in time
	stateLapsed  = "lapsed"  // the deadline passed without a renewal: nothing is reported
)

// state is the node's heartbeat state at now (once started).
func (s *schedule) state(now time.Time) string {
	switch {
	case !now.Before(s.deadline):
		return stateLapsed
	case s.probe:
		return stateProbing
	case s.failures > 0:
		return stateLate
	case now.Before(s.holdUntil):
		return stateHeld
	}
	return stateLive
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
