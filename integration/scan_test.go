package integration

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"
)

// newLapsedBeside joins nodes a and d on ring "r"; a reads the ring as it
// is, and d's lease lapses.
func newLapsedBeside(t *testing.T) *sqlNodes {
	t.Helper()
	s := newSQLNodes(t)
	for _, id := range []string{"a", "d"} {
		s.join(id)
	}
	if _, err := s.renew(nil, "a", false, false, 0); err != nil { // a sees the ring as it is now
		t.Fatal(err)
	}
	s.expire("d")
	return s
}

// expectRejoined fails t unless id's next heartbeat (sent as when says)
// rejoins with a lease.
func expectRejoined(t *testing.T, s *sqlNodes, id, when string) {
	t.Helper()
	h, err := s.renew(nil, id, false, false, 0)
	if err != nil {
		t.Fatalf("%s's heartbeat %s: %v", id, when, err)
	}
	if h.status != "rejoined" || h.leaseMS <= 0 {
		t.Errorf("%s's heartbeat %s answered %q with %d ms of lease, want rejoined and a lease", id, when, h.status, h.leaseMS)
	}
}

// keyShareNode share-locks node id's row in a transaction of its own, as
// join_rings and read_views do for as long as they run (FOR KEY SHARE).
func keyShareNode(t *testing.T, s *sqlNodes, id string) *sql.Tx {
	t.Helper()
	tx, err := s.e.admin.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`SELECT 1 FROM "`+s.e.schema+`".nodes WHERE node_id = $1 FOR KEY SHARE`, id); err != nil {
		t.Fatal(err)
	}
	return tx
}

// TestScanDoesNotWaitForAJoinsShareLock: a lapsed node's row is
// share-locked by a statement that may run for seconds (join_rings and
// read_views take FOR KEY SHARE on their node's row, and a batch of joins
// on every joiner's; a batch's rebalance of a ring of 65,536 takes one to
// two seconds). A heartbeat that scans skips that node, as it skips one
// another evictor holds, but it must not wait for a share lock the way it
// waits for another evictor: with 100 nodes on a ring of 65,536 at TTL 1 s,
// every scanning heartbeat spent its lock wait (a quarter of the TTL) on
// such rows while joins ran, and leases lapsed.
func TestScanDoesNotWaitForAJoinsShareLock(t *testing.T) {
	t.Parallel()
	s := newLapsedBeside(t)
	joining := keyShareNode(t, s, "d")
	defer joining.Rollback()

	// The heartbeat's lock wait is a quarter of its TTL, at most a second
	// (set_lock_wait): 1 s here. Returning before that, with the lock
	// still held, shows it did not wait for it.
	begin := time.Now()
	h, err := s.renew(nil, "a", false, true, 0)
	took := time.Since(begin)
	if err != nil {
		t.Fatalf("heartbeat that scans: %v", err)
	}
	if took >= time.Second {
		t.Errorf("the scanning heartbeat took %v with d's row share-locked: it waited out its lock wait (1 s)", took.Round(time.Millisecond))
	}
	if h.status != "ok" || h.leaseMS <= 0 {
		t.Errorf("the scanning heartbeat answered %q with %d ms of lease, want ok and a lease", h.status, h.leaseMS)
	}
	if !s.exists("d") {
		t.Error("d was evicted while a join held its row")
	}
	t.Logf("the scanning heartbeat returned in %v with the lapsed node's row share-locked", took.Round(time.Millisecond))

	// Once the join is done, the next scan evicts d.
	if err := joining.Rollback(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.renew(nil, "a", false, true, 0); err != nil {
		t.Fatalf("heartbeat that scans: %v", err)
	}
	if s.exists("d") {
		t.Error("d lapsed and nobody holds its row, yet the scan did not evict it")
	}
}

// TestRejoinDoesNotWaitForAJoinsShareLock: a node whose lease lapsed while
// a statement of its own held its row share-locked (join_rings or
// read_views, which may run for seconds) rejoins with its next heartbeat.
// The rejoin locked the row FOR UPDATE, which waits for a share lock, with
// a heartbeat's lock wait of 20 ms: with 100 nodes on a ring of 65,536 at
// TTL 1 s, 26,396 rejoins failed that way in two minutes and the nodes
// never came back.
func TestRejoinDoesNotWaitForAJoinsShareLock(t *testing.T) {
	t.Parallel()
	s := newLapsedBeside(t)
	joining := keyShareNode(t, s, "d")
	defer joining.Rollback()
	expectRejoined(t, s, "d", "with its row share-locked")
}

// TestScanKeepsNoLockOnRowsItCouldNotEvict: a scanning heartbeat that waited
// for a lapsed node's row and then could not evict it (a join holds it)
// keeps no lock on it for the rest of its transaction: that node's rejoin
// waits for such a lock, 20 ms at most, and with every node scanning while
// one has lapsed, the rejoin would rarely find the row free.
func TestScanKeepsNoLockOnRowsItCouldNotEvict(t *testing.T) {
	t.Parallel()
	s := newLapsedBeside(t)
	joining := keyShareNode(t, s, "d")
	defer joining.Rollback()

	// a's scanning heartbeat, in a transaction left open.
	scanning, err := s.e.admin.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer scanning.Rollback()
	rings := `[{"ring": "r", "size": 8, "vnodes": 8, "version": ` + fmt.Sprint(s.version["a"]) + `}]`
	var status string
	if err := scanning.QueryRow(`SELECT node_status FROM "`+s.e.schema+`".renew_and_read('a', 'inc-a', $1, '', $2::jsonb, false, true, clock_timestamp())`,
		sqlTTLms, rings).Scan(&status); err != nil || status != "ok" {
		t.Fatalf("a's scanning heartbeat: %q, %v", status, err)
	}
	if !s.exists("d") {
		t.Fatal("d was evicted while a join held its row")
	}

	expectRejoined(t, s, "d", "while a's scanning heartbeat is still open")
}

// TestScanHandsOnAReleaseWhoseHoldWasForgotten: a partition marked released
// whose owner's hold is already forgotten (hold_until '-infinity') is handed
// on by the next scan. A late heartbeat that confirms releases takes no
// lock on its node's row, so its mark can commit just after the node's next
// heartbeat forgot the hold (settle_hold saw nothing released yet); a scan
// that looked only at owners with a hold recorded left such a partition
// unowned until its owner sent the release again.
func TestScanHandsOnAReleaseWhoseHoldWasForgotten(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a", "b", "c")
	moving := s.handingOff("a", "b")
	if len(moving) == 0 {
		t.Fatalf("a hands nothing to b: %v", s.rows())
	}
	p := moving[0]
	// What the race leaves: released, and a's hold forgotten.
	if _, err := s.e.admin.Exec(`UPDATE "`+s.e.schema+`".partitions SET released = true WHERE ring = 'r' AND partition = $1`, p); err != nil {
		t.Fatal(err)
	}
	if _, err := s.e.admin.Exec(`UPDATE "` + s.e.schema + `".nodes SET hold_until = '-infinity' WHERE node_id = 'a'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.renew(nil, "c", false, true, 0); err != nil {
		t.Fatalf("c's scanning heartbeat: %v", err)
	}
	if row := s.rows()[p]; row.owner != "b" || row.next != "" {
		t.Errorf("partition %d after a scan: %+v, want handed on to b", p, row)
	}
}

// TestOneHeartbeatEvictsAtATime: while one heartbeat evicts (here it waits
// for a lapsed node's row that another transaction holds, as a rejoin or a
// batch of joins' rebalance does), one more waits for it and reads the
// outcome, and the others that scan meanwhile go on without waiting; their
// nodes hear of the takeover at their next heartbeat. With a hundred nodes
// on a ring of 65,536, every heartbeat that found a lapsed lease evicted
// or waited, on the lapsed rows or for the ring's lock a batch of joins
// held, a quarter of its TTL each time; heartbeats averaged 190 ms, and
// the lapsed nodes' rejoins, which wait 20 ms for their own rows, never got
// through.
func TestOneHeartbeatEvictsAtATime(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a", "b", "c", "d")
	for _, id := range []string{"a", "b", "c"} {
		if _, err := s.renew(nil, id, false, false, 0); err != nil { // they see the ring as it is now
			t.Fatal(err)
		}
	}
	s.expire("d")

	// Each scanning heartbeat runs on a connection of its own, opened
	// first: the evictor's wait below lasts at most a second.
	type answer struct {
		h   heartbeat
		err error
	}
	type scanner struct {
		conn *sql.DB
		pid  int
		done chan answer
	}
	scanners := map[string]*scanner{}
	for _, id := range []string{"a", "b", "c"} {
		sc := &scanner{conn: openDB(t, s.e.dsn), done: make(chan answer, 1)}
		t.Cleanup(func() { sc.conn.Close() })
		sc.conn.SetMaxOpenConns(1)
		if err := sc.conn.QueryRow(`SELECT pg_backend_pid()`).Scan(&sc.pid); err != nil {
			t.Fatal(err)
		}
		scanners[id] = sc
	}
	scan := func(id string) {
		go func() {
			h, err := s.renew(scanners[id].conn, id, false, true, 0)
			scanners[id].done <- answer{h, err}
		}()
	}
	waiting := func(id string) bool {
		var w bool
		_ = s.e.admin.QueryRow(`SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1`, scanners[id].pid).Scan(&w)
		return w
	}

	other := holdNode(t, s, "d")
	defer other.Rollback()
	scan("a")
	if !waitFor(5*time.Second, func() bool { return waiting("a") }) {
		t.Fatal("a's scanning heartbeat did not wait for the lapsed row")
	}
	scan("b")
	if !waitFor(5*time.Second, func() bool { return waiting("b") }) {
		t.Fatal("b's scanning heartbeat did not wait for a's eviction")
	}
	// c's heartbeat must come back without waiting.
	scan("c")
	var c answer
	for got := false; !got; {
		select {
		case c = <-scanners["c"].done:
			got = true
		case <-time.After(2 * time.Millisecond):
			if waiting("c") {
				t.Fatal("c's scanning heartbeat waited while a's evicted and b's waited for it")
			}
		}
	}
	if c.err != nil || c.h.status != "ok" || c.h.leaseMS <= 0 {
		t.Fatalf("c's scanning heartbeat: %q with %d ms of lease (%v), want ok and a lease", c.h.status, c.h.leaseMS, c.err)
	}
	if !waiting("a") || !waiting("b") {
		t.Fatal("a's or b's heartbeat stopped waiting while the other transaction still held d (each waits at most a second)")
	}

	// The other transaction ends without renewing d: a's heartbeat evicts
	// d, b's reads the outcome, and c hears of it at its next heartbeat.
	if err := other.Rollback(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		select {
		case got := <-scanners[id].done:
			if got.err != nil {
				t.Fatalf("%s's heartbeat: %v", id, got.err)
			}
			if len(got.h.changes) != 1 {
				t.Errorf("%s's heartbeat carries %d ring changes, want the ring after d's eviction", id, len(got.h.changes))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s's heartbeat did not return after the other transaction ended", id)
		}
	}
	if s.exists("d") {
		t.Fatal("the other transaction ended and a's waiting heartbeat did not evict d")
	}
	h, err := s.renew(nil, "c", false, false, 0)
	if err != nil || len(h.changes) != 1 {
		t.Fatalf("c's next heartbeat: %d ring changes (%v), want the ring after d's eviction", len(h.changes), err)
	}
	s.expectNoneNamed("d")
}

// TestStalledEvictorGivesUpItsTurn: a heartbeat that takes the eviction's
// turn in an explicit transaction (as the client runs its calls when the
// database's default isolation is not READ COMMITTED) and whose client
// stalls before COMMIT does not keep the turn: the server ends its session
// after half a TTL, and the next scan evicts. Without that, every eviction
// in the schema would wait for as long as the stalled session lived.
func TestStalledEvictorGivesUpItsTurn(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a", "b", "d")
	s.expire("d")

	stalled, err := s.e.admin.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	var pid int
	if err := stalled.QueryRowContext(context.Background(), `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	tx, err := stalled.BeginTx(context.Background(), &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	rings := `[{"ring": "r", "size": 8, "vnodes": 8, "version": ` + fmt.Sprint(s.version["a"]) + `}]`
	const ttlMS = 2000 // the stalled heartbeat's TTL: its session ends 1 s after it went idle
	if _, err := tx.Exec(`SELECT node_status FROM "`+s.e.schema+`".renew_and_read('a', 'inc-a', $1, '', $2::jsonb, false, true, clock_timestamp())`,
		ttlMS, rings); err != nil {
		t.Fatalf("a's scanning heartbeat: %v", err)
	}
	// a's transaction evicted d but has not committed, and its client
	// stalls. b's scans cannot evict d until the server ends a's session.
	gone := waitFor(10*time.Second, func() bool {
		var alive bool
		_ = s.e.admin.QueryRow(`SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)`, pid).Scan(&alive)
		return !alive
	})
	if !gone {
		t.Fatal("the stalled evictor's session was still there 10 s after it went idle in its transaction (TTL 2 s)")
	}
	if _, err := s.renew(nil, "b", false, true, 0); err != nil {
		t.Fatalf("b's scanning heartbeat: %v", err)
	}
	if s.exists("d") {
		t.Error("d lapsed, the stalled evictor's session ended, and b's scan did not evict d")
	}
}
