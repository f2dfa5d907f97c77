package integration

import (
	"context"
	"testing"
)

// TestRebalanceMovesOnce: a member over its quota gives up first what is
// still on its way to it (schema version 17). On a ring of 64, a owns 0-31
// and 48-63, the last 16 on their way to b, which already has 32-47; then
// c joins. c's share comes from a's own partitions and b's pending ones:
// those 16 go to c instead (a to c, one move), and b keeps all it was
// given. By distance alone, as before, c took some of 32-47 from b, which
// had just got them: a to b to c.
func TestRebalanceMovesOnce(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	ctx := context.Background()
	tx, q, exec := s.setUpTx(ctx)
	exec(`INSERT INTO leasering.rings (name, size, version, members_changed, told_through, told_at)
		SELECT 'm', 64, 50, 50, 0, noticed_at FROM leasering.server_identity`)
	exec(`INSERT INTO leasering.nodes (node_id, incarnation, expires_at, hold_until, ttl_ms)
		SELECT id, 'inc', now() + interval '1 hour', '-infinity', 1000 FROM unnest('{a,b,c}'::text[]) AS id`)
	exec(`INSERT INTO leasering.members (ring, node_id, vnodes, positions, seen)
		SELECT 'm', node_id, 8, leasering.vnode_positions('m', node_id, 8), 50 FROM leasering.nodes WHERE node_id IN ('a', 'b', 'c')`)
	exec(`INSERT INTO leasering.partitions (ring, partition, owner, next_owner, epoch, changed, granted)
		SELECT 'm', p, CASE WHEN p BETWEEN 32 AND 47 THEN 'b' ELSE 'a' END, CASE WHEN p >= 48 THEN 'b' END,
		       1, 45, CASE WHEN p BETWEEN 32 AND 47 THEN 45 ELSE 10 END
		  FROM generate_series(0, 63) AS p`)
	var moved int
	if err := tx.QueryRowContext(ctx, `SELECT `+q+`.rebalance('m')`).Scan(&moved); err != nil {
		t.Fatal(err)
	}

	rows, err := tx.QueryContext(ctx, `SELECT partition, owner, coalesce(next_owner, '') FROM `+q+`.partitions WHERE ring = 'm' ORDER BY partition`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	toC, fromPending := 0, 0
	for rows.Next() {
		var p int
		var owner, next string
		if err := rows.Scan(&p, &owner, &next); err != nil {
			t.Fatal(err)
		}
		if p >= 32 && p <= 47 && (owner != "b" || next != "") {
			t.Errorf("partition %d, which b had just been given: owner %q, next %q; want b's to stay (a to b to c)", p, owner, next)
		}
		if owner == "c" || next == "c" {
			toC++
			if p >= 48 {
				fromPending++
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if toC != 21 && toC != 22 {
		t.Errorf("c's join gave it %d partitions, want its share of 64 (21 or 22)", toC)
	}
	// b holds 32 (16 given, 16 pending) against a quota of 21 or 22: its
	// excess must come out of the 16 pending.
	if fromPending < 10 {
		t.Errorf("c got %d of the partitions pending to b, want b's excess (10 or 11) from them", fromPending)
	}
	t.Logf("rebalance changed %d rows; c got %d partitions, %d of them pending to b before", moved, toC, fromPending)
}
