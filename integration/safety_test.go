package integration

import (
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// The tests of the safety*_test.go files try the library as a hostile or careless user
// would: a search_path that puts a writable schema first, roles with the
// least privilege, errors that no retry cures, a default isolation other
// than READ COMMITTED, odd databases and a Start cut short.

// dsnWith returns dsn with its user, database or a parameter changed.
func dsnWith(t testing.TB, dsn string, user, database string, params ...string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parsing DSN: %v", err)
	}
	if user != "" {
		u.User = url.User(user)
	}
	if database != "" {
		u.Path = "/" + database
	}
	q := u.Query()
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	// Spaces as %20, not +: pgx reads a + in a parameter as itself.
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

// openPool opens a pool on dsn with the test driver, closed at the end of
// the test.
func openPool(t testing.TB, dsn string) *sql.DB {
	t.Helper()
	db := openDB(t, dsn)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func execAll(t testing.TB, db *sql.DB, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// scratchDatabase creates a database of the test's own, dropped at the end
// (after every cleanup registered later, so after the test's nodes close).
func scratchDatabase(t *testing.T, admin *sql.DB, options string) string {
	t.Helper()
	name := "lrt_db_" + randomSuffix()
	execAll(t, admin, `CREATE DATABASE `+name+` `+options)
	t.Cleanup(func() {
		if _, err := admin.Exec(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`); err != nil {
			t.Errorf("dropping database %s: %v", name, err)
		}
	})
	return name
}

// scratchRole creates a login role, dropped at the end.
func scratchRole(t *testing.T, admin *sql.DB, prefix, options string) string {
	t.Helper()
	name := prefix + randomSuffix()
	execAll(t, admin, `CREATE ROLE `+name+` LOGIN `+options)
	t.Cleanup(func() {
		if _, err := admin.Exec(`DROP ROLE IF EXISTS ` + name); err != nil {
			t.Errorf("dropping role %s: %v", name, err)
		}
	})
	return name
}

// plantedSQL is what a role with CREATE on public plants for a superuser
// whose search_path puts public before pg_catalog: now(), the operators
// and functions the library's SQL uses, and relations with the library's
// table names. Every one of them records its call in public.calls.
const plantedSQL = `
CREATE TABLE public.calls (what text NOT NULL);
GRANT SELECT, INSERT ON public.calls TO PUBLIC;
CREATE FUNCTION public.record(what text) RETURNS boolean LANGUAGE sql SECURITY DEFINER
    AS $$ INSERT INTO public.calls VALUES (what) RETURNING true $$;

CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('now()'); RETURN pg_catalog.now() - interval '1 hour'; END $$;
CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('clock_timestamp()'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION public.to_regclass(text) RETURNS regclass LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('to_regclass'); RETURN pg_catalog.to_regclass($1); END $$;
CREATE FUNCTION public.pg_advisory_xact_lock(bigint) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('pg_advisory_xact_lock'); END $$;
CREATE FUNCTION public.pg_notify(text, text) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('pg_notify'); END $$;
CREATE FUNCTION public.jsonb_array_elements_text(jsonb) RETURNS SETOF text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('jsonb_array_elements_text'); RETURN QUERY SELECT pg_catalog.jsonb_array_elements_text($1); END $$;
CREATE FUNCTION public.set_config(text, text, boolean) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('set_config'); RETURN pg_catalog.set_config($1, $2, $3); END $$;
CREATE FUNCTION public.current_setting(text) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('current_setting'); RETURN pg_catalog.current_setting($1); END $$;
CREATE FUNCTION public.hashtextextended(text, bigint) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('hashtextextended'); RETURN 0; END $$;

CREATE FUNCTION public.shr(bigint, integer) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('>>'); RETURN 0; END $$;
CREATE OPERATOR public.>> (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = public.shr);
CREATE FUNCTION public.band(bigint, bigint) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('&'); RETURN 0; END $$;
CREATE OPERATOR public.& (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.band);
CREATE FUNCTION public.mul(bigint, integer) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('*'); RETURN 0; END $$;
CREATE OPERATOR public.* (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = public.mul);
CREATE FUNCTION public.text_eq(text, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('text ='); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_eq);
CREATE FUNCTION public.text_ne(text, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('text <>'); RETURN $1 OPERATOR(pg_catalog.<>) $2; END $$;
CREATE OPERATOR public.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_ne);
CREATE FUNCTION public.ts_gt(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('timestamptz >'); RETURN true; END $$;
CREATE OPERATOR public.> (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = public.ts_gt);
CREATE FUNCTION public.ts_le(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('timestamptz <='); RETURN true; END $$;
CREATE OPERATOR public.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = public.ts_le);
CREATE FUNCTION public.int_between_ge(integer, integer) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.record('integer >='); RETURN true; END $$;
CREATE OPERATOR public.>= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.int_between_ge);

CREATE VIEW public.schema_version AS SELECT 99 AS version, true AS id WHERE public.record('schema_version');
CREATE VIEW public.nodes AS SELECT 'x'::text AS node_id WHERE public.record('nodes');
CREATE VIEW public.rings AS SELECT 'x'::text AS name WHERE public.record('rings');
CREATE VIEW public.members AS SELECT 'x'::text AS ring WHERE public.record('members');
CREATE VIEW public.partitions AS SELECT 'x'::text AS ring WHERE public.record('partitions');
CREATE VIEW public.ring_members AS SELECT 'x'::text AS ring WHERE public.record('ring_members');
`

// TestHostileSearchPath: a role with CREATE on public plants now(),
// operators, functions and same-named tables there, and a superuser node
// connects with search_path=public,pg_catalog (as in databases upgraded
// from PostgreSQL 14). The migration, joins, a takeover, heartbeats,
// leaves, NOTIFY, ring_members, holds and partition_of run none of the
// planted code, and partition_of agrees with Go and stays inlined.
func TestHostileSearchPath(t *testing.T) {
	t.Parallel()
	admin := openPool(t, needDB(t))
	dbName := scratchDatabase(t, admin, "")
	hostile := scratchRole(t, admin, "lrt_hostile_", "")
	dbAdmin := openPool(t, dsnWith(t, testDSN, "", dbName))
	execAll(t, dbAdmin, `GRANT CREATE, USAGE ON SCHEMA public TO `+hostile)
	execAll(t, openPool(t, dsnWith(t, testDSN, hostile, dbName)), plantedSQL)
	t.Cleanup(func() { _, _ = dbAdmin.Exec(`DROP OWNED BY ` + hostile) })

	hostileDSN := dsnWith(t, testDSN, "", dbName, "search_path", "public,pg_catalog")
	user := openPool(t, hostileDSN)
	var path string
	if err := user.QueryRow(`SHOW search_path`).Scan(&path); err != nil || strings.ReplaceAll(path, " ", "") != "public,pg_catalog" {
		t.Fatalf("search_path = %q (%v), want public, pg_catalog", path, err)
	}

	e := newEnv(t, 2*time.Second, 100*time.Millisecond)
	e.dsn = hostileDSN
	const ring, size = "hostile", 64
	first := e.startNode("a", ring, size)
	e.startNode("b", ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	first.down.Store(true) // a new process takes the id over; the old one is fenced
	e.startNode("a", ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	c := e.startNode("c", ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	if err := c.client.Close(); err != nil {
		t.Fatalf("close c: %v", err)
	}
	c.down.Store(true)
	e.waitConverged(ring, size, nil, 10*time.Second)

	s := `"` + e.schema + `"`
	var members int
	if err := user.QueryRow(`SELECT count(*) FROM ` + s + `.ring_members`).Scan(&members); err != nil || members != 2 {
		t.Errorf("ring_members lists %d members (%v), want 2", members, err)
	}
	var part int
	var epoch int64
	if err := dbAdmin.QueryRow(`SELECT partition, epoch FROM `+s+`.partitions WHERE ring = $1 AND owner = 'a' LIMIT 1`, ring).Scan(&part, &epoch); err != nil {
		t.Fatal(err)
	}
	tx, err := user.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var held, stale bool
	if err := tx.QueryRow(`SELECT `+s+`.holds($1, $2, $3), `+s+`.holds($1, $2, $4)`, ring, part, epoch, epoch-1).Scan(&held, &stale); err != nil || !held || stale {
		t.Errorf("holds(current epoch) = %v, holds(older epoch) = %v (%v), want true and false", held, stale, err)
	}
	_ = tx.Rollback()

	disagree := 0
	for i := 0; i < 200; i++ {
		key := fmt.Sprintf("key-%d-é€", i)
		var got int
		if err := user.QueryRow(`SELECT `+s+`.partition_of($1, 1024)`, key).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want := leasering.PartitionOf(key, 1024); got != want {
			if disagree++; disagree <= 3 {
				t.Errorf("partition_of(%q, 1024) = %d in SQL, %d in Go", key, got, want)
			}
		}
	}
	if disagree > 0 {
		t.Errorf("Go and SQL disagree for %d of 200 keys", disagree)
	}
	assertInlined(t, user, s)

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

// assertInlined fails unless partition_of is inlined into the query that
// calls it: the plan shows its body, hashtextextended, not the call.
func assertInlined(t *testing.T, db *sql.DB, schema string) {
	t.Helper()
	rows, err := db.Query(`EXPLAIN (VERBOSE) SELECT ` + schema + `.partition_of(k, 16) FROM (VALUES ('a'), ('b')) AS v (k)`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan strings.Builder
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan.WriteString(line + "\n")
	}
	if p := plan.String(); !strings.Contains(p, "hashtextextended") || strings.Contains(p, "partition_of") {
		t.Errorf("partition_of is not inlined:\n%s", p)
	}
}

func sqlStateOf(err error) string {
	var e interface{ SQLState() string }
	if errors.As(err, &e) {
		return e.SQLState()
	}
	return ""
}

// epochOf is the epoch l reports for partition p.
func epochOf(l *leasering.Lease, p int) (int64, error) {
	e, ok := l.Epoch(p)
	if !ok {
		return 0, fmt.Errorf("partition %d is not owned", p)
	}
	return e, nil
}
