package leasering

import (
	"context"
	"time"
)

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
		l.mu.Lock()
		err, changed := l.err, l.changed
		l.mu.Unlock()
		if err != nil {
			return nil, err
		}
		l.lockMu.Lock()
		if l.Owns(p) && l.locks[key] == nil {
			lctx, cancel := context.WithCancelCause(ctx)
			l.locks[key] = &heldLock{partition: p, cancel: cancel}
			l.held[p]++
			l.lockMu.Unlock()
			return lctx, nil
		}
		free := l.lockFree
		l.lockMu.Unlock()
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
	l.lockMu.Lock()
	lk, ok := l.locks[key]
	if !ok {
		l.lockMu.Unlock()
		return
	}
	delete(l.locks, key)
	if l.held[lk.partition]--; l.held[lk.partition] == 0 {
		delete(l.held, lk.partition)
	}
	close(l.lockFree)
	l.lockFree = make(chan struct{})
	l.lockMu.Unlock()
	lk.cancel(errUnlocked)
	if !l.Owns(lk.partition) && l.c != nil {
		l.c.wakeUp() // the partition may be waiting on this lock to be handed over
	}
}

// cancelLocks cancels the locks whose partition s does not hold, with
// cause. Their keys stay locked until Unlock.
func (l *Lease) cancelLocks(s *snapshot, cause error) {
	l.lockMu.Lock()
	defer l.lockMu.Unlock()
	for _, lk := range l.locks {
		if !s.has(lk.partition) {
			lk.cancel(cause)
		}
	}
}

// lockHeld reports whether any lock on partition p is held.
func (l *Lease) lockHeld(p int) bool {
	l.lockMu.Lock()
	defer l.lockMu.Unlock()
	return l.held[p] > 0
}

// releasable reports whether revoked partition p, revoked at at, may be
// confirmed released at now: after the drain, once no lock on its keys is
// held or maxDrain has passed.
func (l *Lease) releasable(p int, at, now time.Time, drain, maxDrain time.Duration) bool {
	if at.IsZero() { // not reported when revoked
		return true
	}
	return now.Sub(at) >= drain && (now.Sub(at) >= maxDrain || !l.lockHeld(p))
}
