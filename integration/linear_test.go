package integration

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// TestBigRevokingViewStaysLinear: a view that tells a node to give up most
// of a ring (the first node's, when a roll-out's first batch joins) marks
// when each is due in work that grows linearly with the ring. The statement
// that did it by matching the node's pending rows against the view's list
// compared every pending row with every listed one: on a ring of 65,536 it
// ran for minutes inside read_views, holding its node's share lock, and the
// roll-out stalled (BENCHMARKS.md). Judged by growth, as
// TestHeartbeatAnswerGrowsLinearly is: 8 times the ring must not cost 24
// times as much (linear: about 8; the old statement: about 64).
func TestBigRevokingViewStaysLinear(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	const few, many = 1024, 8192
	small, big := time.Duration(1<<62), time.Duration(1<<62)
	for range 3 {
		small = min(small, s.giveBigRevokingView(few))
		big = min(big, s.giveBigRevokingView(many))
	}
	ratio := float64(big) / float64(small)
	t.Logf("give_view telling a node to give up 7/8 of a ring of %d: %v, of %d: %v (x%.1f)",
		few, small.Round(time.Microsecond), many, big.Round(time.Microsecond), ratio)
	if ratio > 24 {
		t.Errorf("8 times the ring cost %.0f times as much: the view's work grows faster than linearly", ratio)
	}
}

// giveBigRevokingView sets up ring "v" of size partitions in a transaction,
// rolled back at the end: a owns them all, and the planner's statistics say
// so, as autovacuum left them while a was alone; then a rebalance that a
// has not heard of makes all but every 8th pending to b. It returns how
// long give_view took to tell a, and checks that each partition to give up
// got its due time.
func (s *sqlNodes) giveBigRevokingView(size int) time.Duration {
	t := s.t
	t.Helper()
	ctx := context.Background()
	tx, err := s.e.admin.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	q := `"` + s.e.schema + `"`
	for _, stmt := range []string{
		`INSERT INTO ` + q + `.rings (name, size, version, members_changed, told_at)
			SELECT 'v', ` + strconv.Itoa(size) + `, 10, 5, noticed_at FROM ` + q + `.server_identity`,
		`INSERT INTO ` + q + `.nodes (node_id, incarnation, expires_at, hold_until, ttl_ms)
			SELECT id, 'inc', now() + interval '1 hour', '-infinity', 1000 FROM unnest(ARRAY['a', 'b']) AS id`,
		`INSERT INTO ` + q + `.members (ring, node_id, vnodes, positions, changed, seen, claimed_by, heartbeat_ms, drain_ms)
			SELECT 'v', node_id, 8, ` + q + `.vnode_positions('v', node_id, 8), 5, 5, 'inc', 100, 100
			  FROM ` + q + `.nodes WHERE node_id IN ('a', 'b')`,
		`INSERT INTO ` + q + `.partitions (ring, partition, owner, epoch, changed, granted)
			SELECT 'v', p, 'a', 1, 5, 5 FROM generate_series(0, ` + strconv.Itoa(size-1) + `) AS p`,
		`ANALYZE ` + q + `.partitions`,
		`UPDATE ` + q + `.partitions SET next_owner = 'b', changed = 10 WHERE ring = 'v' AND partition % 8 <> 0`,
	} {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%v\n%s", err, stmt)
		}
	}
	var revoking, due int
	began := time.Now()
	if err := tx.QueryRowContext(ctx, `SELECT jsonb_array_length(`+q+`.give_view('a', 'v', 0) -> 'revoking')`).Scan(&revoking); err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM `+q+`.partitions WHERE ring = 'v' AND release_due IS NOT NULL`).Scan(&due); err != nil {
		t.Fatal(err)
	}
	if want := size - size/8; revoking != want || due != want {
		t.Errorf("ring of %d: the view lists %d to give up and %d got a due time, want %d and %d", size, revoking, due, want, want)
	}
	return took
}
