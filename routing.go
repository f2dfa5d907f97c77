package leasering

import (
	"cmp"
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
		n.setMembers(views)
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

// setMembers takes a new member list and lays out their vnodes.
func (t *routeTable) setMembers(ms []memberView) {
	t.views = ms
	type point struct {
		pos uint32
		m   int32
	}
	var pts []point
	t.members = make([]Member, len(ms))
	t.index = make(map[string]int32, len(ms))
	for i, m := range ms {
		t.members[i] = Member{ID: m.ID, Metadata: m.Metadata, VNodes: m.VNodes}
		t.index[m.ID] = int32(i)
		for _, pos := range m.Positions {
			pts = append(pts, point{pos, int32(i)})
		}
	}
	// Equal positions are ordered by member, as in SQL (members are in id order).
	slices.SortFunc(pts, func(a, b point) int {
		return cmp.Or(cmp.Compare(a.pos, b.pos), cmp.Compare(a.m, b.m))
	})
	t.points = make([]uint32, len(pts))
	t.pointOf = make([]int32, len(pts))
	for i, pt := range pts {
		t.points[i], t.pointOf[i] = pt.pos, pt.m
	}
}

// Members returns the ring's members in id order, as of the last whole view of
// the ring this node read (a member whose lease lapsed stays listed until
// it is evicted). Routing reads (Members, Owner, Successors) are hints for
// sending work to the right node: while the ring keeps changing, a node
// reads the routing every four heartbeats at most, every members/250 on a
// ring of more than 1,000 members (ownOnly: the views in between carry
// what it owns, not the routing), so they may be up to five heartbeats
// behind, or members/250 + 1; and they
// are kept while this node is cut off from the database, when Values is
// empty.
func (l *Lease) Members() []Member {
	return append([]Member(nil), l.route.Load().members...)
}

// Owner returns the member that owns key's partition, and false when the
// partition has no live owner or the ring is not known yet.
func (l *Lease) Owner(key string) (Member, bool) {
	return l.OwnerOf(PartitionOf(key, l.size))
}

// OwnerOf returns the member that owns partition p, and false when it has
// no live owner or the ring is not known yet.
func (l *Lease) OwnerOf(p int) (Member, bool) {
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
