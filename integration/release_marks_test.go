package integration

import (
	"context"
	"slices"
	"testing"
)

// TestReleaseOnABusyRingIsHandedOnByItsNewOwner: a release does not wait
// for its ring's lock (schema version 16). While another transaction holds
// the lock, a's release of what b's join takes commits at once, marked
// released: a's view no longer lists the partitions, holds() refuses a's
// epoch for them, and they are still a's in the table. The lock freed,
// b's next heartbeat (incoming, as a node's that waits for partitions)
// hands them on, epoch + 1. Before, the release waited 100 ms for the lock
// and was undone: with 100 processes starting at once, releases queued
// there and partitions went unreported past the TTL (BENCHMARKS.md).
func TestReleaseOnABusyRingIsHandedOnByItsNewOwner(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	moving := s.toldHandoff()
	before := s.rows()

	ctx := context.Background()
	tx, err := s.e.admin.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`SELECT 1 FROM "` + s.e.schema + `".rings WHERE name = 'r' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	h, err := s.renew(nil, "a", false, false, 0, moving...)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.changes) != 1 || h.changes[0].Status != "ok" {
		t.Fatalf("a's release while the ring's lock is held: answered %+v, want a view", h.changes)
	}
	if v := s.viewOf("a", 0); slices.ContainsFunc(v.Partitions, func(p int) bool { return slices.Contains(moving, p) }) {
		t.Errorf("a's view lists %v after it released %v", v.Partitions, moving)
	}
	if n := s.releasedCount(); n != len(moving) {
		t.Errorf("%d partitions marked released, want the %d a released", n, len(moving))
	}
	for _, p := range moving {
		var holds bool
		if err := s.e.admin.QueryRow(`SELECT "`+s.e.schema+`".holds('r', $1, $2)`, p, before[p].epoch).Scan(&holds); err != nil {
			t.Fatal(err)
		}
		if holds {
			t.Errorf("holds() true for partition %d at a's epoch %d after a released it", p, before[p].epoch)
		}
		if row := s.rows()[p]; row.owner != "a" || row.next != "b" {
			t.Errorf("partition %d with the ring's lock held: owner %q, next %q; want a, b", p, row.owner, row.next)
		}
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	s.incoming = true
	if _, err := s.renew(nil, "b", false, false, 0); err != nil {
		t.Fatal(err)
	}
	rows := s.rows()
	for _, p := range moving {
		if row := rows[p]; row.owner != "b" || row.next != "" || row.epoch != before[p].epoch+1 {
			t.Errorf("partition %d after b's heartbeat: owner %q, next %q, epoch %d; want b's, epoch %d", p, row.owner, row.next, row.epoch, before[p].epoch+1)
		}
	}
	if n := s.releasedCount(); n != 0 {
		t.Errorf("%d partitions still marked released after b's heartbeat", n)
	}
	if v := s.viewOf("b", 0); !slices.Equal(v.Partitions, moving) {
		t.Errorf("b owns %v, want %v", v.Partitions, moving)
	}
}

// TestReleaseWithTheRingsLockWritesEachRowOnce: a release that gets its
// ring's lock at once hands its partitions on in the same call, with one
// write of each row (schema version 18's later body). Marked and then
// handed on, each row was written twice, and the newcomers of a roll-out
// wait for that commit: at 10 nodes on a ring of 4,096 under -race beside
// a busy core (TestRollout), the first node's release of 3,686 partitions
// left them unreported 1.19-1.38 s with a drain of 1 s, and 1.02-1.32 s
// with this and release_after_ms counted as the call goes.
func TestReleaseWithTheRingsLockWritesEachRowOnce(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	moving := s.toldHandoff()
	before := s.rows()

	tx, err := s.e.admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	// The backend's counts not yet reported: they go to the statistics
	// only between transactions, so the difference across the call is
	// what it wrote.
	updates := func() int {
		var n int
		if err := tx.QueryRow(`SELECT pg_stat_get_xact_tuples_updated('"` + s.e.schema + `".partitions'::regclass)`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	was := updates()
	if _, err := s.renew(tx, "a", false, false, 0, moving...); err != nil {
		t.Fatal(err)
	}
	updated := updates() - was
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if updated != len(moving) {
		t.Errorf("a's release of %d partitions updated %d rows of partitions, want one write of each", len(moving), updated)
	}
	rows := s.rows()
	for _, p := range moving {
		if row := rows[p]; row.owner != "b" || row.next != "" || row.epoch != before[p].epoch+1 {
			t.Errorf("partition %d after a's release: owner %q, next %q, epoch %d; want b's, epoch %d", p, row.owner, row.next, row.epoch, before[p].epoch+1)
		}
	}
	if n := s.releasedCount(); n != 0 {
		t.Errorf("%d partitions left marked released", n)
	}
}

// TestReleaseToALapsedOwnerIsOnlyMarked: with the ring's lock free, a
// release hands on only what goes to a live member. Partitions pending to
// a node whose lease has lapsed stay with their owner, marked released
// (nobody reports them, holds() refuses the old epoch), for that node's
// eviction to retarget; handed on, they would sit with a dead node.
func TestReleaseToALapsedOwnerIsOnlyMarked(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	moving := s.toldHandoff()
	before := s.rows()
	s.expire("b")
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil {
		t.Fatal(err)
	}
	rows := s.rows()
	for _, p := range moving {
		if row := rows[p]; row.owner != "a" || row.next != "b" || row.epoch != before[p].epoch {
			t.Errorf("partition %d released to lapsed b: owner %q, next %q, epoch %d; want a's, pending to b, epoch %d", p, row.owner, row.next, row.epoch, before[p].epoch)
		}
	}
	if n := s.releasedCount(); n != len(moving) {
		t.Errorf("%d partitions marked released, want the %d a released", n, len(moving))
	}
}

// TestReleaseSkipsRowsAnotherHolds: a release marks only the rows no other
// transaction holds (a rebalance that retargets them, a user's holds());
// the rest stay revoking in the node's view, and its next release takes
// them. It never waits for them: a wait that gave up undid the heartbeat's
// ring work, and a rebalance holds them for hundreds of milliseconds under
// load.
func TestReleaseSkipsRowsAnotherHolds(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	moving := s.toldHandoff()
	if len(moving) < 2 {
		t.Fatalf("b's join moved %v, want two or more", moving)
	}
	held, rest := moving[0], moving[1:]
	tx, err := s.e.admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`SELECT 1 FROM "`+s.e.schema+`".partitions WHERE ring = 'r' AND partition = $1 FOR UPDATE`, held); err != nil {
		t.Fatal(err)
	}
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil {
		t.Fatal(err)
	}
	rows := s.rows() // the row still held: a wait for it would have undone the release
	for _, p := range rest {
		if rows[p].owner != "b" {
			t.Errorf("partition %d after a's release: owner %q, want b", p, rows[p].owner)
		}
	}
	if r := rows[held]; r.owner != "a" || r.next != "b" {
		t.Errorf("partition %d, whose row was held: owner %q, next %q; want a, still pending to b", held, r.owner, r.next)
	}
	if v := s.viewOf("a", 0); !slices.Equal(v.Revoking, []int{held}) {
		t.Errorf("a's view revokes %v, want [%d] alone", v.Revoking, held)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.renew(nil, "a", false, false, 0, held); err != nil {
		t.Fatal(err)
	}
	if r := s.rows()[held]; r.owner != "b" {
		t.Errorf("partition %d after a's second release: owner %q, want b", held, r.owner)
	}
}

// TestReleaseOutlivesItsView: a heartbeat whose view waits too long for a
// lock (its member row, which a rebalance share-locks while it runs) keeps
// its releases and leaves the view for the next heartbeat. Undone with the
// view, a node's release of 3,925 partitions went again and again for 11 s
// while batches of joins rebalanced (TestRollout -rollout.pool=2).
func TestReleaseOutlivesItsView(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	moving := s.toldHandoff()
	tx, err := s.e.admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`SELECT 1 FROM "` + s.e.schema + `".members WHERE ring = 'r' AND node_id = 'a' FOR SHARE`); err != nil {
		t.Fatal(err)
	}
	s.laterIfBusy = true
	h, err := s.renew(nil, "a", false, false, 0, moving...)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.changes) != 1 || h.changes[0].Status != "later" || !h.changes[0].Busy {
		t.Errorf("a's release with its member row share-locked: answered %+v, want later, busy", h.changes)
	}
	rows := s.rows()
	for _, p := range moving {
		if rows[p].owner != "b" {
			t.Errorf("partition %d after a's release whose view waited out its lock: owner %q, want b", p, rows[p].owner)
		}
	}
}

// TestJoinsHandOnWhatWasReleased: what was released while the ring's lock
// was busy does not wait for its pending owner: the next batch of joins,
// which holds the lock anyway, leaves none of it with its old owner. (Here
// the join's rebalance moves them on itself; join_waiting's own hand-on,
// before it rebalances, is for what that rebalance leaves pending.) In a
// roll-out the batches held the lock back to back.
func TestJoinsHandOnWhatWasReleased(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	moving := s.toldHandoff()
	before := s.rows()
	tx, err := s.e.admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`SELECT 1 FROM "` + s.e.schema + `".rings WHERE name = 'r' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil {
		t.Fatal(err)
	}
	if n := s.releasedCount(); n != len(moving) {
		t.Fatalf("%d partitions marked released with the ring's lock held, want %d", n, len(moving))
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	s.join("c") // b never renews meanwhile
	rows := s.rows()
	for _, p := range moving {
		if r := rows[p]; r.owner == "a" || r.epoch == before[p].epoch {
			t.Errorf("partition %d after c's join: owner %q, epoch %d; want handed on from a, epoch above %d", p, r.owner, r.epoch, before[p].epoch)
		}
	}
	if n := s.releasedCount(); n != 0 {
		t.Errorf("%d partitions still marked released after c's join", n)
	}
}
