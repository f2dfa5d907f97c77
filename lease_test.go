package leasering

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func snap(size int, ps ...int) *snapshot {
	return newSnapshot(size, ps, make([]int64, len(ps)))
}

// keyIn finds a key that falls in partition p of a ring of size.
func keyIn(t *testing.T, p, size int) string {
	for i := 0; i < 100000; i++ {
		if k := fmt.Sprint("key-", i); PartitionOf(k, size) == p {
			return k
		}
	}
	t.Fatalf("no key for partition %d", p)
	return ""
}

func applyChange(state map[int]bool, c Change) {
	for _, p := range c.Assigned {
		state[p] = true
	}
	for _, p := range c.Revoked {
		delete(state, p)
	}
}

func TestChangesInOrderAndCoalesced(t *testing.T) {
	l := newLease(nil, "r", 256, 8)
	ch := l.Changes()
	l.publish(snap(256, 1, 2), ErrRevoked)
	select {
	case c := <-ch:
		if !reflect.DeepEqual(c, Change{Assigned: []int{1, 2}}) {
			t.Fatalf("first change %+v", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no change delivered")
	}
	// 200 states published with nobody reading: publishing never waits, and
	// the reader then catches up to the last state in at most two changes.
	start := time.Now()
	for i := 0; i < 200; i++ {
		l.publish(snap(256, i, i+1), ErrRevoked)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("publishing with no reader took %v", took)
	}
	state := map[int]bool{1: true, 2: true}
	want := map[int]bool{199: true, 200: true}
	got := 0
	for !reflect.DeepEqual(state, want) {
		select {
		case c := <-ch:
			applyChange(state, c)
			got++
		case <-time.After(5 * time.Second):
			t.Fatalf("stuck at %v after %d changes", state, got)
		}
	}
	if got > 2 {
		t.Errorf("%d changes for one catch-up, want them coalesced into at most 2", got)
	}
	l.fail(ErrClosed)
	select {
	case _, ok := <-ch:
		if ok {
			t.Error("change after the lease failed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed when the lease ended")
	}
}

func TestDiffSorted(t *testing.T) {
	c := diffSorted([]int{1, 3, 5, 7}, []int{2, 3, 7, 8})
	if !reflect.DeepEqual(c, Change{Assigned: []int{2, 8}, Revoked: []int{1, 5}}) {
		t.Errorf("diff = %+v", c)
	}
}

func TestLockExcludesAndIsRevoked(t *testing.T) {
	const size = 8
	l := newLease(nil, "r", size, 8)
	k := keyIn(t, 3, size)
	bg := context.Background()

	// Not owned: Lock waits until the partition is ours.
	got := make(chan context.Context, 1)
	go func() {
		ctx, err := l.Lock(bg, k)
		if err != nil {
			t.Error(err)
		}
		got <- ctx
	}()
	select {
	case <-got:
		t.Fatal("locked a key of a partition not owned")
	case <-time.After(50 * time.Millisecond): // it must still be waiting
	}
	l.publish(snap(size, 3, 4), ErrRevoked)
	var first context.Context
	select {
	case first = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("Lock did not return once the partition was owned")
	}

	// Held: a second Lock of the same key waits for Unlock.
	go func() {
		ctx, err := l.Lock(bg, k)
		if err != nil {
			t.Error(err)
		}
		got <- ctx
	}()
	select {
	case <-got:
		t.Fatal("two holders of one key")
	case <-time.After(50 * time.Millisecond):
	}
	l.Unlock(k)
	if !errors.Is(context.Cause(first), errUnlocked) {
		t.Errorf("first lock's cause after Unlock: %v", context.Cause(first))
	}
	var second context.Context
	select {
	case second = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("second Lock did not get the key after Unlock")
	}

	// Revoked: the context ends at once, and the release waits for Unlock
	// unless the max drain has passed.
	now := time.Now()
	l.revokedAt[3] = now
	l.publish(snap(size, 4), ErrRevoked)
	select {
	case <-second.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("lock context not cancelled on revocation")
	}
	if !errors.Is(context.Cause(second), ErrRevoked) {
		t.Errorf("cause %v, want ErrRevoked", context.Cause(second))
	}
	if r := l.released(now.Add(time.Second), 0, time.Hour); len(r) != 0 {
		t.Errorf("released %v while a lock is held", r)
	}
	if r := l.released(now.Add(2*time.Hour), 0, time.Hour); !reflect.DeepEqual(r, []int{3}) {
		t.Errorf("released %v after the max drain, want [3]", r)
	}
	l.Unlock(k)
	if r := l.released(now.Add(time.Second), 0, time.Hour); !reflect.DeepEqual(r, []int{3}) {
		t.Errorf("released %v after Unlock, want [3]", r)
	}

	// Lease lost and closed.
	k4 := keyIn(t, 4, size)
	ctx4, err := l.Lock(bg, k4)
	if err != nil {
		t.Fatal(err)
	}
	l.publish(emptySnapshot, ErrLeaseLost)
	<-ctx4.Done()
	if !errors.Is(context.Cause(ctx4), ErrLeaseLost) {
		t.Errorf("cause %v, want ErrLeaseLost", context.Cause(ctx4))
	}
	l.fail(ErrClosed)
	if _, err := l.Lock(bg, k4); !errors.Is(err, ErrClosed) {
		t.Errorf("Lock on a closed lease: %v", err)
	}
	cctx, cancel := context.WithCancel(bg)
	cancel()
	l2 := newLease(nil, "r", size, 8)
	if _, err := l2.Lock(cctx, k); !errors.Is(err, context.Canceled) {
		t.Errorf("Lock with a cancelled ctx: %v", err)
	}
}

// useLoop is the loop of the README's "Use" section and of the package
// example, with pass called at the top of each pass to count them: a pass
// over Values, then a wait for a change, the next pass (after pause) or the
// end.
func useLoop(ctx context.Context, orders *Lease, pause time.Duration, pass func(), process func(p int)) error {
	changes := orders.Changes()
	for {
		pass()
		for _, p := range orders.Values() {
			process(p)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-changes:
			if !ok {
				return orders.Err()
			}
		case <-time.After(pause):
		}
	}
}

// TestREADMEUseLoop: the README's loop waits between passes while Values is
// empty, makes a pass as soon as the assignment changes (not only at the
// next pause), and returns when its context ends or the lease ends.
func TestREADMEUseLoop(t *testing.T) {
	loop := func(ctx context.Context, l *Lease, pause time.Duration) (passes *atomic.Int64, seen *sync.Map, done chan error) {
		passes, seen, done = new(atomic.Int64), new(sync.Map), make(chan error, 1)
		go func() {
			done <- useLoop(ctx, l, pause, func() { passes.Add(1) }, func(p int) { seen.Store(p, true) })
		}()
		return passes, seen, done
	}
	ended := func(t *testing.T, done chan error, want error) {
		t.Helper()
		select {
		case err := <-done:
			if !errors.Is(err, want) {
				t.Errorf("loop returned %v, want %v", err, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("loop still running 5s after it should have returned %v", want)
		}
	}

	t.Run("empty Values", func(t *testing.T) {
		l := newLease(nil, "r", 64, 8)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		const pause = 20 * time.Millisecond
		start := time.Now()
		passes, _, done := loop(ctx, l, pause)
		waitUntil(t, 5*time.Second, "6 passes", func() bool { return passes.Load() >= 6 })
		if took := time.Since(start); took < 5*pause {
			t.Errorf("6 passes over an empty Values in %v: want a pause of %v between passes", took, pause)
		}
		cancel()
		ended(t, done, context.Canceled)
	})

	t.Run("changes wake it, the lease's end stops it", func(t *testing.T) {
		l := newLease(nil, "r", 64, 8)
		passes, seen, done := loop(context.Background(), l, time.Hour)
		waitUntil(t, 5*time.Second, "the first pass", func() bool { return passes.Load() >= 1 })
		l.publish(snap(64, 5), ErrRevoked)
		waitUntil(t, 5*time.Second, "a pass over partition 5", func() bool { _, ok := seen.Load(5); return ok })
		l.publish(snap(64, 5, 9), ErrRevoked)
		waitUntil(t, 5*time.Second, "a pass over partition 9", func() bool { _, ok := seen.Load(9); return ok })
		l.fail(ErrClosed)
		ended(t, done, ErrClosed)
	})
}
