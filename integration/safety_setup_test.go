package integration

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// Safety tests of databases as users set them up: least privilege, any default isolation, odd encodings.

// TestLeastPrivilege: the schema owner applies MigrationSQL(0); an
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
	applyMigration(t, ownerDB, 0)
	grantApp(t, ownerDB, app, dbName)

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

// TestLeastPrivilegeAcrossUpgrade: an application role given the README's
// grants on a schema of the last release (version 18) runs nodes on it
// once the owner has upgraded it with MigrationSQL(18), which replaces the
// heartbeat's function (its answer has more columns): the role keeps
// EXECUTE on the new one, without granting again.
func TestLeastPrivilegeAcrossUpgrade(t *testing.T) {
	t.Parallel()
	admin := openPool(t, needDB(t))
	owner := scratchRole(t, admin, "lrt_owner_", "")
	dbName := scratchDatabase(t, admin, "OWNER "+owner)
	app := scratchRole(t, admin, "lrt_app_", "")
	ownerDB := openPool(t, dsnWith(t, testDSN, owner, dbName))
	old, err := os.ReadFile("testdata/schema_and_functions_v18_8b27473.sql")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ownerDB.Exec(string(old)); err != nil {
		t.Fatalf("owner applying version 18: %v", err)
	}
	grantApp(t, ownerDB, app, dbName)
	applyMigration(t, ownerDB, 18)

	e := newEnv(t, 2*time.Second, 100*time.Millisecond)
	e.dsn, e.schema = dsnWith(t, testDSN, app, dbName), leasering.DefaultSchema
	noMigration := []leasering.Option{leasering.WithoutMigration()}
	const ring, size = "app", 32
	a := e.startNodeWith("a", noMigration, ring, size)
	e.startNodeWith("b", noMigration, ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	if !waitFor(5*time.Second, func() bool { return a.client.Stats().AsyncRenewals > 0 }) {
		t.Errorf("no renewal of the application role's node went without the disk: %+v", a.client.Stats())
	}
}

// applyMigration applies MigrationSQL(from) in one transaction of db.
func applyMigration(t *testing.T, db *sql.DB, from int) {
	t.Helper()
	script, err := leasering.MigrationSQL(from)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.Exec(script); err != nil {
		t.Fatalf("applying MigrationSQL(%d): %v", from, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// grantApp gives role app the README's grants on database dbName's schema
// (ownerDB is its owner's pool), taken back when t ends.
func grantApp(t *testing.T, ownerDB *sql.DB, app, dbName string) {
	t.Helper()
	execAll(t, ownerDB, readmeGrants(app)...)
	t.Cleanup(func() {
		_, _ = openPool(t, dsnWith(t, testDSN, "", dbName)).Exec(`DROP OWNED BY ` + app)
	})
}

// readmeGrants are the README's GRANT statements for an application role.
func readmeGrants(role string) []string {
	return []string{
		`GRANT USAGE ON SCHEMA leasering TO ` + role,
		`GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA leasering TO ` + role,
		`GRANT SELECT ON leasering.ring_members TO ` + role,
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
