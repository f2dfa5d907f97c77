package leasering

import (
	"context"
	"sync"
)

// keyLocks are the Locks held on a lease's keys. Its mutex guards its
// fields.
type keyLocks struct {
	mu   sync.Mutex
	held map[string]*heldLock // by key
	free chan struct{}        // closed and replaced on every Unlock
}

// heldLock is one Lock on a key.
type heldLock struct {
	partition int
	cancel    context.CancelCauseFunc
}

// Lock blocks until this node owns key's partition and no other goroutine
// of this process holds key, then holds it. The context it returns is
// cancelled, with context.Cause saying why, the moment the partition is
// revoked (ErrRevoked), the lease is lost (ErrLeaseLost), the client closes
// (ErrClosed) or ctx ends. Call Unlock(key) when done, also after a
// cancellation: a revoked partition is not handed over while a lock on one
// of its keys is held, until WithMaxDrain passes.
//
// Lock excludes other goroutines of this process; across processes the
// partition's ownership excludes the others. Guard writes with the
// partition's epoch and holds() in SQL where a late write must never land.
func (l *Lease) Lock(ctx context.Context, key string) (context.Context, error) {
	p := l.PartitionOf(key)
	for {
		changed, err := l.state()
		if err != nil {
			return nil, err
		}
		l.locks.mu.Lock()
		if l.Owns(p) && l.locks.held[key] == nil {
			lctx, cancel := context.WithCancelCause(ctx)
			l.locks.held[key] = &heldLock{partition: p, cancel: cancel}
			l.locks.mu.Unlock()
			return lctx, nil
		}
		free := l.locks.free
		l.locks.mu.Unlock()
		select {
		case <-free:
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Unlock releases key. Unlocking a key that is not locked does nothing.
func (l *Lease) Unlock(key string) {
	l.locks.mu.Lock()
	lk, ok := l.locks.held[key]
	if !ok {
		l.locks.mu.Unlock()
		return
	}
	delete(l.locks.held, key)
	close(l.locks.free)
	l.locks.free = make(chan struct{})
	l.locks.mu.Unlock()
	lk.cancel(errUnlocked)
	if !l.Owns(lk.partition) && l.c != nil {
		l.c.wakeUp() // the partition may be waiting on this lock to be handed over
	}
}

// cancel cancels the locks whose partition s does not hold, with cause.
// Their keys stay locked until Unlock.
func (k *keyLocks) cancel(s *snapshot, cause error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, lk := range k.held {
		if !s.has(lk.partition) {
			lk.cancel(cause)
		}
	}
}

// partitions is the set of partitions with a lock held on one of their
// keys.
func (k *keyLocks) partitions() map[int]bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[int]bool, len(k.held))
	for _, lk := range k.held {
		out[lk.partition] = true
	}
	return out
}
