package leasering

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Joining a ring creates it on first use and rebalances it: up to a second
// or two of database work for a ring of 65,536 partitions. A heartbeat must
// never spend that (its lease is counted from its start), so the heartbeat
// only answers "join" for a ring this node is not a member of, and the
// client joins it with join_rings, a statement of its own, outside the
// heartbeat loop. The next heartbeat then reads the ring's view.

// joinTimeout bounds one join_rings call. It is not tied to the TTL: the
// call holds no lease and the heartbeats go on meanwhile.
const joinTimeout = time.Minute

// ringBusy is join_rings' answer for a ring whose lock it could not get
// in time: a later call joins it.
const ringBusy = "busy"

// ringJoin is one ring in join_rings' answer.
type ringJoin struct {
	Ring   string `json:"ring"`
	Status string `json:"status"` // "ok", "size_mismatch" or "busy" (its lock did not come in time)
	Size   int    `json:"size"`
}

// joinResult is one join_rings call's outcome.
type joinResult struct {
	rings   []ringJoin
	notLive bool // the lease was not there: the next heartbeat rejoins first
	err     error
}

// joinRequests lists the rings the last heartbeat said to join. Called by
// the loop, or by Start before the loop runs.
func (c *Client) joinRequests() []ringRequest {
	c.mu.Lock()
	leases := c.leaseList()
	c.mu.Unlock()
	var rings []ringRequest
	for _, l := range leases {
		if l.needJoin {
			rings = append(rings, ringRequest{Ring: l.name, Size: l.size, VNodes: l.vnodes})
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
func (c *Client) joinRings(ctx context.Context, rings []ringRequest) joinResult {
	arg, err := json.Marshal(rings)
	if err != nil {
		return joinResult{err: err}
	}
	budget := min(max(c.cfg.ttl/40, 10*time.Millisecond), 100*time.Millisecond)
	var out string
	err = c.inTx(ctx, c.db, func(q DB) error {
		return q.QueryRowContext(ctx, c.q.joinRings, c.cfg.nodeID, c.incarnation, string(arg), budget.Milliseconds()).Scan(&out)
	})
	if err != nil {
		return joinResult{err: classifyDBError(err)}
	}
	if out == `"not_live"` {
		return joinResult{notLive: true}
	}
	var res joinResult
	if err := json.Unmarshal([]byte(out), &res.rings); err != nil {
		return joinResult{err: fmt.Errorf("leasering: decoding join answer: %w", err)}
	}
	return res
}

// joined takes a join_rings answer: joined rings wait for their view from
// the next heartbeat, which it asks for; a ring of another size fails its
// lease. It reports whether a ring was joined.
func (c *Client) joined(res joinResult) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	any := false
	for _, j := range res.rings {
		l, ok := c.leases[j.Ring]
		if !ok {
			continue
		}
		switch j.Status {
		case statusOK:
			l.needJoin, l.joinBusy = false, false
			any = true
		case ringSizeMismatch:
			c.sizeMismatch(l, j.Size)
		case ringBusy:
			l.joinBusy = true
		}
	}
	if any {
		c.log.Debug("leasering: joined rings", "rings", len(res.rings))
	}
	return any
}

// sizeMismatch fails a lease whose ring exists with another size. Caller
// holds c.mu.
func (c *Client) sizeMismatch(l *Lease, size int) {
	delete(c.leases, l.name)
	l.fail(fmt.Errorf("%w: ring %q has size %d, this lease asked for %d", ErrRingSizeMismatch, l.name, size, l.size))
	c.log.Error("leasering: ring size mismatch", "ring", l.name, "ring_size", size, "lease_size", l.size)
}

// launchJoin runs one join_rings call off the loop; its answer comes on the
// returned channel.
func (c *Client) launchJoin(rings []ringRequest) chan joinResult {
	done := make(chan joinResult, 1)
	c.stuck.Add(1) // Close waits for it before it leaves
	go func() {
		defer c.stuck.Add(-1)
		ctx, cancel := context.WithTimeout(c.attempts, joinTimeout)
		defer cancel()
		done <- c.joinRings(ctx, rings)
	}()
	return done
}

// ringViewed is one view in read_views' answer, with the version it was
// read against.
type ringViewed struct {
	Known int64      `json:"known"`
	View  ringChange `json:"view"`
}

// viewResult is one read_views call's outcome.
type viewResult struct {
	views   []ringViewed
	notLive bool
	err     error
}

// viewRequests lists the rings whose view the last heartbeat said to read
// with read_views, each with the version the lease holds.
func (c *Client) viewRequests() []ringRequest {
	c.mu.Lock()
	leases := c.leaseList()
	c.mu.Unlock()
	var rings []ringRequest
	for _, l := range leases {
		if l.needView && !l.needJoin {
			rings = append(rings, ringRequest{Ring: l.name, Version: l.version})
		}
	}
	return rings
}

// readViews makes one read_views call.
func (c *Client) readViews(ctx context.Context, rings []ringRequest) viewResult {
	arg, err := json.Marshal(rings)
	if err != nil {
		return viewResult{err: err}
	}
	var out string
	err = c.inTx(ctx, c.db, func(q DB) error {
		return q.QueryRowContext(ctx, c.q.readViews, c.cfg.nodeID, c.incarnation, string(arg)).Scan(&out)
	})
	if err != nil {
		return viewResult{err: classifyDBError(err)}
	}
	if out == `"not_live"` {
		return viewResult{notLive: true}
	}
	var res viewResult
	if err := json.Unmarshal([]byte(out), &res.views); err != nil {
		return viewResult{err: fmt.Errorf("leasering: decoding views: %w", err)}
	}
	for _, v := range res.views {
		if v.View.Ring == "" || len(v.View.Epochs) != len(v.View.Partitions) || len(v.View.Changed) != len(v.View.Owners) {
			return viewResult{err: fmt.Errorf("leasering: malformed view of ring %q", v.View.Ring)}
		}
	}
	return res
}

// viewed applies read_views' answer. A view read against a version the
// lease no longer holds (a heartbeat brought a newer one meanwhile) is
// dropped: the next heartbeat says what is still to read.
func (c *Client) viewed(res viewResult, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range res.views {
		l, ok := c.leases[v.View.Ring]
		if !ok || l.version != v.Known {
			continue
		}
		l.needView = false
		l.applyView(v.View, now)
		c.st.viewed()
		c.log.Debug("leasering: ring view read", "ring", v.View.Ring, "version", v.View.Version, "owned", len(l.current.values))
	}
}

// launchViews runs one read_views call off the loop.
func (c *Client) launchViews(rings []ringRequest) chan viewResult {
	done := make(chan viewResult, 1)
	c.stuck.Add(1)
	go func() {
		defer c.stuck.Add(-1)
		ctx, cancel := context.WithTimeout(c.attempts, joinTimeout)
		defer cancel()
		done <- c.readViews(ctx, rings)
	}()
	return done
}
