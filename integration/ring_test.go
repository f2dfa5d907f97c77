package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// diff counts the partitions whose owner differs between two assignments.
func diff(a, b assignment) int {
	n := 0
	for p := range a {
		if a[p] != b[p] {
			n++
		}
	}
	return n
}

// share is floor(size / n) and whether some get one more.
func maxShare(a assignment) int {
	count := map[string]int{}
	best := 0
	for _, o := range a {
		count[o]++
		best = max(best, count[o])
	}
	return best
}

// TestJoinsConvergeExactlyWithMinimalMovement grows a ring of 1024 from 1 to
// 10 nodes. After each join every node holds floor or ceil of Q/N (G4) and
// exactly the new node's share moved, all of it to the new node (G5). Then
// the nodes leave one by one: each leave moves exactly the leaver's share.
func TestJoinsConvergeExactlyWithMinimalMovement(t *testing.T) {
	t.Parallel()
	const q = 1024
	e := newEnv(t, 2*time.Second, 100*time.Millisecond)
	var prev assignment
	for i := 1; i <= 10; i++ {
		id := fmt.Sprintf("n%02d", i)
		e.startNode(id, "orders", q)
		a, took := e.waitConverged("orders", q, nil, 15*time.Second)
		moved := diff(prev, a)
		if prev == nil {
			moved = q
		}
		gained := 0
		for _, o := range a {
			if o == id {
				gained++
			}
		}
		if moved != gained {
			t.Errorf("join of %s: %d partitions moved, but the newcomer got %d: something moved between old nodes", id, moved, gained)
		}
		if want := q / i; gained != want && gained != want+1 {
			t.Errorf("join of %s: newcomer got %d, want %d or %d", id, gained, want, want+1)
		}
		fair := float64(q) / float64(i)
		t.Logf("N=%2d: converged in %v, moved %d (min %d..%d), max share %d / fair %.1f = %.3f",
			i, took.Round(time.Millisecond), moved, q/i, (q+i-1)/i, maxShare(a), fair, float64(maxShare(a))/fair)
		prev = a
	}
	for len(e.live()) > 1 {
		n := e.live()[0]
		before := prev
		had := 0
		for _, o := range before {
			if o == n.id {
				had++
			}
		}
		start := time.Now()
		if err := n.client.Close(); err != nil {
			t.Fatalf("close %s: %v", n.id, err)
		}
		n.down.Store(true)
		a, _ := e.waitConverged("orders", q, nil, 15*time.Second)
		if moved := diff(before, a); moved != had {
			t.Errorf("leave of %s: %d partitions moved, want exactly its %d", n.id, moved, had)
		}
		t.Logf("leave of %s: moved %d, converged in %v", n.id, had, time.Since(start).Round(time.Millisecond))
		prev = a
	}
}

// TestWeightedShares: vnodes are weights. Nodes with 4, 8 and 20 vnodes on
// a ring of 1000 own floor or ceil of 1000*w/32.
func TestWeightedShares(t *testing.T) {
	t.Parallel()
	const q = 1000
	e := newEnv(t, 2*time.Second, 100*time.Millisecond)
	weights := map[string]int{"small": 4, "medium": 8, "large": 20}
	for _, id := range []string{"small", "medium", "large"} {
		e.startNode(id, "orders", q, leasering.WithVNodes(weights[id]))
	}
	a, _ := e.waitConverged("orders", q, weights, 15*time.Second)
	count := map[string]int{}
	for _, o := range a {
		count[o]++
	}
	t.Logf("weighted shares at Q=%d: %v (fair: small 125, medium 250, large 625)", q, count)
}
