package leasering

import (
	"slices"
	"sort"
)

// Member is a live member of a ring, as the last heartbeat saw it.
type Member struct {
	ID       string // node id
	Metadata string // WithMetadata of that node, such as its address
	VNodes   int    // its points on the ring, and its weight
}

// routeTable is who owns what on a ring, for routing. It is immutable, like
// snapshot, and read with one atomic load.
type routeTable struct {
	members []Member
	views   []memberView     // members' details as the database sent them, for deltas
	owners  []int32          // per partition: index into members, -1 for none
	points  []uint32         // every vnode on the circle, sorted
	pointOf []int32          // pointOf[i]: index into members of points[i]
	index   map[string]int32 // member id -> index into members, for owners sent by id
}

var emptyRoute = &routeTable{}

// update returns the table after a view's routing changes: a new member
// list if it came (owners are carried over by node id), then the owners of
// the partitions that changed. A view that does not fit the table (which a
// correct database never sends) empties the routing rather than make it
// wrong; the next full view restores it.
func (t *routeTable) update(size int, v ringChange) *routeTable {
	n := &routeTable{members: t.members, views: t.views, owners: t.owners, points: t.points, pointOf: t.pointOf, index: t.index}
	if len(n.owners) != size {
		n.owners = make([]int32, size)
		for p := range n.owners {
			n.owners[p] = -1
		}
	} else {
		n.owners = append([]int32(nil), n.owners...)
	}
	if v.MemberIDs != nil {
		views, ok := t.merge(v.MemberIDs, v.Members)
		if !ok {
			return emptyRoute
		}
		n.setMembers(views, t)
		// Each old member's new index (-1: gone), looked up once per
		// member rather than once per partition: a view of a ring of
		// 16,384 with 1,000 members spent most of a client's time in
		// these lookups (TestScale's profile).
		moved := make([]int32, len(t.members))
		for i, m := range t.members {
			if j, ok := n.index[m.ID]; ok {
				moved[i] = j
			} else {
				moved[i] = -1
			}
		}
		for p, o := range n.owners {
			switch {
			case o < 0:
			case o < int32(len(moved)):
				n.owners[p] = moved[o]
			default:
				n.owners[p] = -1
			}
		}
	}
	for i, p := range v.Changed {
		if p < 0 || p >= size {
			return emptyRoute
		}
		if v.OwnerIDs != nil {
			o, ok := n.index[v.OwnerIDs[i]]
			if !ok {
				o = -1 // none, or not a member (evicted, its partitions not yet given on)
			}
			n.owners[p] = o
			continue
		}
		o := v.Owners[i]
		if o < -1 || o >= len(n.members) {
			return emptyRoute
		}
		n.owners[p] = int32(o)
	}
	return n
}

// routingFits says whether a view's routing is well formed: an owner for
// each partition that changed, as indexes or as ids, not both.
func (v ringChange) routingFits() bool {
	if v.OwnerIDs != nil {
		return v.Owners == nil && len(v.OwnerIDs) == len(v.Changed)
	}
	return len(v.Owners) == len(v.Changed)
}

// merge builds the member list ids from the details that came (members
// that joined or changed) and the ones the table has. A member known from
// neither means the view does not fit the table.
func (t *routeTable) merge(ids []string, changed []memberView) ([]memberView, bool) {
	known := make(map[string]memberView, len(t.views)+len(changed))
	for _, m := range t.views {
		known[m.ID] = m
	}
	for _, m := range changed {
		known[m.ID] = m
	}
	out := make([]memberView, len(ids))
	for i, id := range ids {
		m, ok := known[id]
		if !ok {
			return nil, false
		}
		out[i] = m
	}
	return out, true
}

// setMembers takes a new member list and lays out their vnodes. The
// points of members whose positions did not change since prev (nil: none)
// keep their order: their indexes move, but both lists are in id order,
// so the order by position, then member, holds. Only the points of new or
// changed members are sorted, and merged in. Sorting every point again
// for each new member list took the largest share of the clients' time in
// TestScale's roll-out of 2,000 nodes (16,000 points, for each view whose
// member list changed; BenchmarkSetMembers).
func (t *routeTable) setMembers(ms []memberView, prev *routeTable) {
	t.views = ms
	t.members = make([]Member, len(ms))
	t.index = make(map[string]int32, len(ms))
	for i, m := range ms {
		t.members[i] = Member{ID: m.ID, Metadata: m.Metadata, VNodes: m.VNodes}
		t.index[m.ID] = int32(i)
	}
	kept, same := t.keptPoints(prev)
	var added []uint64
	for i, m := range ms {
		if same == nil || !same[i] {
			for _, pos := range m.Positions {
				added = append(added, pointKey(pos, int32(i)))
			}
		}
	}
	slices.Sort(added)
	t.points = make([]uint32, 0, len(kept)+len(added))
	t.pointOf = make([]int32, 0, len(kept)+len(added))
	for len(kept) > 0 || len(added) > 0 {
		var k uint64
		if len(added) == 0 || len(kept) > 0 && kept[0] <= added[0] {
			k, kept = kept[0], kept[1:]
		} else {
			k, added = added[0], added[1:]
		}
		t.points = append(t.points, uint32(k>>32))
		t.pointOf = append(t.pointOf, int32(uint32(k)))
	}
}

// keptPoints gives prev's points of the members whose positions t keeps,
// as sorted keys under their new indexes, and which of t's members those
// are. Nil if prev has none, or if its members' order differs from t's
// (a server that sorts ids otherwise): then every point is sorted again.
func (t *routeTable) keptPoints(prev *routeTable) (kept []uint64, same []bool) {
	if prev == nil || len(prev.points) == 0 || len(prev.views) != len(prev.members) {
		return nil, nil
	}
	same = make([]bool, len(t.views))
	remap := make([]int32, len(prev.views))
	last := int32(-1)
	for i, m := range prev.views {
		remap[i] = -1
		j, ok := t.index[m.ID]
		if !ok || !slices.Equal(t.views[j].Positions, m.Positions) {
			continue
		}
		if j <= last {
			return nil, nil
		}
		remap[i], same[j], last = j, true, j
	}
	kept = make([]uint64, 0, len(prev.points))
	for k, pos := range prev.points {
		if j := remap[prev.pointOf[k]]; j >= 0 {
			kept = append(kept, pointKey(pos, j))
		}
	}
	return kept, same
}

// pointKey orders vnodes by position, then member: equal positions are
// ordered by member, as in SQL (members are in id order).
func pointKey(pos uint32, member int32) uint64 { return uint64(pos)<<32 | uint64(uint32(member)) }

// Members returns the ring's members in id order, as of the last whole view of
// the ring this node read (a member whose lease lapsed stays listed until
// it is evicted). Routing reads (Members, Owner, Successors) are hints for
// sending work to the right node: while the ring keeps changing, a node
// reads the routing every four heartbeats at most, every members/250 on a
// ring of more than 1,000 members (ownOnly: the views in between carry
// what it owns, not the routing), so they may be up to five heartbeats
// behind, or members/250 + 1; and they
// are kept while this node is cut off from the database, when Values is
// empty. Until the first routing read of a lease the routing stays as
// its first view gave it; that read may be older, and wakes the client
// (routingWanted).
func (l *Lease) Members() []Member {
	l.routingWanted()
	return append([]Member(nil), l.route.Load().members...)
}

// routingWanted records a read of the routing. A lease whose routing is
// never read never asks for its changes: most users only call Values, and
// in a roll-out of 2,000 nodes the routing's views were the database's
// largest cost (BENCHMARKS.md, Scale). The first read wakes the client, so
// that its next heartbeat goes at once (the schedule's wake rule) and
// brings the routing's changes since the first view; from then on they
// come as described at Members. One atomic load per read after the first.
func (l *Lease) routingWanted() {
	if !l.routingRead.Load() && l.routingRead.CompareAndSwap(false, true) && l.c != nil {
		l.c.Wake()
	}
}

// Owner returns the member that owns key's partition, and false when the
// partition has no live owner or the ring is not known yet.
func (l *Lease) Owner(key string) (Member, bool) {
	return l.OwnerOf(PartitionOf(key, l.size))
}

// OwnerOf returns the member that owns partition p, and false when it has
// no live owner or the ring is not known yet.
func (l *Lease) OwnerOf(p int) (Member, bool) {
	l.routingWanted()
	t := l.route.Load()
	if p < 0 || p >= len(t.owners) || t.owners[p] < 0 {
		return Member{}, false
	}
	return t.members[t.owners[p]], true
}

// Successors returns up to n distinct members for key: its owner first,
// then the next members clockwise from the key's point on the vnode ring.
// Use it as a replica list, or as the order in which to fail over.
func (l *Lease) Successors(key string, n int) []Member {
	l.routingWanted()
	t := l.route.Load()
	if n <= 0 || len(t.members) == 0 {
		return nil
	}
	n = min(n, len(t.members))
	out := make([]Member, 0, n)
	seen := make([]bool, len(t.members))
	if p := PartitionOf(key, l.size); p >= 0 && p < len(t.owners) && t.owners[p] >= 0 {
		seen[t.owners[p]] = true
		out = append(out, t.members[t.owners[p]])
	}
	pos := keyPosition(key)
	start := sort.Search(len(t.points), func(i int) bool { return t.points[i] >= pos })
	for i := 0; i < len(t.points) && len(out) < n; i++ {
		m := t.pointOf[(start+i)%len(t.points)]
		if !seen[m] {
			seen[m] = true
			out = append(out, t.members[m])
		}
	}
	return out
}
