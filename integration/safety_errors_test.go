package integration

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// Safety tests of errors: permanent ones fail fast, and a Start cut short leaves.

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
