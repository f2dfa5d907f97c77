package integration

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/leasering/leasering"
)

// The harness's waits: who owns what, and until the ring converges.

// owners maps each partition of ring to the nodes reporting it now.
func owners(nodes []*node, ring string, size int) [][]string {
	out := make([][]string, size)
	for _, n := range nodes {
		l := n.leases[ring]
		if l == nil {
			continue
		}
		for _, p := range l.Values() {
			out[p] = append(out[p], n.id)
		}
	}
	return out
}

// assignment is partition -> owner for a converged ring.
type assignment []string

// converged reports whether every partition of ring has exactly one owner
// among nodes and every node holds floor or ceil of its weighted share.
func converged(nodes []*node, ring string, size int, weights map[string]int) (assignment, bool) {
	own := owners(nodes, ring, size)
	a := make(assignment, size)
	count := map[string]int{}
	for p, o := range own {
		if len(o) != 1 {
			return nil, false
		}
		a[p] = o[0]
		count[o[0]]++
	}
	total := 0
	for _, n := range nodes {
		total += weightOf(weights, n.id)
	}
	for _, n := range nodes {
		w := weightOf(weights, n.id)
		lo := size * w / total
		hi := lo
		if size*w%total != 0 {
			hi++
		}
		if count[n.id] < lo || count[n.id] > hi {
			return nil, false
		}
	}
	return a, true
}

func weightOf(weights map[string]int, id string) int {
	if w, ok := weights[id]; ok {
		return w
	}
	return leasering.DefaultVNodes
}

// waitConverged waits until the live nodes converge on ring, or fails.
func (e *env) waitConverged(ring string, size int, weights map[string]int, within time.Duration) (assignment, time.Duration) {
	e.t.Helper()
	start := time.Now()
	var a assignment
	ok := waitFor(within, func() bool {
		var good bool
		a, good = converged(e.live(), ring, size, weights)
		return good
	})
	if !ok {
		e.t.Fatalf("ring %s did not converge within %v: %s", ring, within, describe(e.live(), ring, size))
	}
	return a, time.Since(start)
}

func describe(nodes []*node, ring string, size int) string {
	own := owners(nodes, ring, size)
	count := map[string]int{}
	none, dup := 0, 0
	for _, o := range own {
		switch {
		case len(o) == 0:
			none++
		case len(o) > 1:
			dup++
		}
		for _, id := range o {
			count[id]++
		}
	}
	ids := make([]string, 0, len(count))
	for id := range count {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var b strings.Builder
	fmt.Fprintf(&b, "unowned=%d doubly-owned=%d counts:", none, dup)
	for _, id := range ids {
		fmt.Fprintf(&b, " %s=%d", id, count[id])
	}
	return b.String()
}

// waitFor polls cond every millisecond until it holds or within passes.
func waitFor(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}
