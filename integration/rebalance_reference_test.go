package integration

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"
)

// TestRebalanceMatchesItsReference: rebalance looks only at the partitions
// whose row can change (an owner that is not a live member, a pending
// owner, or one it moves), where the version before it rewrote every
// partition of the ring (given version 17's order of candidates:
// moveOnceOrder). On random rings (sizes, members, weights, lapsed
// nodes, owners that are gone or not members, pending owners, releases,
// views told or not, a grace or not) both must leave the same rows and
// return the same count. Each case runs in a transaction that is rolled
// back; a failure names its seed.
func TestRebalanceMatchesItsReference(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	// The reference: rebalance as schema version 10 shipped it (and 11 kept
	// it, to 692a125), installed beside the schema's own.
	release, err := os.ReadFile("testdata/schema_and_functions_v10_a0b7cc7.sql")
	if err != nil {
		t.Fatal(err)
	}
	const head = "CREATE OR REPLACE FUNCTION leasering.rebalance("
	begin := strings.Index(string(release), head)
	end := strings.Index(string(release[max(begin, 0):]), "\n$$;\n")
	if begin < 0 || end < 0 {
		t.Fatal("no rebalance in testdata/schema_and_functions_v10_a0b7cc7.sql")
	}
	ref := "CREATE OR REPLACE FUNCTION leasering.rebalance_reference(" + string(release[begin+len(head):begin+end]) + "\n$$;\n"
	// Schema version 17 takes, of a member's excess, the partitions still
	// on their way to it first: the reference is given that order too.
	for _, r := range moveOnceOrder {
		if strings.Count(ref, r.old) != 1 {
			t.Fatalf("the reference's rebalance has no single %q to give version 17's order", r.old)
		}
		ref = strings.Replace(ref, r.old, r.new, 1)
	}
	q := `"` + s.e.schema + `"`
	refSQL := strings.ReplaceAll(strings.ReplaceAll(ref,
		"search_path = leasering, pg_temp", "search_path = "+q+", pg_temp"), "leasering.", q+".")

	ctx := context.Background()
	conn, err := s.e.admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	sizes := []int{1, 2, 7, 64, 300, 1024}
	compared := 0
	for range 100 {
		size := sizes[rng.IntN(len(sizes))]
		nodes := rng.IntN(9)
		if rng.IntN(6) == 0 {
			nodes = 10 + rng.IntN(60)
		}
		c := rebalanceCase{seed: rng.Float64()*2 - 1, size: size, nodes: nodes,
			dead: []float64{0, 0, 0.2, 0.6}[rng.IntN(4)], free: []float64{0, 0.1, 1}[rng.IntN(3)],
			pending: []float64{0, 0.05, 0.4}[rng.IntN(3)], grace: rng.IntN(6) == 0}
		got, want := c.run(t, ctx, conn, q, refSQL)
		if got != want {
			t.Fatalf("case %+v: rebalance and its reference differ:\n%s", c, firstDifference(got, want))
		}
		compared += strings.Count(want, "\n") - 1
	}
	t.Logf("100 cases agree (%d partition rows compared)", compared)
}

// moveOnceOrder gives version 10's rebalance the candidate order of version
// 17: free partitions first, then those whose holder is their pending owner,
// then by distance.
var moveOnceOrder = []struct{ old, new string }{
	{"    owner_live boolean[];", "    owner_live boolean[];\n    pending    boolean[];"},
	{"           array_agg(ow.ord IS NOT NULL ORDER BY p.partition)\n      INTO holder, owner_live",
		"           array_agg(ow.ord IS NOT NULL ORDER BY p.partition),\n           array_agg(nx.ord IS NOT NULL ORDER BY p.partition)\n      INTO holder, owner_live, pending"},
	{"(x.ord - 1)::integer AS part, x.h,", "(x.ord - 1)::integer AS part, x.h, x.pend,"},
	{"FROM unnest(holder) WITH ORDINALITY AS x (h, ord)", "FROM unnest(holder, pending) WITH ORDINALITY AS x (h, pend, ord)"},
	{"ORDER BY cand.h = 0 DESC,", "ORDER BY cand.h = 0 DESC, cand.pend DESC,"},
}

// rebalanceCase is one random ring: size partitions, nodes nodes (a share
// dead lapsed), owners drawn from one more id than there are nodes (a node
// that is gone), a share free and a share with a pending owner.
type rebalanceCase struct {
	seed                float64
	size, nodes         int
	dead, free, pending float64
	grace               bool
}

// run sets the case up in a transaction, rolled back at the end, and
// returns the ring's rows and the count that rebalance leaves, and those
// its reference leaves.
func (c rebalanceCase) run(t *testing.T, ctx context.Context, conn *sql.Conn, q, refSQL string) (got, want string) {
	t.Helper()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	exec := execInSchema(t, ctx, tx, q, fmt.Sprintf("case %+v", c))
	exec(refSQL)
	exec(`SELECT setseed($1)`, c.seed)
	exec(`INSERT INTO leasering.rings (name, size, version, members_changed, told_through, told_at)
		SELECT 'd', $1, 50, 40, (random() * 50)::int,
		       CASE WHEN random() < 0.5 THEN (SELECT noticed_at FROM leasering.server_identity) END`, c.size)
	exec(`INSERT INTO leasering.nodes (node_id, incarnation, expires_at, hold_until, ttl_ms)
		SELECT 'n' || i, 'inc', now() + CASE WHEN random() < $2 THEN interval '-1 second' ELSE interval '1 hour' END,
		       '-infinity', 1000
		  FROM generate_series(1, $1) AS i`, c.nodes, c.dead)
	exec(`INSERT INTO leasering.members (ring, node_id, vnodes, positions, seen)
		SELECT 'd', node_id, v, leasering.vnode_positions('d', node_id, v), (random() * 50)::int
		  FROM (SELECT node_id, 1 + (random() * 15)::int AS v FROM leasering.nodes WHERE random() < 0.85) AS m`)
	exec(`INSERT INTO leasering.partitions (ring, partition, owner, next_owner, epoch, changed, granted, released, release_due)
		SELECT 'd', p, o, nx, e, greatest(g, ch), g, nx IS NOT NULL AND random() < 0.3,
		       CASE WHEN nx IS NOT NULL AND random() < 0.5 THEN now() END
		  FROM (SELECT p, o, CASE WHEN o IS NOT NULL AND random() < $4 THEN nullif('n' || (1 + (random() * $2)::int), o) END AS nx,
		               (random() * 10)::int AS e, (random() * 50)::int AS g, (random() * 50)::int AS ch
		          FROM (SELECT p, CASE WHEN random() >= $3 THEN 'n' || (1 + (random() * $2)::int) END AS o
		                  FROM generate_series(0, $1 - 1) AS p) AS x) AS y`, c.size, c.nodes, c.free, c.pending)
	if c.grace {
		exec(`UPDATE leasering.server_identity SET grace_until = now() + interval '1 hour'`)
	}
	result := func(fn string) string {
		t.Helper()
		var n int
		var rows, ring string
		if err := tx.QueryRowContext(ctx, `SELECT `+q+`.`+fn+`('d')`).Scan(&n); err != nil {
			t.Fatalf("case %+v: %s: %v", c, fn, err)
		}
		if err := tx.QueryRowContext(ctx, `SELECT coalesce(string_agg(format('%s owner %s next %s epoch %s changed %s granted %s released %s due %s',
				partition, owner, next_owner, epoch, changed, granted, released, release_due), E'\n' ORDER BY partition), ''),
				(SELECT format('version %s told %s at %s', version, told_through, told_at) FROM `+q+`.rings WHERE name = 'd')
			FROM `+q+`.partitions WHERE ring = 'd'`).Scan(&rows, &ring); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("returned %d, ring %s\n%s\n", n, ring, rows)
	}
	exec(`SAVEPOINT before`)
	want = result("rebalance_reference")
	exec(`ROLLBACK TO SAVEPOINT before`)
	got = result("rebalance")
	return got, want
}

// execInSchema returns a function that runs a statement in tx, with
// "leasering." written as schema q, and fails the test (naming what) if it
// fails.
func execInSchema(t *testing.T, ctx context.Context, tx *sql.Tx, q, what string) func(stmt string, args ...any) {
	return func(stmt string, args ...any) {
		t.Helper()
		if _, err := tx.ExecContext(ctx, strings.ReplaceAll(stmt, "leasering.", q+"."), args...); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, stmt)
		}
	}
}

// setUpTx begins a transaction on the admin pool, rolled back when the
// test ends, for rows set up by hand; it returns the schema's quoted name
// and execInSchema's exec on the transaction.
func (s *sqlNodes) setUpTx(ctx context.Context) (tx *sql.Tx, q string, exec func(stmt string, args ...any)) {
	s.t.Helper()
	tx, err := s.e.admin.BeginTx(ctx, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { _ = tx.Rollback() })
	q = `"` + s.e.schema + `"`
	return tx, q, execInSchema(s.t, ctx, tx, q, "setting the ring up")
}

// firstDifference shows the first line where got and want differ.
func firstDifference(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range min(len(g), len(w)) {
		if g[i] != w[i] {
			return fmt.Sprintf("line %d:\n  rebalance: %s\n  reference: %s\n(first line: %s / %s)", i, g[i], w[i], g[0], w[0])
		}
	}
	return fmt.Sprintf("rebalance gave %d lines, its reference %d", len(g), len(w))
}
