package integration

import (
	"database/sql"
	"flag"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

var (
	// The defaults are the short form CI runs. The full runs:
	//   -scale.nodes=500 -scale.duration=10m
	//   -scale.nodes=2000 -scale.q=16384 -scale.heartbeat=2s -scale.ttl=20s -scale.duration=10m
	scaleNodes    = flag.Int("scale.nodes", 100, "TestScale: nodes, in pools of 20 connections per 500 nodes")
	scaleDuration = flag.Duration("scale.duration", 5*time.Second,
		"TestScale: how long to measure once the ring has settled (the full run: 10m)")
	scaleQ         = flag.Int("scale.q", 4096, "TestScale: ring size")
	scaleHeartbeat = flag.Duration("scale.heartbeat", time.Second, "TestScale: heartbeat")
	scaleTTL       = flag.Duration("scale.ttl", 10*time.Second, "TestScale: lease TTL")
	scaleMaxP99    = flag.Duration("scale.maxp99", 0, "TestScale: fail when the renew round trip's p99 is over this (0: report only)")
)

// dbCounters are the server's cumulative statistics for one schema.
type dbCounters struct {
	calls                         int64   // renew_and_read calls
	totalMS, selfMS               float64 // their time, nested functions included / not
	ins, upd, hot, del            map[string]int64
	nodesUpdated, nodesHOTUpdated int64
	otherTablesWritten            int64
}

func readCounters(t *testing.T, db *sql.DB, schema string) dbCounters {
	t.Helper()
	c := dbCounters{ins: map[string]int64{}, upd: map[string]int64{}, hot: map[string]int64{}, del: map[string]int64{}}
	err := db.QueryRow(`SELECT coalesce(sum(calls), 0), coalesce(sum(total_time), 0), coalesce(sum(self_time), 0)
		FROM pg_stat_user_functions WHERE schemaname = $1 AND funcname = 'renew_and_read'`, schema).Scan(&c.calls, &c.totalMS, &c.selfMS)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query(`SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables WHERE schemaname = $1`, schema)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var ins, upd, hot, del int64
		if err := rows.Scan(&name, &ins, &upd, &hot, &del); err != nil {
			t.Fatal(err)
		}
		c.ins[name], c.upd[name], c.hot[name], c.del[name] = ins, upd, hot, del
	}
	return c
}

// TestScale runs -scale.nodes clients in one process over pools of 20
// connections (one per 500 nodes), on a ring of -scale.q (4096) with a
// -scale.heartbeat (1 s), rolled out in waves of 50, and for -scale.duration checks that no lease is lost and the balance stays exact.
// It reports renew latency (p50, p99), the database time of renew_and_read
// (pg_stat_user_functions, tracked for the pool's sessions), the rows
// written per heartbeat and the share of HOT updates of the nodes table. It
// runs alone (not parallel): it measures time.
func TestScale(t *testing.T) {
	const ring = "scale"
	q, hb, ttl := *scaleQ, *scaleHeartbeat, *scaleTTL
	e := newEnv(t, ttl, hb)
	app := "leasering-" + e.schema // the pools' sessions, for flushStats
	pools := make([]*sql.DB, (*scaleNodes+499)/500)
	for i := range pools {
		pools[i] = openDB(t, withParam(withParam(e.dsn, "track_functions", "pl"), "application_name", app))
		pools[i].SetMaxOpenConns(20)
		pools[i].SetMaxIdleConns(20)
	}
	nodes := make([]*node, *scaleNodes)
	t.Cleanup(func() {
		// Close the pools first: the clients' leaves then fail at once and
		// the schema goes with the env's cleanup, instead of 500
		// rebalances one after the other.
		for _, pool := range pools {
			_ = pool.Close()
		}
		var wg sync.WaitGroup
		for _, n := range nodes {
			if n != nil {
				wg.Add(1)
				go func() { defer wg.Done(); _ = n.client.Close() }()
			}
		}
		wg.Wait()
	})
	for i := range nodes {
		// Node i on pool i mod pools: a wave's joins, which hold a
		// connection for a second or more while the ring is big, spread
		// over every pool, as a deployment's new processes each bring
		// their own. Given pool i/500, the 20 joins in flight of a wave
		// took every connection of one pool, and its other 480 nodes
		// waited past their heartbeat's timeout (2,000 nodes: 1,314 of
		// 1,500 heartbeats waiting for a connection when the leases began
		// to lapse).
		c, err := leasering.NewClient(pools[i%len(pools)], leasering.WithNodeID(fmt.Sprintf("s%04d", i)), leasering.WithSchema(e.schema),
			leasering.WithTTL(ttl), leasering.WithHeartbeat(hb), leasering.WithLogger(quietLogger()))
		if err != nil {
			t.Fatal(err)
		}
		l, err := c.Lease(ring, q)
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = &node{id: fmt.Sprintf("s%04d", i), client: c, leases: map[string]*leasering.Lease{ring: l}}
	}

	// Roll them out in waves of 50 (20 starting at a time), each wave
	// joining once the ring has settled, as a deployment would.
	// The least lease any started node had left, sampled as the roll-out
	// waits: how near a lease came to lapsing.
	begin := time.Now()
	leastLeft := ttl
	stopPoolLog := logPools(t, pools, 10*time.Second)
	defer stopPoolLog()
	for lo := 0; lo < len(nodes); lo += 50 {
		wave := nodes[lo:min(lo+50, len(nodes))]
		startAll(t, wave)
		up := nodes[:lo+len(wave)]
		if !waitSlow(5*time.Minute, func() bool {
			for _, n := range up {
				leastLeft = min(leastLeft, n.client.Stats().LeaseLeft)
			}
			_, ok := converged(up, ring, q, nil)
			return ok
		}) {
			t.Fatalf("%d nodes did not converge: %s", len(up), describe(up, ring, q))
		}
	}
	t.Logf("%d nodes started and the ring of %d balanced in %v", len(nodes), q, time.Since(begin).Round(time.Millisecond))
	for i, pool := range pools {
		st := pool.Stats()
		t.Logf("pool %d during the roll-out: %d waits for a connection, %v in all", i, st.WaitCount, st.WaitDuration.Round(time.Millisecond))
	}
	failures := int64(0)
	for _, n := range nodes {
		s := n.client.Stats()
		failures += s.RenewFailures
		if s.LeaseLosses > 0 {
			t.Errorf("%s lost its lease %d times during the roll-out", n.id, s.LeaseLosses)
		}
	}
	t.Logf("during the roll-out: %d failed heartbeats; the least lease left %v of %v", failures, leastLeft.Round(time.Millisecond), ttl)

	// Measure from the steady state. The clients' views converging is not
	// the end of the roll-out's writes: the last handoffs are confirmed
	// about then, and each node writes its member row (seen) when it reads
	// the ring's new version, on its next heartbeat. Wait until the ring
	// has nothing left to do (no handoff pending, every member given the
	// current version) and every node has renewed twice since, so that
	// each holds that version (one whose answer was lost re-reads it).
	// Then make the server count all of it before the window opens.
	var settledAt int64
	var marks []int64
	if !waitSlow(3*time.Minute, func() bool {
		version, ok := settled(t, e.admin, e.schema, ring, len(nodes))
		if !ok {
			marks = nil
			return false
		}
		if marks == nil || version != settledAt {
			settledAt, marks = version, make([]int64, len(nodes))
			for i, n := range nodes {
				marks[i] = n.client.Stats().Renewals
			}
			return false
		}
		for i, n := range nodes {
			if n.client.Stats().Renewals < marks[i]+2 {
				return false
			}
		}
		return true
	}) {
		t.Fatal("the ring never settled: handoffs pending or members not given its current version")
	}
	flushStats(t, e.admin, pools, app)
	before := readCounters(t, e.admin, e.schema)
	// Every 50 ms, read every node's Stats: a new renewal count means a
	// new renewal, whose round trip is LastRenewLatency.
	renewals := make([]int64, len(nodes))
	losses := make([]int64, len(nodes))
	var asyncBefore int64
	for i, n := range nodes {
		s := n.client.Stats()
		renewals[i], losses[i] = s.Renewals, s.LeaseLosses
		asyncBefore += s.AsyncRenewals
	}
	firstRenewals := append([]int64(nil), renewals...)
	var latencies []time.Duration
	end := time.Now().Add(*scaleDuration)
	unbalanced := 0
	for time.Now().Before(end) {
		for i, n := range nodes {
			s := n.client.Stats()
			if s.Renewals != renewals[i] {
				renewals[i] = s.Renewals
				latencies = append(latencies, s.LastRenewLatency)
			}
			if s.LeaseLosses != losses[i] {
				t.Errorf("%s lost its lease during the run (%d times)", n.id, s.LeaseLosses-losses[i])
				losses[i] = s.LeaseLosses
			}
			if err := n.client.Healthy(); err != nil {
				t.Errorf("%s unhealthy: %v", n.id, err)
			}
		}
		if _, ok := converged(nodes, ring, q, nil); !ok {
			unbalanced++
		}
		time.Sleep(50 * time.Millisecond)
	}
	var total, async int64
	for i, n := range nodes {
		total += renewals[i] - firstRenewals[i]
		async += n.client.Stats().AsyncRenewals
	}
	async -= asyncBefore
	// Wait until the statistics count at least the renewals the clients saw.
	flushStats(t, e.admin, pools, app)
	var after dbCounters
	if !waitFor(30*time.Second, func() bool {
		after = readCounters(t, e.admin, e.schema)
		return after.calls-before.calls >= total
	}) {
		t.Fatalf("statistics counted %d renew_and_read calls, the clients %d renewals", after.calls-before.calls, total)
	}
	if _, ok := converged(nodes, ring, q, nil); !ok {
		t.Errorf("not balanced at the end: %s", describe(nodes, ring, q))
	}
	if unbalanced > 0 {
		t.Errorf("balance was not exact in %d samples", unbalanced)
	}

	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	pct := func(p int) time.Duration {
		if len(latencies) == 0 {
			return 0
		}
		return latencies[min(len(latencies)*p/100, len(latencies)-1)]
	}
	calls := after.calls - before.calls
	if calls == 0 {
		t.Fatal("pg_stat_user_functions counted no renew_and_read call: is track_functions settable here?")
	}
	t.Logf("%d nodes, ring of %d, heartbeat %v, TTL %v, %d pools of 20; %v: %d renewals (%.0f/s), %d latencies sampled: p50 %v, p99 %v, max %v",
		len(nodes), q, hb, ttl, len(pools), *scaleDuration, total, float64(total)/scaleDuration.Seconds(), len(latencies),
		pct(50).Round(time.Microsecond), pct(99).Round(time.Microsecond), pct(100).Round(time.Microsecond))
	t.Logf("of the renewals, %d (%.1f%%) committed without waiting for the disk (ondisk.go)", async, 100*float64(async)/float64(max(total, 1)))
	if *scaleMaxP99 > 0 && pct(99) > *scaleMaxP99 {
		t.Errorf("renew round trip p99 %v, over -scale.maxp99 %v", pct(99).Round(time.Microsecond), *scaleMaxP99)
	}
	t.Logf("renew_and_read in the database: %d calls, %.0f µs each (%.0f µs in its own body)",
		calls, (after.totalMS-before.totalMS)*1000/float64(calls), (after.selfMS-before.selfMS)*1000/float64(calls))
	var written []string
	var rows int64
	for _, table := range []string{"nodes", "rings", "members", "partitions"} {
		ins, upd, del := after.ins[table]-before.ins[table], after.upd[table]-before.upd[table], after.del[table]-before.del[table]
		rows += ins + upd + del
		written = append(written, fmt.Sprintf("%s %d (+%d ~%d -%d)", table, ins+upd+del, ins, upd, del))
	}
	upd := after.upd["nodes"] - before.upd["nodes"]
	hot := after.hot["nodes"] - before.hot["nodes"]
	t.Logf("rows written: %s: %.3f per heartbeat; nodes updates HOT: %d of %d (%.1f%%)",
		strings.Join(written, ", "), float64(rows)/float64(calls), hot, upd, 100*float64(hot)/float64(max(upd, 1)))
	if perCall := float64(rows) / float64(calls); perCall < 0.9 || perCall > 1.1 {
		t.Errorf("%.3f rows written per steady heartbeat, want 1 (the node's lease)", perCall)
	}
	if ratio := float64(hot) / float64(max(upd, 1)); ratio < 0.9 {
		t.Errorf("only %.1f%% of the nodes table's updates were HOT", 100*ratio)
	}
}

// waitSlow is waitFor polling every 100 ms, for conditions that are costly
// to evaluate over hundreds of nodes.
func waitSlow(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// settled reports whether ring has nothing left to change, and its
// version: no partition awaits its owner's release, and every one of the
// members has been given a view of the current version.
func settled(t *testing.T, db *sql.DB, schema, ring string, members int) (int64, bool) {
	t.Helper()
	var version int64
	var ok bool
	err := db.QueryRow(`SELECT r.version,
		       (SELECT count(*) FROM "`+schema+`".members m WHERE m.ring = r.name AND m.seen = r.version) = $2
		       AND NOT EXISTS (SELECT 1 FROM "`+schema+`".partitions p
		                        WHERE p.ring = r.name AND (p.next_owner IS NOT NULL OR p.released))
		  FROM "`+schema+`".rings r WHERE r.name = $1`, ring, members).Scan(&version, &ok)
	if err != nil {
		t.Fatal(err)
	}
	return version, ok
}

// flushStats makes the server count everything the pool's sessions (those
// with application_name app) did so far. A session flushes its statistics
// at most once a second, and one left idle keeps them for up to ten
// seconds, so they can land in a later window; a session that exits
// flushes them first. So close every session the pool has (one in use as
// it comes back) and wait until the server has seen each of them exit.
func flushStats(t *testing.T, admin *sql.DB, pools []*sql.DB, app string) {
	t.Helper()
	var now time.Time
	if err := admin.QueryRow(`SELECT clock_timestamp()`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	for _, pool := range pools {
		pool.SetMaxIdleConns(0)
		defer pool.SetMaxIdleConns(20)
	}
	if !waitSlow(time.Minute, func() bool {
		var left int
		err := admin.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND backend_start < $2`,
			app, now).Scan(&left)
		if err != nil {
			t.Fatal(err)
		}
		return left == 0
	}) {
		t.Fatal("the pool's sessions did not close")
	}
}

// withParam adds a query parameter to a URL DSN; lib/pq and pgx send unknown
// ones to the server as session settings.
func withParam(dsn, key, value string) string {
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + key + "=" + value
}

// logPools logs every period, until stopped, each pool's connections in
// use and idle and its waits for one since the last line: whether nodes
// wait for a connection while the pool's are busy, or idle.
func logPools(t *testing.T, pools []*sql.DB, period time.Duration) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		last := make([]sql.DBStats, len(pools))
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			var b strings.Builder
			for i, pool := range pools {
				st := pool.Stats()
				fmt.Fprintf(&b, " pool %d: %d in use, %d idle, %d waits (%v);", i, st.InUse, st.Idle,
					st.WaitCount-last[i].WaitCount, (st.WaitDuration - last[i].WaitDuration).Round(time.Millisecond))
				last[i] = st
			}
			t.Logf("pools:%s", b.String())
		}
	}()
	return func() { close(done); <-finished }
}
