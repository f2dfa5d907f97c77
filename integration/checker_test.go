package integration

import (
	"errors"
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
	// explainG2, if set, adds what is known of partition p and of nodes a
	// and b to a G2 report.
	explainG2   func(p int, a, b string) string
	g2Explained atomic.Int32
	// excuse, if set, returns when the latest failure of a node the
	// database gave partition p to since the given time happened (zero:
	// none). G3 counts from any failure, so the gap is measured from then.
	excuse func(p int, since time.Time) time.Time
	// deliver, if set, defers the verdict on a gap that ran past gapLimit
	// to the partition's next report, by node n, and gives the latest that
	// report may come (G3 is about the database: it must have given p an
	// owner within gapLimit; the owner hears on a heartbeat of its own,
	// whose round trip, rtt, is the one n's Stats gave when the report was
	// seen), or
	// an error if the database did not decide in time. retry asks to be
	// called again while the facts it needs are not in yet. No report by
	// hardLimit is a violation.
	deliver   func(p int, since, at time.Time, n *node, rtt time.Duration) (by time.Time, retry bool, err error)
	hardLimit time.Duration
	// heldImpaired, if set, says a gap past hardLimit is not a violation
	// yet: the database holds the partition with an owner the chaos
	// impaired (deliver judges the report when it comes).
	heldImpaired func(p int, since, now time.Time) bool
	delivered    atomic.Int64 // gaps past gapLimit whose partition the database had given in time
	mu           sync.Mutex
	violations   []string
	maxGap       time.Duration
	maxOver      time.Duration // the most a delivered gap came past gapLimit
	stop         chan struct{}
	done         chan struct{}
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
	overSince := map[int]time.Time{} // partition -> start of its gap, past gapLimit, unreported
	type report struct {
		since, at time.Time
		n         *node
		rtt       time.Duration // n's last round trip then: the heartbeat that brought p, or a later one
	}
	reported := map[int]report{}       // gaps past gapLimit now ended: awaiting deliver's verdict
	lastFirst := make([]int, c.size)   // per partition: the last node whose first read lists it (-1: none)
	firstSecond := make([]int, c.size) // per partition: the first node whose second read lists it (len(nodes): none)
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
		// G2: a partition in both of a's reads and in a read of another
		// node b made between them: b's first read if b comes after a, b's
		// second if before. By partition, not by pair of nodes: at 100
		// nodes the pairs took a round 2 ms of a core, a core in all
		// between the 1 ms pauses, beside the nodes it judged.
		for p := range c.size {
			lastFirst[p], firstSecond[p] = -1, len(nodes)
		}
		for i := range nodes {
			for _, p := range first[i] {
				lastFirst[p] = i
			}
		}
		for i := len(nodes) - 1; i >= 0; i-- {
			for _, p := range second[i] {
				firstSecond[p] = i
			}
		}
		for a := range nodes {
			for _, p := range intersect(first[a], second[a]) {
				b := lastFirst[p]
				if b <= a {
					b = firstSecond[p]
					if b >= a {
						continue
					}
				}
				why := ""
				if c.explainG2 != nil && c.g2Explained.Add(1) <= 2 {
					why = ": " + c.explainG2(p, nodes[a].id, nodes[b].id)
				}
				c.violate(fmt.Sprintf("G2: partition %d reported by %s and %s at once%s", p, nodes[a].id, nodes[b].id, why))
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
				if since, ok := overSince[p]; ok {
					delete(overSince, p)
					reported[p] = report{since: since, at: now, n: nodes[i], rtt: nodes[i].client.Stats().LastRenewLatency}
				}
				lastSeen[p], lastBy[p] = now, nodes[i].id
			}
		}
		for p, r := range reported {
			by, retry, err := c.deliver(p, r.since, r.at, r.n, r.rtt)
			if retry && now.Sub(r.at) < time.Second {
				continue
			}
			delete(reported, p)
			over := r.at.Sub(r.since) - c.gapLimit
			switch {
			case err != nil:
				c.violate(fmt.Sprintf("G3: partition %d reported by %s %v after the gap began (limit %v): %v%s", p, r.n.id, r.at.Sub(r.since).Round(time.Millisecond), c.gapLimit, err, c.why(p, r.since, "")))
			case retry:
				c.violate(fmt.Sprintf("G3: partition %d reported by %s %v after the gap began (limit %v), and the database was never seen giving it to %s", p, r.n.id, r.at.Sub(r.since).Round(time.Millisecond), c.gapLimit, r.n.id))
			case r.at.After(by):
				c.violate(fmt.Sprintf("G3: partition %d reported by %s %v after the gap began (limit %v), %v after the owner should have heard%s",
					p, r.n.id, r.at.Sub(r.since).Round(time.Millisecond), c.gapLimit, r.at.Sub(by).Round(time.Millisecond), c.why(p, r.since, "")))
			default:
				c.delivered.Add(1)
				c.mu.Lock()
				c.maxOver = max(c.maxOver, over)
				c.mu.Unlock()
			}
		}
		if healthy {
			var roundMax time.Duration
			for p, t := range lastSeen {
				gap := now.Sub(t)
				if gap > c.gapLimit && c.excuse != nil {
					if f := c.excuse(p, t); f.After(t) {
						c.excused.Add(1)
						lastSeen[p], lastBy[p], gap = f, "(a failure)", now.Sub(f)
					}
				}
				roundMax = max(roundMax, gap)
				if gap <= c.gapLimit {
					delete(overSince, p)
				} else if c.deliver != nil && (gap <= c.hardLimit || c.heldImpaired != nil && c.heldImpaired(p, t, now)) {
					if _, ok := overSince[p]; !ok {
						overSince[p] = t
					}
					continue
				}
				if gap > c.gapLimit {
					c.violate(fmt.Sprintf("G3: partition %d unowned for %v (limit %v)%s", p, gap.Round(time.Millisecond), c.gapLimit, c.why(p, lastSeen[p], lastBy[p])))
					lastSeen[p], lastBy[p] = now, "" // report each gap once
					delete(overSince, p)
				}
			}
			c.mu.Lock()
			c.maxGap = max(c.maxGap, roundMax)
			c.mu.Unlock()
		} else {
			for p := range lastSeen {
				lastSeen[p], lastBy[p] = now, ""
			}
			clear(overSince)
			clear(reported)
		}
		c.rounds.Add(1)
		c.reads.Add(2 * int64(len(nodes)))
		// A round every millisecond: far finer than any bound judged here
		// (tens of milliseconds and up) or any double report a protocol
		// fault has made (hundreds of milliseconds), and it leaves the CPU
		// to the nodes. At a round every 100µs, under -race on two cores
		// with one kept busy, the checkers of the tests running at once
		// made about a thousand rounds a second each, and the nodes they
		// judged waited for the CPU.
		time.Sleep(time.Millisecond)
	}
}

// why is explain's account of partition p's gap, if there is one.
func (c *checker) why(p int, since time.Time, lastBy string) string {
	if c.explain == nil {
		return ""
	}
	return ": " + c.explain(p, since, lastBy)
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
	if c.deliver != nil {
		c.e.t.Logf("checker: %d gaps ran past %v until a report, each of a partition the database had given in time, reported by the owner's next heartbeat; the most past: %v",
			c.delivered.Load(), c.gapLimit, c.maxOver.Round(time.Millisecond))
	}
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

// TestCheckerDeliverRule proves the deferred G3 verdict can fail: a gap
// past the limit passes only when deliver says the database decided in
// time and the report came by the deadline it gives.
func TestCheckerDeliverRule(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Second, 100*time.Millisecond)
	x := e.startNode("x", "r", 8)
	y := e.startNode("y", "q", 8) // healthy, and reports nothing of ring r
	for _, tc := range []struct {
		name    string
		deliver func(p int, since, at time.Time, n *node, rtt time.Duration) (time.Time, bool, error)
		fail    bool
	}{
		{"reported in time", func(int, time.Time, time.Time, *node, time.Duration) (time.Time, bool, error) {
			return time.Now().Add(time.Hour), false, nil
		}, false},
		{"reported late", func(_ int, since, _ time.Time, _ *node, _ time.Duration) (time.Time, bool, error) {
			return since, false, nil
		}, true},
		{"database late", func(int, time.Time, time.Time, *node, time.Duration) (time.Time, bool, error) {
			return time.Time{}, false, errors.New("given too late")
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			view := &env{t: t, nodes: []*node{y}}
			c := &checker{e: view, ring: "r", size: 8, gapLimit: 200 * time.Millisecond, hardLimit: time.Minute,
				deliver: tc.deliver, stop: make(chan struct{}), done: make(chan struct{})}
			go c.run()
			if !waitFor(5*time.Second, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.maxGap > c.gapLimit }) {
				t.Fatal("no gap went past the limit")
			}
			view.mu.Lock()
			view.nodes = append(view.nodes, x) // x reports all of ring r from now on
			view.mu.Unlock()
			decided := func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return c.delivered.Load() == 8 || len(c.violations) == 8
			}
			ok := waitFor(5*time.Second, decided)
			close(c.stop)
			<-c.done
			if !ok {
				t.Fatalf("no verdict on the 8 late partitions: %d delivered, violations %v", c.delivered.Load(), c.violations)
			}
			if got := len(c.violations) > 0; got != tc.fail {
				t.Errorf("violations %v, want a failure: %v", c.violations, tc.fail)
			}
		})
	}
}
