package integration

import (
	"context"
	"testing"
)

// TestHeldReleasedAsksEachHoldOnce: held_released, which every scan calls
// while released partitions wait to be handed on, asks hold_end once per
// owner's hold, not once per partition (schema version 18). With 2,000
// nodes rolling out on a ring of 16,384, scans called it 300 times a
// second, at 5.7 ms a call, most of it in hold_end, once for each of a
// thousand or two released rows. Here a, whose hold is in force, and b,
// with none, have released 20 partitions each: the answer is the ring,
// both held and over, from 2 calls of hold_end (version 17: 40).
func TestHeldReleasedAsksEachHoldOnce(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	ctx := context.Background()
	tx, q, exec := s.setUpTx(ctx)
	exec(`SET LOCAL track_functions = 'pl'`)
	exec(`INSERT INTO leasering.rings (name, size, version) VALUES ('h', 64, 10)`)
	exec(`INSERT INTO leasering.nodes (node_id, incarnation, expires_at, hold_until, ttl_ms) VALUES
		('a', 'inc', now() + interval '1 hour', now() + interval '1 hour', 1000),
		('b', 'inc', now() + interval '1 hour', '-infinity', 1000),
		('c', 'inc', now() + interval '1 hour', '-infinity', 1000)`)
	exec(`INSERT INTO leasering.partitions (ring, partition, owner, next_owner, released, epoch, changed, granted)
		SELECT 'h', p, CASE WHEN p < 20 THEN 'a' WHEN p < 40 THEN 'b' ELSE 'c' END,
		       CASE WHEN p < 40 THEN 'c' END, p < 40, 1, 5, 5
		  FROM generate_series(0, 63) AS p`)

	rows, err := tx.QueryContext(ctx, `SELECT ring, over FROM `+q+`.held_released() ORDER BY 1, 2`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var ring string
		var over bool
		if err := rows.Scan(&ring, &over); err != nil {
			t.Fatal(err)
		}
		if over {
			ring += " over"
		} else {
			ring += " held"
		}
		got = append(got, ring)
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != "h held" || got[1] != "h over" {
		t.Errorf("held_released gave %q, want [h held, h over]: a's hold is in force, b has none", got)
	}

	var calls int
	if err := tx.QueryRowContext(ctx, `SELECT coalesce(sum(calls), 0) FROM pg_catalog.pg_stat_xact_user_functions
		WHERE schemaname = $1 AND funcname = 'hold_end'`, s.e.schema).Scan(&calls); err != nil {
		t.Fatal(err)
	}
	if calls > 2 {
		t.Errorf("held_released called hold_end %d times for 40 released partitions of 2 owners, want at most 2", calls)
	}
	t.Logf("hold_end: %d calls", calls)
}
