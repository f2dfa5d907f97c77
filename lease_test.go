package leasering

import (
	"context"
	"errors"
	"fmt"
	"reflect"
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

	// Not owned: Lock waits until the partition is ours. (A Lock that may
	// not take the key waits for ctx: an ended one says so at once.)
	ended, cancel := context.WithCancel(bg)
	cancel()
	if _, err := l.Lock(ended, k); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock of a key of a partition not owned: %v, want to wait", err)
	}
	got := make(chan context.Context, 1)
	go func() {
		ctx, err := l.Lock(bg, k)
		if err != nil {
			t.Error(err)
		}
		got <- ctx
	}()
	l.publish(snap(size, 3, 4), ErrRevoked)
	var first context.Context
	select {
	case first = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("Lock did not return once the partition was owned")
	}

	// Held: a second Lock of the same key waits for Unlock.
	if _, err := l.Lock(ended, k); !errors.Is(err, context.Canceled) {
		t.Fatalf("second Lock of a held key: %v, want to wait", err)
	}
	go func() {
		ctx, err := l.Lock(bg, k)
		if err != nil {
			t.Error(err)
		}
		got <- ctx
	}()
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
	l.view.revokedAt[3] = now
	l.publish(snap(size, 4), ErrRevoked)
	select {
	case <-second.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("lock context not cancelled on revocation")
	}
	if !errors.Is(context.Cause(second), ErrRevoked) {
		t.Errorf("cause %v, want ErrRevoked", context.Cause(second))
	}
	if r, _, next := l.releases(now.Add(time.Second), 0, 0, time.Hour); len(r) != 0 || !next.Equal(now.Add(time.Hour)) {
		t.Errorf("released %v while a lock is held, next at %v; want none until the max drain", r, next.Sub(now))
	}
	if r, _, _ := l.releases(now.Add(2*time.Hour), 0, 0, time.Hour); !reflect.DeepEqual(r, []int{3}) {
		t.Errorf("released %v after the max drain, want [3]", r)
	}
	l.Unlock(k)
	if r, _, next := l.releases(now.Add(time.Second), 0, 0, time.Hour); !reflect.DeepEqual(r, []int{3}) || !next.IsZero() {
		t.Errorf("released %v after Unlock, next at %v; want [3], nothing next", r, next)
	}

	// Lease lost and closed.
	k4 := keyIn(t, 4, size)
	ctx4, err := l.Lock(bg, k4)
	if err != nil {
		t.Fatal(err)
	}
	l.lose(time.Now())
	<-ctx4.Done()
	if !errors.Is(context.Cause(ctx4), ErrLeaseLost) {
		t.Errorf("cause %v, want ErrLeaseLost", context.Cause(ctx4))
	}
	l.fail(ErrClosed)
	if _, err := l.Lock(bg, k4); !errors.Is(err, ErrClosed) {
		t.Errorf("Lock on a closed lease: %v", err)
	}
	l2 := newLease(nil, "r", size, 8)
	if _, err := l2.Lock(ended, k); !errors.Is(err, context.Canceled) {
		t.Errorf("Lock with a cancelled ctx: %v", err)
	}
}

// useLoop is the loop of the README's "Use" section and of the package
// example, with its pause (time.After there) given by the test, and passed
// told what each pass processed: a pass over Values, then a wait for a
// change, the next pass (after the pause) or the end.
func useLoop(ctx context.Context, orders *Lease, pause func() <-chan time.Time, passed func(processed []int)) error {
	changes := orders.Changes()
	for {
		var processed []int
		process := func(p int) { processed = append(processed, p) }
		for _, p := range orders.Values() {
			process(p)
		}
		passed(processed)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-changes:
			if !ok {
				return orders.Err()
			}
		case <-pause():
		}
	}
}

// TestREADMEUseLoop: the README's loop waits between passes while Values is
// empty, makes a pass as soon as the assignment changes (not only at the
// next pause), and returns when its context ends or the lease ends.
func TestREADMEUseLoop(t *testing.T) {
	type run struct {
		passes chan []int
		pause  chan time.Time
		done   chan error
	}
	start := func(ctx context.Context, l *Lease) run {
		r := run{passes: make(chan []int), pause: make(chan time.Time), done: make(chan error, 1)}
		go func() {
			r.done <- useLoop(ctx, l, func() <-chan time.Time { return r.pause }, func(ps []int) { r.passes <- ps })
		}()
		return r
	}
	pass := func(t *testing.T, r run, want []int) {
		t.Helper()
		select {
		case got := <-r.passes:
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("a pass over %v, want %v", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no pass over %v within 5s", want)
		}
	}
	ended := func(t *testing.T, r run, want error) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case <-r.passes: // a last pass over what the end revoked
			case err := <-r.done:
				if !errors.Is(err, want) {
					t.Errorf("loop returned %v, want %v", err, want)
				}
				return
			case <-deadline:
				t.Fatalf("loop still running 5s after it should have returned %v", want)
			}
		}
	}

	t.Run("empty Values", func(t *testing.T) {
		l := newLease(nil, "r", 64, 8)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r := start(ctx, l)
		for i := 0; i < 6; i++ {
			pass(t, r, nil)
			// Then it waits for the pause: it takes the pause's end, and
			// makes no pass before.
			select {
			case <-r.passes:
				t.Fatal("a pass over an empty Values without a pause")
			case r.pause <- time.Time{}:
			}
		}
		pass(t, r, nil)
		cancel()
		ended(t, r, context.Canceled)
	})

	t.Run("changes wake it, the lease's end stops it", func(t *testing.T) {
		l := newLease(nil, "r", 64, 8)
		r := start(context.Background(), l)
		pass(t, r, nil)
		l.publish(snap(64, 5), ErrRevoked)
		pass(t, r, []int{5}) // no pause ends meanwhile
		l.publish(snap(64, 5, 9), ErrRevoked)
		pass(t, r, []int{5, 9})
		l.fail(ErrClosed)
		ended(t, r, ErrClosed)
	})
}
