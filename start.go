package leasering

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// join migrates, joins the node and its rings, and heartbeats until every
// lease has its first view and the node is live. Errors a retry can cure
// (see transient: a deadlock, a lock timeout, a dropped connection while
// many nodes start at once) are retried with backoff until ctx ends; the
// others are returned at once.
//
// A heartbeat that was sent may have committed even if its answer never
// came, and then the database has given this node partitions that nobody
// would report until the lease ran out. So each call runs to its own
// timeout even when ctx ends meanwhile, and a join that fails after the
// first heartbeat was sent leaves before it returns.
func (c *Client) join(ctx context.Context) error {
	backoff := 20 * time.Millisecond
	sent := false
	var last error // the last error a retry could have cured
	for {
		heartbeat, err := c.joinOnce(ctx)
		sent = sent || heartbeat
		if err == nil && ctx.Err() != nil {
			err = ctx.Err() // the node joined after ctx ended
		}
		if err == nil {
			return nil
		}
		if ctx.Err() == nil && transient(err) && !errors.Is(err, ErrFenced) {
			last = err
			c.log.Warn("leasering: start failed; retrying", "err", err, "backoff", backoff)
			select {
			case <-ctx.Done():
			case <-c.clock.After(backoff/2 + rand.N(backoff/2+1)):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		if sent {
			c.leaveAfterFailedStart()
		}
		if ctx.Err() != nil {
			if last == nil && !errors.Is(err, ctx.Err()) {
				last = err
			}
			if last != nil {
				return fmt.Errorf("leasering: start: %w (last error: %w)", ctx.Err(), last)
			}
			return fmt.Errorf("leasering: start: %w", ctx.Err())
		}
		if heartbeat && !errors.Is(err, ErrFenced) {
			err = fmt.Errorf("leasering: start: %w", err) // the schema's errors say "leasering:" already
		}
		return c.checkPooler(err)
	}
}

// maxUnliveStarts is how many heartbeats in a row, with every ring joined
// and read, may leave a starting node without a live lease before Start
// gives up: its heartbeats take longer than its TTL allows.
const maxUnliveStarts = 3

// joinOnce migrates and sends the first heartbeat, which takes the node id
// over, and applies its answer. heartbeat reports whether it was sent.
func (c *Client) joinOnce(ctx context.Context) (heartbeat bool, err error) {
	if err := c.ensureSchema(ctx); err != nil {
		return false, err
	}
	hbCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.renewTimeout)
	now := c.clock.Now()
	opts := c.hb.launch(now)
	opts.claim = true
	res := c.renew(hbCtx, c.ringRequests(now, false), opts)
	cancel()
	switch {
	case errors.Is(res.err, ErrRingSizeMismatch):
		return true, res.err
	case res.err != nil:
		return true, fmt.Errorf("first heartbeat: %w", res.err)
	case res.status == statusFenced: // only if a newer incarnation raced us
		return true, ErrFenced
	}
	c.apply(res, c.clock.Now())
	return true, nil
}

// started is the loop's check, after each event, for the Start that waits
// on c.ready: every lease joined and read and the node live sends nil;
// heartbeats that leave no live lease, maxUnliveStarts times in a row,
// send why. renewed says whether the event was an answered renewal.
func (c *Client) started(now time.Time, renewed bool) {
	if c.ready == nil || c.startPending() {
		return
	}
	if now.Before(c.hb.deadline) {
		c.ready <- nil
		c.ready = nil
		return
	}
	if !renewed || c.hb.failures > 0 {
		return
	}
	if c.hb.unlive++; c.hb.unlive >= maxUnliveStarts {
		c.ready <- fmt.Errorf("%w: a heartbeat took %v and the database granted %v of lease, which leaves the node no time to report anything (it stops TTL/10 before the lease ends): raise WithTTL",
			ErrUnsupported, c.hb.lastRTT.Round(time.Millisecond), c.hb.lastLease)
		c.ready = nil
	}
}

// startPending reports whether a lease still waits to be joined or for its
// first view. A ring whose lock join_rings could not get (a transaction
// holds one of its partitions through holds()) does not hold Start back:
// the loop joins it later.
func (c *Client) startPending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.leases {
		if l.view.join == toJoin || l.view.join == toJoinWaiting || (l.view.join == joined && (l.view.read || l.view.version == 0)) {
			return true
		}
	}
	return false
}

// leaveAfterFailedStart undoes a first heartbeat that may have committed.
func (c *Client) leaveAfterFailedStart() {
	ctx, cancel := context.WithTimeout(context.Background(), min(c.cfg.ttl, 5*time.Second))
	defer cancel()
	if err := c.leave(ctx); err != nil {
		c.log.Warn("leasering: leaving after a failed start failed; the lease will lapse", "err", err)
	}
}

// abandonStart answers a Start still waiting when the loop ends: the node
// was fenced or closed meanwhile.
func (c *Client) abandonStart() {
	if c.ready == nil {
		return
	}
	err := c.Err()
	if err == nil {
		err = ErrClosed
	}
	c.ready <- err
	c.ready = nil
}
