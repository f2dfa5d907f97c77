package integration

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

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
