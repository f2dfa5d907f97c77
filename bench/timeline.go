package main

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// The recorder of bench handoff: it polls every node's Values() and keeps
// who reported each partition when, the changes of reporter with their
// gaps, and draws the timeline as an SVG.

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
	n             int
	min, p50, max time.Duration
	unowned       time.Duration // summed over the partitions
	movedTwice    int           // partitions that changed reporter more than once
	over          int           // gaps over the bound
}

func summarizeGaps(moves []move, bound time.Duration) gapStats {
	s := gapStats{n: len(moves)}
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

func roundMS(d time.Duration) string { return d.Round(time.Millisecond).String() }

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
