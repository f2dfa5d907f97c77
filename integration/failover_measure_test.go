package integration

import (
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// logHole logs, at the switch, each node's lease row on the new primary
// against the node's own deadline, and returns how many nodes were in the
// hole: past the row's end there, and before their own deadline.
func logHole(t *testing.T, db *sql.DB, nodesTable string, nodes []*node) int {
	t.Helper()
	rows, err := db.Query(`SELECT node_id, extract(epoch FROM clock_timestamp() - expires_at) FROM ` + nodesTable)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	past := map[string]time.Duration{}
	for rows.Next() {
		var id string
		var d time.Duration
		if err := rows.Scan(&id, seconds(&d)); err != nil {
			t.Fatal(err)
		}
		past[id] = d
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	open := 0
	var lines []string
	for _, n := range nodes {
		left := n.client.Stats().LeaseLeft
		d, ok := past[n.id]
		row := "no row"
		switch {
		case ok && d > 0:
			row = fmt.Sprintf("row ended %v ago", d.Round(time.Millisecond))
		case ok:
			row = fmt.Sprintf("row ends in %v", (-d).Round(time.Millisecond))
		}
		own := "own deadline passed"
		if left > 0 {
			own = fmt.Sprintf("own deadline in %v", left.Round(time.Millisecond))
		}
		if ok && d > 0 && left > 0 {
			open++
		}
		lines = append(lines, fmt.Sprintf("%s: %s, %s", n.id, row, own))
	}
	verdict := "the hole is open for every node: each is past its row's end on the new primary and before its own deadline"
	if open < len(nodes) {
		verdict = fmt.Sprintf("the hole is open for %d of %d nodes", open, len(nodes))
	}
	t.Logf("at the switch: %s; %s", strings.Join(lines, "; "), verdict)
	return open
}

// evictionSeen is when a node's row was last seen and first seen gone, on
// the database's clock.
type evictionSeen struct {
	seen            bool
	present, goneAt time.Time
}

// watchEviction polls db for node id's lease row until it is gone or
// within has passed.
func watchEviction(t *testing.T, db *sql.DB, nodesTable, id string, within time.Duration) evictionSeen {
	t.Helper()
	var ev evictionSeen
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var n int
		var at time.Time
		if err := db.QueryRow(`SELECT count(*), clock_timestamp() FROM `+nodesTable+` WHERE node_id = $1`, id).Scan(&n, &at); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			ev.seen, ev.goneAt = true, at
			return ev
		}
		ev.present = at
		time.Sleep(5 * time.Millisecond)
	}
	return ev
}

// doubleMeter polls every node's Values() and adds up, per partition, the
// time two nodes or more reported it at once: between two polls that both
// saw it so.
type doubleMeter struct {
	e          *env
	ring       string
	size       int
	stop, done chan struct{}
	mu         sync.Mutex
	m          doubleMeasure
}

type doubleMeasure struct {
	parts map[int]bool
	total time.Duration
	first time.Time
}

func startDoubleMeter(e *env, ring string, size int) *doubleMeter {
	d := &doubleMeter{e: e, ring: ring, size: size, stop: make(chan struct{}), done: make(chan struct{}),
		m: doubleMeasure{parts: map[int]bool{}}}
	go d.run()
	e.t.Cleanup(func() { d.finish() })
	return d
}

func (d *doubleMeter) run() {
	defer close(d.done)
	prev := make([]bool, d.size)
	var prevAt time.Time
	for {
		select {
		case <-d.stop:
			return
		default:
		}
		d.e.mu.Lock()
		nodes := append([]*node(nil), d.e.nodes...)
		d.e.mu.Unlock()
		now := time.Now()
		cur := make([]bool, d.size)
		for p, o := range owners(nodes, d.ring, d.size) {
			cur[p] = len(o) > 1
		}
		d.mu.Lock()
		for p := range cur {
			if !cur[p] {
				continue
			}
			if d.m.first.IsZero() {
				d.m.first = now
			}
			d.m.parts[p] = true
			if prev[p] {
				d.m.total += now.Sub(prevAt)
			}
		}
		d.mu.Unlock()
		prev, prevAt = cur, now
		time.Sleep(200 * time.Microsecond)
	}
}

// finish stops the meter and returns what it measured.
func (d *doubleMeter) finish() doubleMeasure {
	select {
	case <-d.stop:
	default:
		close(d.stop)
	}
	<-d.done
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m
}
