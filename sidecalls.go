package leasering

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Side calls: statements the loop runs beside the heartbeats, each in a
// goroutine of its own, one of a kind at a time.
//
// Joining a ring creates it on first use and rebalances it: up to a second
// or two of database work for a ring of 65,536 partitions. A heartbeat must
// never spend that (its lease is counted from its start), so the heartbeat
// only answers "join" for a ring this node is not a member of, and the
// client joins it with join_rings. The next heartbeat then reads the ring's
// view. A view too big for a heartbeat is answered "view", and the client
// reads it with read_views.

// sideCall is one kind of side call: which rings need it, the statement,
// and what its answer does. Its state is the loop's.
type sideCall struct {
	what  string // for the log
	rings func(c *Client) []ringRequest
	call  func(c *Client, ctx context.Context, rings []ringRequest) sideResult
	// apply takes the answer and says whether rings still wait (the call
	// is tried again half a heartbeat later).
	apply func(c *Client, res sideResult, now time.Time) (again bool)

	running chan sideResult // the call in flight
	after   time.Time       // not before this
}

// sideResult is a side call's outcome.
type sideResult struct {
	joins   []ringJoin   // join_rings
	views   []ringViewed // read_views
	notLive bool         // the lease was not there: the next heartbeat rejoins first
	err     error
}

// sideTimeout bounds one side call. It is not tied to the TTL: the call
// holds no lease and the heartbeats go on meanwhile.
const sideTimeout = time.Minute

// launch starts the call if none runs, its time has come and a ring needs
// it.
func (s *sideCall) launch(c *Client, now time.Time) {
	if s.running != nil || now.Before(s.after) {
		return
	}
	rings := s.rings(c)
	if len(rings) == 0 {
		return
	}
	done := make(chan sideResult, 1)
	s.running = done
	c.calls.run(func() { // Close waits for it before it leaves
		ctx, cancel := context.WithTimeout(c.attempts, sideTimeout)
		defer cancel()
		done <- s.call(c, ctx, rings)
	})
}

// finish takes the call's answer.
func (s *sideCall) finish(c *Client, res sideResult, now time.Time) {
	s.running = nil
	if res.err != nil {
		c.log.Warn("leasering: "+s.what+" failed; retrying", "err", res.err)
	}
	if s.apply(c, res, now) {
		s.after = now.Add(c.cfg.heartbeat / 2)
	}
}

// ringBusy is join_rings' answer for a ring whose lock it could not get
// in time: a later call joins it.
const ringBusy = "busy"

// ringJoin is one ring in join_rings' answer.
type ringJoin struct {
	Ring   string `json:"ring"`
	Status string `json:"status"` // "ok", "size_mismatch" or "busy" (its lock did not come in time)
	Size   int    `json:"size"`
}

// joinRequests lists the rings the last heartbeat said to join.
func (c *Client) joinRequests() []ringRequest {
	c.mu.Lock()
	leases := c.leaseList()
	c.mu.Unlock()
	var rings []ringRequest
	drain := c.cfg.drain.Milliseconds()
	for _, l := range leases {
		if l.view.join != joined {
			rings = append(rings, ringRequest{Ring: l.name, Size: l.size, VNodes: l.vnodes,
				HeartbeatMS: c.cfg.heartbeat.Milliseconds(), DrainMS: &drain})
		}
	}
	return rings
}

// joinRings makes one join_rings call. It joins rings in name order until
// it has spent a fortieth of a TTL (10 to 100 ms); those it did not get to
// stay to join. The call holds each ring's lock until it commits, and the
// heartbeats of the ring's other members wait for that lock (to confirm
// releases, to read their views) only briefly: short calls let them in
// between. One ring is always joined, however long it takes.
func (c *Client) joinRings(ctx context.Context, rings []ringRequest) sideResult {
	arg, err := json.Marshal(rings)
	if err != nil {
		return sideResult{err: err}
	}
	budget := min(max(c.cfg.ttl/40, 10*time.Millisecond), 100*time.Millisecond)
	var out string
	err = c.inTx(ctx, c.db, func(q DB) error {
		return q.QueryRowContext(ctx, c.q.joinRings, c.cfg.nodeID, c.incarnation, string(arg), budget.Milliseconds()).Scan(&out)
	})
	if err != nil {
		return sideResult{err: classifyDBError(err)}
	}
	if out == `"not_live"` {
		return sideResult{notLive: true}
	}
	var res sideResult
	if err := json.Unmarshal([]byte(out), &res.joins); err != nil {
		return sideResult{err: fmt.Errorf("leasering: decoding join answer: %w", err)}
	}
	return res
}

// joined takes a join_rings answer: joined rings wait for their view from
// the next heartbeat, which it asks for, and are announced (a join changes
// its ring: the members that must give partitions up hear at once, with a
// notifier); a ring of another size fails its lease; a busy ring is tried
// again later.
func (c *Client) joined(res sideResult, now time.Time) (again bool) {
	if res.err != nil || res.notLive { // not live: a heartbeat rejoins first
		return true
	}
	var changed []string
	defer func() { c.announce(ringsJSON(changed...)) }() // after the unlock below
	c.mu.Lock()
	defer c.mu.Unlock()
	any := false
	for _, j := range res.joins {
		l, ok := c.leases[j.Ring]
		if !ok {
			continue
		}
		switch j.Status {
		case statusOK:
			l.view.join = joined
			changed = append(changed, j.Ring)
			any = true
		case ringSizeMismatch:
			c.sizeMismatch(l, j.Size)
		case ringBusy:
			l.view.join = toJoinBusy
		}
	}
	if !any {
		return true // every ring was busy
	}
	c.log.Debug("leasering: joined rings", "rings", len(res.joins))
	c.hb.wake(now) // the next heartbeat reads their views
	return false
}

// ringViewed is one view in read_views' answer, with the version it was
// read against.
type ringViewed struct {
	Known int64      `json:"known"`
	View  ringChange `json:"view"`
}

// viewRequests lists the rings whose view the last heartbeat said to read
// with read_views, each with the version the lease holds.
func (c *Client) viewRequests() []ringRequest {
	c.mu.Lock()
	leases := c.leaseList()
	c.mu.Unlock()
	var rings []ringRequest
	for _, l := range leases {
		if l.view.read && l.view.join == joined {
			rings = append(rings, ringRequest{Ring: l.name, Version: l.view.version})
		}
	}
	return rings
}

// readViews makes one read_views call.
func (c *Client) readViews(ctx context.Context, rings []ringRequest) sideResult {
	arg, err := json.Marshal(rings)
	if err != nil {
		return sideResult{err: err}
	}
	var out string
	err = c.inTx(ctx, c.db, func(q DB) error {
		return q.QueryRowContext(ctx, c.q.readViews, c.cfg.nodeID, c.incarnation, string(arg)).Scan(&out)
	})
	if err != nil {
		return sideResult{err: classifyDBError(err)}
	}
	if out == `"not_live"` {
		return sideResult{notLive: true}
	}
	var res sideResult
	if err := json.Unmarshal([]byte(out), &res.views); err != nil {
		return sideResult{err: fmt.Errorf("leasering: decoding views: %w", err)}
	}
	for _, v := range res.views {
		if v.View.Ring == "" || len(v.View.Epochs) != len(v.View.Partitions) || len(v.View.Changed) != len(v.View.Owners) {
			return sideResult{err: fmt.Errorf("leasering: malformed view of ring %q", v.View.Ring)}
		}
	}
	return res
}

// viewed applies read_views' answer. A view read against a version the
// lease no longer holds (a heartbeat brought a newer one meanwhile), or
// for a ring a heartbeat said to join meanwhile, is dropped: the next
// heartbeat says what is still to read, and a ring to join is left out of
// the heartbeats until join_rings has joined it, so a view read before
// that would stay (with the epochs the reclaim raises). A view that
// revokes a partition this node never reported asks for a heartbeat, which
// carries its release.
func (c *Client) viewed(res sideResult, now time.Time) (again bool) {
	c.mu.Lock()
	for _, v := range res.views {
		l, ok := c.leases[v.View.Ring]
		if !ok || l.view.version != v.Known || l.view.join != joined {
			continue
		}
		l.view.read = false
		l.applyView(v.View, now)
		c.st.addViews(1)
		c.log.Debug("leasering: ring view read", "ring", v.View.Ring, "version", v.View.Version, "owned", len(l.view.current.values))
	}
	c.mu.Unlock()
	c.hb.handedOff(c.handoff(now))
	return len(c.viewRequests()) > 0 // busy, not live, or failed
}
