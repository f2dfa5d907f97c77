package localpg

import (
	"context"
	"database/sql"
	"testing"
	"time"
)

// openCluster opens c's database test, closed at the test's end.
func openCluster(t *testing.T, c *Cluster) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", c.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// waitRows waits until query (one integer) returns want on db.
func waitRows(t *testing.T, db *sql.DB, query string, want int) {
	t.Helper()
	var got int
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err = db.QueryRow(query).Scan(&got); err == nil && got == want {
			return
		}
	}
	t.Fatalf("%s = %d (%v), want %d", query, got, err, want)
}

// timeline is the timeline db writes WAL on.
func timeline(t *testing.T, db *sql.DB) string {
	t.Helper()
	var name string
	if err := db.QueryRow(`SELECT pg_walfile_name(pg_current_wal_lsn())`).Scan(&name); err != nil {
		t.Fatal(err)
	}
	return name[:8]
}

func startTimes(t *testing.T, dbs ...*sql.DB) []time.Time {
	t.Helper()
	var out []time.Time
	for _, db := range dbs {
		var s time.Time
		if err := db.QueryRow(`SELECT pg_postmaster_start_time()`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// TestStandbyPromote: a standby streams what the primary commits, takes
// only reads, and after Promote writes on a new timeline, with a start
// time of its own.
func TestStandbyPromote(t *testing.T) {
	needServer(t)
	isolateTemp(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := StartWith(ctx, Config{Settings: []string{"synchronous_commit=on"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	pdb := openCluster(t, p)
	var sc string
	if err := pdb.QueryRow(`SHOW synchronous_commit`).Scan(&sc); err != nil || sc != "on" {
		t.Fatalf("synchronous_commit = %q (%v), want on: settings must override the defaults", sc, err)
	}
	if _, err := pdb.Exec(`CREATE TABLE t (x int); INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	s, err := p.Standby(ctx, p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	sdb := openCluster(t, s)
	if _, err := pdb.Exec(`INSERT INTO t VALUES (2)`); err != nil {
		t.Fatal(err)
	}
	waitRows(t, sdb, `SELECT count(*) FROM t`, 2)
	if _, err := sdb.Exec(`INSERT INTO t VALUES (3)`); err == nil {
		t.Fatal("the standby took a write before its promotion")
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sdb.Exec(`INSERT INTO t VALUES (3)`); err != nil {
		t.Fatalf("write after the promotion: %v", err)
	}
	if a, b := timeline(t, pdb), timeline(t, sdb); a == b {
		t.Errorf("timeline after the promotion %s, the same as the primary's", b)
	}
	if st := startTimes(t, pdb, sdb); st[0].Equal(st[1]) {
		t.Errorf("primary and standby have the same start time %v", st[0])
	}
}

// TestBackupRecover: a copy recovered to a target time has what committed
// before it and not what committed after, and writes on a new timeline.
func TestBackupRecover(t *testing.T) {
	needServer(t)
	isolateTemp(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := StartWith(ctx, Config{Archive: true, Settings: []string{"synchronous_commit=on"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	pdb := openCluster(t, p)
	if _, err := pdb.Exec(`CREATE TABLE t (x int)`); err != nil {
		t.Fatal(err)
	}
	b, err := p.Backup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Stop() })
	if _, err := pdb.Exec(`INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	var target string
	if err := pdb.QueryRow(`SELECT now()::text`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	if _, err := pdb.Exec(`INSERT INTO t VALUES (2)`); err != nil {
		t.Fatal(err)
	}
	var seg string
	if err := pdb.QueryRow(`SELECT pg_walfile_name(pg_switch_wal())`).Scan(&seg); err != nil {
		t.Fatal(err)
	}
	waitRows(t, pdb, `SELECT count(*) FROM pg_stat_archiver WHERE last_archived_wal >= '`+seg+`'`, 1)
	if err := b.Recover(ctx, p, target); err != nil {
		t.Fatal(err)
	}
	bdb := openCluster(t, b)
	waitRows(t, bdb, `SELECT count(*) FROM t WHERE x = 1`, 1)
	waitRows(t, bdb, `SELECT count(*) FROM t WHERE x = 2`, 0)
	if _, err := bdb.Exec(`INSERT INTO t VALUES (3)`); err != nil {
		t.Fatalf("write on the recovered copy: %v", err)
	}
	if a, c := timeline(t, pdb), timeline(t, bdb); a == c {
		t.Errorf("the recovered copy's timeline %s is the original's", c)
	}
}
