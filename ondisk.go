package leasering

import "time"

// Renewals that do not wait for the disk.
//
// A steady renewal writes only this node's lease end, and much of what it
// costs the database, when many nodes renew, is waiting for its WAL to
// reach disk: each commit queues behind the flushes of the ones before it.
// Without the wait, 16 clients renewing at once on the test machine made
// twice the renewals a second (BENCHMARKS.md, *Scale*). So the client lets
// such a renewal commit without the wait (renew_and_read's p_async), and counts
// its lease only from renewals known to be on disk: a crash of the server
// may lose the others, and the database then keeps the lease end of the
// last one on disk (TestAsyncRenewalsLostInACrash).
//
// Each answer says where the WAL stood (walPlace): insert, a position past
// every commit that ended before the call began, and flush, the position
// below which the WAL was on disk. So a renewal answered without the wait
// is on disk once a later answer's flush reaches the insert of the call
// after it; an answer that says durable puts everything before it on disk.
//
// The price: the lease the client counts runs from a renewal about two
// heartbeats old (PostgreSQL's WAL writer puts what commits without the
// wait on disk within three wal_writer_delay, 600 ms by default), so a node
// cut off stops reporting that much sooner. The client asks for it only
// while the lease on disk has at least half a TTL left (asyncFloor); else
// the renewal waits for the disk, which puts the lease it gives there at
// once. With the default heartbeat of a tenth of the TTL, every steady
// renewal goes without the wait.

// walPlace is where the database's WAL stood when it answered a heartbeat.
type walPlace struct {
	known  bool  // the answer gave the positions
	insert int64 // past every commit that ended before the call began
	flush  int64 // on disk below this
	// The lease the answer gives may not be on disk yet: an async
	// renewal, or a late one (which may write nothing, and then waits for
	// no flush).
	async bool
}

// walDeadline is a renewal's deadline, on disk once the WAL is flushed up
// to below.
type walDeadline struct {
	below    int64
	deadline time.Time
}

// asyncFloor is the least time the lease on disk must have left for a
// heartbeat to ask for a commit without the wait.
func asyncFloor(ttl time.Duration) time.Duration { return ttl / 2 }

// countOnDisk records an answered renewal whose own deadline is own and
// returns the deadline the client may report until: own if the answer's
// lease is on disk, else that of the latest renewal known to be on disk.
func (s *schedule) countOnDisk(own time.Time, wal walPlace) time.Time {
	if wal.known {
		if !s.unplaced.IsZero() {
			// The last renewal answered before this call was sent: its
			// commit lies below this call's insert position.
			s.placed = append(s.placed, walDeadline{below: wal.insert, deadline: s.unplaced})
			s.unplaced = time.Time{}
		}
		n := 0
		for _, p := range s.placed {
			if p.below > wal.flush {
				break
			}
			s.onDisk = latest(s.onDisk, p.deadline)
			n++
		}
		s.placed = append(s.placed[:0], s.placed[n:]...)
	}
	if !wal.async {
		s.onDisk, s.unplaced, s.placed = own, time.Time{}, s.placed[:0]
		return own
	}
	s.unplaced = own
	if s.onDisk.IsZero() { // nothing on disk yet: report nothing
		return s.onDisk
	}
	return earliest(own, s.onDisk)
}

// mayGoAsync says whether a heartbeat launched at now may commit without
// waiting for the disk: the lease on disk has at least asyncFloor left.
func (s *schedule) mayGoAsync(now time.Time) bool {
	return s.asyncFloor > 0 && !s.probe && !s.onDisk.IsZero() && s.onDisk.Sub(now) >= s.asyncFloor
}
