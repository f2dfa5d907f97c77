package leasering

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Client is one node: it holds the node's lease in the database and the
// leases of the rings it joined. Create it with NewClient, then Start it.
// All methods are safe from any goroutine.
//
// # States
//
// A node is in one of these states. new, starting and closed are
// Client.state, fenced is Client.fatal; held, live, late, probing and
// lapsed are the heartbeat schedule's (schedule.state, in the Debug log
// of each heartbeat); rejoining is each lease's, until its view comes
// again (Lease.forget).
//
//	state      its leases report            it leaves for
//	---------  ---------------------------  ---------------------------------------------
//	new        nothing                      starting: Start
//	starting   each view as it comes        live (or held): every lease has its first
//	                                        view and the lease runs; new: Start fails
//	held       nothing                      live: the hold ends (the node id was taken
//	                                        over from a process whose lease still ran)
//	live       their views                  late: a heartbeat fails; probing: one times
//	                                        out; lapsed: the deadline passes
//	late       their views                  live: an answer; probing: a timeout;
//	                                        lapsed: the deadline passes
//	probing    their views                  live: a probe answered in time, then a
//	                                        renewal at once; lapsed: the deadline passes
//	lapsed     nothing (ErrLeaseLost)       live: a renewal answered "ok"; rejoining:
//	                                        answered "rejoined" (the database had
//	                                        evicted the node)
//	rejoining  rings with a fresh view      live: every ring's fresh view has come
//	fenced     nothing, for good            (another process took the node id over)
//	closed     nothing, for good            (Close)
//
// Any state but new goes to fenced on a "fenced" answer, and to closed on
// Close. The deadline is the send time of the last renewal plus the lease
// the database granted, less TTL/10.
type Client struct {
	db          DB
	cfg         config
	log         *slog.Logger
	q           queries
	incarnation string
	clock       clock

	mu     sync.Mutex // guards state, leases and fatal
	state  int
	leases map[string]*Lease
	fatal  error // ErrFenced, once

	wake  chan struct{} // a heartbeat is wanted now
	ready chan error    // owned by the loop: Start waits on it until the node is up (see started)
	stop  chan struct{} // closed by Close
	done  chan struct{} // closed when the heartbeat loop has returned

	calls        calls           // database calls running off the loop
	attempts     context.Context // parent of those calls; cancelled by Close
	stopAttempts context.CancelFunc
	lost         atomic.Bool // the lease deadline passed without a renewal
	explicitTx   atomic.Bool // the database's default isolation is not READ COMMITTED: see inTx
	poolerLogged atomic.Bool // the advice for a pooler's errors was logged: see checkPooler
	dbClock      dbClock     // the database's clock, estimated from the answers

	// reportUntil is the lease deadline while the node is live, as time
	// since epoch on the client's clock, and 0 while it is not. Every read
	// of a lease checks it: the loop hides the partitions at the deadline
	// too, but a loop the scheduler holds up (a starved process, a CPU
	// quota, a long GC assist) would show them past it, after the database
	// may have let the lease lapse.
	epoch       time.Time
	reportUntil atomic.Int64

	hb heartbeat // owned by the heartbeat loop (and by Start before it runs)
	st stats
}

// Lifecycle states (Client.state).
const (
	stateNew = iota
	stateStarting
	stateStarted
	stateClosed
)

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
	return newClient(db, cfg, systemClock{}), nil
}

func newClient(db DB, cfg config, clk clock) *Client {
	c := &Client{
		db:          db,
		cfg:         cfg,
		q:           newQueries(cfg.schema),
		incarnation: randomHex(8),
		clock:       clk,
		leases:      map[string]*Lease{},
		wake:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
		dbClock:     dbClock{window: cfg.ttl},
		epoch:       clk.Now(),
	}
	c.hb.schedule = schedule{heartbeat: cfg.heartbeat, margin: c.fenceMargin(), asyncFloor: asyncFloor(cfg.ttl), jitter: randomJitter}
	c.attempts, c.stopAttempts = context.WithCancel(context.Background())
	c.log = cfg.logger.With("node", cfg.nodeID)
	return c
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
	go c.run()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = fmt.Errorf("leasering: start: %w", ctx.Err())
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
		return err
	}
	c.log.Info("leasering: node started", "incarnation", c.incarnation, "ttl", c.cfg.ttl, "heartbeat", c.cfg.heartbeat)
	return nil
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
	expired := c.clock.After(timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// A heartbeat still in flight must not land after the leave: it would
	// find the node gone and join again. Cancel them and let them finish.
	c.stopAttempts()
	errc := make(chan error, 1)
	go func() {
		if !c.calls.wait(ctx) {
			errc <- ctx.Err()
			return
		}
		errc <- c.leave(ctx)
	}()
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
	case <-expired:
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

// lostCause is ErrLeaseLost while the lease deadline has passed without a
// renewal, else nil.
func (c *Client) lostCause() error {
	if c != nil && c.lost.Load() {
		return ErrLeaseLost
	}
	return nil
}

// reporting reports whether the node may report partitions now: before
// the deadline the loop last published (see reportUntil).
func (c *Client) reporting() bool {
	return c.clock.Since(c.epoch) < time.Duration(c.reportUntil.Load())
}

// fenceMargin is how long before the granted lease ends the client stops
// reporting: it covers clock rate differences and the time a caller takes
// to act on a read (the reads check the deadline themselves, so the loop's
// lateness no longer counts against it).
func (c *Client) fenceMargin() time.Duration { return c.cfg.ttl / 10 }

func (c *Client) wakeUp() {
	select {
	case c.wake <- struct{}{}:
	default:
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
