package leasering

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
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
	waited  int             // answers in a row that another call is making this one's batch
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
	again := s.apply(c, res, now)
	if !res.joinsWaiting() {
		s.waited = 0
	}
	if again {
		s.after = now.Add(c.cfg.heartbeat / 2)
		if res.joinsWaiting() {
			// Another call is making a batch of joins, most likely with
			// this one in it: look again soon, spread out, and twice as
			// late each time up to 8 times (2/5 of a heartbeat). A batch
			// on a ring of 65,536 takes seconds, and in a roll-out of 100
			// nodes the waiting ones' polls, every 5-15 ms each, took more
			// of the database than anything else (TestJoinPollsBackOff).
			wait := c.cfg.heartbeat / 20 << min(s.waited, 3)
			s.after = now.Add(wait + randomJitter(wait))
			s.waited++
		}
	}
}

// joinsWaiting says whether join_rings left a join recorded, for a batch.
func (r sideResult) joinsWaiting() bool {
	for _, j := range r.joins {
		if j.Status == ringWaiting {
			return true
		}
	}
	return false
}

// ringBusy is join_rings' answer for a ring whose lock it could not get
// in time: a later call joins it.
const ringBusy = "busy"

// ringWaiting is join_rings' answer for a join it recorded: the second
// call makes it, or finds it made, or another call's batch will.
const ringWaiting = "waiting"

// ringJoin is one ring in join_rings' answer.
type ringJoin struct {
	Ring   string `json:"ring"`
	Status string `json:"status"` // "ok", "size_mismatch", "busy" (its lock did not come in time) or "waiting" (recorded)
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
				HeartbeatMS: c.cfg.heartbeat.Milliseconds(), DrainMS: &drain, recorded: l.view.join == toJoinWaiting})
		}
	}
	return rings
}

// joinRings joins rings with two join_rings calls. The first records the
// joins (and creates rings on first use) without waiting for any ring's
// lock; its commit makes them visible, so that the next call to lead a
// ring's batch joins every node waiting for it with one rebalance. The
// second, in name order, finds each join made, or leads the ring's batch
// (waiting for its lock), or answers "waiting" when another call leads:
// the loop calls again soon, and only the second then (the joins are
// recorded). It stops once it has spent a fortieth of a TTL (10 to
// 100 ms); the rings it did not get to stay to join. It holds each lock
// it took until it commits, and the heartbeats of the ring's other members
// wait for that lock (to hand on what was released to them) only
// briefly: short calls let them in between.
func (c *Client) joinRings(ctx context.Context, rings []ringRequest) sideResult {
	var waiting, toRecord []ringRequest
	for _, r := range rings {
		if r.recorded {
			waiting = append(waiting, r) // an earlier call recorded it
		} else {
			toRecord = append(toRecord, r)
		}
	}
	var res sideResult
	if len(toRecord) > 0 {
		res = c.callJoinRings(ctx, toRecord, 0)
		if res.err != nil || res.notLive {
			return res
		}
		// The rings just recorded go to the second call; the answers for
		// the others (joined already, or of another size) stand.
		byRing := make(map[string]ringRequest, len(toRecord))
		for _, r := range toRecord {
			byRing[r.Ring] = r
		}
		answered := res.joins[:0]
		for _, j := range res.joins {
			if r, ok := byRing[j.Ring]; ok && j.Status == ringWaiting {
				waiting = append(waiting, r)
			} else {
				answered = append(answered, j)
			}
		}
		res.joins = answered
	}
	if len(waiting) == 0 {
		return res
	}
	budget := min(max(c.cfg.ttl/40, 10*time.Millisecond), 100*time.Millisecond)
	joined := c.callJoinRings(ctx, waiting, budget.Milliseconds())
	if joined.err == nil && !joined.notLive {
		// The rings its budget did not reach stay recorded: the next
		// call skips the recording for them. Recording 1,000 rings again
		// on every round took 0.5 s a call, and a roll-out of 5 clients on
		// 1,000 rings three times as long (TestManyRings).
		seen := make(map[string]bool, len(joined.joins))
		for _, j := range joined.joins {
			seen[j.Ring] = true
		}
		for _, r := range waiting {
			if !seen[r.Ring] {
				joined.joins = append(joined.joins, ringJoin{Ring: r.Ring, Status: ringWaiting})
			}
		}
	}
	joined.joins = append(res.joins, joined.joins...)
	return joined
}

// callJoinRings makes one join_rings call with budget (0: record only).
func (c *Client) callJoinRings(ctx context.Context, rings []ringRequest, budgetMS int64) sideResult {
	arg, err := json.Marshal(rings)
	if err != nil {
		return sideResult{err: err}
	}
	var out string
	begin := time.Now()
	err = c.inTx(ctx, c.db, func(q DB) error {
		return q.QueryRowContext(ctx, c.q.joinRings, c.cfg.nodeID, c.incarnation, string(arg), budgetMS).Scan(&out)
	})
	took := time.Since(begin)
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
	if c.log.Enabled(ctx, slog.LevelDebug) {
		count := map[string]int{}
		for _, j := range res.joins {
			count[j.Status]++
		}
		c.log.Debug("leasering: join_rings", "budget_ms", budgetMS, "rings", len(rings), "answered", count, "took", took)
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
		case ringWaiting:
			l.view.join = toJoinWaiting
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
			rings = append(rings, ringRequest{Ring: l.name, Version: l.view.routed, OwnerIDs: true})
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
		if v.View.Ring == "" || len(v.View.Epochs) != len(v.View.Partitions) || !v.View.routingFits() {
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
		if !ok || l.view.routed != v.Known || l.view.join != joined {
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
