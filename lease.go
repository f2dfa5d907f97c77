package leasering

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// snapshot is one immutable view of what a lease may use. Readers load it
// with one atomic pointer read; the heartbeat loop replaces it whole.
type snapshot struct {
	values []int    // owned partitions, sorted
	epochs []int64  // epochs[i] is the fencing token of values[i]
	bits   []uint64 // bit p set when p is in values
}

var emptySnapshot = &snapshot{}

func newSnapshot(size int, values []int, epochs []int64) *snapshot {
	if len(values) == 0 {
		return emptySnapshot
	}
	s := &snapshot{values: values, epochs: epochs, bits: make([]uint64, (size+63)/64)}
	for _, p := range values {
		s.bits[p/64] |= 1 << (uint(p) % 64)
	}
	return s
}

// Lease is this node's share of one ring. All of its methods are safe from
// any goroutine; the read methods cost an atomic load and never block.
type Lease struct {
	c      *Client
	name   string
	size   int
	vnodes int

	snap  atomic.Pointer[snapshot]
	route atomic.Pointer[routeTable]

	mu      sync.Mutex
	err     error         // set once the lease has failed for good
	changed chan struct{} // closed and replaced on every new snapshot or error

	lockMu   sync.Mutex
	locks    map[string]*heldLock
	held     map[int]int   // partition -> locks held on its keys
	lockFree chan struct{} // closed and replaced on every Unlock

	changesOnce sync.Once
	changes     chan Change

	pubMu sync.Mutex // orders publish against resign; guards hidden
	// hidden is what was reported until the lease was lost, and when: a
	// partition revoked meanwhile still drains from then, and waits for
	// its locks (their contexts ended, but the holders may still work).
	hidden struct {
		snap *snapshot
		at   time.Time
	}
	paused      atomic.Bool // resigning: report nothing until a fresh view comes
	rejoin      atomic.Bool // the next heartbeat asks for the whole view
	awaitRejoin bool        // owned by the loop: that request is in flight

	// Owned by the heartbeat loop.
	needJoin  bool              // the last heartbeat said this node is not a member: join_rings
	joinBusy  bool              // and join_rings could not lock the ring in time: it tries again later
	needView  bool              // the last heartbeat said the view is big: read_views
	version   int64             // ring version of view, 0 before the first
	current   *snapshot         // what the view allows, published while the lease is live
	revokedAt map[int]time.Time // partitions to give up, and when we first heard (zero: not reported, no drain)
	// releaseNow is set when a view revokes a partition this node is not
	// reporting: nothing can be using it, so the next heartbeat goes at once
	// and carries its release without a drain.
	releaseNow bool
}

func newLease(c *Client, name string, size, vnodes int) *Lease {
	l := &Lease{c: c, name: name, size: size, vnodes: vnodes,
		changed: make(chan struct{}), current: emptySnapshot, revokedAt: map[int]time.Time{},
		locks: map[string]*heldLock{}, held: map[int]int{}, lockFree: make(chan struct{})}
	l.snap.Store(emptySnapshot)
	l.route.Store(emptyRoute)
	return l
}

// Name is the ring's name.
func (l *Lease) Name() string { return l.name }

// Size is the ring's number of partitions.
func (l *Lease) Size() int { return l.size }

// Values returns the partitions this node owns now, sorted. It is empty
// while the client is not sure of its lease (not yet started, cut off from
// the database, closed). The slice is shared: do not modify it. Call it as
// often as you like; it costs one atomic load.
func (l *Lease) Values() []int { return l.snap.Load().values }

// Owns reports whether this node owns partition p now.
func (l *Lease) Owns(p int) bool { return l.snap.Load().has(p) }

func (s *snapshot) has(p int) bool {
	if p < 0 || p/64 >= len(s.bits) {
		return false
	}
	return s.bits[p/64]&(1<<(uint(p)%64)) != 0
}

// PartitionOf returns the partition key falls in on this ring.
func (l *Lease) PartitionOf(key string) int { return PartitionOf(key, l.size) }

// OwnsKey reports whether this node owns key's partition now.
func (l *Lease) OwnsKey(key string) bool { return l.Owns(PartitionOf(key, l.size)) }

// Partition is an owned partition and its fencing token.
type Partition struct {
	Partition int
	Epoch     int64
}

// Partitions returns the owned partitions with their epochs, sorted.
func (l *Lease) Partitions() []Partition {
	s := l.snap.Load()
	out := make([]Partition, len(s.values))
	for i, p := range s.values {
		out[i] = Partition{Partition: p, Epoch: s.epochs[i]}
	}
	return out
}

// Epoch returns the fencing token of an owned partition: it grows on every
// change of owner, and the SQL function holds(ring, partition, epoch) is
// true only for the current live owner.
func (l *Lease) Epoch(p int) (int64, bool) {
	s := l.snap.Load()
	i := sort.SearchInts(s.values, p)
	if i == len(s.values) || s.values[i] != p {
		return 0, false
	}
	return s.epochs[i], true
}

// Err returns why the lease stopped for good (ErrRingSizeMismatch,
// ErrFenced, ErrClosed), or nil while it is working.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Wait blocks until the lease owns at least one partition, the lease fails
// (its error is returned), or ctx ends. A node can own nothing when a ring
// has fewer partitions than members; Wait then waits for ctx.
func (l *Lease) Wait(ctx context.Context) error {
	for {
		l.mu.Lock()
		err, ch := l.err, l.changed
		l.mu.Unlock()
		if err != nil {
			return err
		}
		if len(l.Values()) > 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// publish makes s the visible snapshot, then cancels the locks on
// partitions it lacks with cause. Called by the heartbeat loop only.
func (l *Lease) publish(s *snapshot, cause error) {
	l.pubMu.Lock()
	defer l.pubMu.Unlock()
	if l.paused.Load() {
		s, cause = emptySnapshot, ErrRevoked
	}
	old := l.snap.Load()
	if old == s {
		return
	}
	switch {
	case cause == ErrLeaseLost && old != emptySnapshot:
		l.hidden.snap, l.hidden.at = old, time.Now()
	case s != emptySnapshot:
		l.hidden.snap = nil
	}
	l.snap.Store(s)
	l.cancelLocks(s, cause)
	l.notify()
}

// fail stops the lease for good with err and hides its partitions.
func (l *Lease) fail(err error) {
	l.snap.Store(emptySnapshot)
	l.cancelLocks(emptySnapshot, err)
	l.mu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.mu.Unlock()
	l.notify()
}

func (l *Lease) notify() {
	l.mu.Lock()
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// applyView takes the database's view of this ring. Partitions being handed
// over are kept out of the visible snapshot from this moment.
func (l *Lease) applyView(v ringChange, now time.Time) {
	l.version = v.Version
	revoking := make(map[int]bool, len(v.Revoking))
	for _, p := range v.Revoking {
		revoking[p] = true
		if _, ok := l.revokedAt[p]; !ok {
			at := l.reportedUntil(p, now)
			if at.IsZero() && l.lockHeld(p) {
				at = now // a lock taken before: its holder may still work
			}
			// Zero: never reported (given and retargeted before this node
			// heard, or given during a hold). Nothing to drain.
			l.revokedAt[p] = at
			l.releaseNow = l.releaseNow || at.IsZero()
		}
	}
	for p := range l.revokedAt {
		if !revoking[p] {
			delete(l.revokedAt, p)
		}
	}
	values := make([]int, 0, len(v.Partitions))
	epochs := make([]int64, 0, len(v.Partitions))
	for i, p := range v.Partitions {
		if p < 0 || p >= l.size || i >= len(v.Epochs) || revoking[p] {
			continue
		}
		values = append(values, p)
		epochs = append(epochs, v.Epochs[i])
	}
	l.current = newSnapshot(l.size, values, epochs)
	route := l.route.Load().update(l.size, v)
	if route == emptyRoute && v.MemberIDs != nil {
		l.rejoin.Store(true) // a member this node never heard of: ask for the whole view
	}
	l.route.Store(route)
	if l.awaitRejoin && v.Version > 0 {
		l.awaitRejoin = false
		l.paused.Store(false) // this view was read after the resign
	}
}

// reportedUntil is when the node stopped reporting partition p: now if it
// still does, when the lease was lost if it did until then, zero if never.
func (l *Lease) reportedUntil(p int, now time.Time) time.Time {
	if l.snap.Load().has(p) {
		return now
	}
	l.pubMu.Lock()
	defer l.pubMu.Unlock()
	if l.hidden.snap != nil && l.hidden.snap.has(p) {
		return l.hidden.at
	}
	return time.Time{}
}

// forget drops the lease's view after its node's lease lapsed: it reports
// nothing, and the next heartbeat asks for the whole view.
func (l *Lease) forget() {
	l.version = 0
	l.current = emptySnapshot
	clear(l.revokedAt)
	l.pubMu.Lock()
	l.hidden.snap = nil
	l.pubMu.Unlock()
}

// resign stops reporting at once, leaves the ring so that the others take
// its partitions now, and rejoins on the next heartbeat with nothing.
func (l *Lease) resign(ctx context.Context) error {
	if l.c == nil {
		return ErrNotStarted
	}
	l.pubMu.Lock()
	l.paused.Store(true)
	l.pubMu.Unlock()
	l.publish(emptySnapshot, ErrRevoked)
	if err := l.c.inTx(ctx, l.c.db, func(q DB) error {
		_, err := q.ExecContext(ctx, l.c.q.leaveRing, l.c.cfg.nodeID, l.c.incarnation, l.name)
		return err
	}); err != nil {
		l.rejoin.Store(true) // the lease stays paused until a view after this point
		l.c.wakeUp()
		return fmt.Errorf("leasering: resign %q: %w", l.name, err)
	}
	l.rejoin.Store(true)
	l.c.wakeUp()
	l.c.announce(ringsJSON(l.name))
	return nil
}

// released lists the revoked partitions that may be confirmed released.
func (l *Lease) released(now time.Time, drain, maxDrain time.Duration) []int {
	var out []int
	for p, at := range l.revokedAt {
		if l.releasable(p, at, now, drain, maxDrain) {
			out = append(out, p)
		}
	}
	sort.Ints(out)
	return out
}

// nextDrainEnd is the earliest time a revoked partition not yet releasable
// becomes so (Unlock wakes the loop sooner when a lock was the reason).
func (l *Lease) nextDrainEnd(now time.Time, drain, maxDrain time.Duration) (time.Time, bool) {
	var first time.Time
	for p, at := range l.revokedAt {
		t := at.Add(drain)
		if !t.After(now) && l.lockHeld(p) {
			t = at.Add(maxDrain)
		}
		if !t.After(now) {
			continue // releasable now: the next heartbeat carries it
		}
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	return first, !first.IsZero()
}
