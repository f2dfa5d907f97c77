package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
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

// ownership is one node reporting one partition, from..to.
type ownership struct {
	node     string
	from, to time.Time
}

// timeline polls every node's Values() and records who reports what.
type timeline struct {
	q     int
	nodes func() []*convergeNode

	mu       sync.Mutex
	spans    [][]ownership // per partition, closed spans in order
	open     []ownership   // per partition, the span running now (node "": none)
	gaps     []move        // each change of reporter, with the gap
	doubles  int           // rounds in which some partition was reported twice
	rounds   int
	lastSeen []time.Time
	lastBy   []string

	stop, done chan struct{}
}

// move is one partition changing reporter: from's last report to to's
// first.
type move struct {
	p        int
	from, to string
	gap      time.Duration
	at       time.Time
}

func record(q int, nodes func() []*convergeNode) *timeline {
	t := &timeline{q: q, nodes: nodes, spans: make([][]ownership, q), open: make([]ownership, q),
		lastSeen: make([]time.Time, q), lastBy: make([]string, q),
		stop: make(chan struct{}), done: make(chan struct{})}
	go t.run()
	return t
}

func (t *timeline) run() {
	defer close(t.done)
	owner := make([]string, t.q)
	for {
		select {
		case <-t.stop:
			t.close(time.Now())
			return
		default:
		}
		clear(owner)
		double := false
		now := time.Now()
		for _, n := range t.nodes() {
			for _, p := range n.lease.Values() {
				if owner[p] != "" {
					double = true
				}
				owner[p] = n.id
			}
		}
		t.mu.Lock()
		t.rounds++
		if double {
			t.doubles++
		}
		for p, id := range owner {
			if id == t.open[p].node {
				if id != "" {
					t.lastSeen[p] = now
				}
				continue
			}
			if t.open[p].node != "" {
				t.open[p].to = now
				t.spans[p] = append(t.spans[p], t.open[p])
			}
			t.open[p] = ownership{node: id, from: now}
			if id == "" {
				continue
			}
			if t.lastBy[p] != "" && t.lastBy[p] != id {
				t.gaps = append(t.gaps, move{p: p, from: t.lastBy[p], to: id, gap: now.Sub(t.lastSeen[p]), at: now})
			}
			t.lastSeen[p], t.lastBy[p] = now, id
		}
		t.mu.Unlock()
		// Half a millisecond between rounds: fine enough for gaps of tens
		// of milliseconds, and it leaves the CPU to the nodes.
		time.Sleep(500 * time.Microsecond)
	}
}

func (t *timeline) close(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for p := range t.open {
		if t.open[p].node != "" {
			t.open[p].to = now
			t.spans[p] = append(t.spans[p], t.open[p])
			t.open[p] = ownership{}
		}
	}
}

// finish stops the recording after two more whole rounds, so that what
// the nodes report when it is called (a balance just seen) is recorded.
func (t *timeline) finish() {
	t.mu.Lock()
	until := t.rounds + 2
	t.mu.Unlock()
	for {
		t.mu.Lock()
		done := t.rounds >= until
		t.mu.Unlock()
		if done {
			break
		}
		time.Sleep(100 * time.Microsecond)
	}
	close(t.stop)
	<-t.done
}

// movesSince are the changes of reporter after since.
func (t *timeline) movesSince(since time.Time) []move {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []move
	for _, m := range t.gaps {
		if m.at.After(since) {
			out = append(out, m)
		}
	}
	return out
}

// gapStats summarises the gaps of moves: min, median, max and their sum.
type gapStats struct {
	n                int
	min, p50, max    time.Duration
	unowned          time.Duration // summed over the partitions
	movedTwice       int           // partitions that changed reporter more than once
	overBound, bound time.Duration
	over             int
}

func summarizeGaps(moves []move, bound time.Duration) gapStats {
	s := gapStats{n: len(moves), bound: bound}
	if len(moves) == 0 {
		return s
	}
	gs := make([]time.Duration, len(moves))
	per := map[int]int{}
	for i, m := range moves {
		gs[i] = m.gap
		s.unowned += m.gap
		per[m.p]++
		if m.gap > bound {
			s.over++
			s.overBound = max(s.overBound, m.gap-bound)
		}
	}
	for _, k := range per {
		if k > 1 {
			s.movedTwice++
		}
	}
	sort.Slice(gs, func(i, j int) bool { return gs[i] < gs[j] })
	s.min, s.p50, s.max = gs[0], gs[len(gs)/2], gs[len(gs)-1]
	return s
}

func (s gapStats) String() string {
	if s.n == 0 {
		return "no move seen"
	}
	return fmt.Sprintf("%d moves, gap %v / %v / %v (min / median / max), %.1f partition-s unowned, %d over %v",
		s.n, roundMS(s.min), roundMS(s.p50), roundMS(s.max), s.unowned.Seconds(), s.over, s.bound)
}

func roundMS(d time.Duration) string { return d.Round(time.Millisecond).String() }

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

// svg draws the timeline: one row per partition, time across, one colour
// per node, white where nobody reports the partition. The join's instant
// is marked.
func (t *timeline) svg(w io.Writer, joinedAt time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var first, last time.Time
	nodes := map[string]int{}
	var ids []string
	for _, spans := range t.spans {
		for _, s := range spans {
			if first.IsZero() || s.from.Before(first) {
				first = s.from
			}
			last = maxTime(last, s.to)
			if _, ok := nodes[s.node]; !ok {
				nodes[s.node] = 0
				ids = append(ids, s.node)
			}
		}
	}
	if first.IsZero() {
		return fmt.Errorf("nothing recorded")
	}
	sort.Strings(ids)
	for i, id := range ids {
		nodes[id] = i
	}
	colours := []string{"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7"}
	const width, left, top, legend = 900.0, 60.0, 30.0, 40.0
	rowH := 600.0 / float64(t.q)
	height := top + 600 + legend
	span := last.Sub(first).Seconds()
	x := func(at time.Time) float64 { return left + width*at.Sub(first).Seconds()/span }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", left+width+20, height)
	fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="600" fill="white" stroke="#999"/>`+"\n", left, top, width)
	fmt.Fprintf(&b, `<text x="%.1f" y="18">Ownership during a join: %d partitions (rows), time across (%.2f s); white: reported by nobody</text>`+"\n", left, t.q, span)
	// Consecutive partitions with the same history share their rects.
	for p := 0; p < len(t.spans); {
		run := 1
		for p+run < len(t.spans) && slices.Equal(t.spans[p+run], t.spans[p]) {
			run++
		}
		y := top + float64(p)*rowH
		for _, s := range t.spans[p] {
			fmt.Fprintf(&b, `<rect x="%.2f" y="%.2f" width="%.2f" height="%.2f" fill="%s"/>`+"\n",
				x(s.from), y, max(x(s.to)-x(s.from), 0.3), rowH*float64(run), colours[nodes[s.node]%len(colours)])
		}
		p += run
	}
	jx := x(joinedAt)
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black" stroke-dasharray="4 3"/>`+"\n", jx, top, jx, top+600)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">Start of the 4th node</text>`+"\n", jx+4, top+12)
	for s := 0.0; s <= span; s += 0.5 {
		tx := left + width*s/span
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%.1f s</text>`+"\n", tx, top+615, s)
	}
	for i, id := range ids {
		lx := left + float64(i)*110
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="14" height="14" fill="%s"/><text x="%.1f" y="%.1f">%s</text>`+"\n",
			lx, top+625, colours[i%len(colours)], lx+18, top+637, id)
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
