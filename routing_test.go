package leasering

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"
)

func ids(ms []Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

// threeMembers are a, b and c as views send them.
func threeMembers() (a, b, c memberView) {
	return memberView{ID: "a", Metadata: "10.0.0.1", VNodes: 8, Positions: []uint32{100}},
		memberView{ID: "b", Metadata: "10.0.0.2", VNodes: 8, Positions: []uint32{200}},
		memberView{ID: "c", Metadata: "10.0.0.3", VNodes: 4, Positions: []uint32{300}}
}

// TestMemberDeltas: a view lists every member's id but details only those
// that joined or changed; the node keeps the others' details, drops the
// members no longer listed, and asks for the whole view when a listed
// member is unknown to it.
func TestMemberDeltas(t *testing.T) {
	l := &Lease{size: 4}
	l.route.Store(emptyRoute)
	a, b, c := threeMembers()

	l.applyView(ringChange{Version: 1, MemberIDs: []string{"a", "b"}, Members: []memberView{a, b},
		Changed: []int{0, 1, 2, 3}, Owners: []int{0, 0, 1, 1}}, time.Time{})
	if got := ids(l.Members()); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("members %v, want [a b]", got)
	}

	// c joins: only its details come; b's owner index shifts to 1 -> still b.
	l.applyView(ringChange{Version: 2, MemberIDs: []string{"a", "b", "c"}, Members: []memberView{c},
		Changed: []int{3}, Owners: []int{2}}, time.Time{})
	if got := ids(l.Members()); !reflect.DeepEqual(got, []string{"a", "b", "c"}) {
		t.Fatalf("members %v, want [a b c]", got)
	}
	if m, ok := l.OwnerOf(1); !ok || m.ID != "a" || m.Metadata != "10.0.0.1" {
		t.Errorf("OwnerOf(1) = %+v, %v; want a with its metadata kept", m, ok)
	}
	if m, ok := l.OwnerOf(3); !ok || m.ID != "c" || m.VNodes != 4 {
		t.Errorf("OwnerOf(3) = %+v, %v; want c", m, ok)
	}

	// a leaves: the ids no longer list it; its partition 0 was reassigned,
	// and partition 1, not listed, has no owner (carried over by id, a is
	// gone).
	l.applyView(ringChange{Version: 3, MemberIDs: []string{"b", "c"},
		Changed: []int{0}, Owners: []int{0}}, time.Time{})
	if m, ok := l.OwnerOf(1); ok {
		t.Errorf("OwnerOf(1) = %+v; want none: its owner a left and no new one came", m)
	}
	if m, ok := l.OwnerOf(3); !ok || m.ID != "c" {
		t.Errorf("OwnerOf(3) = %+v, %v; want c (its index moved from 2 to 1)", m, ok)
	}
	if got := ids(l.Members()); !reflect.DeepEqual(got, []string{"b", "c"}) {
		t.Fatalf("members %v, want [b c]", got)
	}
	if m, ok := l.OwnerOf(2); !ok || m.ID != "b" {
		t.Errorf("OwnerOf(2) = %+v, %v; want b (carried over by id)", m, ok)
	}
	if l.rejoin.Load() {
		t.Fatal("asked for the whole view though every member was known")
	}

	// A listed member the node never heard of: routing is dropped, and the
	// next heartbeat asks for the whole view.
	l.applyView(ringChange{Version: 4, MemberIDs: []string{"b", "c", "d"}}, time.Time{})
	if got := l.Members(); len(got) != 0 {
		t.Errorf("members %v after a view that does not fit, want none", ids(got))
	}
	if !l.rejoin.Load() {
		t.Error("did not ask for the whole view after a member it never heard of")
	}
}

// TestOwnersByID: a view whose request said owner_ids (schema version 18)
// names the owners that changed by node id; they land as the same routes
// as indexes would. An id that is no member's, or none (""), leaves the
// partition without an owner, as the index -1 does; a view with both forms
// or with fewer owners than changes does not fit.
func TestOwnersByID(t *testing.T) {
	l := &Lease{size: 4}
	l.route.Store(emptyRoute)
	a, b, c := threeMembers()

	l.applyView(ringChange{Version: 1, MemberIDs: []string{"a", "b"}, Members: []memberView{a, b},
		Changed: []int{0, 1, 2, 3}, OwnerIDs: []string{"a", "a", "b", "b"}}, time.Time{})
	want := map[int]string{0: "a", 1: "a", 2: "b", 3: "b"}
	for p, id := range want {
		if m, ok := l.OwnerOf(p); !ok || m.ID != id {
			t.Errorf("OwnerOf(%d) = %+v, %v; want %s", p, m, ok, id)
		}
	}

	// c joins and takes 3; 1's owner is gone from the ring (evicted, not
	// yet given on), 2 has none.
	l.applyView(ringChange{Version: 2, MemberIDs: []string{"a", "b", "c"}, Members: []memberView{c},
		Changed: []int{1, 2, 3}, OwnerIDs: []string{"x", "", "c"}}, time.Time{})
	if m, ok := l.OwnerOf(3); !ok || m.ID != "c" || m.VNodes != 4 {
		t.Errorf("OwnerOf(3) = %+v, %v; want c", m, ok)
	}
	if m, ok := l.OwnerOf(0); !ok || m.ID != "a" {
		t.Errorf("OwnerOf(0) = %+v, %v; want a, unchanged", m, ok)
	}
	for _, p := range []int{1, 2} {
		if m, ok := l.OwnerOf(p); ok {
			t.Errorf("OwnerOf(%d) = %+v; want none", p, m)
		}
	}
	if l.rejoin.Load() {
		t.Fatal("asked for the whole view though every member was known")
	}

	for _, v := range []ringChange{
		{Changed: []int{0}, OwnerIDs: []string{"a"}},
		{Changed: []int{0}, Owners: []int{0}},
		{},
	} {
		if !v.routingFits() {
			t.Errorf("%+v does not fit; want it to", v)
		}
	}
	for _, v := range []ringChange{
		{Changed: []int{0, 1}, OwnerIDs: []string{"a"}},
		{Changed: []int{0}, Owners: []int{0}, OwnerIDs: []string{"a"}},
		{Changed: []int{0}},
	} {
		if v.routingFits() {
			t.Errorf("%+v fits; want it not to", v)
		}
	}
}

// TestSetMembersKeepsPointsInOrder: a member list laid out from the last
// one (only new or moved members' points sorted, and merged in) is the
// same as one laid out from nothing, over random joins, leaves and moves,
// with positions shared between members.
func TestSetMembersKeepsPointsInOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	view := func(id int) memberView {
		pos := make([]uint32, 1+rng.IntN(4))
		for i := range pos {
			pos[i] = uint32(rng.IntN(64)) // few positions: ties between members
		}
		return memberView{ID: fmt.Sprintf("m%03d", id), VNodes: len(pos), Positions: pos}
	}
	live := map[int]memberView{}
	prev := &routeTable{}
	for round := range 300 {
		for range 1 + rng.IntN(4) {
			id := rng.IntN(60)
			switch _, ok := live[id]; {
			case ok && rng.IntN(3) == 0:
				delete(live, id)
			default:
				live[id] = view(id) // joins, or moves its points
			}
		}
		ids := slices.Sorted(maps.Keys(live))
		ms := make([]memberView, len(ids))
		for i, id := range ids {
			ms[i] = live[id]
		}
		got, want := &routeTable{}, &routeTable{}
		got.setMembers(ms, prev)
		want.setMembers(ms, nil)
		if !slices.Equal(got.points, want.points) || !slices.Equal(got.pointOf, want.pointOf) {
			t.Fatalf("round %d: from the last layout %v %v, from nothing %v %v", round, got.points, got.pointOf, want.points, want.pointOf)
		}
		for k := 1; k < len(want.points); k++ {
			a, b := want.points[k-1], want.points[k]
			if a > b || a == b && want.pointOf[k-1] > want.pointOf[k] {
				t.Fatalf("round %d: points out of order at %d: %v %v", round, k, want.points, want.pointOf)
			}
		}
		prev = got
	}

	// A last list in another order (a server that sorts ids otherwise):
	// every point is sorted again.
	a, b := memberView{ID: "a", VNodes: 2, Positions: []uint32{5, 50}}, memberView{ID: "b", VNodes: 2, Positions: []uint32{5, 20}}
	last, got, want := &routeTable{}, &routeTable{}, &routeTable{}
	last.setMembers([]memberView{b, a}, nil)
	got.setMembers([]memberView{a, b}, last)
	want.setMembers([]memberView{a, b}, nil)
	if !slices.Equal(got.points, want.points) || !slices.Equal(got.pointOf, want.pointOf) {
		t.Errorf("after a list in another order: %v %v, want %v %v", got.points, got.pointOf, want.points, want.pointOf)
	}
}
