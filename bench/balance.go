package main

import (
	"context"
	"crypto/md5"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"strconv"

	"github.com/lib/pq"
)

// vnodePositions is the SQL function vnode_positions in Go: vnode i of a
// node sits at the first 32 bits of md5(ring \n node \n i). The program
// checks that both agree, so every strategy below uses the same points.
func vnodePositions(ring, node string, vnodes int) []uint32 {
	out := make([]uint32, vnodes)
	for i := range out {
		sum := md5.Sum([]byte(ring + "\n" + node + "\n" + strconv.Itoa(i)))
		out[i] = binary.BigEndian.Uint32(sum[:4])
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// vnode is one point on the circle, owned by node index n.
type vnode struct {
	pos uint32
	n   int
}

func circle(ring string, nodes []string, vnodes int) []vnode {
	var vs []vnode
	for i, id := range nodes {
		for _, p := range vnodePositions(ring, id, vnodes) {
			vs = append(vs, vnode{p, i})
		}
	}
	sort.Slice(vs, func(i, j int) bool {
		if vs[i].pos != vs[j].pos {
			return vs[i].pos < vs[j].pos
		}
		return vs[i].n < vs[j].n
	})
	return vs
}

// partitionStart is where partition p of q begins on the circle.
func partitionStart(p, q int) uint32 { return uint32(uint64(p) << 32 / uint64(q)) }

// firstAtOrAfter is the index of the first vnode at or after pos, clockwise.
func firstAtOrAfter(vs []vnode, pos uint32) int {
	i := sort.Search(len(vs), func(i int) bool { return vs[i].pos >= pos })
	return i % len(vs)
}

// plainRing assigns each partition to the first vnode at or after its start:
// classic consistent hashing with a fixed number of vnodes per node.
func plainRing(vs []vnode, nodes []string, q int) []string {
	out := make([]string, q)
	for p := range out {
		out[p] = nodes[vs[firstAtOrAfter(vs, partitionStart(p, q))].n]
	}
	return out
}

// boundedLoad is consistent hashing with bounded loads (Mirrokni, Thorup,
// Zadimoghaddam): every node takes at most ceil(c * q / n) partitions; a
// partition whose first vnode's node is full walks clockwise to the next
// one with room. Partitions are placed in order.
func boundedLoad(vs []vnode, nodes []string, q int, c float64) []string {
	capacity := int(c*float64(q)/float64(len(nodes)) + 0.999999999)
	load := make([]int, len(nodes))
	out := make([]string, q)
	for p := range out {
		i := firstAtOrAfter(vs, partitionStart(p, q))
		for load[vs[i].n] >= capacity {
			i = (i + 1) % len(vs)
		}
		load[vs[i].n]++
		out[p] = nodes[vs[i].n]
	}
	return out
}

// maxOverFair is the largest node's share over the fair share q/n.
func maxOverFair(a []string, n int) float64 {
	count := map[string]int{}
	most := 0
	for _, o := range a {
		count[o]++
		most = max(most, count[o])
	}
	return float64(most) * float64(n) / float64(len(a))
}

// withinFloorCeil reports whether every node holds floor or ceil of q/n.
func withinFloorCeil(a []string, nodes []string) bool {
	count := map[string]int{}
	for _, o := range a {
		count[o]++
	}
	lo := len(a) / len(nodes)
	hi := (len(a) + len(nodes) - 1) / len(nodes)
	for _, id := range nodes {
		if count[id] < lo || count[id] > hi {
			return false
		}
	}
	return len(count) == len(nodes) || lo == 0
}

// moved counts partitions whose owner differs between two assignments.
func moved(before, after []string) int {
	if before == nil {
		return 0
	}
	n := 0
	for p := range after {
		if before[p] != after[p] {
			n++
		}
	}
	return n
}

// minimumMoves is the fewest partitions that must move to go from before
// (over the old nodes) to a floor/ceil balance over n nodes: each node
// keeps at most its new quota, and the ceil quotas go to the nodes holding
// most.
func minimumMoves(before []string, nodes []string) int {
	q, n := len(before), len(nodes)
	count := map[string]int{}
	for _, o := range before {
		count[o]++
	}
	held := make([]int, 0, n)
	for _, id := range nodes {
		held = append(held, count[id])
	}
	sort.Sort(sort.Reverse(sort.IntSlice(held)))
	kept := 0
	for i, h := range held {
		quota := q / n
		if i < q%n {
			quota++
		}
		kept += min(h, quota)
	}
	return q - kept
}

// necessaryMoves is the fewest partitions that must move to turn the
// counts of before into those of after: what the nodes that grew gained.
// Anything moved beyond that went between nodes for nothing.
func necessaryMoves(before, after []string) int {
	count := map[string]int{}
	for _, o := range before {
		count[o]--
	}
	for _, o := range after {
		count[o]++
	}
	n := 0
	for _, d := range count {
		n += max(d, 0)
	}
	return n
}

// ours grows ring "r" one node at a time through renew_and_read, confirms
// every handoff as the nodes would, and returns the assignment after each
// join.
func ours(ctx context.Context, s *scratch, nodes []string, q int) ([][]string, error) {
	var out [][]string
	for _, id := range nodes {
		if err := s.renew(ctx, s.db, id, ringArg("r", q, 0, nil), true, false); err != nil { // a new node has seen no version
			return nil, err
		}
		// Joined in a statement of its own, as a client does (schema
		// version 11); the heartbeat only answers "join".
		if _, err := s.db.ExecContext(ctx, `SELECT `+s.quoted+`.join_rings($1, 'inc', $2::jsonb, 60000)`, id, ringArg("r", q, 0, nil)); err != nil {
			return nil, err
		}
		if err := confirmHandoffs(ctx, s, q); err != nil {
			return nil, err
		}
		a, err := assignment(ctx, s, q)
		if err != nil {
			return nil, err
		}
		if n := len(out) + 1; !withinFloorCeil(a, nodes[:n]) {
			return nil, fmt.Errorf("after %s joined, the ring is not balanced over %d nodes", id, n)
		}
		out = append(out, a)
	}
	return out, nil
}

// confirmHandoffs has every owner with partitions to give up report them
// released, as its next heartbeat after the drain would.
func confirmHandoffs(ctx context.Context, s *scratch, q int) error {
	rows, err := s.db.QueryContext(ctx, `SELECT owner, array_agg(partition ORDER BY partition) FROM `+s.quoted+`.partitions
		WHERE ring = 'r' AND next_owner IS NOT NULL GROUP BY owner`)
	if err != nil {
		return err
	}
	type release struct {
		owner string
		parts []int64
	}
	var rs []release
	for rows.Next() {
		var r release
		if err := rows.Scan(&r.owner, pq.Array(&r.parts)); err != nil {
			rows.Close()
			return err
		}
		rs = append(rs, r)
	}
	rows.Close()
	for _, r := range rs {
		v, err := ringVersion(ctx, s)
		if err != nil {
			return err
		}
		parts := make([]int, len(r.parts))
		for i, p := range r.parts {
			parts[i] = int(p)
		}
		if err := s.renew(ctx, s.db, r.owner, ringArg("r", q, v, parts), false, false); err != nil {
			return err
		}
	}
	var pending int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM `+s.quoted+`.partitions WHERE ring = 'r' AND (next_owner IS NOT NULL OR owner IS NULL)`).Scan(&pending); err != nil {
		return err
	}
	if pending > 0 {
		return fmt.Errorf("%d partitions still pending after every release", pending)
	}
	return nil
}

func assignment(ctx context.Context, s *scratch, q int) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT partition, owner FROM `+s.quoted+`.partitions WHERE ring = 'r' ORDER BY partition`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make([]string, q)
	for rows.Next() {
		var p int
		var o sql.NullString
		if err := rows.Scan(&p, &o); err != nil {
			return nil, err
		}
		out[p] = o.String
	}
	return out, rows.Err()
}

// checkPositions compares the SQL vnode positions with vnodePositions.
func checkPositions(ctx context.Context, s *scratch, nodes []string) error {
	for _, id := range nodes {
		var got []int64
		if err := s.db.QueryRowContext(ctx, `SELECT positions FROM `+s.quoted+`.members WHERE ring = 'r' AND node_id = $1`, id).Scan(pq.Array(&got)); err != nil {
			return fmt.Errorf("vnode positions of %s: %w", id, err)
		}
		want := vnodePositions("r", id, 8)
		for i := range want {
			if i >= len(got) || uint32(got[i]) != want[i] {
				return fmt.Errorf("vnode positions of %s differ between SQL %v and Go %v", id, got, want)
			}
		}
	}
	return nil
}

func balance(ctx context.Context, w io.Writer, db *sql.DB, q, maxNodes int) error {
	nodes := make([]string, maxNodes)
	for i := range nodes {
		nodes[i] = fmt.Sprintf("node-%02d", i+1)
	}
	s, err := newScratch(ctx, db)
	if err != nil {
		return err
	}
	defer s.drop()
	ourRuns, err := ours(ctx, s, nodes, q)
	if err != nil {
		return err
	}
	if err := checkPositions(ctx, s, nodes); err != nil {
		return err
	}
	fmt.Fprintf(w, "### Balance and movement, Q = %d, nodes joining one by one (8 vnodes each)\n\n", q)
	fmt.Fprintln(w, "Max share / fair share (1.00 is perfect; floor/ceil of Q/N is at most ceil(Q/N)·N/Q) and partitions moved by the join (minimum: what the newcomer must receive).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| N | leasering | moved | vnode ring | moved | bounded load 1.25 | moved | minimum moved |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|")
	var prevOurs, prevPlain, prevBounded []string
	worst := [3]float64{}
	extra := [3]int{}
	floorCeil := true
	for n := 1; n <= maxNodes; n++ {
		members := nodes[:n]
		vs := circle("r", members, 8)
		plain := plainRing(vs, members, q)
		bounded := boundedLoad(vs, members, q, 1.25)
		our := ourRuns[n-1]
		floorCeil = floorCeil && withinFloorCeil(our, members)
		minMoved := 0
		if prevOurs != nil {
			minMoved = minimumMoves(prevOurs, members)
		}
		row := [3][]string{our, plain, bounded}
		prev := [3][]string{prevOurs, prevPlain, prevBounded}
		var cells [3]string
		for i := range row {
			bal := maxOverFair(row[i], n)
			mv := moved(prev[i], row[i])
			worst[i] = max(worst[i], bal)
			if prev[i] != nil {
				extra[i] += mv - necessaryMoves(prev[i], row[i])
			}
			cells[i] = fmt.Sprintf("%.3f | %d", bal, mv)
		}
		if n <= 12 || n%5 == 0 {
			fmt.Fprintf(w, "| %d | %s | %s | %s | %d |\n", n, cells[0], cells[1], cells[2], minMoved)
		}
		prevOurs, prevPlain, prevBounded = our, plain, bounded
	}
	fmt.Fprintf(w, "| **worst, 1..%d; needless moves** | **%.3f** | **+%d** | **%.3f** | **+%d** | **%.3f** | **+%d** | |\n",
		maxNodes, worst[0], extra[0], worst[1], extra[1], worst[2], extra[2])
	fmt.Fprintln(w)
	fmt.Fprintln(w, "The last row gives, for each strategy, the worst max/fair ratio seen and, summed over all joins, the partitions moved beyond what its own new counts required (partitions passed between old nodes for nothing).")
	fmt.Fprintf(w, "leasering: every node held floor or ceil of Q/N at every N: %v.\n", floorCeil)
	fmt.Fprintln(w)
	return nil
}
