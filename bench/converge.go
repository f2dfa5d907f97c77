package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"sync"
	"time"

	"github.com/leasering/leasering"
	"github.com/leasering/leasering/internal/faultproxy"
	"github.com/leasering/leasering/pqnotify"
)

// convergeNode is one client with its own pool behind its own proxy, so
// that a crash can cut it off.
type convergeNode struct {
	id     string
	client *leasering.Client
	lease  *leasering.Lease
	db     *sql.DB
	proxy  *faultproxy.Proxy
	notify *pqnotify.Notifier
}

type cluster struct {
	dsn     string
	schema  string
	ttl, hb time.Duration
	q       int
	notify  bool
	shared  *sql.DB // when set, every node's pool: no proxy, no crash

	mu        sync.Mutex // guards nodes and nextIndex: roll-outs start nodes at once
	nodes     []*convergeNode
	nextIndex int
}

// list is the nodes now.
func (c *cluster) list() []*convergeNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*convergeNode(nil), c.nodes...)
}

func (c *cluster) add(n *convergeNode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nodes = append(c.nodes, n)
}

func openDB(dsn string) (*sql.DB, error) { return sql.Open("postgres", dsn) }

func (c *cluster) start(ctx context.Context) (*convergeNode, error) {
	c.mu.Lock()
	c.nextIndex++
	n := &convergeNode{id: fmt.Sprintf("n%03d", c.nextIndex), db: c.shared}
	c.mu.Unlock()
	u, err := url.Parse(c.dsn)
	if err != nil {
		return nil, err
	}
	if n.db == nil {
		if n.proxy, err = faultproxy.New(u.Host); err != nil {
			return nil, err
		}
		u.Host = n.proxy.Addr()
		if n.db, err = sql.Open("postgres", u.String()); err != nil {
			return nil, err
		}
	}
	n.client, err = leasering.NewClient(n.db, leasering.WithNodeID(n.id), leasering.WithSchema(c.schema),
		leasering.WithTTL(c.ttl), leasering.WithHeartbeat(c.hb),
		leasering.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err == nil {
		n.lease, err = n.client.Lease("r", c.q)
	}
	if err == nil {
		err = n.client.Start(ctx)
	}
	if err == nil && c.notify {
		n.notify, err = pqnotify.Listen(ctx, u.String(), n.client)
	}
	if err != nil {
		n.stop()
		return nil, err
	}
	c.add(n)
	return n, nil
}

func (n *convergeNode) stop() {
	if n.notify != nil {
		_ = n.notify.Close()
	}
	if n.client != nil {
		_ = n.client.Close()
	}
	if n.proxy != nil { // else the pool is the cluster's
		n.proxy.SetMode(faultproxy.Refuse)
		_ = n.db.Close()
		_ = n.proxy.Close()
	}
}

func (c *cluster) remove(n *convergeNode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.nodes {
		if m == n {
			c.nodes = append(c.nodes[:i:i], c.nodes[i+1:]...)
		}
	}
}

// converged reports whether every partition is reported by exactly one
// node and every node holds floor or ceil of q/n.
func (c *cluster) converged() bool {
	nodes := c.list()
	if len(nodes) == 0 {
		return false
	}
	count := make([]int, c.q)
	lo, hi := c.q/len(nodes), (c.q+len(nodes)-1)/len(nodes)
	for _, n := range nodes {
		vs := n.lease.Values()
		if len(vs) < lo || len(vs) > hi {
			return false
		}
		for _, p := range vs {
			count[p]++
		}
	}
	for _, k := range count {
		if k != 1 {
			return false
		}
	}
	return true
}

func (c *cluster) waitConverged(within time.Duration) (time.Duration, error) {
	start := time.Now()
	for !c.converged() {
		if time.Since(start) > within {
			return 0, fmt.Errorf("not converged after %v", within)
		}
		time.Sleep(200 * time.Microsecond)
	}
	return time.Since(start), nil
}

// converge measures, for a cluster of five, the time from a join (Start
// called), a leave (Close called) and a crash (connections blackholed) until
// the ring is again exactly balanced with one owner per partition, by
// polling and with pqnotify.
func converge(ctx context.Context, w io.Writer, dsn string, runs int, ttl, hb time.Duration) error {
	fmt.Fprintf(w, "### Convergence, 5 nodes, Q = 1024, TTL %v, heartbeat %v (drain = heartbeat), %d runs each: min / median / max\n\n", ttl, hb, runs)
	fmt.Fprintln(w, "| event | polling | with pqnotify |")
	fmt.Fprintln(w, "|---|---:|---:|")
	results := map[string][2]stats{}
	for mode, notify := range []bool{false, true} {
		times := map[string][]time.Duration{}
		for r := 0; r < runs; r++ {
			for _, event := range []string{"join", "leave", "crash"} {
				d, err := convergeOnce(ctx, dsn, ttl, hb, notify, event)
				if err != nil {
					return fmt.Errorf("%s (notify %v): %w", event, notify, err)
				}
				times[event] = append(times[event], d)
			}
		}
		for event, ds := range times {
			v := results[event]
			v[mode] = summarize(ds)
			results[event] = v
		}
	}
	for _, event := range []string{"join", "leave", "crash"} {
		v := results[event]
		fmt.Fprintf(w, "| %s | %s | %s |\n", event, span(v[0]), span(v[1]))
	}
	fmt.Fprintln(w)
	return nil
}

func span(s stats) string {
	return fmt.Sprintf("%d / %d / %d ms", s.min.Milliseconds(), s.p50.Milliseconds(), s.max.Milliseconds())
}

func convergeOnce(ctx context.Context, dsn string, ttl, hb time.Duration, notify bool, event string) (time.Duration, error) {
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	s, err := newScratch(ctx, db)
	if err != nil {
		return 0, err
	}
	defer s.drop()
	c := &cluster{dsn: dsn, schema: s.name, ttl: ttl, hb: hb, q: 1024, notify: notify}
	defer func() {
		for _, n := range c.list() {
			n.stop()
		}
	}()
	for i := 0; i < 5; i++ {
		if _, err := c.start(ctx); err != nil {
			return 0, err
		}
	}
	if _, err := c.waitConverged(30 * time.Second); err != nil {
		return 0, err
	}
	// Let the event fall at a random phase of the heartbeats, as a real one
	// does. Convergence is seen just after the heartbeat that completed it,
	// and with notifications every node has just renewed then: a crash at
	// once would find its lease a whole TTL from its end, a crash at a
	// random moment finds it half a heartbeat younger on average.
	time.Sleep(rand.N(hb))
	start := time.Now()
	switch event {
	case "join":
		if _, err := c.start(ctx); err != nil {
			return 0, err
		}
	case "leave":
		n := c.list()[0]
		c.remove(n)
		n.stop()
	case "crash":
		n := c.list()[0]
		c.remove(n)
		n.proxy.SetMode(faultproxy.Blackhole)
		defer n.stop()
	}
	if _, err := c.waitConverged(30 * time.Second); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
