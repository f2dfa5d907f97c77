package integration

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// roundTripSettings are the driver settings TestOneRoundTripPerHeartbeat
// measures, with the round trips per steady heartbeat it asserts: one for
// those the README recommends, and lib/pq's default two, which the README
// gives as the reason for binary_parameters=yes.
var roundTripSettings = []struct {
	bouncerDriver
	want float64
}{
	{bouncerDriver{"pq_default", "postgres", nil}, 2},
	{bouncerDriver{"pq_binary_parameters", "postgres", []string{"binary_parameters", "yes"}}, 1},
	{bouncerDriver{"pgx_default", "pgx", nil}, 1},
	{bouncerDriver{"pgx_exec", "pgx", []string{"default_query_exec_mode", "exec"}}, 1},
	{bouncerDriver{"pgx_simple_protocol", "pgx", []string{"default_query_exec_mode", "simple_protocol"}}, 1},
}

// TestOneRoundTripPerHeartbeat counts the transactions the server commits
// per steady heartbeat (pg_stat_database.xact_commit of a database of the
// test's own): each Sync of the extended protocol, and each simple query,
// ends one, so the count is the heartbeat's round trips. lib/pq's default
// sends Parse/Describe/Sync, then Bind/Execute/Sync: two. One node runs two
// lives, short and long, each with one connection, from Start to Close;
// the difference of their counts over the difference of their renewals is
// the cost of a heartbeat, whatever Start and Close cost. The server's own
// work in the database adds commits: autovacuum is off for the library's
// tables, the catalogs the migration changed are vacuumed and analyzed
// before the count, and each life runs twice, the lower count taken, for
// what is left (an autovacuum worker's visit to a new database; two CI
// runs on a new private cluster counted 5 and 7 commits more in one long
// life, up to 1.047 a heartbeat, and one 5 more in the short life, 0.967).
func TestOneRoundTripPerHeartbeat(t *testing.T) {
	const short, long = 10, 160
	admin := openPool(t, needDB(t))
	for _, s := range roundTripSettings {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			name := scratchDatabase(t, admin, "")
			dsn := dsnWith(t, testDSN, "", name, s.params...)
			live(t, s.driver, dsn, 1) // migrates
			noAutovacuum(t, dsnWith(t, testDSN, "", name))
			vacuumAll(t, dsnWith(t, testDSN, "", name))

			// Two short lives and two long lives: the server's work can
			// only add commits, so each kind's fewest is its measure (a
			// short life counted 5 commits more once, which took 0.033
			// off a heartbeat's count).
			var cShort, nShort int64 = -1, 0
			for range 2 {
				before := settledCommits(t, admin, name)
				n := live(t, s.driver, dsn, short)
				if c := settledCommits(t, admin, name) - before; cShort < 0 || c < cShort {
					cShort, nShort = c, n
				}
			}
			per := math.Inf(1)
			var logs []string
			for range 2 {
				before := settledCommits(t, admin, name)
				nLong := live(t, s.driver, dsn, long)
				commits := settledCommits(t, admin, name) - before
				per = min(per, float64(commits-cShort)/float64(nLong-nShort))
				logs = append(logs, fmt.Sprintf("%d over %d", commits, nLong))
			}
			t.Logf("%s: %.3f round trips per steady heartbeat (%d commits over %d renewals, %s)",
				s.name, per, cShort, nShort, strings.Join(logs, ", "))
			// The tolerance is for the server's own work in the database,
			// which the test keeps out (see above).
			if math.Abs(per-s.want) > 0.03 {
				t.Errorf("%s: %.3f round trips per heartbeat, want %.0f", s.name, per, s.want)
			}
			requireInvariants(t, dsnWith(t, testDSN, "", name), leasering.DefaultSchema, 2*time.Second)
		})
	}
}

// live runs one node on dsn, on one connection, until it has renewed n
// times (Start's heartbeat included), closes it right after a renewal and
// returns its renewals.
func live(t *testing.T, driver, dsn string, n int64) int64 {
	t.Helper()
	db := openDBWith(t, driver, dsn)
	defer db.Close()
	db.SetMaxOpenConns(1)
	c, err := leasering.NewClient(db, leasering.WithNodeID("a"), leasering.WithTTL(2*time.Second),
		leasering.WithHeartbeat(50*time.Millisecond), leasering.WithLogger(quietLogger())) // a long life in 8 s
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lease("r", 8); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Close just after a renewal, a heartbeat away from the next one, so
	// that no heartbeat is in flight.
	last := c.Stats().Renewals
	if !waitFor(time.Duration(n)*time.Second, func() bool {
		r := c.Stats().Renewals
		if r >= n && r > last {
			return true
		}
		last = r
		return false
	}) {
		t.Fatalf("%d renewals, want %d", c.Stats().Renewals, n)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	s := c.Stats()
	if s.RenewFailures != 0 {
		t.Fatalf("%d heartbeats failed", s.RenewFailures)
	}
	return s.Renewals
}

// noAutovacuum turns autovacuum off for the tables of the database at dsn.
func noAutovacuum(t *testing.T, dsn string) {
	t.Helper()
	db := openDBWith(t, "postgres", dsn)
	defer db.Close()
	rows, err := db.Query(`SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'leasering'`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, s)
	}
	if err := rows.Err(); err != nil || len(tables) == 0 {
		t.Fatalf("the library's tables: %v %v", tables, err)
	}
	for _, tb := range tables {
		execAll(t, db, `ALTER TABLE `+tb+` SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)`)
	}
}

// vacuumAll vacuums and analyzes every table of the database at dsn, the
// catalogs included: autovacuum then finds nothing to do there for a while.
func vacuumAll(t *testing.T, dsn string) {
	t.Helper()
	db := openDBWith(t, "postgres", dsn)
	defer db.Close()
	execAll(t, db, `VACUUM (ANALYZE)`)
}

// settledCommits returns the database's committed transactions once no
// backend is connected to it (a backend writes its counts at exit, before
// it leaves pg_stat_activity) and two reads agree.
func settledCommits(t *testing.T, admin *sql.DB, name string) int64 {
	t.Helper()
	var prev, commits int64 = -1, 0
	var backends int
	var err error
	if !waitFor(20*time.Second, func() bool {
		err = admin.QueryRow(`SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = $1),
			(SELECT count(*) FROM pg_stat_activity WHERE datname = $1)`, name).Scan(&commits, &backends)
		if err != nil {
			return true
		}
		stable := backends == 0 && commits == prev
		prev = commits
		if !stable {
			time.Sleep(20 * time.Millisecond) // polling interval
		}
		return stable
	}) {
		t.Fatalf("database %s: %d backends, commits %d: not settled within 20s", name, backends, commits)
	}
	if err != nil {
		t.Fatal(err)
	}
	return commits
}
