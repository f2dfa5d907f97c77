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
