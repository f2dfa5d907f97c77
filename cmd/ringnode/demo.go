package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/leasering/leasering"
	"github.com/leasering/leasering/internal/faultproxy"
	"github.com/leasering/leasering/internal/localpg"
)

// demoSchema is the schema the demo owns: it is dropped and made anew on
// every run, so the demo starts from an empty ring.
const demoSchema = "leasering_demo"

type demoNode struct {
	id     string
	client *leasering.Client
	lease  *leasering.Lease
	db     *sql.DB
	proxy  *faultproxy.Proxy
	live   bool // expected to report
}

type demo struct {
	out    io.Writer
	stderr io.Writer // for -v
	dsn    string
	size   int
	ttl    time.Duration
	hb     time.Duration
	verb   bool

	nodes   []*demoNode
	last    []string // partition -> owner after the previous step
	rows    []summaryRow
	reads   int // ownership snapshots taken
	doubles int // partitions seen reported by two nodes in one snapshot
}

type summaryRow struct {
	step     string
	moved    int
	converge time.Duration
	maxShare float64
}

// demoTTL is the demo's lease time: short, so that the crash and the
// blackhole are over in seconds.
const demoTTL = 2 * time.Second

var demoAbout = fmt.Sprintf(`Starts nodes a to e in this process, each with its own connection pool
behind a fault-injecting proxy, on ring "demo"; then f joins, b crashes (cut
off for good), c is blackholed and healed after 2 TTL, and d leaves. After
each step it waits until every partition has exactly one live owner and the
shares are exact, and prints the time taken, the partitions moved and the
ring.

It drops schema %s, with everything in it, and creates it anew
on every run.

The TTL defaults to %v, not the library's %v (leasering.DefaultTTL), so
that the crash and the blackhole are over in seconds.`, demoSchema, demoTTL, leasering.DefaultTTL)

// demoCmd runs the demo script.
func demoCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", demoAbout)
	dsn := dsnFlag(fs)
	size := fs.Int("size", 64, "ring `size`: partitions, 1.."+fmt.Sprint(leasering.MaxRingSize))
	ttl := fs.Duration("ttl", demoTTL, fmt.Sprintf("lease TTL, at least %v; %v here so the demo is quick (library default: %v); the heartbeat is a tenth of it", leasering.MinTTL, demoTTL, leasering.DefaultTTL))
	verbose := fs.Bool("v", false, "log the clients' events to stderr")
	if code, done := parse(fs, args, stdout, stderr); done {
		return code
	}
	if err := checkSize(*size); err != nil {
		return usageError(stderr, "demo", err)
	}
	if err := checkTTL(*ttl); err != nil {
		return usageError(stderr, "demo", err)
	}
	if err := runDemo(stdout, stderr, dsn.dsn, *size, *ttl, *verbose); err != nil {
		return failed(stderr, "demo", err)
	}
	return exitOK
}

// checkSize and checkTTL refuse what the library would, before any I/O.
func checkSize(n int) error {
	if n < 1 || n > leasering.MaxRingSize {
		return fmt.Errorf("-size %d is outside 1..%d", n, leasering.MaxRingSize)
	}
	return nil
}

func checkTTL(d time.Duration) error {
	if d < leasering.MinTTL {
		return fmt.Errorf("-ttl %v is below the minimum %v", d, leasering.MinTTL)
	}
	return nil
}

// runDemo runs the demo script, writing its report to out.
func runDemo(out, stderr io.Writer, dsn string, size int, ttl time.Duration, verbose bool) error {
	if dsn == "" {
		// No server named: a private one, removed at the end (and on
		// Ctrl-C), rather than whatever runs on this machine.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		srv, err := localpg.Find(ctx, localpg.Options{})
		cancel()
		if err != nil {
			return err
		}
		defer srv.Stop()
		defer localpg.StopOnSignal(srv)()
		fmt.Fprintf(out, "PostgreSQL: %s\n", srv.Source)
		dsn = srv.DSN
	}
	admin, err := openDB(dsn)
	if err != nil {
		return err
	}
	defer admin.Close()
	if _, err := admin.Exec(`DROP SCHEMA IF EXISTS ` + demoSchema + ` CASCADE`); err != nil {
		return fmt.Errorf("resetting schema %s: %w", demoSchema, err)
	}
	d := &demo{out: out, stderr: stderr, dsn: dsn, size: size, ttl: ttl, hb: ttl / 10, verb: verbose}
	defer d.shutdown()

	fmt.Fprintf(d.out, "leasering demo: ring %q of %d partitions, TTL %v, heartbeat %v, schema %s\n\n", "demo", d.size, d.ttl, d.hb, demoSchema)
	steps := []struct {
		name string
		act  func() error
	}{
		{"start a b c d e", func() error {
			for _, id := range []string{"a", "b", "c", "d", "e"} {
				if err := d.start(id); err != nil {
					return err
				}
			}
			return nil
		}},
		{"join f", func() error { return d.start("f") }},
		{"crash b (cut off for good)", func() error { d.node("b").cut(); return nil }},
		{"blackhole c, heal after 2 TTL", func() error {
			c := d.node("c")
			c.cut()
			if err := d.converge(); err != nil {
				return err
			}
			fmt.Fprintf(d.out, "    c cut off: the others own all %d partitions; c reports %d\n", d.size, len(c.lease.Values()))
			time.Sleep(d.ttl) // part of the scenario: the outage lasts a while
			c.proxy.SetMode(faultproxy.Pass)
			c.live = true
			return nil
		}},
		{"close d (graceful leave)", func() error {
			n := d.node("d")
			n.live = false
			return n.client.Close()
		}},
	}
	for _, s := range steps {
		start := time.Now()
		if err := s.act(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if err := d.converge(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		d.report(s.name, time.Since(start))
	}
	d.summary()
	return nil
}

func (d *demo) start(id string) error {
	u, err := url.Parse(d.dsn)
	if err != nil {
		return err
	}
	p, err := faultproxy.New(u.Host)
	if err != nil {
		return err
	}
	u.Host = p.Addr()
	db, err := sql.Open("postgres", u.String())
	if err != nil {
		return err
	}
	c, err := leasering.NewClient(db, leasering.WithNodeID(id), leasering.WithSchema(demoSchema),
		leasering.WithTTL(d.ttl), leasering.WithLogger(logger(d.verb, d.stderr).With("node", id)))
	if err != nil {
		return err
	}
	l, err := c.Lease("demo", d.size)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		return err
	}
	d.nodes = append(d.nodes, &demoNode{id: id, client: c, lease: l, db: db, proxy: p, live: true})
	return nil
}

func (d *demo) node(id string) *demoNode {
	for _, n := range d.nodes {
		if n.id == id {
			return n
		}
	}
	panic("demo: no node " + id) // the script names only nodes it started
}

// cut blackholes the node's connections: they hang, nothing is reset.
func (n *demoNode) cut() {
	n.proxy.SetMode(faultproxy.Blackhole)
	n.live = false
}

// assignment reads who reports each partition; ok when exactly one live
// node does for each and no cut-off node reports anything.
func (d *demo) assignment() ([]string, bool) {
	own := make([]string, d.size)
	ok := true
	d.reads++
	for _, n := range d.nodes {
		for _, p := range n.lease.Values() {
			if own[p] != "" {
				d.doubles++
			}
			if !n.live || own[p] != "" {
				ok = false
			}
			own[p] = n.id
		}
	}
	for _, o := range own {
		if o == "" {
			ok = false
		}
	}
	return own, ok && d.balanced(own)
}

func (d *demo) balanced(own []string) bool {
	count := map[string]int{}
	for _, o := range own {
		count[o]++
	}
	live := 0
	for _, n := range d.nodes {
		if n.live {
			live++
		}
	}
	for _, n := range d.nodes {
		if n.live && (count[n.id] < d.size/live || count[n.id] > (d.size+live-1)/live) {
			return false
		}
	}
	return true
}

func (d *demo) converge() error {
	deadline := time.Now().Add(5*d.ttl + 10*time.Second)
	for time.Now().Before(deadline) {
		if _, ok := d.assignment(); ok {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return errNotConverged
}

func (d *demo) report(step string, took time.Duration) {
	own, _ := d.assignment()
	moved := 0
	if d.last != nil {
		for p := range own {
			if own[p] != d.last[p] {
				moved++
			}
		}
	}
	d.last = own
	count := map[string]int{}
	for _, o := range own {
		count[o]++
	}
	ids := make([]string, 0, len(count))
	for id := range count {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var counts []string
	most := 0
	for _, id := range ids {
		counts = append(counts, fmt.Sprintf("%s=%d", id, count[id]))
		most = max(most, count[id])
	}
	fair := float64(d.size) / float64(len(ids))
	fmt.Fprintf(d.out, "%-32s converged in %7v  moved %3d  %s\n", step, took.Round(time.Millisecond), moved, strings.Join(counts, " "))
	fmt.Fprintf(d.out, "    ring: %s\n\n", strings.Join(own, ""))
	d.rows = append(d.rows, summaryRow{step: step, moved: moved, converge: took, maxShare: float64(most) / fair})
}

func (d *demo) summary() {
	fmt.Fprintln(d.out, "summary")
	fmt.Fprintf(d.out, "  %-32s %10s %6s %16s\n", "step", "converged", "moved", "max/fair share")
	for _, r := range d.rows {
		fmt.Fprintf(d.out, "  %-32s %10v %6d %16.3f\n", r.step, r.converge.Round(time.Millisecond), r.moved, r.maxShare)
	}
	fmt.Fprintf(d.out, "\n%d ownership snapshots read while converging; partitions reported by two nodes in one snapshot: %d\n", d.reads, d.doubles)
}

func (d *demo) shutdown() {
	for _, n := range d.nodes {
		if n.live {
			_ = n.client.Close()
		}
		n.proxy.SetMode(faultproxy.Refuse)
		_ = n.client.Close()
		_ = n.db.Close()
		_ = n.proxy.Close()
	}
}
