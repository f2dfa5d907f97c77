package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/leasering/leasering/internal/faultproxy"
)

// The handoff command measures what a partition changing hands costs:
// the time it is reported by nobody (the gap), over a join and over a heal,
// and how long a roll-out of many nodes takes to balance. It computes the
// same scenarios for a plain vnode ring and a bounded-load ring, which have
// no handoff protocol (their nodes switch on a watch event, and may report
// a partition twice meanwhile): for those, movement and balance only. It
// draws ownership over time during the join as an SVG.

// handoffBench runs the join, the heal and the roll-outs and prints the
// table; the join's timeline goes to svgPath.
func handoffBench(ctx context.Context, w io.Writer, dsn string, q int, ttl, hb time.Duration, rollouts []int, rolloutQ int, svgPath string) error {
	fmt.Fprintf(w, "### Handoffs: ring of %d, TTL %v, heartbeat %v, default drain (one heartbeat)\n\n", q, ttl, hb)
	bound := hb + 50*time.Millisecond

	// A 4th node joins 3.
	join, joinTL, joinedAt, err := joinScenario(ctx, dsn, q, ttl, hb)
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	joinGaps := summarizeGaps(join, bound)
	heal, healDoubles, err := healScenario(ctx, dsn, q, ttl, hb)
	if err != nil {
		return fmt.Errorf("heal: %w", err)
	}
	healGaps := summarizeGaps(heal, bound)

	names := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("n%03d", i+1)
		}
		return out
	}
	three, four := names(3), names(4)
	plainJoin := moved(plainRing(circle("r", three, 8), three, q), plainRing(circle("r", four, 8), four, q))
	boundedJoin := moved(boundedLoad(circle("r", three, 8), three, q, 1.25), boundedLoad(circle("r", four, 8), four, q, 1.25))
	plainBal := maxOverFair(plainRing(circle("r", four, 8), four, q), 4)
	boundedBal := maxOverFair(boundedLoad(circle("r", four, 8), four, q, 1.25), 4)

	fmt.Fprintln(w, "| scenario | leasering: moved | gap per moved partition (min / median / max) | unowned, partition-s | reported twice | vnode ring: moved | bounded load 1.25: moved |")
	fmt.Fprintln(w, "|---|---:|---|---:|---:|---:|---:|")
	fmt.Fprintf(w, "| a 4th node joins 3 | %d | %s / %s / %s | %.1f | %d rounds | %d | %d |\n", joinGaps.n, roundMS(joinGaps.min), roundMS(joinGaps.p50), roundMS(joinGaps.max),
		joinGaps.unowned.Seconds(), joinTL.doubles, plainJoin, boundedJoin)
	// A heal moves the node's share back: the same counts as a join for
	// the computed rings (they move it away and back).
	fmt.Fprintf(w, "| a node blackholed until evicted comes back | %d | %s / %s / %s | %.1f | %d rounds | %d | %d |\n", healGaps.n, roundMS(healGaps.min), roundMS(healGaps.p50), roundMS(healGaps.max),
		healGaps.unowned.Seconds(), healDoubles, plainJoin, boundedJoin)
	fmt.Fprintf(w, "\nBalance with 4 nodes (max share / fair share): leasering 1.000 (exact), vnode ring %.3f, bounded load %.3f. The bound for a gap is the drain plus 50 ms (%v): %d of %d join moves and %d of %d heal moves were over it.\n\n",
		plainBal, boundedBal, bound, joinGaps.over, joinGaps.n, healGaps.over, healGaps.n)

	if len(rollouts) > 0 {
		rhb := time.Second
		fmt.Fprintf(w, "### Roll-outs: ring of %d, TTL 10 s, heartbeat %v, 20 `Start` calls in flight on one pool of 20 connections\n\n", rolloutQ, rhb)
		fmt.Fprintln(w, "| N | the Starts took | balanced after the last Start (bound: 3 heartbeats + drain) | gap (median / max) | moved twice | reported twice | leasering moved | vnode ring: moved, max/fair | bounded load: moved, max/fair |")
		fmt.Fprintln(w, "|---:|---:|---:|---|---:|---:|---:|---|---|")
		for _, n := range rollouts {
			r, err := rolloutScenario(ctx, dsn, rolloutQ, 10*time.Second, rhb, n)
			if err != nil {
				return fmt.Errorf("roll-out of %d: %w", n, err)
			}
			ids := names(n)
			plainMoved, boundedMoved := 0, 0
			var prevP, prevB []string
			for k := 1; k <= n; k++ { // the nodes join in turn: sum what each join moves
				vs := circle("r", ids[:k], 8)
				p, b := plainRing(vs, ids[:k], rolloutQ), boundedLoad(vs, ids[:k], rolloutQ, 1.25)
				if prevP != nil {
					plainMoved += moved(prevP, p)
					boundedMoved += moved(prevB, b)
				}
				prevP, prevB = p, b
			}
			g := summarizeGaps(r.moves, rhb+50*time.Millisecond)
			fmt.Fprintf(w, "| %d | %v | %v | %s / %s | %d | %d rounds | %d | %d, %.2f | %d, %.2f |\n", n, roundMS(r.starts), roundMS(r.balanced), roundMS(g.p50), roundMS(g.max),
				g.movedTwice, r.doubles, g.n, plainMoved, maxOverFair(prevP, n), boundedMoved, maxOverFair(prevB, n))
		}
		fmt.Fprintln(w)
	}
	if svgPath != "" {
		f, err := os.Create(svgPath)
		if err != nil {
			return err
		}
		if err := joinTL.svg(f, joinedAt); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		fmt.Fprintf(w, "Ownership during the join: %s\n\n", svgPath)
	}
	return nil
}

func newBenchCluster(ctx context.Context, dsn string, q int, ttl, hb time.Duration) (*cluster, func(), error) {
	db, err := openDB(dsn)
	if err != nil {
		return nil, nil, err
	}
	s, err := newScratch(ctx, db)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	c := &cluster{dsn: dsn, schema: s.name, ttl: ttl, hb: hb, q: q}
	return c, func() {
		for _, n := range c.list() {
			n.stop()
		}
		s.drop()
		db.Close()
	}, nil
}

func joinScenario(ctx context.Context, dsn string, q int, ttl, hb time.Duration) ([]move, *timeline, time.Time, error) {
	c, done, err := newBenchCluster(ctx, dsn, q, ttl, hb)
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	defer done()
	for range 3 {
		if _, err := c.start(ctx); err != nil {
			return nil, nil, time.Time{}, err
		}
	}
	if _, err := c.waitConverged(30 * time.Second); err != nil {
		return nil, nil, time.Time{}, err
	}
	tl := record(q, c.list)
	time.Sleep(hb) // a stretch of the steady state, for the plot
	at := time.Now()
	n4, err := c.start(ctx)
	if err != nil {
		tl.finish()
		return nil, nil, time.Time{}, err
	}
	_, err = c.waitConverged(30 * time.Second)
	time.Sleep(hb) // and the steady state after
	tl.finish()
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	var out []move
	for _, m := range tl.movesSince(at) {
		if m.to == n4.id {
			out = append(out, m)
		}
	}
	return out, tl, at, nil
}

func healScenario(ctx context.Context, dsn string, q int, ttl, hb time.Duration) ([]move, int, error) {
	c, done, err := newBenchCluster(ctx, dsn, q, ttl, hb)
	if err != nil {
		return nil, 0, err
	}
	defer done()
	for range 4 {
		if _, err := c.start(ctx); err != nil {
			return nil, 0, err
		}
	}
	if _, err := c.waitConverged(30 * time.Second); err != nil {
		return nil, 0, err
	}
	n4 := c.list()[3]
	n4.proxy.SetMode(faultproxy.Blackhole)
	c.remove(n4) // judged without it until it comes back
	defer func() {
		if !slices.Contains(c.list(), n4) {
			n4.stop()
		}
	}()
	if _, err := c.waitConverged(30 * time.Second); err != nil {
		return nil, 0, err
	}
	tl := record(q, c.list)
	at := time.Now()
	n4.proxy.SetMode(faultproxy.Pass)
	c.add(n4)
	_, err = c.waitConverged(30 * time.Second)
	tl.finish()
	if err != nil {
		return nil, 0, err
	}
	var out []move
	for _, m := range tl.movesSince(at) {
		if m.to == n4.id {
			out = append(out, m)
		}
	}
	if got := len(n4.lease.Values()); len(out) != got {
		fmt.Fprintf(os.Stderr, "heal: %s reports %d partitions, %d of them seen moving to it\n", n4.id, got, len(out))
	}
	return out, tl.doubles, nil
}

type rollout struct {
	starts, balanced time.Duration
	moves            []move
	doubles          int
}

// rolloutScenario starts n nodes on one pool of 20 connections, 20 Start
// calls in flight at a time, and measures until the ring is balanced.
func rolloutScenario(ctx context.Context, dsn string, q int, ttl, hb time.Duration, n int) (rollout, error) {
	var r rollout
	c, done, err := newBenchCluster(ctx, dsn, q, ttl, hb)
	if err != nil {
		return r, err
	}
	defer done()
	pool, err := openDB(dsn)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	pool.SetMaxOpenConns(20)
	c.shared = pool
	tl := record(q, c.list)
	start := time.Now()
	sem := make(chan struct{}, 20)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := c.start(ctx); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		tl.finish()
		return r, err
	}
	r.starts = time.Since(start)
	last := time.Now()
	_, err = c.waitConverged(10 * time.Minute)
	r.balanced = time.Since(last)
	tl.finish()
	r.moves, r.doubles = tl.movesSince(start), tl.doubles
	return r, err
}
