package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// The tests of this file try the library as a hostile or careless user
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

// TestLeastPrivilege: the schema owner applies sql/functions.sql; an
// application role with nothing but the README's grants (USAGE on the
// schema, EXECUTE on its functions, SELECT on ring_members) runs nodes
// without migration: joins, a takeover, a leave, holds, partition_of and
// ring_members. It cannot read or write the tables.
func TestLeastPrivilege(t *testing.T) {
	t.Parallel()
	admin := openPool(t, needDB(t))
	owner := scratchRole(t, admin, "lrt_owner_", "")
	dbName := scratchDatabase(t, admin, "OWNER "+owner)
	app := scratchRole(t, admin, "lrt_app_", "")

	ownerDB := openPool(t, dsnWith(t, testDSN, owner, dbName))
	tx, err := ownerDB.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(leasering.FunctionsSQL()); err != nil {
		t.Fatalf("owner applying FunctionsSQL: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	execAll(t, ownerDB, readmeGrants(app)...)
	t.Cleanup(func() {
		_, _ = openPool(t, dsnWith(t, testDSN, "", dbName)).Exec(`DROP OWNED BY ` + app)
	})

	appDSN := dsnWith(t, testDSN, app, dbName)
	appDB := openPool(t, appDSN)
	if _, err := appDB.Exec(`SELECT count(*) FROM leasering.nodes`); sqlStateOf(err) != "42501" {
		t.Fatalf("the application role reads the nodes table: %v, want permission denied (42501)", err)
	}

	e := newEnv(t, 2*time.Second, 100*time.Millisecond)
	e.dsn, e.schema = appDSN, leasering.DefaultSchema
	noMigration := []leasering.Option{leasering.WithoutMigration()}
	const ring, size = "app", 32
	first := e.startNodeWith("a", noMigration, ring, size)
	e.startNodeWith("b", noMigration, ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	first.down.Store(true)
	e.startNodeWith("a", noMigration, ring, size) // takeover of the id
	c := e.startNodeWith("c", noMigration, ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	if err := c.client.Close(); err != nil {
		t.Fatalf("close c as the application role: %v", err)
	}
	c.down.Store(true)
	e.waitConverged(ring, size, nil, 10*time.Second)

	var members int
	if err := appDB.QueryRow(`SELECT count(*) FROM leasering.ring_members WHERE ring = $1`, ring).Scan(&members); err != nil || members != 2 {
		t.Errorf("ring_members as the application role: %d members (%v), want 2", members, err)
	}
	var p int
	if err := appDB.QueryRow(`SELECT leasering.partition_of('k', $1)`, size).Scan(&p); err != nil || p != leasering.PartitionOf("k", size) {
		t.Errorf("partition_of as the application role: %d (%v), want %d", p, err, leasering.PartitionOf("k", size))
	}
	l := e.live()[0].leases[ring]
	part := l.Values()[0]
	appTx, err := appDB.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = appTx.Rollback() }()
	var held bool
	if err := appTx.QueryRow(`SELECT leasering.holds($1, $2, $3)`, ring, part, must(epochOf(l, part))).Scan(&held); err != nil || !held {
		t.Errorf("holds as the application role: %v (%v), want true", held, err)
	}
}

// readmeGrants are the README's GRANT statements for an application role.
func readmeGrants(role string) []string {
	return []string{
		`GRANT USAGE ON SCHEMA leasering TO ` + role,
		`GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA leasering TO ` + role,
		`GRANT SELECT ON leasering.ring_members TO ` + role,
	}
}

func sqlStateOf(err error) string {
	var e interface{ SQLState() string }
	if errors.As(err, &e) {
		return e.SQLState()
	}
	return ""
}

// TestPermanentErrorsFailFast: Start with context.Background() returns at
// once, with ErrPermanent and the driver's error (its SQLSTATE), for what no
// retry cures; nothing is retried forever.
func TestPermanentErrorsFailFast(t *testing.T) {
	t.Parallel()
	admin := openPool(t, needDB(t))
	nologin := scratchRole(t, admin, "lrt_nologin_", "")
	execAll(t, admin, `ALTER ROLE `+nologin+` NOLOGIN`)
	noCreate := scratchRole(t, admin, "lrt_nocreate_", "")

	// A migrated schema that a role without grants cannot use.
	migrated := "lrt_" + randomSuffix()
	mc, err := leasering.NewClient(admin, leasering.WithSchema(migrated), leasering.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	if err := mc.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	_ = mc.Close()
	t.Cleanup(func() { _, _ = admin.Exec(`DROP SCHEMA IF EXISTS ` + migrated + ` CASCADE`) })

	cases := []struct {
		name  string
		dsn   string
		opts  []leasering.Option
		state string // "" for an error without one
	}{
		{"missing database", dsnWith(t, testDSN, "", "lrt_no_such_db"), nil, "3D000"},
		{"missing role", dsnWith(t, testDSN, "lrt_no_such_role", ""), nil, "28000"},
		{"role without login", dsnWith(t, testDSN, nologin, ""), nil, "28000"},
		{"no privilege to migrate", dsnWith(t, testDSN, noCreate, ""), []leasering.Option{leasering.WithSchema("lrt_" + randomSuffix())}, "42501"},
		{"no privilege on the schema", dsnWith(t, testDSN, noCreate, ""), []leasering.Option{leasering.WithSchema(migrated), leasering.WithoutMigration()}, "42501"},
		{"unparseable DSN", "postgres://postgres@127.0.0.1:notaport/test?sslmode=disable", nil, ""},
		{"unknown DSN setting", "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=bogus", nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := openPool(t, tc.dsn)
			opts := append([]leasering.Option{leasering.WithLogger(quietLogger())}, tc.opts...)
			c, err := leasering.NewClient(db, opts...)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Lease("r", 8); err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			start := time.Now()
			go func() { errc <- c.Start(context.Background()) }()
			select {
			case err = <-errc:
			case <-time.After(10 * time.Second):
				t.Fatal("Start(context.Background()) still retrying after 10s")
			}
			took := time.Since(start)
			if !errors.Is(err, leasering.ErrPermanent) {
				t.Fatalf("Start: %v, want ErrPermanent", err)
			}
			if got := sqlStateOf(err); got != tc.state {
				t.Errorf("Start: %v: SQLSTATE %q, want %q", err, got, tc.state)
			}
			if strings.Count(err.Error(), "leasering:") != 1 {
				t.Errorf("error reads more than once: %v", err)
			}
			t.Logf("%v after %v", err, took.Round(time.Millisecond))
		})
	}
}

// TestAnyDefaultIsolation: with the session's default isolation set to
// read committed, repeatable read or serializable (as ALTER DATABASE or
// ALTER ROLE ... SET default_transaction_isolation does), joins, a
// takeover, holds and seven concurrent Closes behave the same: every Close
// succeeds and the survivor owns the ring at once, not a TTL later.
func TestAnyDefaultIsolation(t *testing.T) {
	t.Parallel()
	for _, level := range []string{"read committed", "repeatable read", "serializable"} {
		t.Run(strings.ReplaceAll(level, " ", "_"), func(t *testing.T) {
			t.Parallel()
			const ring, size, ttl = "iso", 64, 10 * time.Second
			e := newEnv(t, ttl, 100*time.Millisecond)
			e.dsn = dsnWith(t, e.dsn, "", "", "default_transaction_isolation", level)
			nodes := make([]*node, 8)
			for i := range nodes {
				nodes[i] = e.startNode(fmt.Sprintf("n%d", i), ring, size)
			}
			e.waitConverged(ring, size, nil, 10*time.Second)
			nodes[0].down.Store(true)
			nodes[0] = e.startNode("n0", ring, size) // takeover of the id
			e.waitConverged(ring, size, nil, 15*time.Second)

			db := openPool(t, e.dsn)
			var got string
			if err := db.QueryRow(`SHOW transaction_isolation`).Scan(&got); err != nil || got != level {
				t.Fatalf("transaction_isolation = %q (%v), want %q", got, err, level)
			}
			l := nodes[0].leases[ring]
			part := l.Values()[0]
			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			var held bool
			err = tx.QueryRow(`SELECT "`+e.schema+`".holds($1, $2, $3)`, ring, part, must(epochOf(l, part))).Scan(&held)
			_ = tx.Rollback()
			if err != nil || !held {
				t.Errorf("holds under %s: %v (%v), want true", level, held, err)
			}

			var wg sync.WaitGroup
			errs := make([]error, 7)
			for i := 1; i < 8; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i-1] = nodes[i].client.Close()
					nodes[i].down.Store(true)
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("close n%d under %s: %v", i+1, level, err)
				}
			}
			if !waitFor(3*time.Second, func() bool { return len(l.Values()) == size }) {
				t.Errorf("under %s the survivor owns %d of %d partitions 3s after the closes (TTL %v)", level, len(l.Values()), size, ttl)
			}
		})
	}
}

// TestStartLeavesWhenContextEndsAfterCommit: the context of Start ends
// after its first heartbeat committed but before the answer came back. The
// database had given the node partitions; Start leaves before it returns
// its error, so nobody waits for a lease to lapse.
func TestStartLeavesWhenContextEndsAfterCommit(t *testing.T) {
	t.Parallel()
	const ring, size = "cut", 16
	e := newEnv(t, 10*time.Second, time.Second)
	e.startNode("a", ring, size) // migrates and creates the ring
	b := e.newNode("b")
	if _, err := b.client.Lease(ring, size); err != nil {
		t.Fatal(err)
	}
	b.proxy.SetLatency(300 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// End the context once b's first heartbeat has committed: its row
		// is there, and its answer is still on its way through the proxy.
		waitFor(30*time.Second, func() bool {
			var n int
			_ = e.admin.QueryRow(`SELECT count(*) FROM "` + e.schema + `".nodes WHERE node_id = 'b'`).Scan(&n)
			return n == 1
		})
		cancel()
	}()
	err := b.client.Start(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Start: %v, want context.Canceled", err)
	}
	var rows, owned int
	if err := e.admin.QueryRow(`SELECT (SELECT count(*) FROM "`+e.schema+`".nodes WHERE node_id = 'b'),
		(SELECT count(*) FROM "`+e.schema+`".partitions WHERE owner = 'b' OR next_owner = 'b')`).Scan(&rows, &owned); err != nil {
		t.Fatal(err)
	}
	if rows != 0 || owned != 0 {
		t.Errorf("after Start returned %v: b still has its lease row (%d) and %d partitions", err, rows, owned)
	}
}

// TestEncodings: a LATIN1 database is refused at Start with ErrUnsupported
// and nothing written (partition_of would hash other bytes than Go: "ä" is
// one byte there, two in UTF-8); an SQL_ASCII database stores Go's UTF-8
// bytes as they are, and partition_of agrees with Go.
func TestEncodings(t *testing.T) {
	t.Parallel()
	admin := openPool(t, needDB(t))
	latin1 := scratchDatabase(t, admin, `ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`)
	ascii := scratchDatabase(t, admin, `ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`)

	db := openPool(t, dsnWith(t, testDSN, "", latin1))
	c, err := leasering.NewClient(db, leasering.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Start(t.Context())
	if !errors.Is(err, leasering.ErrUnsupported) || !strings.Contains(err.Error(), "LATIN1") {
		t.Fatalf("Start on a LATIN1 database: %v, want ErrUnsupported naming the encoding", err)
	}
	var schema sql.NullString
	if err := db.QueryRow(`SELECT pg_catalog.to_regnamespace('leasering')::text`).Scan(&schema); err != nil || schema.Valid {
		t.Errorf("the refused migration left schema %v (%v)", schema, err)
	}

	db = openPool(t, dsnWith(t, testDSN, "", ascii))
	c, err = leasering.NewClient(db, leasering.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(t.Context()); err != nil {
		t.Fatalf("Start on an SQL_ASCII database: %v", err)
	}
	defer c.Close()
	for _, key := range []string{"ä", "é€☃", "ключ", "🔑", "plain"} {
		var got int
		if err := db.QueryRow(`SELECT leasering.partition_of($1, 1024)`, key).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want := leasering.PartitionOf(key, 1024); got != want {
			t.Errorf("SQL_ASCII: partition_of(%q) = %d, Go %d", key, got, want)
		}
	}
}

// epochOf is the epoch l reports for partition p.
func epochOf(l *leasering.Lease, p int) (int64, error) {
	e, ok := l.Epoch(p)
	if !ok {
		return 0, fmt.Errorf("partition %d is not owned", p)
	}
	return e, nil
}

// TestWrongPasswordFailsFast: a wrong password (28P01) is permanent. The
// shared test server trusts every local connection, so this test starts a
// private cluster of its own and turns on password authentication there.
func TestWrongPasswordFailsFast(t *testing.T) {
	t.Parallel()
	cluster := privateCluster(t)
	admin := openPool(t, cluster.DSN)
	execAll(t, admin, `CREATE ROLE lrt_pw LOGIN PASSWORD 'right'`)
	hba := "host all lrt_pw 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\nlocal all all trust\n"
	if err := os.WriteFile(filepath.Join(cluster.Dir, "data", "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}
	execAll(t, admin, `SELECT pg_catalog.pg_reload_conf()`)

	u, _ := url.Parse(cluster.DSN)
	u.User = url.UserPassword("lrt_pw", "wrong")
	db := openPool(t, u.String())
	// The postmaster reloads pg_hba.conf when it gets to the signal.
	if !waitFor(10*time.Second, func() bool { return sqlStateOf(db.Ping()) == "28P01" }) {
		t.Fatalf("password authentication not in force 10s after the reload: %v", db.Ping())
	}
	c, err := leasering.NewClient(db, leasering.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.Start(context.Background()) }()
	select {
	case err = <-errc:
	case <-time.After(10 * time.Second):
		t.Fatal("Start(context.Background()) still retrying a wrong password after 10s")
	}
	if !errors.Is(err, leasering.ErrPermanent) || sqlStateOf(err) != "28P01" {
		t.Fatalf("Start with a wrong password: %v (SQLSTATE %q), want ErrPermanent and 28P01", err, sqlStateOf(err))
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Errorf("the error shows the password: %v", err)
	}
}
