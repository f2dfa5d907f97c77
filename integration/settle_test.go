package integration

import (
	"context"
	"database/sql"
	"testing"
)

// TestRebalanceWhileJoinsSettle: while a burst of joins settles
// (rings.settle_until ahead, schema version 20), rebalance tells no live,
// told owner to give a partition up, and still places what needs no
// handoff: free partitions, and those on their way (which may be sent
// elsewhere). Once the burst has settled the same ring rebalances in full.
// On a ring of 64, a owns 0-47 and knows it, 48-55 are on their way from
// a to b, and 56-63 are free; b and c are members with nothing.
func TestRebalanceWhileJoinsSettle(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	ctx := context.Background()
	tx, q, exec := s.setUpTx(ctx)
	exec(`INSERT INTO leasering.rings (name, size, version, members_changed, told_through, told_at, settle_until)
		SELECT 'm', 64, 50, 50, 0, noticed_at, now() + interval '1 hour' FROM leasering.server_identity`)
	exec(`INSERT INTO leasering.nodes (node_id, incarnation, expires_at, hold_until, ttl_ms)
		SELECT id, 'inc', now() + interval '1 hour', '-infinity', 1000 FROM unnest('{a,b,c}'::text[]) AS id`)
	exec(`INSERT INTO leasering.members (ring, node_id, vnodes, positions, seen)
		SELECT 'm', node_id, 8, leasering.vnode_positions('m', node_id, 8), 50 FROM leasering.nodes`)
	exec(`INSERT INTO leasering.partitions (ring, partition, owner, next_owner, epoch, changed, granted)
		SELECT 'm', p, CASE WHEN p < 56 THEN 'a' END, CASE WHEN p BETWEEN 48 AND 55 THEN 'b' END,
		       CASE WHEN p < 56 THEN 1 ELSE 0 END, 10, 10
		  FROM generate_series(0, 63) AS p`)
	rebalance := func() {
		t.Helper()
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT `+q+`.rebalance('m')`).Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	type row struct{ owner, next string }
	read := func() []row {
		t.Helper()
		rows, err := tx.QueryContext(ctx, `SELECT coalesce(owner, ''), coalesce(next_owner, '') FROM `+q+`.partitions WHERE ring = 'm' ORDER BY partition`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.owner, &r.next); err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}

	rebalance()
	rows := read()
	for p := 0; p < 48; p++ {
		if rows[p] != (row{"a", ""}) {
			t.Errorf("settling: partition %d, a's and told: %+v, want it left with a (nothing told to move while joins come)", p, rows[p])
		}
	}
	for p := 48; p < 56; p++ {
		if rows[p].owner != "a" || (rows[p].next != "b" && rows[p].next != "c") {
			t.Errorf("settling: partition %d, on its way from a: %+v, want still on its way, to b or c", p, rows[p])
		}
	}
	for p := 56; p < 64; p++ {
		if rows[p].next != "" || (rows[p].owner != "b" && rows[p].owner != "c") {
			t.Errorf("settling: free partition %d: %+v, want given to b or c at once", p, rows[p])
		}
	}

	exec(`UPDATE leasering.rings SET settle_until = NULL WHERE name = 'm'`)
	rebalance()
	share := map[string]int{}
	for _, r := range read() {
		share[r.owner]++
		if r.next != "" {
			share[r.owner]--
			share[r.next]++
		}
	}
	for _, id := range []string{"a", "b", "c"} {
		if share[id] != 21 && share[id] != 22 {
			t.Errorf("settled: %s's share is %d of 64, want 21 or 22 (%v)", id, share[id], share)
		}
	}
}

// TestSettleJoinsTellsABurst: a batch of joins within a heartbeat of the
// one before (the longest heartbeat the ring's members joined with) holds
// the ring's moves until a heartbeat after it, for at most 60 heartbeats
// from the burst's first batch; one after a quiet heartbeat, on a ring of
// more than 4,096 partitions, or on a ring whose members' heartbeats are
// unknown, holds nothing.
func TestSettleJoinsTellsABurst(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	ctx := context.Background()
	tx, q, exec := s.setUpTx(ctx)
	exec(`INSERT INTO leasering.rings (name, size, told_at) SELECT 'm', 8, noticed_at FROM leasering.server_identity`)
	exec(`INSERT INTO leasering.nodes (node_id, incarnation, expires_at, hold_until, ttl_ms)
		VALUES ('a', 'inc', now() + interval '1 hour', '-infinity', 1000)`)
	exec(`INSERT INTO leasering.members (ring, node_id, vnodes, positions, heartbeat_ms)
		VALUES ('m', 'a', 1, leasering.vnode_positions('m', 'a', 1), 1000)`)
	// settleFor calls settle_joins and says how long after now the ring
	// holds its moves (NULL: not at all).
	settleFor := func() sql.NullFloat64 {
		t.Helper()
		if _, err := tx.ExecContext(ctx, `SELECT `+q+`.settle_joins('m')`); err != nil {
			t.Fatal(err)
		}
		var ms sql.NullFloat64
		if err := tx.QueryRowContext(ctx, `SELECT extract(epoch FROM settle_until - now()) * 1000 FROM `+q+`.rings WHERE name = 'm'`).Scan(&ms); err != nil {
			t.Fatal(err)
		}
		return ms
	}
	if ms := settleFor(); ms.Valid {
		t.Errorf("the ring's first batch of joins holds its moves for %v ms, want not at all", ms.Float64)
	}
	// now() is the transaction's start: the batch after comes at once.
	if ms := settleFor(); !ms.Valid || ms.Float64 != 1000 {
		t.Errorf("a batch right after another holds the moves for %v, want 1000 ms (a heartbeat after it)", ms)
	}
	exec(`UPDATE leasering.rings SET joined_at = now() - interval '999 milliseconds' WHERE name = 'm'`)
	if ms := settleFor(); !ms.Valid || ms.Float64 != 1000 {
		t.Errorf("a batch 999 ms after another holds the moves for %v, want 1000 ms", ms)
	}
	exec(`UPDATE leasering.rings SET joined_at = now() - interval '1 second' WHERE name = 'm'`)
	if ms := settleFor(); ms.Valid {
		t.Errorf("a batch a heartbeat after the one before holds the moves for %v ms, want not at all", ms.Float64)
	}
	exec(`UPDATE leasering.rings SET joined_at = now() - interval '100 milliseconds', burst_began = now() - interval '59 seconds' WHERE name = 'm'`)
	if ms := settleFor(); !ms.Valid || ms.Float64 != 1000 {
		t.Errorf("a batch in a burst that began 59 heartbeats ago holds the moves for %v, want 1000 ms", ms)
	}
	exec(`UPDATE leasering.rings SET joined_at = now() - interval '100 milliseconds', burst_began = now() - interval '60 seconds' WHERE name = 'm'`)
	if ms := settleFor(); ms.Valid {
		t.Errorf("a batch in a burst that began 60 heartbeats ago holds the moves for %v ms, want not at all (the ring must balance)", ms.Float64)
	}
	exec(`UPDATE leasering.rings SET joined_at = now() - interval '2 seconds' WHERE name = 'm'`)
	settleFor() // a quiet heartbeat: the burst is over
	var began sql.NullTime
	if err := tx.QueryRowContext(ctx, `SELECT burst_began FROM `+q+`.rings WHERE name = 'm'`).Scan(&began); err != nil {
		t.Fatal(err)
	}
	if began.Valid {
		t.Errorf("after a quiet heartbeat the ring records a burst begun at %v, want none", began.Time)
	}
	exec(`UPDATE leasering.rings SET size = 4097 WHERE name = 'm'`)
	if ms := settleFor(); ms.Valid {
		t.Errorf("a batch right after another on a ring of 4,097 holds the moves for %v ms, want not at all (its rebalance would run in a heartbeat)", ms.Float64)
	}
	exec(`UPDATE leasering.rings SET size = 8 WHERE name = 'm'`)
	exec(`UPDATE leasering.members SET heartbeat_ms = NULL`)
	if ms := settleFor(); ms.Valid {
		t.Errorf("a batch on a ring whose heartbeats are unknown holds the moves for %v ms, want not at all", ms.Float64)
	}
}

// TestBurstOfJoinsMovesOnceSettled drives a burst of joins through the
// entry points: b joins right after another batch, so a, which owns the
// ring of 8 and knows it, is told to give nothing up; the first heartbeat
// of a member once the burst has settled (any member's: here b's)
// rebalances. Meanwhile a's heartbeats say when it settles (settles_ms), and
// b's, which owns nothing, do not. A join
// after a quiet heartbeat moves at once, as before version 20.
func TestBurstOfJoinsMovesOnceSettled(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	exec := func(stmt string) {
		t.Helper()
		if _, err := s.e.admin.Exec(stmt); err != nil {
			t.Fatal(err)
		}
	}
	schema := `"` + s.e.schema + `"`
	s.join("a")
	exec(`UPDATE ` + schema + `.members SET heartbeat_ms = 1000 WHERE node_id = 'a'`)
	exec(`UPDATE ` + schema + `.rings SET joined_at = now() WHERE name = 'r'`) // a batch just now
	s.join("b")
	if moving := s.handingOff("a", "b"); len(moving) != 0 {
		t.Fatalf("b joined in a burst and a was told to give it %v at once, want nothing until the burst settles", moving)
	}
	s.settleWake = true
	settles := func(id string) (ms int64, ok bool) {
		t.Helper()
		h, err := s.renew(nil, id, false, false, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range h.changes {
			if c.Status == "settling" {
				return c.SettlesMS, true
			}
		}
		return 0, false
	}
	if ms, ok := settles("a"); !ok || ms <= 0 || ms > 1000 {
		t.Errorf("a, which owns the ring, heard the burst settles in %d ms (%v), want within the heartbeat of 1 s", ms, ok)
	}
	if ms, ok := settles("b"); ok {
		t.Errorf("b, which owns nothing, heard the burst settles in %d ms, want no word of it", ms)
	}
	// b's view is current: the ring is looked at for the burst alone, and
	// no ring work is done, so a steady renewal still may skip the wait
	// for the disk (a heartbeat that worked on a ring commits durably).
	s.async = true
	if h, err := s.renew(nil, "b", false, false, 0); err != nil || h.durable || len(h.changes) != 0 {
		t.Errorf("b's steady heartbeat during the burst: durable %v, changes %+v (%v); want an async renewal and no answer", h.durable, h.changes, err)
	}
	s.async = false
	if moving := s.handingOff("a", "b"); len(moving) != 0 {
		t.Fatalf("heartbeats before the burst settled moved %v, want nothing", moving)
	}
	exec(`UPDATE ` + schema + `.rings SET settle_until = now() - interval '1 millisecond' WHERE name = 'r'`) // settled
	if _, err := s.renew(nil, "b", false, false, 0); err != nil {
		t.Fatal(err)
	}
	if moving := s.handingOff("a", "b"); len(moving) != 4 {
		t.Fatalf("after the burst settled, b's heartbeat had a hand %v to b, want half the ring of 8", moving)
	}
	var settle sql.NullTime
	if err := s.e.admin.QueryRow(`SELECT settle_until FROM ` + schema + `.rings WHERE name = 'r'`).Scan(&settle); err != nil {
		t.Fatal(err)
	}
	if settle.Valid {
		t.Errorf("settle_until is %v after the rebalance, want NULL", settle.Time)
	}

	exec(`UPDATE ` + schema + `.rings SET joined_at = now() - interval '10 seconds' WHERE name = 'r'`) // quiet since
	s.join("c")
	if moving := len(s.handingOff("a", "c")) + len(s.handingOff("b", "c")); moving == 0 {
		t.Errorf("c joined after a quiet heartbeat and nothing moves to it, want its share at once")
	}
}
