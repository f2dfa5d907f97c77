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
// with one atomic pointer read (and check the lease deadline, see shown);
// the heartbeat loop replaces it whole.
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
// any goroutine; the read methods cost two atomic loads and a read of the
// clock, and never block.
type Lease struct {
	c      *Client // nil for a Lease tested alone
	name   string
	size   int
	vnodes int

	snap  atomic.Pointer[snapshot]   // what Values and Owns report
	route atomic.Pointer[routeTable] // what Owner and Successors read

	// mu guards err, changed, paused and hidden. publish and fail hold it
	// while they replace the snapshot, so that one is never lost to the
	// other, and resign's pause takes effect before its publish.
	mu      sync.Mutex
	err     error         // set once the lease has failed for good
	changed chan struct{} // closed and replaced on every new snapshot or error
	paused  bool          // resigned: report nothing until a view read after the resign
	// hidden is what was reported until the node's lease lapsed, and
	// when: a partition revoked meanwhile still drains from then, and
	// waits for its locks (their contexts ended, but the holders may still
	// work).
	hidden struct {
		snap *snapshot
		at   time.Time
	}

	rejoin atomic.Bool // the next heartbeat asks for the whole view

	// routingRead: Members, Owner, OwnerOf or Successors has been called.
	// Until then the heartbeats ask for what the node owns only, and the
	// routing stays as the first view gave it (routingWanted).
	routingRead atomic.Bool

	locks keyLocks // its own mutex, taken after mu

	changesOnce sync.Once
	changes     chan Change

	view ringState // owned by the heartbeat loop
}

// ringState is what the heartbeat loop knows of the lease's ring. The loop
// alone touches it (Start before the loop runs).
type ringState struct {
	version   int64             // of the view, 0 before the first
	current   *snapshot         // what the view allows, published while the node is live
	revokedAt map[int]time.Time // partitions to give up, and when this node stopped reporting them (zero: never did)
	join      joinState         // the last heartbeat said this node is not a member
	read      bool              // the last heartbeat said the view is big: read it with read_views
	incoming  []time.Time       // when the partitions pending to this node are due, sorted; see nextLook
	waiting   bool              // partitions are pending to this node (some may have no due time)
	releasing []int             // the releases the last heartbeat carried, sorted (see nextRelease)
	routed    int64             // version of the last whole view, which brought the routing (an own view does not)
	routedAt  time.Time         // when it came (see ownOnly)
	viewedAt  time.Time         // when the last view of any kind came (see ringRequests)
	// awaitRejoin: a request for the whole view (rejoin) went; the view
	// that answers it ends a resign's pause.
	awaitRejoin bool
}

// joinState says whether a ring waits to be joined with join_rings.
type joinState int

const (
	joined        joinState = iota
	toJoin                  // join it
	toJoinBusy              // join_rings could not lock it in time: again later, without holding Start back
	toJoinWaiting           // join_rings recorded the join: a batch makes it (it holds Start back)
)

func newLease(c *Client, name string, size, vnodes int) *Lease {
	l := &Lease{c: c, name: name, size: size, vnodes: vnodes, changed: make(chan struct{}),
		locks: keyLocks{held: map[string]*heldLock{}, free: make(chan struct{})},
		view:  ringState{current: emptySnapshot, revokedAt: map[int]time.Time{}}}
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
// the database, closed), and from the lease deadline on even when the
// heartbeat loop has not yet run to hide it. The slice is shared: do not
// modify it. Call it as often as you like: it costs two atomic loads and a
// read of the clock.
func (l *Lease) Values() []int { return l.shown().values }

// Owns reports whether this node owns partition p now.
func (l *Lease) Owns(p int) bool { return l.shown().has(p) }

// shown is the snapshot the read methods report: the published one, or
// nothing once the lease deadline has passed. The loop hides the
// partitions at the deadline too, but it is a goroutine: a process the
// scheduler holds up past the deadline (a CPU quota, a starved machine)
// would go on showing them after the database may have let the lease
// lapse and given them to another node (G2).
func (l *Lease) shown() *snapshot {
	s := l.snap.Load()
	if s != emptySnapshot && l.c != nil && !l.c.reporting() {
		return emptySnapshot
	}
	return s
}

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
	s := l.shown()
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
	s := l.shown()
	i := sort.SearchInts(s.values, p)
	if i == len(s.values) || s.values[i] != p {
		return 0, false
	}
	return s.epochs[i], true
}

// Err returns why the lease stopped for good (ErrRingSizeMismatch,
// ErrFenced, ErrClosed), or nil while it is working.
func (l *Lease) Err() error {
	_, err := l.state()
	return err
}

// state is a channel closed on the lease's next change, and its error.
func (l *Lease) state() (<-chan struct{}, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed, l.err
}

// Wait blocks until the lease owns at least one partition, the lease fails
// (its error is returned), or ctx ends. A node can own nothing when a ring
// has fewer partitions than members; Wait then waits for ctx.
func (l *Lease) Wait(ctx context.Context) error {
	for {
		ch, err := l.state()
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
// partitions it lacks with cause. Called by the heartbeat loop, and by
// resign.
func (l *Lease) publish(s *snapshot, cause error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.paused {
		s, cause = emptySnapshot, ErrRevoked
	}
	if l.err != nil || l.snap.Load() == s {
		return
	}
	if s != emptySnapshot {
		l.hidden.snap = nil
	}
	l.replace(s, cause)
}

// lose hides what the lease reports while the node is not live (its lease
// lapsed, or the hold of a taken-over node id runs); the locks' contexts
// end with ErrLeaseLost. Called by the loop.
func (l *Lease) lose(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.snap.Load()
	if l.err != nil || old == emptySnapshot {
		return
	}
	l.hidden.snap, l.hidden.at = old, now
	l.replace(emptySnapshot, ErrLeaseLost)
}

// fail stops the lease for good with err and hides its partitions.
func (l *Lease) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
	}
	l.replace(emptySnapshot, err)
}

// replace shows s, cancels the locks on partitions it lacks with cause,
// and tells the waiters. Caller holds l.mu.
func (l *Lease) replace(s *snapshot, cause error) {
	l.snap.Store(s)
	l.locks.cancel(s, cause)
	close(l.changed)
	l.changed = make(chan struct{})
}

// applyView takes the database's view of this ring. Partitions being handed
// over are kept out of the visible snapshot from this moment.
func (l *Lease) applyView(v ringChange, now time.Time) { l.applyViewAt(v, now, now) }

// applyViewAt is applyView for a view whose incoming dues the database
// measured at the local time measured (see setIncoming).
func (l *Lease) applyViewAt(v ringChange, now, measured time.Time) {
	l.view.version = v.Version
	l.view.setIncoming(v, measured)
	revoking := make(map[int]bool, len(v.Revoking))
	var locked map[int]bool // read once, if needed
	for _, p := range v.Revoking {
		revoking[p] = true
		if _, ok := l.view.revokedAt[p]; ok {
			continue
		}
		at := l.reportedUntil(p, now)
		if at.IsZero() {
			if locked == nil {
				locked = l.locks.partitions()
			}
			if locked[p] {
				at = now // a lock taken before: its holder may still work
			}
		}
		// Zero: never reported (given and retargeted before this node
		// heard, or given during a hold). Nothing to drain.
		l.view.revokedAt[p] = at
	}
	for p := range l.view.revokedAt {
		if !revoking[p] {
			delete(l.view.revokedAt, p)
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
	l.view.current = newSnapshot(l.size, values, epochs)
	l.view.viewedAt = now
	if !v.OwnView {
		l.view.routed, l.view.routedAt = v.Version, now
		route := l.route.Load().update(l.size, v)
		if route == emptyRoute && v.MemberIDs != nil {
			l.rejoin.Store(true) // a member this node never heard of: ask for the whole view
		}
		l.route.Store(route)
	}
	if l.view.awaitRejoin && v.Version > 0 {
		l.view.awaitRejoin = false
		l.mu.Lock()
		l.paused = false // this view was read after the resign
		l.mu.Unlock()
	}
}

// reportedUntil is when the node stopped reporting partition p: now if it
// still does, when the lease was lost if it did until then, zero if never.
func (l *Lease) reportedUntil(p int, now time.Time) time.Time {
	if l.snap.Load().has(p) {
		return now
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hidden.snap != nil && l.hidden.snap.has(p) {
		return l.hidden.at
	}
	return time.Time{}
}

// forget drops the lease's view: whatever it gave may be another node's
// now. The lease reports nothing, and the next heartbeat asks for the
// whole view.
func (l *Lease) forget() {
	l.view.version, l.view.routed, l.view.routedAt, l.view.viewedAt = 0, 0, time.Time{}, time.Time{}
	l.view.incoming, l.view.waiting = nil, false
	l.view.current = emptySnapshot
	clear(l.view.revokedAt)
	l.mu.Lock()
	l.hidden.snap = nil
	l.mu.Unlock()
}

// resign stops reporting at once, leaves the ring so that the others take
// its partitions now, and rejoins on the next heartbeat with nothing. It
// reports nothing until a view read after the rejoin request comes.
func (l *Lease) resign(ctx context.Context) error {
	if l.c == nil {
		return ErrNotStarted
	}
	l.mu.Lock()
	l.paused = true
	l.mu.Unlock()
	l.publish(emptySnapshot, ErrRevoked)
	err := l.c.inTx(ctx, l.c.db, func(q DB) error {
		_, err := q.ExecContext(ctx, l.c.q.leaveRing, l.c.cfg.nodeID, l.c.incarnation, l.name)
		return err
	})
	// Only now: a view read before the leave must not end the pause. On
	// failure too: the lease stays paused until a view after this point.
	l.rejoin.Store(true)
	l.c.wakeUp()
	if err != nil {
		return fmt.Errorf("leasering: resign %q: %w", l.name, err)
	}
	l.c.announce(ringsJSON(l.name))
	return nil
}
