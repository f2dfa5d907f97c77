package leasering

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxStuckRenews bounds the heartbeat attempts left running after their
// timeout (a driver that ignores cancellation on a dead connection). Past
// it, the client waits for one to return before it tries again.
const maxStuckRenews = 4

const (
	stateNew = iota
	stateStarting
	stateStarted
	stateClosed
)

// Client is one node: it holds the node's lease in the database and the
// leases of the rings it joined. Create it with NewClient, then Start it.
// All methods are safe from any goroutine.
type Client struct {
	db          DB
	cfg         config
	log         *slog.Logger
	q           queries
	incarnation string

	mu     sync.Mutex
	state  int
	leases map[string]*Lease
	fatal  error // ErrFenced, once

	wake  chan struct{} // a heartbeat is wanted now
	ready chan error    // owned by the loop: Start waits on it until the node is up (see started)
	stop  chan struct{} // closed by Close
	done  chan struct{} // closed when the heartbeat loop has returned

	stuck atomic.Int32 // heartbeat calls running (including those past their timeout)

	attempts     context.Context // parent of every heartbeat call; cancelled by Close
	stopAttempts context.CancelFunc
	lost         atomic.Bool // the lease deadline passed without a renewal
	explicitTx   atomic.Bool // the database's default isolation is not READ COMMITTED: see inTx
	poolerLogged atomic.Bool // the advice for a pooler's errors was logged: see checkPooler
	dbClock      atomic.Pointer[dbClock]

	hb heartbeat // owned by the heartbeat loop (and by Start before it runs)
	st stats
}

// heartbeat is the loop's own state.
type heartbeat struct {
	deadline    time.Time // partitions may be reported before this
	holdUntil   time.Time // and not before this
	nextRenew   time.Time
	lastLaunch  time.Time
	scanAfter   time.Time // the earliest other lease end we were told of; zero: unknown
	otherExpiry time.Time // the same, estimated late: renew just after it
	probe       bool      // the last heartbeat went unanswered in time: extend nothing until one is
	woken       bool      // a heartbeat was asked for while one was in flight, or not yet launched
	failures    int       // consecutive
	lost        bool
	lastRTT     time.Duration // of the last successful heartbeat
	lastLease   time.Duration // the lease it was granted
	unlive      int           // while starting: answered heartbeats in a row that left no live lease
}

// NewClient makes a client on db. It checks every option and does no I/O.
func NewClient(db DB, opts ...Option) (*Client, error) {
	if err := checkDB(db); err != nil {
		return nil, err
	}
	cfg := defaultConfig()
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil option", ErrInvalidArgument)
		}
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	if err := cfg.finish(); err != nil {
		return nil, err
	}
	c := &Client{
		db:          db,
		cfg:         cfg,
		q:           newQueries(cfg.schema),
		incarnation: randomHex(8),
		leases:      map[string]*Lease{},
		wake:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
	}
	c.attempts, c.stopAttempts = context.WithCancel(context.Background())
	c.log = cfg.logger.With("node", cfg.nodeID)
	return c, nil
}

// ID is the node id.
func (c *Client) ID() string { return c.cfg.nodeID }

// Err returns ErrFenced once another process has taken this node id over,
// ErrClosed after Close, else nil.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fatal != nil {
		return c.fatal
	}
	if c.state == stateClosed {
		return ErrClosed
	}
	return nil
}

// Lease joins the ring called name, of size partitions, and returns this
// node's share of it. It does no I/O: the ring is joined on Start, or on the
// next heartbeat when the client already runs. A ring is created by its
// first member; later members must give the same size, or the lease fails
// with ErrRingSizeMismatch (from Start, or from Wait and Err).
//
// Opening the same ring twice with the same size and options returns the
// same Lease.
func (c *Client) Lease(name string, size int, opts ...LeaseOption) (*Lease, error) {
	if err := checkName("ring name", name); err != nil {
		return nil, err
	}
	if err := checkRingSize(size); err != nil {
		return nil, err
	}
	lc := leaseConfig{vnodes: DefaultVNodes}
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil lease option", ErrInvalidArgument)
		}
		if err := opt(&lc); err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateClosed {
		return nil, ErrClosed
	}
	if c.fatal != nil {
		return nil, c.fatal
	}
	if l, ok := c.leases[name]; ok {
		if l.size != size || l.vnodes != lc.vnodes {
			return nil, fmt.Errorf("%w: ring %q is already open with size %d and %d vnodes", ErrInvalidArgument, name, l.size, l.vnodes)
		}
		return l, nil
	}
	l := newLease(c, name, size, lc.vnodes)
	c.leases[name] = l
	c.wakeUp()
	return l, nil
}

// Start creates or checks the schema, joins the node and its rings and
// makes the first heartbeat, then keeps renewing in the background until
// Close. When Start returns nil, the leases show their first assignment.
func (c *Client) Start(ctx context.Context) error {
	c.mu.Lock()
	switch c.state {
	case stateClosed:
		c.mu.Unlock()
		return ErrClosed
	case stateStarting, stateStarted:
		c.mu.Unlock()
		return ErrAlreadyStarted
	}
	c.state = stateStarting
	c.mu.Unlock()

	err := c.join(ctx)
	c.mu.Lock()
	if c.state == stateClosed { // Close ran meanwhile
		c.mu.Unlock()
		if err == nil {
			_ = c.leave(context.Background())
		}
		return ErrClosed
	}
	if err != nil {
		c.state = stateNew
		c.mu.Unlock()
		return err
	}
	c.state = stateStarted
	leases := c.leaseList()
	c.mu.Unlock()

	// The loop joins the rings and reads their views, each in a statement
	// of its own, while it keeps the lease; Start waits until every lease
	// shows its first view and the node is live.
	ready := make(chan error, 1)
	c.ready = ready
	c.started(time.Now(), true) // the first heartbeat may have done it all
	applied := make(chan struct{})
	go c.run(applied)
	<-applied
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err == nil {
		for _, l := range leases {
			if lerr := l.Err(); errors.Is(lerr, ErrRingSizeMismatch) {
				err = lerr
				break
			}
		}
	}
	if err != nil {
		// The node has joined: leave, so that nobody waits for its lease.
		if cerr := c.Close(); cerr != nil {
			c.log.Warn("leasering: leaving after a failed start failed; the lease will lapse", "err", cerr)
		}
		return startError(err)
	}
	c.log.Info("leasering: node started", "incarnation", c.incarnation, "ttl", c.cfg.ttl, "heartbeat", c.cfg.heartbeat)
	return nil
}

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
			case <-time.After(backoff/2 + rand.N(backoff/2+1)):
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
		return startError(c.checkPooler(err))
	}
}

// startError prefixes err once: errors that already say they are
// leasering's keep their text.
func startError(err error) error {
	if strings.HasPrefix(err.Error(), "leasering: ") {
		return err
	}
	return fmt.Errorf("leasering: start: %w", err)
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
	res := c.renew(hbCtx, c.ringRequests(time.Now()), true, true, false)
	cancel()
	if res.err != nil {
		if errors.Is(res.err, ErrRingSizeMismatch) {
			return true, res.err
		}
		return true, fmt.Errorf("first heartbeat: %w", res.err)
	}
	if res.status == statusFenced { // only if a newer incarnation raced us
		return true, ErrFenced
	}
	c.hb.lastLaunch = res.sent
	c.apply(res)
	return true, nil
}

// started is the loop's check, after each event, for the Start that waits
// on c.ready: every lease joined and read and the node live sends nil;
// heartbeats that leave no live lease, maxUnliveStarts times in a row,
// send why.
func (c *Client) started(now time.Time, heartbeat bool) {
	if c.ready == nil || c.startPending() {
		return
	}
	if now.Before(c.hb.deadline) {
		c.ready <- nil
		c.ready = nil
		return
	}
	if !heartbeat || c.hb.failures > 0 {
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
		if !l.joinBusy && (l.needJoin || l.needView || l.version == 0) {
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

// Close stops reporting partitions at once, then leaves every ring so the
// other nodes take over on their next heartbeat. It waits at most
// min(TTL, 5s) for the database; if that passes, the lease simply lapses.
// Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	prev := c.state
	if prev == stateClosed {
		c.mu.Unlock()
		return nil
	}
	c.state = stateClosed
	fenced := c.fatal != nil
	leases := c.leaseList()
	c.mu.Unlock()

	if prev == stateStarted {
		close(c.stop)
		<-c.done // the loop never waits on I/O, so this is quick
	}
	for _, l := range leases {
		l.fail(ErrClosed) // stop reporting before the database frees them
	}
	if prev != stateStarted || fenced {
		return nil
	}
	timeout := min(c.cfg.ttl, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// A heartbeat still in flight must not land after the leave: it would
	// find the node gone and join again. Cancel them and let them finish.
	c.stopAttempts()
	for c.stuck.Load() > 0 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.leave(ctx) }()
	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("leasering: close: leave: %w", err)
		}
		c.log.Info("leasering: node left")
		names := make([]string, len(leases))
		for i, l := range leases {
			names[i] = l.name
		}
		c.announce(ringsJSON(names...))
		return nil
	case <-ctx.Done():
		return fmt.Errorf("leasering: close: leave did not finish in %v; the lease will lapse", timeout)
	}
}

func (c *Client) leave(ctx context.Context) error {
	return c.inTx(ctx, c.db, func(q DB) error {
		_, err := q.ExecContext(ctx, c.q.leave, c.cfg.nodeID, c.incarnation)
		return err
	})
}

// leaseList returns the open leases in name order. Caller holds c.mu.
func (c *Client) leaseList() []*Lease {
	out := make([]*Lease, 0, len(c.leases))
	for _, l := range c.leases {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// Wake asks for a heartbeat now rather than at the next tick. A notifier
// calls it when the database announces a ring change (see the pqnotify
// package); calling it often is harmless: wakes coalesce, and at most one
// heartbeat is in flight.
func (c *Client) Wake() { c.wakeUp() }

// NotifyChannel is the LISTEN channel on which the database announces the
// rings that changed in this client's schema (the payload is the ring's
// name).
func (c *Client) NotifyChannel() string { return "leasering:" + c.cfg.schema }

func (c *Client) wakeUp() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// ringRequests builds the heartbeat's argument.
//
// A heartbeat confirms at most maxReleasesPerHeartbeat releases: each is a
// row the database rewrites inside the heartbeat, and a node handing over
// half of a ring of 65,536 has 32,768. The rest go with the next
// heartbeats, which the loop sends at once (the wake spacing, a twentieth
// of a heartbeat, apart).
func (c *Client) ringRequests(now time.Time) []ringRequest {
	c.mu.Lock()
	leases := c.leaseList()
	c.mu.Unlock()
	rings := make([]ringRequest, 0, len(leases))
	room := maxReleasesPerHeartbeat
	for _, l := range leases {
		version := l.version
		if l.rejoin.Swap(false) { // after a resign: ask for the whole view again
			version, l.awaitRejoin = 0, true
		}
		released := l.released(now, c.cfg.drain, c.cfg.maxDrain)
		if len(released) > room {
			released = released[:room]
			c.hb.woken = true // more to confirm
		}
		room -= len(released)
		rings = append(rings, ringRequest{Ring: l.name, Size: l.size, VNodes: l.vnodes,
			Version: version, Released: released})
	}
	return rings
}

// maxReleasesPerHeartbeat bounds the releases one heartbeat confirms.
const maxReleasesPerHeartbeat = 1024

// attempt is one heartbeat call in flight.
type attempt struct {
	result  chan renewResult
	timeout time.Time
}

// run is the heartbeat loop. It never blocks on the database: each call
// runs in its own goroutine, and the loop keeps the fencing deadline even
// while a call hangs.
// Start has applied its heartbeats already.
func (c *Client) run(applied chan<- struct{}) {
	defer close(c.done)
	defer func() {
		if c.ready != nil { // a Start still waits: fenced or closed meanwhile
			err := c.Err()
			if err == nil {
				err = ErrClosed
			}
			c.ready <- err
			c.ready = nil
		}
	}()
	c.publish(time.Now())
	close(applied)

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var inflight *attempt
	var joining chan joinResult // a join_rings call in flight
	var joinAfter time.Time     // after a failed join, not before this
	var viewing chan viewResult // a read_views call in flight
	var viewAfter time.Time
	for {
		now := time.Now()
		if inflight != nil && !now.Before(inflight.timeout) {
			inflight = nil
			c.hb.probe = true
			c.failed(now, fmt.Errorf("heartbeat timed out after %v", c.cfg.renewTimeout))
		}
		if c.hb.woken && inflight == nil {
			// A wake (a new lease, an Unlock, a change announced by the
			// database) brings the next heartbeat forward, but never to
			// less than a twentieth of a heartbeat after the last one, so a
			// storm of announcements cannot multiply the load.
			c.hb.woken = false
			t := c.hb.lastLaunch.Add(c.cfg.heartbeat / 20)
			if t.Before(now) {
				t = now
			}
			if t.Before(c.hb.nextRenew) {
				c.hb.nextRenew = t
			}
		}
		if inflight == nil && !now.Before(c.hb.nextRenew) {
			if c.stuck.Load() < maxStuckRenews {
				inflight = c.launch(now)
			} else {
				c.hb.nextRenew = now.Add(c.cfg.heartbeat)
			}
		}
		if joining == nil && !now.Before(joinAfter) {
			if rings := c.joinRequests(); len(rings) > 0 {
				joining = c.launchJoin(rings)
			}
		}
		if viewing == nil && !now.Before(viewAfter) {
			if rings := c.viewRequests(); len(rings) > 0 {
				viewing = c.launchViews(rings)
			}
		}
		c.publish(now)
		if c.Err() != nil {
			return
		}
		c.started(now, false)

		wait := c.nextWake(now, inflight)
		if joining == nil && joinAfter.After(now) {
			wait = min(wait, joinAfter.Sub(now))
		}
		if viewing == nil && viewAfter.After(now) {
			wait = min(wait, viewAfter.Sub(now))
		}
		timer.Reset(wait)
		var results chan renewResult
		if inflight != nil {
			results = inflight.result
		}
		select {
		case <-c.stop:
			return
		case <-c.wake:
			c.hb.woken = true
		case <-timer.C:
		case res := <-results:
			inflight = nil
			c.apply(res)
			c.started(time.Now(), res.err == nil && !res.probe)
		case res := <-joining:
			joining = nil
			switch {
			case res.err != nil:
				c.log.Warn("leasering: joining rings failed; retrying", "err", res.err)
				joinAfter = time.Now().Add(c.cfg.heartbeat / 2)
			case res.notLive:
				joinAfter = time.Now().Add(c.cfg.heartbeat / 2) // a heartbeat rejoins first
			case c.joined(res):
				c.hb.woken = true // the next heartbeat reads their views
			default:
				joinAfter = time.Now().Add(c.cfg.heartbeat / 2) // every ring was busy
			}
		case res := <-viewing:
			viewing = nil
			if res.err != nil {
				c.log.Warn("leasering: reading ring views failed; retrying", "err", res.err)
			}
			c.viewed(res, time.Now())
			if len(c.viewRequests()) > 0 {
				viewAfter = time.Now().Add(c.cfg.heartbeat / 2) // busy, not live, or failed
			}
		}
	}
}

func (c *Client) launch(now time.Time) *attempt {
	c.hb.lastLaunch = now
	a := &attempt{result: make(chan renewResult, 1), timeout: now.Add(c.cfg.renewTimeout)}
	rings := c.ringRequests(now)
	// Other leases only move later while their nodes live, so until the
	// earliest end we were told of has passed a scan would find nothing to
	// evict.
	scan := c.hb.scanAfter.IsZero() || !now.Before(c.hb.scanAfter)
	probe := c.hb.probe
	c.stuck.Add(1)
	go func() {
		defer c.stuck.Add(-1)
		ctx, cancel := context.WithTimeout(c.attempts, c.cfg.renewTimeout)
		defer cancel()
		a.result <- c.renew(ctx, rings, false, scan, probe)
	}()
	return a
}

// nextWake is how long the loop may sleep: until the next heartbeat, the
// fencing deadline, the end of a hold, or the current attempt's timeout.
func (c *Client) nextWake(now time.Time, inflight *attempt) time.Duration {
	next := c.hb.nextRenew
	if inflight != nil {
		next = inflight.timeout
	}
	for _, t := range []time.Time{c.hb.deadline, c.hb.holdUntil} {
		if t.After(now) && t.Before(next) {
			next = t
		}
	}
	return max(next.Sub(now), 0)
}

// apply takes one heartbeat's result.
func (c *Client) apply(res renewResult) {
	now := time.Now()
	if res.err != nil {
		if res.recv.Sub(res.sent) >= c.cfg.renewTimeout || errors.Is(res.err, context.DeadlineExceeded) {
			c.hb.probe = true
		}
		c.failed(now, res.err)
		return
	}
	if res.probe {
		c.probed(now, res)
		return
	}
	if res.status == statusLapsed { // it arrived too late to extend the lease, which has run out
		c.failed(now, errors.New("leasering: heartbeat reached the database too late to extend the lease"))
		return
	}
	switch res.status {
	case statusFenced:
		c.log.Error("leasering: node id taken over by another process; stopping", "other_incarnation", res.other)
		c.mu.Lock() // the leases fail before Err reports the fencing
		for _, l := range c.leaseList() {
			l.fail(fmt.Errorf("%w: node %q now belongs to incarnation %s", ErrFenced, c.cfg.nodeID, res.other))
		}
		c.fatal = ErrFenced
		c.mu.Unlock()
		return
	case statusRejoined:
		c.log.Warn("leasering: lease had lapsed; rejoined")
	}
	if c.hb.failures > 0 {
		c.log.Info("leasering: heartbeat recovered", "failed_attempts", c.hb.failures)
	}
	c.hb.failures = 0
	c.hb.lastRTT, c.hb.lastLease = res.recv.Sub(res.sent), res.lease
	c.hb.deadline = res.sent.Add(res.lease - c.fenceMargin())
	views := 0 // counted below
	defer func() { c.st.addViews(views) }()
	c.st.renewed(res, c.hb.deadline, 0)
	c.announce(res.announce)
	c.hb.holdUntil = res.recv.Add(res.hold)
	if c.hb.lost && c.hb.deadline.After(now) {
		c.hb.lost = false
		c.lost.Store(false)
		c.log.Info("leasering: lease regained")
	}

	c.mu.Lock()
	for _, ch := range res.changes {
		l, ok := c.leases[ch.Ring]
		if !ok {
			continue
		}
		switch ch.Status {
		case ringSizeMismatch:
			c.sizeMismatch(l, ch.Size)
			continue
		case ringToJoin:
			// Not a member (evicted while cut off, the answer that said
			// "rejoined" lost on the way) or not reclaimed by this
			// incarnation yet: whatever the last view gave may be another
			// node's now. Report nothing of the ring until a fresh view.
			l.forget()
			l.needJoin = true // the loop joins it, then a heartbeat reads its view
			continue
		case ringLater:
			c.hb.woken = true // the next heartbeat brings the view
			continue
		case ringView:
			l.needView = true // the loop reads it with read_views
			continue
		}
		views++
		before := len(l.current.values)
		l.applyView(ch, now)
		c.log.Debug("leasering: ring changed", "ring", ch.Ring, "version", ch.Version,
			"owned_before", before, "owned", len(l.current.values), "revoking_partitions", ch.Revoking, "partitions", l.current.values)
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
	leases := c.leaseList()
	c.mu.Unlock()

	c.hb.nextRenew = res.sent.Add(c.cfg.heartbeat)
	if res.scanned {
		// No other node: scan every time (it is cheap then).
		c.hb.scanAfter, c.hb.otherExpiry = time.Time{}, time.Time{}
		if res.nextExpiry >= 0 {
			// The earliest other lease end, early and late estimates.
			c.hb.scanAfter = res.sent.Add(res.nextExpiry)
			c.hb.otherExpiry = res.recv.Add(res.nextExpiry)
		}
	}
	if !c.hb.otherExpiry.IsZero() {
		// Another node's lease ends before our next heartbeat: renew (and
		// scan) just after, so that if it died we take over at once. The
		// jitter keeps the survivors from all arriving in the same instant.
		t := c.hb.otherExpiry.Add(time.Millisecond)
		t = maxTime(t, res.recv.Add(c.cfg.heartbeat/20)).Add(rand.N(c.cfg.heartbeat/10 + 1))
		if t.Before(c.hb.nextRenew) {
			c.hb.nextRenew = t
		}
	}
	for _, l := range leases {
		if t, ok := l.nextDrainEnd(now, c.cfg.drain, c.cfg.maxDrain); ok && t.Before(c.hb.nextRenew) {
			c.hb.nextRenew = t // confirm releases as soon as the drain is over
		}
		if l.releaseNow {
			// Once per such view (a release that fails waits for the
			// next heartbeat like any other).
			l.releaseNow = false
			c.hb.nextRenew = now
		}
		if len(l.revokedAt) > 0 && c.hb.holdUntil.After(now) && c.hb.holdUntil.Before(c.hb.nextRenew) {
			// Releases sent during a hold only mark the partitions; one
			// sent once it is over hands them on. Scans hand them on too,
			// but may miss a mark still being written as the hold ends.
			c.hb.nextRenew = c.hb.holdUntil.Add(time.Millisecond)
		}
	}
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("leasering: heartbeat", "status", res.status, "round_trip", res.recv.Sub(res.sent),
			"lease", res.lease, "scanned", res.scanned, "next_event_in", res.nextExpiry, "next_renew_in", c.hb.nextRenew.Sub(now))
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// probed takes a probe's answer: it came back in time, so the database is
// within reach again and the next heartbeat, at once, renews (or rejoins,
// if the lease lapsed meanwhile).
func (c *Client) probed(now time.Time, res renewResult) {
	c.hb.probe = false
	c.hb.nextRenew = now
	c.log.Debug("leasering: probe answered in time; renewing", "status", res.status, "lease_left", res.lease)
}

// failed records a failed heartbeat and schedules a retry with jittered
// exponential backoff, capped at one heartbeat.
func (c *Client) failed(now time.Time, err error) {
	c.hb.failures++
	c.st.failed()
	c.checkPooler(err)
	if c.hb.failures == 1 || c.hb.failures%10 == 0 {
		c.log.Warn("leasering: heartbeat failed", "err", err, "attempts", c.hb.failures,
			"lease_left", max(c.hb.deadline.Sub(now), 0))
	}
	backoff := c.cfg.heartbeat / 8 << min(c.hb.failures-1, 3)
	backoff = min(backoff, c.cfg.heartbeat)
	c.hb.nextRenew = now.Add(backoff/2 + rand.N(backoff/2+1))
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

// ringsJSON is names as a JSON array.
func ringsJSON(names ...string) string {
	b, _ := json.Marshal(names)
	return string(b)
}

// lostCause is ErrLeaseLost while the lease deadline has passed without a
// renewal, else nil.
func (c *Client) lostCause() error {
	if c != nil && c.lost.Load() {
		return ErrLeaseLost
	}
	return nil
}

// fenceMargin is how long before the granted lease ends the client stops
// reporting: it covers timer lateness and clock rate differences.
func (c *Client) fenceMargin() time.Duration { return c.cfg.ttl / 10 }

// publish shows each lease's current view while the lease is live, and
// nothing otherwise.
func (c *Client) publish(now time.Time) {
	live := now.Before(c.hb.deadline) && !now.Before(c.hb.holdUntil)
	if !now.Before(c.hb.deadline) && !c.hb.lost && !c.hb.deadline.IsZero() {
		c.hb.lost = true
		c.lost.Store(true)
		c.st.lost()
		c.log.Warn("leasering: lease deadline passed without a renewal; reporting nothing until the database answers")
	}
	c.mu.Lock()
	leases := c.leaseList()
	c.mu.Unlock()
	for _, l := range leases {
		if l.Err() != nil {
			continue
		}
		if live {
			l.publish(l.current, ErrRevoked)
		} else {
			l.publish(emptySnapshot, ErrLeaseLost)
		}
	}
}

// WithRing runs fn with this process's share of one ring, for programs that
// need only one: it joins the ring (starting a client with opts), calls fn
// with the lease, and leaves when fn returns. It returns fn's error, or why
// the ring could not be joined.
func WithRing(ctx context.Context, db DB, name string, size int, fn func(ctx context.Context, lease *Lease) error, opts ...Option) error {
	if fn == nil {
		return fmt.Errorf("%w: fn is nil", ErrInvalidArgument)
	}
	c, err := NewClient(db, opts...)
	if err != nil {
		return err
	}
	lease, err := c.Lease(name, size)
	if err != nil {
		return err
	}
	if err := c.Start(ctx); err != nil {
		return err
	}
	defer c.Close()
	return fn(ctx, lease)
}
