package leasering

import (
	"reflect"
	"testing"
	"time"
)

// TestDrainRule: when a revoked partition may be confirmed released, with
// a drain of 100ms and a max drain of 1s.
func TestDrainRule(t *testing.T) {
	const drain, maxDrain = 100 * time.Millisecond, time.Second
	stopped := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tc := range []struct {
		name    string
		stopped time.Time
		locked  bool
		now     time.Duration // after stopped
		end     time.Duration // after stopped; -1: at once (never reported)
	}{
		{"never reported: at once", time.Time{}, false, 0, -1},
		{"never reported, a key locked: at once", time.Time{}, true, 0, -1},
		{"during the drain", stopped, false, ms(50), ms(100)},
		{"the drain over", stopped, false, ms(100), ms(100)},
		{"during the drain, a key locked: the drain's end first", stopped, true, ms(50), ms(100)},
		{"the drain over, a key locked: the max drain", stopped, true, ms(100), maxDrain},
		{"the max drain over, a key locked", stopped, true, ms(1500), maxDrain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := stopped.Add(tc.now)
			want := stopped.Add(tc.end)
			if tc.end < 0 {
				want = time.Time{}
			}
			got := drainEnd(tc.stopped, tc.locked, now, drain, maxDrain)
			if !got.Equal(want) {
				t.Errorf("drainEnd = %v after the stop, want %v", got.Sub(stopped), want.Sub(stopped))
			}
		})
	}
}

// TestLeaseReleases: the heartbeat's releases and the next drain's end
// come from the same rule.
func TestLeaseReleases(t *testing.T) {
	const drain, maxDrain = 100 * time.Millisecond, time.Second
	l := newLease(nil, "r", 8, 8)
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	l.publish(snap(8, 1, 2, 3, 4), ErrRevoked)
	k := keyIn(t, 4, 8)
	if _, err := l.Lock(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	l.view.revokedAt = map[int]time.Time{
		5: {},                    // never reported
		1: now.Add(-time.Second), // drained
		2: now.Add(-drain / 2),   // half drained
		3: now.Add(-drain / 4),   // a quarter drained
		4: now.Add(-2 * drain),   // drained, but a key is locked
	}
	ready, next := l.releases(now, drain, maxDrain)
	if !reflect.DeepEqual(ready, []int{1, 5}) || !next.Equal(now.Add(drain/2)) {
		t.Errorf("releases = %v, next in %v; want [1 5], next in %v", ready, next.Sub(now), drain/2)
	}
	l.Unlock(k)
	if ready, _ := l.releases(now, drain, maxDrain); !reflect.DeepEqual(ready, []int{1, 4, 5}) {
		t.Errorf("releases after Unlock = %v, want [1 4 5]", ready)
	}
	if ready, next := l.releases(now.Add(time.Second), drain, maxDrain); len(ready) != 5 || !next.IsZero() {
		t.Errorf("releases a second later = %v, next at %v; want all, none next", ready, next)
	}
}
