package leasering

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"
)

// apply takes one heartbeat's outcome, at now: a failure, a probe's
// answer, or the node's status with the rings that changed.
func (c *Client) apply(res renewResult, now time.Time) {
	switch {
	case res.err != nil:
		late := res.recv.Sub(res.sent) >= c.cfg.renewTimeout || errors.Is(res.err, context.DeadlineExceeded)
		c.failed(now, res.err, late)
	case res.probe:
		// It came back in time: the database is within reach again, and
		// the next heartbeat, at once, renews (or rejoins, if the lease
		// lapsed meanwhile).
		c.hb.probed(now)
		c.log.Debug("leasering: probe answered in time; renewing", "status", res.status, "lease_left", res.lease)
	case res.status == statusLapsed: // it arrived too late to extend the lease, which has run out
		c.failed(now, errors.New("leasering: heartbeat reached the database too late to extend the lease"), false)
	case res.status == statusFenced:
		c.fence(res.other)
	default:
		c.renewed(res, now)
	}
}

// failed records a failed heartbeat; late says its answer did not come in
// time (the next calls are probes).
func (c *Client) failed(now time.Time, err error, late bool) {
	if late {
		c.hb.timedOut(now)
	} else {
		c.hb.failed(now)
	}
	c.st.failed()
	c.checkPooler(err)
	if c.hb.failures == 1 || c.hb.failures%10 == 0 {
		c.log.Warn("leasering: heartbeat failed", "err", err, "attempts", c.hb.failures,
			"lease_left", max(c.hb.deadline.Sub(now), 0))
	}
}

// errTimedOut is the failure of a heartbeat whose answer did not come in
// time.
func errTimedOut(after time.Duration) error { return fmt.Errorf("heartbeat timed out after %v", after) }

// fence stops the client for good: another process took the node id over.
func (c *Client) fence(other string) {
	c.log.Error("leasering: node id taken over by another process; stopping", "other_incarnation", other)
	c.mu.Lock() // the leases fail before Err reports the fencing
	for _, l := range c.leaseList() {
		l.fail(fmt.Errorf("%w: node %q now belongs to incarnation %s", ErrFenced, c.cfg.nodeID, other))
	}
	c.fatal = ErrFenced
	c.mu.Unlock()
}

// mostMembers is the most members of any of the node's rings, as their
// routing last gave them (the schedule's wakeSpread): for a lease whose
// routing nobody reads, as its first view did, which may be fewer than
// there are now.
func (c *Client) mostMembers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	most := 0
	for _, l := range c.leases {
		most = max(most, len(l.route.Load().members))
	}
	return most
}

// renewed takes an answered renewal ("ok" or "rejoined").
func (c *Client) renewed(res renewResult, now time.Time) {
	if res.status == statusRejoined {
		c.log.Warn("leasering: lease had lapsed; rejoined")
	}
	if res.late > 0 {
		// The database judges by when the call began there, a little
		// before it answered: this is the sign, not the proof.
		c.log.Warn("leasering: heartbeat answered more than a quarter of a lease after it was sent; one that arrives that late extends nothing",
			"after", res.late, "round_trip", res.recv.Sub(res.sent), "lease_left", res.lease)
	}
	if c.hb.failures > 0 {
		c.log.Info("leasering: heartbeat recovered", "failed_attempts", c.hb.failures)
	}
	c.hb.lastRTT, c.hb.lastLease = res.rtt(), res.lease
	c.st.renewed(res)
	views, h := c.applyChanges(res, now)
	later, busy := 0, false
	for _, ch := range res.changes {
		if ch.Status == ringLater {
			later++
			busy = busy || ch.Busy
		}
	}
	c.hb.renewed(now, renewal{sent: res.sent, recv: res.recv, lease: res.lease, hold: res.hold, wal: res.wal,
		scanned: res.scanned, nextExpiry: res.nextExpiry, handoff: h, busy: busy, members: c.mostMembers()})
	c.st.applied(c.hb.deadline, views)
	c.announce(res.announce)
	if c.hb.lost && c.hb.deadline.After(now) {
		c.hb.lost = false
		c.lost.Store(false)
		c.log.Info("leasering: lease regained")
	}
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("leasering: heartbeat", "status", res.status, "state", c.hb.state(now), "round_trip", res.rtt(), "waited", res.waited,
			"pool_wait", res.poolWait, "released", res.released, "waiting", res.waiting, "views", views, "later", later, "busy", busy,
			"lease", res.lease, "scanned", res.scanned, "next_event_in", res.nextExpiry, "next_renew_in", c.hb.next().Sub(now))
	}
}

// applyChanges applies a renewal's ring changes to the leases. It returns
// the number of views it applied and what they ask of the schedule.
func (c *Client) applyChanges(res renewResult, now time.Time) (views int, h handoffTimes) {
	var settle time.Time // the first burst of joins to settle where this node owns partitions (zero: none)
	c.mu.Lock()
	for _, ch := range res.changes {
		l, ok := c.leases[ch.Ring]
		if !ok {
			continue
		}
		switch ch.Status {
		case ringSizeMismatch:
			c.sizeMismatch(l, ch.Size)
		case ringToJoin:
			// Not a member (evicted while cut off, the answer that said
			// "rejoined" lost on the way) or not reclaimed by this
			// incarnation yet: whatever the last view gave may be another
			// node's now. Report nothing of the ring until a fresh view.
			l.forget()
			l.view.read = false // a heartbeat says again once it is joined
			if l.view.join == joined {
				l.view.join = toJoin // the loop joins it, then a heartbeat reads its view
			}
		case ringLater:
			if !ch.Busy { // busy: the schedule backs off (schedule.behind)
				c.hb.wake(now) // the next heartbeat brings the view
			}
		case ringView:
			l.view.read = true // the loop reads it with read_views
		case ringIncoming:
			l.view.setIncoming(ch, incomingMeasured(res.sent.Add(res.waited), res.recv))
		case ringSettling:
			if at := incomingMeasured(res.sent.Add(res.waited), res.recv).Add(time.Duration(ch.SettlesMS) * time.Millisecond); settle.IsZero() || at.Before(settle) {
				settle = at
			}
		default:
			views++
			before := len(l.view.current.values)
			l.applyViewAt(ch, now, incomingMeasured(res.sent.Add(res.waited), res.recv))
			c.log.Debug("leasering: ring changed", "ring", ch.Ring, "version", ch.Version,
				"owned_before", before, "owned", len(l.view.current.values), "revoking_partitions", ch.Revoking, "partitions", l.view.current.values)
		}
	}
	if res.status == statusRejoined {
		// What a node held before its lease lapsed may have gone to others:
		// a ring whose fresh view did not come in this answer (its work was
		// skipped on a busy lock) reports nothing until one does.
		for name, l := range c.leases {
			if !slices.ContainsFunc(res.changes, func(ch ringChange) bool { return ch.Ring == name && ch.Status == statusOK }) {
				l.forget()
			}
		}
	}
	c.mu.Unlock()
	h = c.handoff(now)
	h.settle = settle
	return views, h
}

// handoff is what the leases' views ask of the schedule at now: when a
// revoked partition may next be released (now: at once; zero: none waits),
// whether partitions wait to be handed on, and when to look for incoming
// ones (zero: no look). The rules are drain.go's.
func (c *Client) handoff(now time.Time) handoffTimes {
	c.mu.Lock()
	leases := c.leaseList()
	c.mu.Unlock()
	var h handoffTimes
	for _, l := range leases {
		if next := l.nextRelease(now, c.releaseLead(l), c.cfg.drain, c.cfg.maxDrain); !next.IsZero() && (h.release.IsZero() || next.Before(h.release)) {
			h.release = next
		}
		h.revoking = h.revoking || len(l.view.revokedAt) > 0
		if look := nextLook(l.view.incoming, now, c.cfg.heartbeat); !look.IsZero() && (h.look.IsZero() || look.Before(h.look)) {
			h.look = look
		}
	}
	return h
}

// sizeMismatch fails a lease whose ring exists with another size. Caller
// holds c.mu.
func (c *Client) sizeMismatch(l *Lease, size int) {
	delete(c.leases, l.name)
	l.fail(fmt.Errorf("%w: ring %q has size %d, this lease asked for %d", ErrRingSizeMismatch, l.name, size, l.size))
	c.log.Error("leasering: ring size mismatch", "ring", l.name, "ring_size", size, "lease_size", l.size)
}

// announce tells listeners (see pqnotify) which rings this node just
// changed: NOTIFY in a statement of its own, after the heartbeat's commit,
// so that the heartbeat never waits on PostgreSQL's cluster-wide
// notification lock. It does not wait for the answer; a lost announcement
// only costs the listeners their next heartbeat.
func (c *Client) announce(rings string) {
	if rings == "" || rings == "[]" {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.heartbeat)
		defer cancel()
		_, _ = c.db.ExecContext(ctx, c.q.announce, c.NotifyChannel(), rings)
	}()
}

// ringsJSON is names as a JSON array ("[]" for none: a nil slice would be
// JSON's null, which announce once sent, and which failed in the database
// after every join_rings call that joined nothing).
func ringsJSON(names ...string) string {
	if len(names) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(names)
	return string(b)
}
