package integration

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// invariantState is an env's invariant check: every env runs
// leasering.CheckInvariants on its schema at the end, twice (with the
// nodes running, and once they are closed), and fails the test on any
// violation. Between two checks it also compares what one snapshot cannot:
// a partition's epoch never goes down, a new owner always comes with a
// higher epoch (G6), and a ring's version never goes down.
type invariantState struct {
	mu       sync.Mutex
	adminDSN string        // the env's admin connection, on the server that holds the schema
	ttl      time.Duration // the longest TTL of the schema's clients; 0: the env's
	broken   string        // why the test leaves the state broken on purpose; "": check it
	owners   map[ringPartition]ownerAt
	versions map[string]int64
}

type ringPartition struct {
	ring      string
	partition int
}

type ownerAt struct {
	owner string // "": none
	epoch int64
}

// brokenOnPurpose turns the check at the end off for a test that breaks
// the protocol's state by hand.
func (e *env) brokenOnPurpose(why string) {
	e.inv.mu.Lock()
	e.inv.broken = why
	e.inv.mu.Unlock()
}

// checkInvariants fails the test if the schema's state breaks an invariant.
// A schema that was never migrated has nothing to check.
func (e *env) checkInvariants(when string) {
	e.t.Helper()
	e.inv.mu.Lock()
	broken := e.inv.broken
	e.inv.mu.Unlock()
	if broken != "" {
		e.t.Logf("invariant check %s skipped: %s", when, broken)
		return
	}
	found, err := e.invariantViolations()
	if err != nil {
		e.t.Errorf("invariant check %s: %v", when, err)
		return
	}
	if len(found) > 0 {
		e.t.Errorf("invariant check %s: %d violations (a test that breaks the state on purpose calls e.brokenOnPurpose):\n\t%s",
			when, len(found), strings.Join(firstN(found, 20), "\n\t"))
	}
}

// watchInvariants checks the invariants every period until stop, failing
// the test on any violation: for tests whose state keeps changing, to
// check it in the middle of things too. A check that cannot run (the
// server restarting) is skipped.
func (e *env) watchInvariants(period time.Duration) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	checks, failed := 0, 0
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-time.After(period):
			}
			found, err := e.invariantViolations()
			if err != nil {
				failed++
				continue
			}
			checks++
			if len(found) > 0 {
				e.t.Errorf("invariant check during the run: %d violations:\n\t%s", len(found), strings.Join(firstN(found, 20), "\n\t"))
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		e.t.Logf("invariants: %d checks during the run found nothing wrong (%d could not run)", checks, failed)
	}
}

func firstN(xs []string, n int) []string {
	if len(xs) > n {
		return append(xs[:n:n], fmt.Sprintf("... and %d more", len(xs)-n))
	}
	return xs
}

// invariantViolations runs leasering.CheckInvariants on the env's schema
// and compares the partitions and rings with what the last call read.
func (e *env) invariantViolations() ([]string, error) {
	db, closeDB, err := e.schemaDB()
	if err != nil {
		return nil, err
	}
	defer closeDB()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := `"` + e.schema + `"`
	var migrated bool
	if err := db.QueryRowContext(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, s+".partitions").Scan(&migrated); err != nil {
		return nil, err
	}
	if !migrated {
		return nil, nil
	}
	// The check reads the tables of this library's version: a schema a
	// test left at another (the upgrade tests, the files of older
	// releases) has other columns.
	var version int
	if err := db.QueryRowContext(ctx, `SELECT version FROM `+s+`.schema_version`).Scan(&version); err != nil {
		return nil, err
	}
	if version != leasering.SchemaVersion {
		e.t.Logf("invariant check skipped: schema %s is at version %d, the check reads version %d", e.schema, version, leasering.SchemaVersion)
		return nil, nil
	}
	e.inv.mu.Lock()
	defer e.inv.mu.Unlock()
	ttl := e.inv.ttl
	if ttl == 0 {
		ttl = e.ttl
	}
	vs, err := leasering.CheckInvariants(ctx, db, e.schema, ttl)
	if err != nil {
		return nil, err
	}
	var found []string
	for _, v := range vs {
		found = append(found, v.String())
	}
	more, err := e.inv.compare(ctx, db, s)
	return append(found, more...), err
}

// compare reads the partitions' owners and epochs and the rings' versions
// and reports what went backwards since the last reading.
func (st *invariantState) compare(ctx context.Context, db *sql.DB, schema string) ([]string, error) {
	owners := map[ringPartition]ownerAt{}
	rows, err := db.QueryContext(ctx, `SELECT ring, partition, coalesce(owner, ''), epoch FROM `+schema+`.partitions`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var k ringPartition
		var o ownerAt
		if err := rows.Scan(&k.ring, &k.partition, &o.owner, &o.epoch); err != nil {
			rows.Close()
			return nil, err
		}
		owners[k] = o
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	versions := map[string]int64{}
	rows, err = db.QueryContext(ctx, `SELECT name, version FROM `+schema+`.rings`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var ring string
		var v int64
		if err := rows.Scan(&ring, &v); err != nil {
			rows.Close()
			return nil, err
		}
		versions[ring] = v
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var found []string
	for k, now := range owners {
		before, ok := st.owners[k]
		switch {
		case !ok:
		case now.epoch < before.epoch:
			found = append(found, fmt.Sprintf("epoch_decreased ring=%q partition=%d: epoch %d (owner %q), was %d (owner %q)",
				k.ring, k.partition, now.epoch, now.owner, before.epoch, before.owner))
		case now.owner != before.owner && now.owner != "" && now.epoch == before.epoch:
			found = append(found, fmt.Sprintf("owner_changed_same_epoch ring=%q partition=%d: owner %q at epoch %d, was %q",
				k.ring, k.partition, now.owner, now.epoch, before.owner))
		}
	}
	for ring, v := range versions {
		if before, ok := st.versions[ring]; ok && v < before {
			found = append(found, fmt.Sprintf("version_decreased ring=%q: version %d, was %d", ring, v, before))
		}
	}
	sort.Strings(found)
	st.owners, st.versions = owners, versions
	return found, nil
}

// schemaDB is a connection, as the env's admin, to the database that
// holds the env's schema (a test may point the env's nodes at a database
// of its own, or at a pooler, or connect them as another role), and how to
// close it.
func (e *env) schemaDB() (*sql.DB, func(), error) {
	want, have := databaseOf(e.dsn), databaseOf(e.inv.adminDSN)
	if want == "" || want == have {
		return e.admin, func() {}, nil
	}
	db, err := sqlOpen(dsnWith(e.t, e.inv.adminDSN, "", want))
	if err != nil {
		return nil, nil, err
	}
	return db, func() { _ = db.Close() }, nil
}

func databaseOf(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(u.Path, "/")
}

// kindsOf runs the check on db (a transaction sees its own changes) and
// returns the kinds it found, sorted, each once.
func kindsOf(t *testing.T, db leasering.Querier, schema string, ttl time.Duration) ([]string, []leasering.Violation) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vs, err := leasering.CheckInvariants(ctx, db, schema, ttl)
	if err != nil {
		t.Fatalf("CheckInvariants: %v", err)
	}
	seen := map[string]bool{}
	kinds := []string{}
	for _, v := range vs {
		if !seen[v.Kind] {
			seen[v.Kind] = true
			kinds = append(kinds, v.Kind)
		}
	}
	sort.Strings(kinds)
	return kinds, vs
}

// TestInvariantsCatchBrokenState breaks a healthy ring by hand, one way at
// a time, each in a transaction of its own that is rolled back, and
// requires the check to name exactly the kinds broken. The ring is three
// nodes driven by hand, with handoffs in flight, so the healthy state is
// not a settled one. The states the protocol does leave for a while (a
// lease that just lapsed, a hold that just ended, a ring with no live
// member) must pass.
func TestInvariantsCatchBrokenState(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a", "b", "c")
	ttl := sqlTTLms * time.Millisecond
	if kinds, vs := kindsOf(t, s.e.admin, s.e.schema, ttl); len(kinds) != 0 {
		t.Fatalf("a healthy ring with handoffs in flight: %v", vs)
	}
	pending, settled := -1, -1
	var pendingOwner string
	for p, r := range s.rows() {
		switch {
		case r.next != "" && pending < 0:
			pending, pendingOwner = p, r.owner
		case r.next == "" && r.owner != "" && settled < 0:
			settled = p
		}
	}
	if pending < 0 || settled < 0 {
		t.Fatalf("want a partition with a handoff in flight and one without: %v", s.rows())
	}
	sc := `"` + s.e.schema + `"`
	part := func(p int) string { return fmt.Sprintf("ring = 'r' AND partition = %d", p) }
	cases := []struct {
		name   string
		breaks []string
		want   []string
	}{
		{"a partition missing", []string{`DELETE FROM ` + sc + `.partitions WHERE ` + part(7)},
			[]string{"partition_count"}},
		{"a partition past the ring's end", []string{`UPDATE ` + sc + `.partitions SET partition = 8 WHERE ` + part(7)},
			[]string{"partition_out_of_range"}},
		{"an owner that is not a member", []string{`UPDATE ` + sc + `.partitions SET owner = 'ghost' WHERE ` + part(settled)},
			[]string{"owner_not_member"}},
		{"a next owner that is not a member", []string{`UPDATE ` + sc + `.partitions SET next_owner = 'ghost' WHERE ` + part(settled)},
			[]string{"next_owner_not_member"}},
		{"a next owner without owner", []string{`UPDATE ` + sc + `.partitions SET owner = NULL WHERE ` + part(pending)},
			[]string{"next_owner_without_owner", "unowned_with_live_member"}},
		{"the owner as next owner", []string{`UPDATE ` + sc + `.partitions SET next_owner = owner WHERE ` + part(settled)},
			[]string{"next_owner_is_owner"}},
		{"released without next owner", []string{`UPDATE ` + sc + `.partitions SET released = true WHERE ` + part(settled)},
			[]string{"released_without_next_owner"}},
		{"an owner at epoch 0", []string{`UPDATE ` + sc + `.partitions SET epoch = 0 WHERE ` + part(settled)},
			[]string{"bad_epoch"}},
		{"a negative epoch", []string{`UPDATE ` + sc + `.partitions SET epoch = -1 WHERE ` + part(settled)},
			[]string{"bad_epoch"}},
		{"a partition changed after its ring's version",
			[]string{`UPDATE ` + sc + `.partitions SET changed = (SELECT version + 1 FROM ` + sc + `.rings WHERE name = 'r') WHERE ` + part(settled)},
			[]string{"version_ahead"}},
		{"a partition granted after its change", []string{`UPDATE ` + sc + `.partitions SET granted = changed + 1 WHERE ` + part(settled)},
			[]string{"version_ahead"}},
		{"a member that saw a version its ring never had",
			[]string{`UPDATE ` + sc + `.members SET seen = (SELECT version + 1 FROM ` + sc + `.rings WHERE name = 'r') WHERE node_id = 'a'`},
			[]string{"version_ahead"}},
		{"a member changed after its ring's members",
			[]string{`UPDATE ` + sc + `.members SET changed = (SELECT members_changed + 1 FROM ` + sc + `.rings WHERE name = 'r') WHERE node_id = 'a'`},
			[]string{"version_ahead"}},
		{"members changed after the ring's version", []string{`UPDATE ` + sc + `.rings SET members_changed = version + 1`},
			[]string{"version_ahead"}},
		{"vnode positions that are not the member's", []string{`UPDATE ` + sc + `.members SET vnodes = 7 WHERE node_id = 'a'`},
			[]string{"wrong_positions"}},
		{"a partition without owner beside live members",
			[]string{`UPDATE ` + sc + `.partitions SET owner = NULL WHERE ` + part(settled)},
			[]string{"unowned_with_live_member"}},
		{"a lease past one TTL from now", []string{`UPDATE ` + sc + `.nodes SET expires_at = now() + interval '70 s' WHERE node_id = 'a'`},
			[]string{"lease_beyond_ttl"}},
		{"a hold past one TTL from now", []string{`UPDATE ` + sc + `.nodes SET hold_until = now() + interval '70 s' WHERE node_id = 'a'`},
			[]string{"lease_beyond_ttl"}},
		{"a lease that lapsed two TTLs before another's last grant",
			[]string{`UPDATE ` + sc + `.nodes SET expires_at = now() - interval '125 s' WHERE node_id = 'c'`},
			[]string{"lease_not_evicted"}},
		{"a release during a hold that ended two TTLs before another's last grant", []string{
			`UPDATE ` + sc + `.partitions SET released = true WHERE ` + part(pending),
			`UPDATE ` + sc + `.nodes SET hold_until = now() - interval '125 s' WHERE node_id = '` + pendingOwner + `'`},
			[]string{"release_not_handed_on"}},

		// What the protocol leaves for a while, or for good when nobody is there.
		{"a lease that lapsed a moment ago", []string{`UPDATE ` + sc + `.nodes SET expires_at = now() - interval '1 s' WHERE node_id = 'c'`},
			nil},
		{"a lease that lapsed under two TTLs before another's last grant",
			[]string{`UPDATE ` + sc + `.nodes SET expires_at = now() - interval '115 s' WHERE node_id = 'c'`},
			nil},
		{"every lease lapsed long ago", []string{`UPDATE ` + sc + `.nodes SET expires_at = now() - interval '1 hour'`},
			nil},
		{"a release during a hold", []string{
			`UPDATE ` + sc + `.partitions SET released = true WHERE ` + part(pending),
			`UPDATE ` + sc + `.nodes SET hold_until = now() + interval '30 s' WHERE node_id = '` + pendingOwner + `'`},
			nil},
		{"a release during a hold that ended a moment ago", []string{
			`UPDATE ` + sc + `.partitions SET released = true WHERE ` + part(pending),
			`UPDATE ` + sc + `.nodes SET hold_until = now() - interval '1 s' WHERE node_id = '` + pendingOwner + `'`},
			nil},
		{"no owners and no live member", []string{
			`UPDATE ` + sc + `.nodes SET expires_at = now() - interval '1 s'`,
			`UPDATE ` + sc + `.partitions SET owner = NULL, next_owner = NULL, released = false`},
			nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tx, err := s.e.admin.Begin()
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			// The schema's CHECKs refuse many of these states outright
			// (TestChecksRefuseBrokenRows); the query must find them all
			// the same, so they go for the length of this transaction.
			if _, err := tx.Exec(`DO $$ DECLARE c record; BEGIN
				FOR c IN SELECT conrelid::regclass AS t, conname FROM pg_constraint
				          WHERE contype = 'c' AND connamespace = '` + s.e.schema + `'::regnamespace LOOP
					EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.t, c.conname);
				END LOOP; END $$`); err != nil {
				t.Fatal(err)
			}
			for _, q := range c.breaks {
				if _, err := tx.Exec(q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			kinds, vs := kindsOf(t, tx, s.e.schema, ttl)
			if strings.Join(kinds, " ") != strings.Join(c.want, " ") {
				t.Errorf("found %v, want %v: %v", kinds, c.want, vs)
			}
		})
	}
	if kinds, vs := kindsOf(t, s.e.admin, s.e.schema, ttl); len(kinds) != 0 {
		t.Fatalf("after the rollbacks: %v", vs)
	}
}

// mustHold fails the test if the env's state breaks an invariant now, or
// went backwards since the last check.
func (e *env) mustHold(t *testing.T, when string) {
	t.Helper()
	found, err := e.invariantViolations()
	if err != nil {
		t.Fatalf("invariant check %s: %v", when, err)
	}
	if len(found) > 0 {
		t.Fatalf("invariant check %s: %s", when, strings.Join(found, "; "))
	}
}

// TestInvariantsHoldThroughHandoffsHoldsAndEvictions drives nodes by hand
// through the protocol's steps and checks after each one, with each
// transient state in place: handoffs in flight, releases confirmed, a
// takeover that holds, a release during the hold, the hold's end, a lease
// that just lapsed, an eviction and a leave.
func TestInvariantsHoldThroughHandoffsHoldsAndEvictions(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.e.mustHold(t, "after the install")
	s.join("a")
	s.e.mustHold(t, "after a joined")
	s.join("b", "c")
	s.e.mustHold(t, "after b and c joined, handoffs in flight")
	toB := s.handingOff("a", "b")
	if len(toB) == 0 {
		t.Fatalf("a hands nothing to b: %v", s.rows())
	}
	if _, err := s.renew(nil, "a", false, false, 0, toB[0]); err != nil {
		t.Fatal(err)
	}
	s.e.mustHold(t, "after a released one partition to b")
	s.takeOver("a", "inc-a-restarted")
	s.e.mustHold(t, "after a new incarnation of a took over, holding")
	if _, err := s.renew(nil, "b", false, true, 0); err != nil {
		t.Fatal(err)
	}
	s.e.mustHold(t, "after b's scan during a's hold")
	rest := append(s.handingOff("a", "b"), s.handingOff("a", "c")...)
	if _, err := s.renew(nil, "a", false, false, 0, rest...); err != nil {
		t.Fatal(err)
	}
	if s.releasedCount() == 0 {
		t.Fatalf("nothing marked released during the hold: %v", s.rows())
	}
	s.e.mustHold(t, "after a released the rest during its hold")
	if _, err := s.e.admin.Exec(`UPDATE "` + s.e.schema + `".nodes SET hold_until = now() WHERE node_id = 'a'`); err != nil {
		t.Fatal(err)
	}
	s.e.mustHold(t, "after a's hold ended")
	if _, err := s.renew(nil, "c", false, true, 0); err != nil {
		t.Fatal(err)
	}
	if n := s.releasedCount(); n != 0 {
		t.Fatalf("%d partitions still released after c's scan", n)
	}
	s.e.mustHold(t, "after c's scan handed them on")
	s.expire("c")
	s.e.mustHold(t, "after c's lease lapsed")
	if _, err := s.renew(nil, "b", false, true, 0); err != nil {
		t.Fatal(err)
	}
	if s.exists("c") {
		t.Fatal("b's scan did not evict c")
	}
	s.e.mustHold(t, "after b evicted c")
	if _, err := s.e.admin.Exec(`SELECT "` + s.e.schema + `".leave('b', 'inc-b')`); err != nil {
		t.Fatal(err)
	}
	s.e.mustHold(t, "after b left")
}

// TestInvariantsHoldThroughJoinHandoffAndTakeover runs real nodes through
// joins (handoffs), a restart under the same id (a takeover that holds)
// and a crash (its partitions taken over), checking every 20 ms all along
// and once each step has settled.
func TestInvariantsHoldThroughJoinHandoffAndTakeover(t *testing.T) {
	t.Parallel()
	const ring, size = "inv", 32
	e := newEnv(t, time.Second, 100*time.Millisecond)
	a := e.startNode("a", ring, size)
	stop := e.watchInvariants(20 * time.Millisecond)
	defer stop()
	e.waitConverged(ring, size, nil, 10*time.Second)
	e.mustHold(t, "with a alone")
	b := e.startNode("b", ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	e.mustHold(t, "after b joined and a handed over")
	e.startNode("c", ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	e.mustHold(t, "after c joined")
	a.down.Store(true) // a new process takes the id over; the old one is fenced
	e.unregister(a)
	e.startNode("a", ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	e.mustHold(t, "after a new process took a's id over")
	b.crash()
	e.waitConverged(ring, size, nil, 10*time.Second)
	e.mustHold(t, "after a and c took b's partitions over")
}

// TestInvariantHarnessComparesReadings: what one snapshot cannot show, the
// harness finds by comparing two: an epoch that went down, an owner that
// changed without a new epoch, a ring version that went down.
func TestInvariantHarnessComparesReadings(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a", "b")
	s.e.mustHold(t, "before")
	sc := `"` + s.e.schema + `"`
	for _, c := range []struct{ name, sql, want string }{
		{"epoch down", `UPDATE ` + sc + `.partitions SET epoch = epoch - 1 WHERE ring = 'r' AND partition = 0`, "epoch_decreased"},
		{"owner changed, same epoch", `UPDATE ` + sc + `.partitions SET owner = CASE WHEN owner = 'a' THEN 'b' ELSE 'a' END, next_owner = NULL, released = false WHERE ring = 'r' AND partition = 1`, "owner_changed_same_epoch"},
		{"version down", `UPDATE ` + sc + `.rings SET version = version - 1, members_changed = least(members_changed, version - 1) WHERE name = 'r'`, "version_decreased"},
	} {
		if _, err := s.e.admin.Exec(c.sql); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		found, err := s.e.invariantViolations()
		if err != nil {
			t.Fatal(err)
		}
		var kinds []string
		for _, f := range found {
			kinds = append(kinds, strings.Fields(f)[0])
		}
		if !slices.Contains(kinds, c.want) {
			t.Errorf("%s: found %v, want %s", c.name, found, c.want)
		}
	}
	s.e.brokenOnPurpose("the test broke epochs and versions by hand")
}

// invariantsPlantedSQL adds to plantedSQL the operators and functions the
// invariant query uses that plantedSQL lacks, each answering wrongly (and
// recording its call), so that a name resolved through the search_path
// shows in public.calls and in the violations found.
const invariantsPlantedSQL = `
CREATE FUNCTION public.i8_gt(bigint, bigint) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('bigint >'); RETURN true; END $$;
CREATE OPERATOR public.> (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.i8_gt);
CREATE FUNCTION public.i84_ne(bigint, integer) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('bigint <> integer'); RETURN true; END $$;
CREATE OPERATOR public.<> (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = public.i84_ne);
CREATE FUNCTION public.i4_lt(integer, integer) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('integer <'); RETURN true; END $$;
CREATE OPERATOR public.< (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.i4_lt);
CREATE FUNCTION public.ts_lt(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('timestamptz <'); RETURN true; END $$;
CREATE OPERATOR public.< (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = public.ts_lt);
CREATE FUNCTION public.ts_pl(timestamptz, interval) RETURNS timestamptz LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('timestamptz + interval'); RETURN $1; END $$;
CREATE OPERATOR public.+ (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = public.ts_pl);
CREATE FUNCTION public.ts_mi(timestamptz, interval) RETURNS timestamptz LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('timestamptz - interval'); RETURN $1; END $$;
CREATE OPERATOR public.- (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = public.ts_mi);
CREATE FUNCTION public.arr_ne(bigint[], bigint[]) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('bigint[] <>'); RETURN true; END $$;
CREATE OPERATOR public.<> (LEFTARG = bigint[], RIGHTARG = bigint[], FUNCTION = public.arr_ne);
CREATE FUNCTION public.format(text, bigint, integer) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('format'); RETURN 'planted'; END $$;
CREATE FUNCTION public.format(text, text, bigint) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('format'); RETURN 'planted'; END $$;
`

// TestInvariantsIgnoreSearchPath: with the objects TestHostileSearchPath
// plants in public, and more for the invariant query's own operators and
// functions, a superuser whose search_path puts public before pg_catalog
// runs the check on a healthy ring and on one broken in a transaction. It
// finds nothing, then exactly what was broken, and runs none of the
// planted code.
func TestInvariantsIgnoreSearchPath(t *testing.T) {
	t.Parallel()
	admin := openPool(t, needDB(t))
	dbName := scratchDatabase(t, admin, "")
	hostile := scratchRole(t, admin, "lrt_hostile_", "")
	dbAdmin := openPool(t, dsnWith(t, testDSN, "", dbName))
	execAll(t, dbAdmin, `GRANT CREATE, USAGE ON SCHEMA public TO `+hostile)
	execAll(t, openPool(t, dsnWith(t, testDSN, hostile, dbName)), plantedSQL, invariantsPlantedSQL)
	t.Cleanup(func() { _, _ = dbAdmin.Exec(`DROP OWNED BY ` + hostile) })
	user := openPool(t, dsnWith(t, testDSN, "", dbName, "search_path", "public,pg_catalog"))

	const ring, size = "hostile", 16
	e := newEnv(t, 2*time.Second, 100*time.Millisecond)
	e.dsn = dsnWith(t, testDSN, "", dbName)
	e.startNode("a", ring, size)
	e.startNode("b", ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)

	if kinds, vs := kindsOf(t, user, e.schema, e.ttl); len(kinds) != 0 {
		t.Errorf("a healthy ring: %v", vs)
	}
	tx, err := user.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`UPDATE "` + e.schema + `".partitions SET owner = 'ghost'
		WHERE ring OPERATOR(pg_catalog.=) 'hostile' AND partition OPERATOR(pg_catalog.=) 3`); err != nil {
		t.Fatal(err)
	}
	if kinds, vs := kindsOf(t, tx, e.schema, e.ttl); len(vs) != 1 || kinds[0] != "owner_not_member" || vs[0].Partition != 3 {
		t.Errorf("partition 3 given to a node that is not a member: %v, want one owner_not_member", vs)
	}
	_ = tx.Rollback()

	rows, err := dbAdmin.Query(`SELECT what, count(*) FROM public.calls GROUP BY what ORDER BY what`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var what string
		var n int
		if err := rows.Scan(&what, &n); err != nil {
			t.Fatal(err)
		}
		t.Errorf("planted %s ran %d times", what, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}

// requireInvariants fails the test if the schema at dsn breaks an
// invariant: for the tests that run nodes outside an env.
func requireInvariants(t *testing.T, dsn, schema string, ttl time.Duration) {
	t.Helper()
	db := openDB(t, dsn)
	defer db.Close()
	if _, vs := kindsOf(t, db, schema, ttl); len(vs) > 0 {
		t.Errorf("invariant check at the end: %v", vs)
	}
}

// TestRejoinAfterEmptyRebalanceOwnsTheRing: a node whose lease lapsed, and
// that renews before anyone evicts it, is given the ring's partitions when
// the ring lost its other member meanwhile. Schema version 6 leaves them
// without owner while the node heartbeats (G3), as the invariant check
// found (unowned_with_live_member): the other member's leave rebalanced the
// ring with no live member, the renewal keeps the node's member row, and
// reclaiming it (claim_vnodes) does not rebalance.
func TestRejoinAfterEmptyRebalanceOwnsTheRing(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a", "b")
	if _, err := s.renew(nil, "a", false, false, 0, s.handingOff("a", "b")...); err != nil {
		t.Fatal(err)
	}
	s.expire("a")
	if _, err := s.e.admin.Exec(`SELECT "` + s.e.schema + `".leave('b', 'inc-b')`); err != nil {
		t.Fatal(err)
	}
	if h, err := s.renew(nil, "a", false, true, 0); err != nil || h.status != "rejoined" {
		t.Fatalf("a's renewal of its lapsed lease: %+v (%v), want rejoined", h, err)
	}
	// What a client does next: join_rings, then a heartbeat that reads the view.
	var answer string
	if err := s.e.admin.QueryRow(`SELECT "` + s.e.schema + `".join_rings('a', 'inc-a', '[{"ring": "r", "size": 8, "vnodes": 8}]', 1000)::text`).Scan(&answer); err != nil {
		t.Fatal(err)
	}
	if _, err := s.renew(nil, "a", false, true, 0); err != nil {
		t.Fatal(err)
	}
	for p, r := range s.rows() {
		if r.owner != "a" {
			t.Errorf("partition %d: %+v, want a's", p, r)
		}
	}
}
