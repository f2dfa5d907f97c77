package integration

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// checker polls every node's Values() without pause and records violations
// of G2 (a partition reported by two nodes at the same instant) and G3 (a
// partition reported by nobody for longer than gapLimit).
//
// Two nodes' reads are never simultaneous, so each round reads every node
// twice: if A reports p in both of its reads and B reports p in a read made
// between them, A and B reported p at the same instant (a node's ownership
// of a partition is one interval, handoffs being far slower than a round).
type checker struct {
	e        *env
	ring     string
	size     int
	gapLimit time.Duration

	rounds  atomic.Int64
	reads   atomic.Int64 // Values() calls checked
	excused atomic.Int64 // gaps measured from a later failure of the partition's owner
	paused  atomic.Bool  // G3 suspended (no node can reach the database)
	// explain, if set, adds what the database says of a partition to a G3
	// report: the gap began at since, when node lastBy last reported it
	// ("" for the checker's start or a pause).
	explain func(p int, since time.Time, lastBy string) string
	// excuse, if set, returns when the latest failure of a node the
	// database gave partition p to since the given time happened (zero:
	// none). G3 counts from any failure, so the gap is measured from then.
	excuse     func(p int, since time.Time) time.Time
	mu         sync.Mutex
	violations []string
	maxGap     time.Duration
	stop       chan struct{}
	done       chan struct{}
}

func (e *env) startChecker(ring string, size int, gapLimit time.Duration) *checker {
	c := &checker{e: e, ring: ring, size: size, gapLimit: gapLimit,
		stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	e.t.Cleanup(func() { c.finish() })
	return c
}

func (c *checker) run() {
	defer close(c.done)
	lastSeen := make([]time.Time, c.size)
	lastBy := make([]string, c.size)
	start := time.Now()
	for i := range lastSeen {
		lastSeen[i] = start
	}
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		c.e.mu.Lock()
		nodes := append([]*node(nil), c.e.nodes...)
		c.e.mu.Unlock()
		first := make([][]int, len(nodes))
		second := make([][]int, len(nodes))
		for i, n := range nodes {
			if l := n.leases[c.ring]; l != nil {
				first[i] = l.Values()
			}
		}
		for i, n := range nodes {
			if l := n.leases[c.ring]; l != nil {
				second[i] = l.Values()
			}
		}
		now := time.Now()
		for a := range nodes {
			both := intersect(first[a], second[a])
			for b := range nodes {
				if a == b {
					continue
				}
				between := first[b] // read after a's first read
				if b < a {
					between = second[b] // read before a's second read
				}
				for _, p := range intersect(both, between) {
					c.violate(fmt.Sprintf("G2: partition %d reported by %s and %s at once", p, nodes[a].id, nodes[b].id))
				}
			}
		}
		healthy := false
		for _, n := range nodes {
			if !n.down.Load() {
				healthy = true
			}
		}
		if c.paused.Load() {
			healthy = false
		}
		for i := range nodes {
			for _, p := range second[i] {
				lastSeen[p], lastBy[p] = now, nodes[i].id
			}
		}
		if healthy {
			for p, t := range lastSeen {
				gap := now.Sub(t)
				if gap > c.gapLimit && c.excuse != nil {
					if f := c.excuse(p, t); f.After(t) {
						c.excused.Add(1)
						lastSeen[p], lastBy[p], gap = f, "(a failure)", now.Sub(f)
					}
				}
				c.mu.Lock()
				c.maxGap = max(c.maxGap, gap)
				c.mu.Unlock()
				if gap > c.gapLimit {
					why := ""
					if c.explain != nil {
						why = ": " + c.explain(p, lastSeen[p], lastBy[p])
					}
					c.violate(fmt.Sprintf("G3: partition %d unowned for %v (limit %v)%s", p, gap.Round(time.Millisecond), c.gapLimit, why))
					lastSeen[p], lastBy[p] = now, "" // report each gap once
				}
			}
		} else {
			for p := range lastSeen {
				lastSeen[p], lastBy[p] = now, ""
			}
		}
		c.rounds.Add(1)
		c.reads.Add(2 * int64(len(nodes)))
		// Poll without pause but leave the CPU to the nodes: a round every
		// ~100µs is thousands per second, far finer than any handoff.
		time.Sleep(100 * time.Microsecond)
	}
}

func (c *checker) violate(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.violations) < 20 {
		c.violations = append(c.violations, s)
	}
}

// finish stops the checker and fails the test on any violation.
func (c *checker) finish() {
	select {
	case <-c.stop:
		return
	default:
	}
	close(c.stop)
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	c.e.t.Logf("checker: %d rounds, %d reads of Values(), longest time a partition went unowned %v (G3's measure: %d gaps counted from a later failure of their owner)",
		c.rounds.Load(), c.reads.Load(), c.maxGap.Round(time.Millisecond), c.excused.Load())
	for _, v := range c.violations {
		c.e.t.Error(v)
	}
}

func intersect(a, b []int) []int {
	var out []int
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] < b[j]:
			i++
		case a[i] > b[j]:
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

// TestCheckerCatchesDoubleOwnership proves the checker can fail: two nodes
// in two separate schemas each own the whole ring, and the checker, shown
// both, must report G2.
func TestCheckerCatchesDoubleOwnership(t *testing.T) {
	t.Parallel()
	e1 := newEnv(t, time.Second, 100*time.Millisecond)
	e2 := newEnv(t, time.Second, 100*time.Millisecond)
	x := e1.startNode("x", "r", 8)
	y := e2.startNode("y", "r", 8)
	both := &env{t: t, nodes: []*node{x, y}}
	c := &checker{e: both, ring: "r", size: 8, gapLimit: time.Minute, stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	if !waitFor(5*time.Second, func() bool { return c.rounds.Load() > 10 }) {
		t.Fatal("checker made no rounds")
	}
	close(c.stop)
	<-c.done
	if len(c.violations) == 0 {
		t.Fatal("checker saw no violation with two owners of every partition")
	}
}
