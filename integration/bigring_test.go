package integration

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// Big rings and many rings: no heartbeat does a ring's heavy work (creating
// it, rebalancing it on a join), so nodes stay live through it. The
// defaults are the short forms CI runs; BENCHMARKS.md has the full runs.
var (
	bigRingNodes     = flag.Int("bigring.nodes", 1, "TestBigRing: nodes on the ring of 65,536 (CI: 1; the full runs: 4 and 100)")
	bigRingHeartbeat = flag.Duration("bigring.heartbeat", 0, "TestBigRing: the nodes' heartbeat (0: the default, TTL/10)")
	bigRingPerNode   = flag.Int("bigring.pernode", 0, "TestBigRing: connections in each node's own pool, as separate processes have (0: one pool of 20 for all nodes)")
	manyRingsRings   = flag.Int("manyrings.rings", 100, "TestManyRings: rings of 64 on each client (the full run: 1000)")
	manyRingsWithin  = flag.Duration("manyrings.within", 10*time.Second, "TestManyRings: all live and balanced within this of the first Start")
)

// startAll starts every node, at most 20 Start calls in flight, and fails
// the test on any error.
func startAll(t *testing.T, nodes []*node) {
	t.Helper()
	starts := make(chan *node)
	errs := make(chan error, len(nodes))
	var wg sync.WaitGroup
	for w := 0; w < 20; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range starts {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				if err := n.client.Start(ctx); err != nil {
					errs <- fmt.Errorf("start %s: %w", n.id, err)
				}
				cancel()
			}
		}()
	}
	for _, n := range nodes {
		starts <- n
	}
	close(starts)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// pooledNodes makes n clients on one shared pool of 20 connections (with
// perNode > 0: each on a pool of its own of perNode connections), each
// with a lease on every ring of rings (all of size q), with the env's TTL
// and opts.
func pooledNodes(t *testing.T, e *env, n, perNode int, rings []string, q int, opts ...leasering.Option) []*node {
	t.Helper()
	var pools []*sql.DB
	pool := func() *sql.DB {
		if len(pools) > 0 && perNode == 0 {
			return pools[0]
		}
		size := 20
		if perNode > 0 {
			size = perNode
		}
		p := openDB(t, e.dsn)
		p.SetMaxOpenConns(size)
		p.SetMaxIdleConns(size)
		pools = append(pools, p)
		return p
	}
	nodes := make([]*node, n)
	t.Cleanup(func() {
		for _, p := range pools {
			_ = p.Close() // the leaves fail at once; the schema goes with the env
		}
		var wg sync.WaitGroup
		for _, nd := range nodes {
			if nd != nil {
				wg.Add(1)
				go func() { defer wg.Done(); _ = nd.client.Close() }()
			}
		}
		wg.Wait()
	})
	for i := range nodes {
		id := fmt.Sprintf("n%03d", i)
		warnings := &nodeLog{warnings: !e.trace}
		db := pool()
		c, err := leasering.NewClient(db, append([]leasering.Option{leasering.WithNodeID(id), leasering.WithSchema(e.schema),
			leasering.WithTTL(e.ttl), leasering.WithLogger(warnings.logger())}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = &node{id: id, client: c, pool: db, leases: map[string]*leasering.Lease{}, warnings: warnings}
		for _, r := range rings {
			l, err := c.Lease(r, q)
			if err != nil {
				t.Fatal(err)
			}
			nodes[i].leases[r] = l
		}
	}
	return nodes
}

// noLeaseLost fails the test for every node that lost its lease or failed
// a heartbeat.
func noLeaseLost(t *testing.T, nodes []*node) {
	t.Helper()
	for _, n := range nodes {
		if s := n.client.Stats(); s.LeaseLosses > 0 || s.RenewFailures > 0 {
			t.Errorf("%s: %d lease losses, %d failed heartbeats; its last warnings:%s", n.id, s.LeaseLosses, s.RenewFailures, n.recent())
		}
	}
}

// TestBigRing: one node, then -bigring.nodes nodes, on a ring of 65,536
// partitions at TTL 1 s. The ring's creation and each join's rebalance take
// up to seconds of database time; the nodes' heartbeats stay short, Start
// returns with the node live, no lease is lost and the ring balances.
func TestBigRing(t *testing.T) {
	const ring, q = "big", 65536
	e := newEnv(t, time.Second, 100*time.Millisecond)
	var opts []leasering.Option
	if *bigRingHeartbeat > 0 {
		opts = append(opts, leasering.WithHeartbeat(*bigRingHeartbeat))
	}
	nodes := pooledNodes(t, e, *bigRingNodes, *bigRingPerNode, []string{ring}, q, opts...)

	begin := time.Now()
	startAll(t, nodes[:1])
	if s := nodes[0].client.Stats(); s.LeaseLeft <= 0 || len(nodes[0].leases[ring].Values()) != q {
		t.Fatalf("after Start the first node has %v of lease and %d partitions, want live and all %d", s.LeaseLeft, len(nodes[0].leases[ring].Values()), q)
	}
	t.Logf("1 node: Start returned live with all %d partitions in %v", q, time.Since(begin).Round(time.Millisecond))

	if len(nodes) == 1 {
		return
	}
	begin = time.Now()
	startAll(t, nodes[1:])
	started := time.Since(begin)
	if !waitSlow(5*time.Minute, func() bool { _, ok := converged(nodes, ring, q, nil); return ok }) {
		t.Fatalf("%d nodes did not converge: %s", len(nodes), describe(nodes, ring, q))
	}
	t.Logf("%d nodes: started in %v, balanced %v after the first Start", len(nodes), started.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
	noLeaseLost(t, nodes)
	logLatencies(t, nodes)
}

// TestManyRings: 5 clients, each with -manyrings.rings rings of 64, at TTL
// 2 s: every client is live and every ring balanced within
// -manyrings.within of the first Start, and no lease is lost.
func TestManyRings(t *testing.T) {
	const q = 64
	e := newEnv(t, 2*time.Second, 200*time.Millisecond)
	rings := make([]string, *manyRingsRings)
	for i := range rings {
		rings[i] = fmt.Sprintf("r%04d", i)
	}
	nodes := pooledNodes(t, e, 5, 0, rings, q)
	begin := time.Now()
	startAll(t, nodes)
	started := time.Since(begin)
	balanced := func() bool {
		for _, r := range rings {
			if _, ok := converged(nodes, r, q, nil); !ok {
				return false
			}
		}
		return true
	}
	if !waitSlow(*manyRingsWithin-time.Since(begin), balanced) || time.Since(begin) > *manyRingsWithin {
		unbalanced := 0
		for _, r := range rings {
			if _, ok := converged(nodes, r, q, nil); !ok {
				unbalanced++
			}
		}
		t.Fatalf("%d of %d rings not balanced %v after the first Start (Starts took %v)", unbalanced, len(rings), *manyRingsWithin, started.Round(time.Millisecond))
	}
	t.Logf("5 clients x %d rings of %d: started in %v, all balanced %v after the first Start",
		len(rings), q, started.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
	noLeaseLost(t, nodes)
	logLatencies(t, nodes)
}

// logLatencies logs the slowest last heartbeat round trip.
func logLatencies(t *testing.T, nodes []*node) {
	var worst time.Duration
	for _, n := range nodes {
		worst = max(worst, n.client.Stats().LastRenewLatency)
	}
	t.Logf("slowest last heartbeat round trip: %v", worst.Round(time.Microsecond))
}
