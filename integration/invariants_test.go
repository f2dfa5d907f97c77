package integration

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
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
