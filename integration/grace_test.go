package integration

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// The tests of G9 that need no replica: the database is made to look, to
// the schema, like a server that lost the last renewals (another start time
// recorded, lease rows and seen versions older than the nodes' own view),
// while the nodes keep running. TestFailover does it with real replicas.

// forgeFailover makes e's schema look like it was kept on another server,
// with the lease rows of the nodes in stale older than their nodes believe
// (run out now) and, with staleSeen, every node's last view forgotten.
func forgeFailover(t *testing.T, e *env, staleSeen bool, stale ...string) {
	t.Helper()
	tx, err := e.admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	stmts := []string{`UPDATE "` + e.schema + `".server_identity SET started_at = '-infinity'`}
	for _, id := range stale {
		stmts = append(stmts, fmt.Sprintf(`UPDATE "%s".nodes SET expires_at = now() WHERE node_id = '%s'`, e.schema, id))
	}
	if staleSeen {
		stmts = append(stmts, `UPDATE "`+e.schema+`".members SET seen = 0`)
	}
	for _, s := range stmts {
		if _, err := tx.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// grace reads the recorded server's grace, once it has begun after since.
func grace(t *testing.T, db *sql.DB, schema string, since time.Time) (noticed, end time.Time) {
	t.Helper()
	if !waitFor(10*time.Second, func() bool {
		err := db.QueryRow(`SELECT noticed_at, grace_until FROM "`+schema+`".server_identity
			WHERE started_at = pg_postmaster_start_time()`).Scan(&noticed, &end)
		return err == nil && noticed.After(since)
	}) {
		t.Fatalf("no grace begun after %v", since)
	}
	return noticed, end
}

// waitEvicted waits until node id's row is gone and returns when, on the
// database's clock, it was last seen and first seen gone.
func waitEvicted(t *testing.T, db *sql.DB, schema, id string, within time.Duration) evictionSeen {
	t.Helper()
	ev := watchEviction(t, db, `"`+schema+`".nodes`, id, within)
	if !ev.seen {
		t.Fatalf("%s not evicted within %v", id, within)
	}
	return ev
}

// TestNewSchemaHasNoGrace: a schema made on a server records that server,
// with no grace, and evictions on it follow the leases alone.
func TestNewSchemaHasNoGrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Second, 100*time.Millisecond)
	e.startNode("a", "r", 8)
	var same, none bool
	if err := e.admin.QueryRow(`SELECT started_at = pg_postmaster_start_time(), grace_until <= noticed_at
		FROM "`+e.schema+`".server_identity`).Scan(&same, &none); err != nil {
		t.Fatal(err)
	}
	if !same || !none {
		t.Errorf("server_identity: this server %v, no grace %v; want both", same, none)
	}
}

// TestGraceKeepsLapsedLeasesLive: on a server that lacks the last renewals,
// a node whose row there has run out, cut off but still within its own
// lease, is neither evicted nor counted dead by a join until one TTL after
// the server noticed; the newcomer gets its share by handoffs only, also
// from nodes whose last views this server forgot. Then the cut-off node is
// evicted and the ring balances. Nothing is ever reported twice.
func TestGraceKeepsLapsedLeasesLive(t *testing.T) {
	t.Parallel()
	const q = 64
	ttl, hb := 2*time.Second, 200*time.Millisecond
	e := newEnv(t, ttl, hb)
	for _, id := range []string{"a", "b", "c"} {
		e.startNode(id, "g", q)
	}
	e.waitConverged("g", q, nil, 10*time.Second)
	chk := e.startChecker("g", q, 3*ttl)
	a, b, c := e.live()[0], e.live()[1], e.live()[2]
	forged := time.Now()
	c.crash()
	forgeFailover(t, e, true, c.id)
	renewals := a.client.Stats().Renewals + b.client.Stats().Renewals
	e.startNode("d", "g", q) // joins during the grace
	noticed, end := grace(t, e.admin, e.schema, forged.Add(-time.Second))
	if got := end.Sub(noticed); got != ttl {
		t.Errorf("grace of %v, want the TTL, %v", got, ttl)
	}
	ev := waitEvicted(t, e.admin, e.schema, c.id, 3*ttl)
	if ev.goneAt.Before(end) {
		t.Errorf("%s evicted %v after the grace began, before its end (%v)", c.id, ev.goneAt.Sub(noticed).Round(time.Millisecond), ttl)
	}
	// The scans find the lapsed lease all through the grace: they are
	// told to come back at its end, not at once, again and again.
	renewals = a.client.Stats().Renewals + b.client.Stats().Renewals - renewals
	if most := 3*int64(time.Since(forged)/hb) + 4; renewals > most { // two nodes: 2 a heartbeat, and the join's
		t.Errorf("%s and %s renewed %d times in %v, heartbeat %v", a.id, b.id, renewals, time.Since(forged).Round(time.Millisecond), hb)
	}
	e.waitConverged("g", q, nil, 3*ttl)
	late := time.Since(end)
	t.Logf("grace of %v; %s evicted %v after it began; ring balanced %v after its end",
		end.Sub(noticed), c.id, ev.goneAt.Sub(noticed).Round(time.Millisecond), late.Round(time.Millisecond))
	if late > ttl+hb {
		t.Errorf("ring balanced %v after the grace's end, more than TTL + heartbeat", late.Round(time.Millisecond))
	}
	chk.finish()
}

// TestGraceHoldsANewIncarnation: a process that takes a node id over on a
// server that lacks the last renewals reports nothing before the grace's
// end: the old process, cut off, may still use its lease, which that
// server shows shorter than it is.
func TestGraceHoldsANewIncarnation(t *testing.T) {
	t.Parallel()
	const q = 64
	ttl, hb := 2*time.Second, 200*time.Millisecond
	e := newEnv(t, ttl, hb)
	old := e.startNode("a", "h", q)
	e.startNode("b", "h", q)
	e.waitConverged("h", q, nil, 10*time.Second)
	chk := e.startChecker("h", q, 3*ttl)
	forged := time.Now()
	old.crash()
	forgeFailover(t, e, false, old.id)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := e.startNode("a", "h", q) // the same id, a new process
	_, end := grace(t, e.admin, e.schema, forged.Add(-time.Second))
	for time.Now().Before(end.Add(-hb)) {
		if vs := n.leases["h"].Values(); len(vs) > 0 {
			t.Fatalf("the new process reports %d partitions %v before the grace's end", len(vs), time.Until(end).Round(time.Millisecond))
		}
		time.Sleep(time.Millisecond)
	}
	if err := n.leases["h"].Wait(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitConverged("h", q, nil, ttl+hb)
	chk.finish()
}

// TestGraceHoldsAcrossAClockStep: a process takes a node id over from a
// live one (cut off, within its lease) and holds until the older lease's
// end, a time of the database server's clock. The database then fails over
// to a server whose clock is 1.5 s ahead: every time in the tables now
// reads 1.5 s earlier, and nothing there has lapsed, so no scan notices the
// change. The hold must still outlast the old process's lease: the new
// process reports nothing before the grace's end (before schema version
// 10 it reported 1.5 s early, beside the old process).
func TestGraceHoldsAcrossAClockStep(t *testing.T) {
	t.Parallel()
	const q = 64
	ttl, hb := 2*time.Second, 200*time.Millisecond
	const step = 1500 * time.Millisecond
	e := newEnv(t, ttl, hb)
	old := e.startNode("a", "s", q)
	e.startNode("b", "s", q)
	e.waitConverged("s", q, nil, 10*time.Second)
	chk := e.startChecker("s", q, 3*ttl)
	old.crash()
	n := e.startNode("a", "s", q) // the same id, a new process: it holds
	forged := time.Now()
	tx, err := e.admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	shift := fmt.Sprintf("interval '%d milliseconds'", step.Milliseconds())
	for _, s := range []string{
		`UPDATE "` + e.schema + `".server_identity SET started_at = '-infinity'`,
		`UPDATE "` + e.schema + `".nodes SET expires_at = expires_at - ` + shift + `,
			hold_until = CASE WHEN hold_until > '-infinity' THEN hold_until - ` + shift + ` ELSE hold_until END`,
		`UPDATE "` + e.schema + `".partitions SET release_due = release_due - ` + shift + ` WHERE release_due IS NOT NULL`,
	} {
		if _, err := tx.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	var holdLeft float64
	if err := tx.QueryRow(`SELECT extract(epoch FROM hold_until - clock_timestamp()) FROM "` + e.schema + `".nodes WHERE node_id = 'a'`).Scan(&holdLeft); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	oldLeft := old.client.Stats().LeaseLeft
	t.Logf("after the step the hold reads %.3fs left; the old process reports for %v more", holdLeft, oldLeft.Round(time.Millisecond))
	if time.Duration(holdLeft*float64(time.Second))+hb >= oldLeft {
		t.Fatalf("the scenario opened no hole: the hold reads %.3fs left, the old process reports for %v", holdLeft, oldLeft)
	}
	_, end := grace(t, e.admin, e.schema, forged.Add(-time.Second))
	for time.Now().Before(end.Add(-hb)) {
		if vs := n.leases["s"].Values(); len(vs) > 0 {
			t.Fatalf("the new process reports %d partitions %v before the grace's end", len(vs), time.Until(end).Round(time.Millisecond))
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.leases["s"].Wait(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitConverged("s", q, nil, ttl+hb)
	chk.finish()
}

// TestRestartStartsAGrace: a restart of the database's server starts a
// grace too (its start time changes), so a node that died before it is
// taken over one TTL after the restarted server noticed, not one TTL after
// its lease ran out: that is G9's cost.
func TestRestartStartsAGrace(t *testing.T) {
	t.Parallel()
	const q = 64
	ttl, hb := 2*time.Second, 200*time.Millisecond
	cluster := privateCluster(t)
	e := newEnvOn(t, cluster.DSN, ttl, hb)
	for _, id := range []string{"a", "b", "c"} {
		e.startNode(id, "r", q)
	}
	e.waitConverged("r", q, nil, 10*time.Second)
	chk := e.startChecker("r", q, 3*ttl)
	victim := e.live()[2]
	cut := time.Now()
	victim.crash()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cluster.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	var up time.Time
	if err := e.admin.QueryRow(`SELECT pg_postmaster_start_time()`).Scan(&up); err != nil {
		t.Fatal(err)
	}
	ev := waitEvicted(t, e.admin, e.schema, victim.id, 4*ttl)
	if ev.goneAt.Before(up.Add(ttl)) {
		t.Errorf("%s evicted %v after the server started again, less than one TTL", victim.id, ev.goneAt.Sub(up).Round(time.Millisecond))
	}
	noticed, end := grace(t, e.admin, e.schema, cut)
	t.Logf("restart took %v; the grace began %v after the cut; %s evicted %v after the cut",
		restarted.Sub(cut).Round(time.Millisecond), noticed.Sub(cut).Round(time.Millisecond), victim.id, ev.goneAt.Sub(cut).Round(time.Millisecond))
	if ev.goneAt.Before(end) {
		t.Errorf("%s evicted before the grace's end", victim.id)
	}
	e.waitConverged("r", q, nil, ttl+hb)
	chk.finish()
}

// TestCrashRecoveryIsTheSameServer: when a server process dies, the
// postmaster ends the others, replays the WAL and goes on with its start
// time unchanged, so to G9 it is the same server and no grace begins.
// Commits whose WAL had not been written (synchronous_commit = off) are
// lost in that replay unnoticed: why the README asks to keep it on.
func TestCrashRecoveryIsTheSameServer(t *testing.T) {
	t.Parallel()
	cluster := privateCluster(t)
	e := newEnvOn(t, cluster.DSN, time.Second, 100*time.Millisecond)
	e.startNode("a", "r", 8)
	var before time.Time
	if err := e.admin.QueryRow(`SELECT pg_postmaster_start_time()`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	crashServer(t, e.admin, func() bool { return true })
	var after time.Time
	var same, noGrace bool
	if err := e.admin.QueryRow(`SELECT pg_postmaster_start_time(), started_at = pg_postmaster_start_time(),
		"`+e.schema+`".failover_grace() <= now() FROM "`+e.schema+`".server_identity`).Scan(&after, &same, &noGrace); err != nil {
		t.Fatal(err)
	}
	if !after.Equal(before) || !same || !noGrace {
		t.Errorf("after crash recovery: start time %v (was %v), the recorded server %v, no grace %v", after, before, same, noGrace)
	}
}

// crashServer kills the server's checkpointer, so that the postmaster ends
// the other processes and replays the WAL, and waits until a new
// checkpointer runs and recovered says yes (it retries what failed).
func crashServer(t *testing.T, db *sql.DB, recovered func() bool) {
	t.Helper()
	var pid int
	if err := db.QueryRow(`SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(30*time.Second, func() bool {
		var now int
		err := db.QueryRow(`SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'`).Scan(&now)
		return err == nil && now != pid && recovered()
	}) {
		t.Fatal("the server did not recover from the crash of its checkpointer")
	}
}

// TestGraceForgetsNoView: a server that lacks a node's last reading of a
// view (its members.seen is older there than the view the node uses, and
// the node's heartbeats, at the ring's version already, never correct it)
// hands that node's partitions over rather than moving them straight, also
// after the grace: the first rebalance under the new identity counts every
// owner as told of what it held then.
func TestGraceForgetsNoView(t *testing.T) {
	t.Parallel()
	const q = 64
	ttl, hb := 2*time.Second, 200*time.Millisecond
	e := newEnv(t, ttl, hb)
	for _, id := range []string{"a", "b", "c"} {
		e.startNode(id, "v", q)
	}
	e.waitConverged("v", q, nil, 10*time.Second)
	chk := e.startChecker("v", q, 3*ttl)
	sc := `"` + e.schema + `".`
	execAll(t, e.admin,
		`UPDATE `+sc+`server_identity SET started_at = '-infinity'`,
		`UPDATE `+sc+`members SET seen = 0 WHERE node_id = 'a'`)
	var end time.Time
	if err := e.admin.QueryRow(`SELECT ` + sc + `failover_grace()`).Scan(&end); err != nil {
		t.Fatal(err)
	}
	if !waitFor(2*ttl, func() bool { // the grace's end, on the database's clock
		var over bool
		return e.admin.QueryRow(`SELECT clock_timestamp() > $1`, end).Scan(&over) == nil && over
	}) {
		t.Fatalf("the grace, to end at %v, has not", end)
	}
	e.startNode("d", "v", q) // the first rebalance since: after the grace
	e.waitConverged("v", q, nil, 3*ttl)
	var told, version int64
	if err := e.admin.QueryRow(`SELECT told_through, version FROM `+sc+`rings WHERE name = 'v'`).Scan(&told, &version); err != nil {
		t.Fatal(err)
	}
	if told == 0 {
		t.Errorf("told_through 0 after the first rebalance under a new identity (ring version %d)", version)
	}
	chk.finish()
}

// TestHoldOutlivesAShortLease: a process that takes a node id over from a
// live one holds until the older lease's end. If it runs with a shorter
// TTL and dies during its hold, its own lease would end before the hold:
// before schema version 11 the others then evicted the node and took its
// partitions over while the older process still reported them (the
// checker found them reported twice). The lease now lasts at least as long
// as the hold.
func TestHoldOutlivesAShortLease(t *testing.T) {
	t.Parallel()
	const q = 64
	// The old process's TTL leaves room for the new one's Start: the
	// scenario needs the old one reporting 2 s more once the new one died,
	// and beside a busy core (CI, pgx pass) that Start and the crash took
	// 2.07 s of a TTL of 4 s.
	ttl, hb := 6*time.Second, 200*time.Millisecond
	e := newEnv(t, ttl, hb)
	old := e.startNode("a", "s", q)
	e.startNode("b", "s", q)
	e.waitConverged("s", q, nil, 10*time.Second)
	chk := e.startChecker("s", q, 3*ttl)
	old.crash() // cut off: it reports until its deadline, up to a TTL on
	short := []leasering.Option{leasering.WithTTL(time.Second), leasering.WithHeartbeat(100 * time.Millisecond)}
	n := e.startNodeWith("a", short, "s", q) // the same id, a new process: it holds
	n.crash()                                // and dies within its hold
	oldLeft := old.client.Stats().LeaseLeft
	t.Logf("the new process died holding; the old one reports for %v more, the new one's TTL is 1s", oldLeft.Round(time.Millisecond))
	if oldLeft < 2*time.Second {
		t.Fatalf("the scenario opened no hole: the old process reports for only %v more", oldLeft)
	}
	if !waitFor(ttl, func() bool { return old.client.Stats().LeaseLeft == 0 }) {
		t.Fatal("the old process still reports a TTL after it was cut off")
	}
	// The node's partitions go to b once its lease (and hold) is over.
	e.waitConverged("s", q, nil, ttl+2*hb)
	chk.finish()
}
