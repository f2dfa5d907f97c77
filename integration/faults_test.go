package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/faultproxy"
)

// threeNodes starts n0, n1 and n2 on ring "orders" of q partitions, waits
// for them to converge and starts a checker with the G3 limit TTL +
// heartbeat.
func (e *env) threeNodes(q int) (assignment, *checker) {
	e.t.Helper()
	for i := 0; i < 3; i++ {
		e.startNode(fmt.Sprintf("n%d", i), "orders", q)
	}
	a, _ := e.waitConverged("orders", q, nil, 15*time.Second)
	return a, e.startChecker("orders", q, e.ttl+e.heartbeat)
}

// ownedBy lists the partitions a converged assignment gives id.
func ownedBy(a assignment, id string) []int {
	var out []int
	for p, o := range a {
		if o == id {
			out = append(out, p)
		}
	}
	return out
}

// othersOwn reports whether every partition in ps is reported by exactly
// one live node.
func (e *env) othersOwn(ring string, size int, ps []int) bool {
	own := owners(e.live(), ring, size)
	for _, p := range ps {
		if len(own[p]) != 1 {
			return false
		}
	}
	return true
}

// TestCloseHandsOverWithinOneHeartbeat: after Close returns, the others own
// the leaver's partitions within one heartbeat (plus their call's latency).
// It runs alone (not parallel): it measures time.
func TestCloseHandsOverWithinOneHeartbeat(t *testing.T) {
	const q, hb = 1024, 200 * time.Millisecond
	e := newEnv(t, 2*time.Second, hb)
	a, chk := e.threeNodes(q)
	leaver := e.live()[0]
	theirs := ownedBy(a, leaver.id)
	if err := leaver.client.Close(); err != nil {
		t.Fatal(err)
	}
	if got := leaver.leases["orders"].Values(); len(got) != 0 {
		t.Fatalf("after Close the leaver still reports %d partitions", len(got))
	}
	leaver.down.Store(true)
	closed := time.Now()
	if !waitFor(5*time.Second, func() bool { return e.othersOwn("orders", q, theirs) }) {
		t.Fatalf("leaver's partitions not taken over: %s", describe(e.live(), "orders", q))
	}
	took := time.Since(closed)
	t.Logf("Close to takeover of %d partitions: %v (heartbeat %v)", len(theirs), took.Round(time.Millisecond), hb)
	if took > hb+hb/2 {
		t.Errorf("takeover after Close took %v, want at most one heartbeat (%v) plus latency", took, hb)
	}
	e.waitConverged("orders", q, nil, 5*time.Second)
	chk.finish()
}

// TestCrashTakeoverWithinTTLPlusHeartbeat cuts a node off the database with
// a blackhole (its connections hang). It must stop reporting before its
// lease lapses (the checker), and the others own its partitions within
// TTL + heartbeat of the cut. It runs alone (not parallel): it measures
// time.
func TestCrashTakeoverWithinTTLPlusHeartbeat(t *testing.T) {
	const q = 1024
	ttl, hb := time.Second, 100*time.Millisecond
	e := newEnv(t, ttl, hb)
	a, chk := e.threeNodes(q)
	victim := e.live()[1]
	theirs := ownedBy(a, victim.id)
	cut := time.Now()
	victim.crash()
	if !waitFor(ttl, func() bool { return len(victim.leases["orders"].Values()) == 0 }) {
		t.Fatal("cut-off node still reports partitions a whole TTL after the cut")
	}
	fenced := time.Since(cut)
	if !waitFor(5*ttl, func() bool { return e.othersOwn("orders", q, theirs) }) {
		t.Fatalf("partitions of the cut-off node not taken over: %s", describe(e.live(), "orders", q))
	}
	took := time.Since(cut)
	t.Logf("cut-off node stopped reporting after %v; others took its %d partitions %v after the cut (TTL %v, heartbeat %v)",
		fenced.Round(time.Millisecond), len(theirs), took.Round(time.Millisecond), ttl, hb)
	if took > ttl+hb {
		t.Errorf("takeover took %v, want at most TTL + heartbeat = %v", took, ttl+hb)
	}
	e.waitConverged("orders", q, nil, 5*time.Second)

	// The node comes back: it rejoins without help and the ring rebalances.
	victim.proxy.SetMode(faultproxy.Pass)
	victim.down.Store(false)
	e.waitConverged("orders", q, nil, 10*time.Second)
	chk.finish()
}

// TestConcurrentStartOf50 starts 50 clients at once on an empty schema: the
// migration is serialised in the database and every start succeeds.
func TestConcurrentStartOf50(t *testing.T) {
	const q, n = 1024, 50
	e := newEnv(t, 5*time.Second, 500*time.Millisecond)
	nodes := make([]*node, n)
	for i := range nodes {
		nodes[i] = e.newNode(fmt.Sprintf("n%02d", i))
		nodes[i].db.SetMaxOpenConns(1)
		l, err := nodes[i].client.Lease("orders", q)
		if err != nil {
			t.Fatal(err)
		}
		nodes[i].leases["orders"] = l
		e.register(nodes[i])
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range nodes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			errs[i] = nodes[i].client.Start(ctx)
		}(i)
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("start of %s: %v", nodes[i].id, err)
		}
	}
	_, took := e.waitConverged("orders", q, nil, 60*time.Second)
	t.Logf("50 concurrent starts converged %v after the last Start returned", took.Round(time.Millisecond))
}

// TestSlowNodeLosesItsPartitions: a node whose round trips take longer than
// half a lease cannot use its lease, so it must let it lapse (late
// heartbeats extend nothing) and the others take its partitions within
// TTL + heartbeat of the slowdown, with no moment of double ownership.
// It runs alone (not parallel): it measures time.
func TestSlowNodeLosesItsPartitions(t *testing.T) {
	const q = 256
	e := newEnv(t, time.Second, 100*time.Millisecond)
	a, chk := e.threeNodes(q)
	slow := e.live()[0]
	theirs := ownedBy(a, slow.id)
	// Each call must take longer than half a lease (500ms). lib/pq makes
	// two round trips per call (parse, then bind and execute): 150ms each
	// way gives 600ms. pgx's stdlib makes one once its statement cache
	// holds the call, and at 150ms each way its heartbeat would reach the
	// database within a quarter lease and extend the lease once more: it
	// needs 300ms each way.
	latency := 150 * time.Millisecond
	if testDriver == "pgx" {
		latency = 300 * time.Millisecond
	}
	slow.proxy.SetLatency(latency)
	slow.down.Store(true)
	start := time.Now()
	if !waitFor(5*time.Second, func() bool { return e.othersOwn("orders", q, theirs) }) {
		t.Fatalf("the slow node's partitions were not taken over: %s", describe(e.live(), "orders", q))
	}
	took := time.Since(start)
	t.Logf("slow node's %d partitions taken over %v after the slowdown", len(theirs), took.Round(time.Millisecond))
	if limit := e.ttl + e.heartbeat + 150*time.Millisecond; took > limit {
		t.Errorf("takeover took %v, want at most TTL + heartbeat (+150ms for the calls) = %v", took, limit)
	}
	if got := slow.leases["orders"].Values(); len(got) != 0 {
		t.Errorf("the slow node still reports %d partitions", len(got))
	}
	// Healed, it rejoins and the ring balances over all three again.
	slow.proxy.SetLatency(0)
	slow.down.Store(false)
	e.waitConverged("orders", q, nil, 10*time.Second)
	chk.finish()
}
