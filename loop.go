package leasering

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// heartbeat is the loop's own state. The loop alone touches it (Start
// before the loop runs).
type heartbeat struct {
	schedule           // when the next heartbeat goes
	beat      *attempt // the heartbeat in flight
	join      sideCall // join_rings
	views     sideCall // read_views
	lost      bool     // the deadline passed without a renewal on disk (reported once)
	lastRTT   time.Duration
	lastLease time.Duration // granted by the last renewal
	unlive    int           // while starting: answered renewals in a row that left no live lease
}

// attempt is one heartbeat call in flight.
type attempt struct {
	result  chan renewResult
	timeout time.Time
	cancel  context.CancelFunc
}

// maxStuckRenews bounds the heartbeat attempts left running after their
// timeout (a driver that ignores cancellation on a dead connection). Past
// it, the client waits for one to return before it tries again.
const maxStuckRenews = 4

// run is the heartbeat loop. Each pass it times out a heartbeat that took
// too long, launches the next one when the schedule says so (and the side
// calls, join_rings and read_views, when a lease needs one), publishes what
// the leases may report, then waits for the first of: an answer, the
// schedule's next instant, a wake, Close. It never blocks on the database:
// each call runs in its own goroutine, so the loop keeps the fencing
// deadline even while a call hangs. Start has applied the first heartbeat.
func (c *Client) run() {
	defer close(c.done)
	defer c.abandonStart()
	c.hb.join = sideCall{what: "joining rings", rings: (*Client).joinRequests, call: (*Client).joinRings, apply: (*Client).joined}
	c.hb.views = sideCall{what: "reading ring views", rings: (*Client).viewRequests, call: (*Client).readViews, apply: (*Client).viewed}
	t := c.clock.NewTimer(time.Hour)
	defer t.Stop()
	renewed := true // Start's first heartbeat
	for {
		now := c.clock.Now()
		if b := c.hb.beat; b != nil && !now.Before(b.timeout) {
			b.cancel()
			c.hb.beat = nil
			c.failed(now, errTimedOut(c.cfg.renewTimeout), true)
		}
		// Publish first: a partition the last answer revoked leaves
		// Values (and its Locks end) before a heartbeat can carry its
		// release, which with a drain of 0 is the next one.
		c.publish(now)
		if c.Err() != nil {
			return
		}
		if c.hb.beat == nil && c.hb.due(now) {
			if c.calls.running() < maxStuckRenews {
				c.hb.beat = c.launch(now)
			} else {
				c.hb.skipped(now)
			}
		}
		c.hb.join.launch(c, now)
		c.hb.views.launch(c, now)
		c.started(now, renewed)
		renewed = false

		t.Reset(max(c.wakeAt(now).Sub(now), 0))
		var results chan renewResult
		if c.hb.beat != nil {
			results = c.hb.beat.result
		}
		select {
		case <-c.stop:
			return
		case <-c.wake:
			c.hb.wake(c.clock.Now())
		case <-t.C():
		case res := <-results:
			c.hb.beat = nil
			c.apply(res, c.clock.Now())
			renewed = res.err == nil && !res.probe
		case res := <-c.hb.join.running:
			c.hb.join.finish(c, res, c.clock.Now())
		case res := <-c.hb.views.running:
			c.hb.views.finish(c, res, c.clock.Now())
		}
	}
}

// wakeAt is when the loop must look again, whatever happens meanwhile.
func (c *Client) wakeAt(now time.Time) time.Time {
	var timeout time.Time
	if c.hb.beat != nil {
		timeout = c.hb.beat.timeout
	}
	t := c.hb.schedule.wakeAt(now, c.hb.beat != nil, timeout)
	for _, s := range []*sideCall{&c.hb.join, &c.hb.views} {
		if s.running == nil && s.after.After(now) {
			t = earliest(t, s.after)
		}
	}
	return t
}

// launch sends one heartbeat, in a goroutine of its own.
func (c *Client) launch(now time.Time) *attempt {
	opts := c.hb.launch(now)
	if opts.look {
		c.st.looked()
	}
	rings := c.ringRequests(now, opts.look)
	ctx, cancel := context.WithTimeout(c.attempts, c.cfg.renewTimeout)
	a := &attempt{result: make(chan renewResult, 1), timeout: now.Add(c.cfg.renewTimeout), cancel: cancel}
	c.calls.run(func() {
		defer cancel()
		a.result <- c.renew(ctx, rings, opts)
	})
	return a
}

// ringRequests builds the heartbeat's argument: each joined lease's ring,
// the version of the view it holds, the releases the drain rule allows
// within the lead (releaseLead) and how long their drains have left, and
// on a look (see nextLook) how long the database may wait for a release
// due already (lookAwait).
//
// A heartbeat confirms at most maxReleasesPerHeartbeat releases: each is a
// row the database rewrites inside the heartbeat (about 10 µs each), and a
// node handing over half of a ring of 65,536 has 32,768. The rest go with
// the next heartbeats, which the loop sends at once (the wake spacing, a
// twentieth of a heartbeat, apart).
func (c *Client) ringRequests(now time.Time, look bool) []ringRequest {
	c.mu.Lock()
	leases := c.leaseList()
	c.mu.Unlock()
	rings := make([]ringRequest, 0, len(leases))
	room := maxReleasesPerHeartbeat
	for _, l := range leases {
		if l.view.join != joined {
			// join_rings says how it stands (forget has dropped its view
			// and releases): asking here too cost a call of ring_work per
			// such ring every heartbeat, 114,000 of them in the measured
			// start of 5 clients with 1,000 rings each.
			continue
		}
		// Routing that came within routingEvery heartbeats, or that
		// nobody read yet (routingWanted), can wait: ask for own views,
		// from the version of the last view of any kind. Else ask from the
		// routing's version, for a whole view.
		members := len(l.route.Load().members)
		routingRead := l.routingRead.Load()
		fresh := l.view.routed != 0 && (!routingRead || ownOnly(l.view.routedAt, now, c.cfg.heartbeat, members))
		version := l.view.routed
		if fresh {
			version = l.view.version
		}
		// own_only answers nothing when nothing of the node's changed, and
		// the node keeps its version: each later heartbeat then runs the
		// ring's work in the database again, and its member row never
		// says it saw the ring's last version. A node that takes no
		// routing asks an own view, which moves its version, once its
		// last view of any kind is ownViewEvery heartbeats old (one that
		// takes the routing moves it with the routing).
		current := routingRead || now.Sub(l.view.viewedAt) < ownViewEvery*c.cfg.heartbeat
		if l.rejoin.Swap(false) { // ask for the whole view again
			version, fresh, l.view.awaitRejoin = 0, false, true
		}
		released, by, _ := l.releases(now, c.releaseLead(l), c.cfg.drain, c.cfg.maxDrain)
		// All of them count as carried (nextRelease): those left out go
		// with the heartbeats the wake brings, a twentieth of a heartbeat
		// apart, not back to back.
		l.view.releasing = released
		if len(released) > room {
			released = released[:room]
			c.hb.wake(now) // more to confirm
		}
		room -= len(released)
		r := ringRequest{Ring: l.name, Size: l.size, VNodes: l.vnodes,
			Version: version, Released: released, Incoming: l.view.waiting, LaterIfBusy: true, SettleWake: true,
			OwnOnly: fresh && current && !l.view.waiting, OwnView: fresh, OwnerIDs: !fresh}
		if len(released) > 0 && by.After(now) {
			r.releaseBy, r.ReleaseAfterMS = by, releaseAfterMS(by, now) // and again as it goes (renew)
		}
		if look && r.Incoming && version == l.view.version {
			// Never past what else the schedule has to do: the wait holds
			// the node's one heartbeat.
			quiet := c.hb.quietFor(now)
			wait := min(lookAwait(l.view.incoming, now, c.hb.lastRTT, c.cfg.heartbeat), quiet)
			r.AwaitMS = wait.Milliseconds()
			if r.AwaitMS > 0 {
				r.AwaitReleaseMS = min(awaitOnItsWay(c.cfg.heartbeat), quiet).Milliseconds()
			}
		}
		rings = append(rings, r)
	}
	for _, r := range rings {
		if len(r.Released) > 0 { // a wait would hold them back from the nodes that wait for them
			for i := range rings {
				rings[i].AwaitMS, rings[i].AwaitReleaseMS = 0, 0
			}
			break
		}
	}
	return rings
}

// routingEvery is how often, at most, a node of a ring of the given
// members takes a view for its routing alone, in heartbeats: every 4, and
// on a ring of more than 1,000 members every members/250, so that the
// whole ring takes at most 250 such views a heartbeat. In a roll-out the
// ring's version moves with every join and release, and each move sent
// every member a view on its next heartbeat: the members times the
// heartbeats, which at 2,000 nodes took both cores of the server
// (BENCHMARKS.md, Scale); and a whole view's member list grows with the
// members. A change of what the node owns or waits for still comes with
// the next heartbeat.
func routingEvery(members int) int {
	return max(4, (members+routingViewsPerHeartbeat-1)/routingViewsPerHeartbeat)
}

// ownViewEvery is how often, in heartbeats, a node that takes no routing
// asks for an own view while nothing of its own changes, so that its
// version follows the ring's: ringRequests.
const ownViewEvery = 8

// routingViewsPerHeartbeat bounds the views a ring's members take for
// their routing alone, a heartbeat (routingEvery).
const routingViewsPerHeartbeat = 250

// ownOnly says whether a heartbeat at now asks only for what the node owns
// and waits for (ringRequest.OwnView, and OwnOnly unless it waits): its
// routing came at routedAt, within routingEvery(members) heartbeats. After a quiet
// spell the first change of the ring comes whole with the next heartbeat.
// A node that waits for partitions asks own views but not OwnOnly
// (ringRequests): its look waits in the database until the ring's version
// moves from the one it holds, and with a version left behind it would
// not wait at all. Own views keep the routing off a look's answer, which
// is on the handoff's path: in a roll-out of 10 nodes, each newcomer's
// look read the new owners of a ring of 4,096 in it, and the gaps were
// 1.048-1.075 s against 1.019-1.032 s without (drain 1 s; BENCHMARKS.md).
func ownOnly(routedAt, now time.Time, heartbeat time.Duration, members int) bool {
	return !routedAt.IsZero() && now.Sub(routedAt) < time.Duration(routingEvery(members))*heartbeat
}

// randomJitter is the schedule's jitter: uniform in [0, n].
func randomJitter(n time.Duration) time.Duration { return rand.N(n + 1) }

// maxReleasesPerHeartbeat bounds the releases one heartbeat confirms: a
// ring of 4,096 hands over everything in one (TestRollout: three
// heartbeats of 1,024 after the first made the last partitions wait
// 100-260 ms more).
const maxReleasesPerHeartbeat = 4096

// publish shows each lease's current view while the node is live, and
// nothing otherwise (see Lease.lose).
func (c *Client) publish(now time.Time) {
	live := c.hb.live(now)
	if !now.Before(c.hb.deadline) && !c.hb.lost && !c.hb.deadline.IsZero() {
		c.hb.lost = true
		c.lost.Store(true)
		c.st.lost()
		c.log.Warn("leasering: lease deadline passed without a renewal known to be on the database's disk; reporting nothing until the database answers")
	}
	// The deadline first: a reader that loads a snapshot published below
	// checks it against this deadline or a later one.
	until := time.Duration(0)
	if live {
		until = c.hb.deadline.Sub(c.epoch)
	}
	c.reportUntil.Store(int64(until))
	c.mu.Lock()
	leases := c.leaseList()
	c.mu.Unlock()
	for _, l := range leases {
		switch {
		case l.Err() != nil:
		case live:
			l.publish(l.view.current, ErrRevoked)
		default:
			l.lose(now)
		}
	}
}

// calls counts the database calls running off the loop (heartbeats,
// joins, view reads), including those past their timeout.
type calls struct {
	n  atomic.Int32
	wg sync.WaitGroup
}

func (k *calls) run(f func()) {
	k.n.Add(1)
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		defer k.n.Add(-1)
		f()
	}()
}

func (k *calls) running() int32 { return k.n.Load() }

// wait waits until no call runs, or ctx ends; it reports which.
func (k *calls) wait(ctx context.Context) bool {
	done := make(chan struct{})
	go func() {
		k.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}
