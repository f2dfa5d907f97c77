package integration

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
)

// ringView is the part of a view these tests read.
type ringView struct {
	Version    int64    `json:"version"`
	Status     string   `json:"status"`
	Partitions []int    `json:"partitions"`
	Revoking   []int    `json:"revoking"`
	MemberIDs  []string `json:"member_ids"`
	Changed    []int    `json:"changed"`
	Owners     []int    `json:"owners"`
}

// viewOf reads ring "r"'s view for node id as a node that knows version
// known (ring_view, which writes nothing).
func (s *sqlNodes) viewOf(id string, known int64) ringView {
	s.t.Helper()
	var text string
	if err := s.e.admin.QueryRow(`SELECT "`+s.e.schema+`".ring_view('r', $1, $2)::text`, id, known).Scan(&text); err != nil {
		s.t.Fatal(err)
	}
	var v ringView
	if err := json.Unmarshal([]byte(text), &v); err != nil {
		s.t.Fatal(err)
	}
	return v
}

// TestRoutingCarriesOwnerChangesOnly: a view's routing lists the
// partitions whose owner changed since the version the node knows, each
// once. A join's rebalance, which only names b the pending owner of what
// a hands it, changes no route; a's release does, and then the moved
// partitions come with b as their owner. Sent by any change of the row,
// every member read each moved partition twice in a roll-out.
func TestRoutingCarriesOwnerChangesOnly(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a")
	before := s.version["a"]
	moving := s.toldHandoff() // joins b: a is told to hand these to b
	pending := s.viewOf("a", before)
	if len(pending.Changed) != 0 {
		t.Errorf("the view after b's join lists partitions %v as changed, want none: no owner changed", pending.Changed)
	}
	if !slices.Equal(pending.Revoking, moving) {
		t.Errorf("a's view revokes %v, want %v", pending.Revoking, moving)
	}
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil {
		t.Fatal(err)
	}
	after := s.viewOf("a", before)
	if !slices.Equal(after.Changed, moving) {
		t.Fatalf("the view after a's release lists %v as changed, want the moved %v", after.Changed, moving)
	}
	b := slices.Index(after.MemberIDs, "b")
	for i, p := range after.Changed {
		if after.Owners[i] != b {
			t.Errorf("partition %d's owner in the view: member %d, want b (%d of %v)", p, after.Owners[i], b, after.MemberIDs)
		}
	}
}

// TestOwnOnlyAnswersOwnChanges: a heartbeat that says own_only gets a view
// only when something its node owns or waits for changed since the
// version it holds. A move of the ring's version that touches none of a's
// rows (made here by hand) gets a's own_only heartbeat no view, and a
// keeps its version; without own_only the same heartbeat gets the view.
// A join that takes partitions from a gets a's own_only heartbeat the view
// that revokes them, and a's release of them the new owner's.
func TestOwnOnlyAnswersOwnChanges(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	moving := s.toldHandoff()
	for _, id := range []string{"a", "b"} { // a releases; both read the ring as it is now
		if _, err := s.renew(nil, id, false, false, 0, map[string][]int{"a": moving}[id]...); err != nil {
			t.Fatal(err)
		}
		if _, err := s.renew(nil, id, false, false, 0); err != nil {
			t.Fatal(err)
		}
	}
	s.ownOnly = true
	known := s.version["a"]
	if _, err := s.e.admin.Exec(`UPDATE "` + s.e.schema + `".rings SET version = version + 1 WHERE name = 'r'`); err != nil {
		t.Fatal(err)
	}
	h, err := s.renew(nil, "a", false, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.changes) != 0 || s.version["a"] != known {
		t.Fatalf("own_only after a change of none of a's rows: answered %+v, version %d; want nothing, version %d", h.changes, s.version["a"], known)
	}
	s.ownOnly = false
	if h, err = s.renew(nil, "a", false, false, 0); err != nil {
		t.Fatal(err)
	}
	if len(h.changes) != 1 || h.changes[0].Status != "ok" || s.version["a"] == known {
		t.Fatalf("without own_only after the same change: answered %+v, want the view", h.changes)
	}

	s.ownOnly = true
	s.join("c")
	if h, err = s.renew(nil, "a", false, false, 0); err != nil {
		t.Fatal(err)
	}
	toC := s.handingOff("a", "c")
	if len(h.changes) != 1 || h.changes[0].Status != "ok" || len(toC) == 0 {
		t.Fatalf("own_only for a after c's join: answered %+v, handing %v to c; want the view that revokes them", h.changes, toC)
	}
	before := s.version["c"]
	if _, err := s.renew(nil, "a", false, false, 0, toC...); err != nil {
		t.Fatal(err)
	}
	if h, err = s.renew(nil, "c", false, false, 0); err != nil {
		t.Fatal(err)
	}
	if len(h.changes) != 1 || h.changes[0].Status != "ok" || s.version["c"] == before {
		t.Errorf("own_only for c after a released %v to it: answered %+v, want the view", toC, h.changes)
	}
	if v := s.viewOf("c", 0); !slices.Equal(v.Partitions, toC) {
		t.Errorf("c owns %v, want %v", v.Partitions, toC)
	}
}

// TestOwnOnlyAnswersATakeover: partitions an eviction's rebalance gives a
// node straight (their owner's lease lapsed) are a change of its own, so
// its own_only heartbeat gets the view that gives them (G3: the new owner
// reports them on its next heartbeat).
func TestOwnOnlyAnswersATakeover(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	moving := s.toldHandoff()
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil {
		t.Fatal(err)
	}
	s.join("c")
	for _, id := range []string{"a", "b", "c"} {
		if _, err := s.renew(nil, id, false, false, 0); err != nil {
			t.Fatal(err)
		}
	}
	before := s.viewOf("a", 0).Partitions
	s.ownOnly = true
	s.expire("b")
	if _, err := s.renew(nil, "c", false, true, 0); err != nil { // c scans: b is evicted
		t.Fatal(err)
	}
	if s.exists("b") {
		t.Fatal("b was not evicted")
	}
	now := s.viewOf("a", 0).Partitions
	if len(now) <= len(before) {
		t.Fatalf("a owns %v after b's eviction, %v before: the test needs it to take some", now, before)
	}
	known := s.version["a"]
	h, err := s.renew(nil, "a", false, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.changes) != 1 || h.changes[0].Status != "ok" || s.version["a"] == known {
		t.Fatalf("a's own_only heartbeat after taking over b's partitions answered %+v, want the view", h.changes)
	}
}

// TestOwnViewLeavesRoutingOut: a heartbeat that says own_view (schema
// version 17) gets, when the ring moved, a view of what its node owns and
// waits for without the routing: no members, no owners that changed, and
// own_view in it. The same heartbeat without it gets the whole view. b,
// which a's release just gave partitions, hears of them either way; the
// routing, on a look's answer, cost each newcomer of a roll-out the new
// owners of the whole ring (BENCHMARKS.md).
func TestOwnViewLeavesRoutingOut(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	moving := s.toldHandoff() // joins a and b: a is told to hand these to b
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil {
		t.Fatal(err)
	}
	known := s.version["b"]
	for _, own := range []bool{true, false} {
		s.ownView = own
		s.version["b"] = known
		h, err := s.renew(nil, "b", false, false, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(h.changes) != 1 || h.changes[0].Status != "ok" {
			t.Fatalf("own_view %v: b's heartbeat answered %+v, want a view", own, h.changes)
		}
		v := h.changes[0]
		if !slices.Equal(v.Partitions, moving) {
			t.Errorf("own_view %v: b's view gives it %v, want the %v a released", own, v.Partitions, moving)
		}
		hasRouting := v.MemberIDs != nil || v.Changed != nil
		if v.OwnView != own || hasRouting == own {
			t.Errorf("own_view %v: the view says own_view %v, with members %v and changed %v", own, v.OwnView, v.MemberIDs, v.Changed)
		}
	}
}

// TestOwnersByIDMatchTheIndexes: a heartbeat that says owner_ids (schema
// version 18) gets the same routing with each changed partition's owner by
// node id, and no indexes; without it, as older clients ask, by index
// into the members, and no ids. read_views answers alike. Ranking every
// member for the indexes was most of a whole view's time with 2,000
// members (BENCHMARKS.md, Scale).
func TestOwnersByIDMatchTheIndexes(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a")
	known := s.version["a"]
	moving := s.toldHandoff() // joins b: a is told to hand these to b
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil {
		t.Fatal(err)
	}
	var byIndex, byID []string
	for _, ids := range []bool{false, true} {
		s.ownerIDs = ids
		s.version["a"] = known
		h, err := s.renew(nil, "a", false, false, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(h.changes) != 1 || h.changes[0].Status != "ok" {
			t.Fatalf("owner_ids %v: a's heartbeat answered %+v, want a view", ids, h.changes)
		}
		v := h.changes[0]
		if !slices.Equal(v.Changed, moving) || v.MemberIDs == nil {
			t.Fatalf("owner_ids %v: the view's routing changed %v with members %v, want the moved %v and the members", ids, v.Changed, v.MemberIDs, moving)
		}
		if ids {
			if v.Owners != nil || len(v.OwnerIDs) != len(v.Changed) {
				t.Fatalf("owner_ids: owners %v, owner ids %v for %d changes; want ids only", v.Owners, v.OwnerIDs, len(v.Changed))
			}
			byID = v.OwnerIDs
			continue
		}
		if v.OwnerIDs != nil || len(v.Owners) != len(v.Changed) {
			t.Fatalf("no owner_ids: owners %v, owner ids %v for %d changes; want indexes only", v.Owners, v.OwnerIDs, len(v.Changed))
		}
		for _, o := range v.Owners {
			byIndex = append(byIndex, v.MemberIDs[o])
		}
	}
	if !slices.Equal(byID, byIndex) || byID[0] != "b" {
		t.Errorf("owners by id %v, by index %v; want the same, b", byID, byIndex)
	}

	var text string
	arg := fmt.Sprintf(`[{"ring": "r", "version": %d, "owner_ids": true}]`, known)
	if err := s.e.admin.QueryRow(`SELECT "`+s.e.schema+`".read_views('a', 'inc-a', $1::jsonb)::text`, arg).Scan(&text); err != nil {
		t.Fatal(err)
	}
	var views []struct {
		View struct {
			Changed  []int    `json:"changed"`
			Owners   []int    `json:"owners"`
			OwnerIDs []string `json:"owner_ids"`
		} `json:"view"`
	}
	if err := json.Unmarshal([]byte(text), &views); err != nil {
		t.Fatal(err)
	}
	if len(views) != 1 || views[0].View.Owners != nil || !slices.Equal(views[0].View.OwnerIDs, byID) {
		t.Errorf("read_views with owner_ids answered %s, want the owners %v by id", text, byID)
	}
}
