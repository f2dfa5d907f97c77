package main

import (
	"fmt"
	"reflect"
	"testing"
)

// TestVNodePositionsMatchSQL: the vector is vnode_positions('r', 'node-01', 8)
// as PostgreSQL computes it.
func TestVNodePositionsMatchSQL(t *testing.T) {
	want := []uint32{292162354, 811215142, 873254489, 2038796001, 2195934087, 2795543951, 2966708729, 3163563993}
	if got := vnodePositions("r", "node-01", 8); !reflect.DeepEqual(got, want) {
		t.Fatalf("vnodePositions = %v, want %v", got, want)
	}
}

func ids(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("node-%02d", i+1)
	}
	return out
}

// TestPlainRingTakesFirstVNodeClockwise checks every partition against a
// linear search of the circle.
func TestPlainRingTakesFirstVNodeClockwise(t *testing.T) {
	nodes := ids(7)
	vs := circle("r", nodes, 8)
	a := plainRing(vs, nodes, 1000)
	for p, owner := range a {
		start := partitionStart(p, 1000)
		want := nodes[vs[0].n] // wrap-around: the first vnode
		for _, v := range vs {
			if v.pos >= start {
				want = nodes[v.n]
				break
			}
		}
		if owner != want {
			t.Fatalf("partition %d (start %d) owned by %s, want %s", p, start, owner, want)
		}
	}
}

func TestBoundedLoadRespectsCapacity(t *testing.T) {
	for n := 1; n <= 30; n++ {
		nodes := ids(n)
		a := boundedLoad(circle("r", nodes, 8), nodes, 1024, 1.25)
		limit := (1.25*1024 + float64(n) - 1) / float64(n)
		count := map[string]int{}
		for p, o := range a {
			if o == "" {
				t.Fatalf("n=%d: partition %d unassigned", n, p)
			}
			count[o]++
		}
		for id, k := range count {
			if float64(k) > limit+1 {
				t.Errorf("n=%d: %s holds %d, capacity is ceil(1.25*1024/%d)", n, id, k, n)
			}
		}
		if maxOverFair(a, n) > 1.25+float64(n)/1024 {
			t.Errorf("n=%d: max/fair %.3f above the bound", n, maxOverFair(a, n))
		}
	}
}

func TestMinimumMoves(t *testing.T) {
	before := []string{"a", "a", "a", "a", "a", "a", "a", "a", "a", "a"}
	if got := minimumMoves(before, []string{"a", "b"}); got != 5 {
		t.Errorf("one node of 10 to two: minimum %d, want 5", got)
	}
	before = []string{"a", "a", "a", "a", "b", "b", "b", "c", "c", "c"} // 4/3/3
	if got := minimumMoves(before, []string{"a", "b", "c", "d"}); got != 2 {
		t.Errorf("4/3/3 to four nodes (3/3/2/2 or so): minimum %d, want 2", got)
	}
	if got := necessaryMoves(before, []string{"a", "a", "a", "d", "b", "b", "b", "c", "c", "d"}); got != 2 {
		t.Errorf("4/3/3/0 to 3/3/2/2: necessary %d, want 2", got)
	}
	if got := moved(before, before); got != 0 {
		t.Errorf("moved between equal assignments = %d", got)
	}
}

func TestWithinFloorCeil(t *testing.T) {
	if !withinFloorCeil([]string{"a", "b", "a"}, []string{"a", "b"}) {
		t.Error("2/1 of 3 over two nodes is floor/ceil")
	}
	if withinFloorCeil([]string{"a", "a", "a", "b"}, []string{"a", "b"}) {
		t.Error("3/1 of 4 over two nodes is not floor/ceil")
	}
	if withinFloorCeil([]string{"a", "a"}, []string{"a", "b"}) {
		t.Error("2/0 of 2 over two nodes is not floor/ceil")
	}
}
