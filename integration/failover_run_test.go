package integration

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/faultproxy"
	"github.com/leasering/leasering/internal/localpg"
)

func runFailover(t *testing.T, f failoverForm, s *failoverSetup) failoverResult {
	var res failoverResult
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Error(err)
		}
	})
	primary, relay, copyOf := s.primary, s.relay, s.copy
	front := newFrontProxy(t, primary.Addr())

	e := newEnvOn(t, proxiedDSN(t, primary.DSN, front.Addr()), failoverTTL, failoverHeartbeat)
	nodes := make([]*node, failoverNodes)
	for i := range nodes {
		nodes[i] = e.startNode(fmt.Sprintf("n%d", i), failoverRing, failoverSize)
	}
	// The node that never comes back would wait its Close's leave out.
	t.Cleanup(func() { nodes[failoverNodes-1].proxy.SetMode(faultproxy.Refuse) })
	assigned, _ := e.waitConverged(failoverRing, failoverSize, nil, 10*time.Second)
	chk := e.startChecker(failoverRing, failoverSize, 3*failoverTTL)
	meter := startDoubleMeter(e, failoverRing, failoverSize)
	nodesTable := `"` + e.schema + `".nodes`

	var newPrimary *localpg.Cluster
	var killed time.Time
	if f.restore {
		newPrimary, res.lag = restoreBeforeLastHeartbeats(t, ctx, e, primary, copyOf)
	} else {
		standby := openDB(t, copyOf.DSN)
		defer standby.Close()
		waitReplayed(t, standby, e.schema, assigned)
		relay.SetLatency(*failoverLag)
		// The standby now falls behind: nothing reaches it for the lag.
		if !waitFor(*failoverLag+5*time.Second, func() bool {
			err := standby.QueryRow(`SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())`).Scan(seconds(&res.lag))
			return err == nil && res.lag >= *failoverLag
		}) {
			t.Fatalf("the standby is only %v behind", res.lag)
		}
		// The kill: the relay is cut first, so that what it holds back
		// never reaches the standby, then the primary dies.
		killed = time.Now()
		relay.SetMode(faultproxy.Refuse)
		front.SetMode(faultproxy.Blackhole) // the host is gone: nothing answers
		if f.unreachable {
			nodes[failoverNodes-1].crash()
		}
		if err := primary.Kill(); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		// The failure detection the scenario models, not a wait for a
		// condition.
		time.Sleep(time.Until(killed.Add(f.detection)))
		promoting := time.Now()
		if err := copyOf.Promote(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("the primary died in %v; the promotion began %v after the kill and took %v",
			stopped.Sub(killed).Round(time.Millisecond), promoting.Sub(killed).Round(time.Millisecond), time.Since(promoting).Round(time.Millisecond))
		newPrimary = copyOf
	}
	db := openDB(t, newPrimary.DSN)
	defer db.Close()
	var err error
	res.holeNodes = logHole(t, db, nodesTable, nodes)
	if *failoverNoGrace {
		// The server that kept the leases, as far as the schema can tell.
		if _, err := db.Exec(`UPDATE "` + e.schema + `".server_identity SET started_at = pg_postmaster_start_time()`); err != nil {
			t.Fatal(err)
		}
		t.Logf("-failover.nograce: the new primary is recorded as the old one, so it will not notice the failover")
	}
	if f.late {
		for _, n := range nodes[1:] {
			n.proxy.SetMode(faultproxy.Blackhole)
			time.AfterFunc(n.client.Stats().LeaseLeft-failoverLateBy, func() { n.proxy.SetMode(faultproxy.Pass) })
		}
	}
	front.SetTarget(newPrimary.Addr())
	front.SetMode(faultproxy.Pass)
	switched := time.Now()
	if f.restore {
		t.Logf("switched to a copy restored to %v before the switch", res.lag.Round(time.Millisecond))
	} else {
		t.Logf("switched %v after the kill; the standby was %v behind", switched.Sub(killed).Round(time.Millisecond), res.lag.Round(time.Millisecond))
	}

	// A node that never comes back is evicted one TTL after the grace
	// starts, no earlier.
	var gone evictionSeen
	if f.unreachable {
		gone = watchEviction(t, db, nodesTable, nodes[failoverNodes-1].id, 4*failoverTTL)
	}
	// Until every node has renewed on the new primary, the ring it shows
	// is the old one, balanced already.
	if !waitFor(4*failoverTTL, func() bool {
		for _, n := range nodes {
			if age := n.client.Stats().LastRenewAge; !n.down.Load() && (age < 0 || age > time.Since(switched)) {
				return false
			}
		}
		return true
	}) {
		t.Errorf("not every node renewed on the new primary within %v of the switch", 4*failoverTTL)
	}
	e.waitConverged(failoverRing, failoverSize, nil, 4*failoverTTL)
	balancedAt := time.Now()

	// The grace begins when the new primary first has a lease's end decide
	// a takeover: a scan that finds a lapsed lease, a rebalance. If every
	// node came back before any scan found one, it has not begun.
	res.graceFrom, res.evicted, res.balanced = -1, -1, balancedAt.Sub(switched)
	bound := failoverTTL + failoverHeartbeat
	var noticedHere bool
	var noticed, graceEnd time.Time
	err = db.QueryRow(`SELECT started_at = pg_postmaster_start_time(), noticed_at, grace_until
		FROM "`+e.schema+`".server_identity`).Scan(&noticedHere, &noticed, &graceEnd)
	switch {
	case err != nil:
		t.Errorf("no server identity on the new primary: %v", err)
	case !noticedHere:
		t.Logf("no grace: every node renewed on the new primary before any scan found a lapsed lease; ring balanced %v after the switch",
			res.balanced.Round(time.Millisecond))
		if f.unreachable {
			t.Errorf("%s was evicted, or is still there, and the new primary never noticed it is another server", nodes[failoverNodes-1].id)
		}
		if res.balanced > bound {
			t.Errorf("ring balanced %v after the switch, more than TTL + heartbeat (%v)", res.balanced.Round(time.Millisecond), bound)
		}
	default:
		res.graceFrom, res.balanced = noticed.Sub(switched), balancedAt.Sub(graceEnd)
		t.Logf("grace from %v after the switch to %v after it (%v); ring balanced %v after its end",
			res.graceFrom.Round(time.Millisecond), graceEnd.Sub(switched).Round(time.Millisecond),
			graceEnd.Sub(noticed).Round(time.Millisecond), res.balanced.Round(time.Millisecond))
		if res.balanced > bound {
			t.Errorf("ring balanced %v after the grace's end, more than TTL + heartbeat (%v)", res.balanced.Round(time.Millisecond), bound)
		}
		if f.unreachable {
			if gone.seen {
				res.evicted = gone.goneAt.Sub(noticed)
			}
			switch {
			case !gone.seen:
				t.Errorf("%s never evicted", nodes[failoverNodes-1].id)
			case gone.goneAt.Before(noticed.Add(failoverTTL)):
				t.Errorf("%s evicted by %v after the grace began, less than one TTL (%v)",
					nodes[failoverNodes-1].id, gone.goneAt.Sub(noticed).Round(time.Millisecond), failoverTTL)
			case gone.goneAt.After(graceEnd.Add(2 * failoverHeartbeat)):
				// The survivors scan just after the grace's end (they are
				// told of it), then the call takes its time.
				t.Errorf("%s evicted %v after the grace's end, more than two heartbeats", nodes[failoverNodes-1].id,
					gone.goneAt.Sub(graceEnd).Round(time.Millisecond))
			default:
				t.Logf("%s evicted between %v and %v after the grace began", nodes[failoverNodes-1].id,
					gone.present.Sub(noticed).Round(time.Millisecond), gone.goneAt.Sub(noticed).Round(time.Millisecond))
			}
		}
	}

	// The meter and the checker watch two more heartbeats of the settled
	// ring (an observation, not a wait for a condition).
	time.Sleep(2 * failoverHeartbeat)
	m := meter.finish()
	res.doubled, res.doubleTime, res.firstDouble = len(m.parts), m.total, -1
	if len(m.parts) > 0 {
		res.firstDouble = m.first.Sub(switched)
		t.Logf("%d partitions reported by two nodes at once, for %.2f partition-seconds in all, the first %v after the switch",
			len(m.parts), m.total.Seconds(), res.firstDouble.Round(time.Millisecond))
	} else {
		t.Logf("no partition reported by two nodes at once")
	}
	chk.finish()
	return res
}

// seconds scans a number of seconds into a duration.
type secondsScanner struct{ d *time.Duration }

func seconds(d *time.Duration) secondsScanner { return secondsScanner{d} }

func (s secondsScanner) Scan(v any) error {
	var f sql.NullFloat64
	if err := f.Scan(v); err != nil {
		return err
	}
	*s.d = time.Duration(f.Float64 * float64(time.Second))
	return nil
}

// waitReplayed waits until the standby shows the ring as assigned.
func waitReplayed(t *testing.T, standby *sql.DB, schema string, assigned assignment) {
	t.Helper()
	want := strings.Join(assigned, ",")
	var got string
	if !waitFor(10*time.Second, func() bool {
		err := standby.QueryRow(`SELECT string_agg(coalesce(owner, ''), ',' ORDER BY partition)
			FROM "`+schema+`".partitions WHERE ring = $1`, failoverRing).Scan(&got)
		return err == nil && got == want
	}) {
		t.Fatalf("the standby never showed the converged ring: %q", got)
	}
}

// restoreBeforeLastHeartbeats restores backup, a base backup of primary,
// to a point after the ring converged but before the nodes' last
// heartbeats, starts it while the nodes still run on primary, and returns
// once every lease row on the copy has run out (the nodes, renewing on
// primary, are still live). lag is how far the copy is behind the primary
// then.
func restoreBeforeLastHeartbeats(t *testing.T, ctx context.Context, e *env, primary, backup *localpg.Cluster) (*localpg.Cluster, time.Duration) {
	t.Helper()
	pdb := openDB(t, primary.DSN)
	defer pdb.Close()
	var target string // the primary's now(), as text: recovery_target_time's form
	if err := pdb.QueryRow(`SELECT now()::text`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	// WAL past the target, archived: a heartbeat that committed after it,
	// then a segment switch.
	if !waitFor(5*time.Second, func() bool {
		var n int
		err := pdb.QueryRow(`SELECT count(*) FROM "`+e.schema+`".nodes WHERE expires_at > $1::timestamptz + $2 * interval '1 ms'`,
			target, failoverTTL.Milliseconds()).Scan(&n)
		return err == nil && n > 0
	}) {
		t.Fatal("no heartbeat committed after the restore target")
	}
	var seg string
	if err := pdb.QueryRow(`SELECT pg_walfile_name(pg_switch_wal())`).Scan(&seg); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool {
		var n int
		err := pdb.QueryRow(`SELECT count(*) FROM pg_stat_archiver WHERE last_archived_wal >= $1`, seg).Scan(&n)
		return err == nil && n == 1
	}) {
		t.Fatalf("WAL segment %s not archived", seg)
	}
	if err := backup.Recover(ctx, primary, target); err != nil {
		t.Fatal(err)
	}
	db := openDB(t, backup.DSN)
	defer db.Close()
	if !waitFor(2*failoverTTL, func() bool {
		var over bool
		err := db.QueryRow(`SELECT clock_timestamp() > max(expires_at) FROM "` + e.schema + `".nodes`).Scan(&over)
		return err == nil && over
	}) {
		t.Fatal("the restored copy's lease rows never ran out")
	}
	var behind time.Duration
	if err := db.QueryRow(`SELECT extract(epoch FROM clock_timestamp() - $1::timestamptz)`, target).Scan(seconds(&behind)); err != nil {
		t.Fatal(err)
	}
	return backup, behind
}
