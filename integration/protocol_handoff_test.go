package integration

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// Protocol tests of handoffs: holds after a takeover, releases, untold owners and batched joins.

// newHoldingHandoff joins nodes a, b and c, then starts a new incarnation
// of a, which holds while a hands moving to b.
func newHoldingHandoff(t *testing.T) (*sqlNodes, []int) {
	t.Helper()
	s := newSQLNodes(t)
	s.join("a", "b", "c")
	moving := s.handingOff("a", "b")
	if len(moving) == 0 {
		t.Fatalf("a hands nothing to b: %v", s.rows())
	}
	s.takeOver("a", "inc-a-restarted")
	return s, moving
}

// TestNoReleaseDuringHold: a new process that takes over a node id holds
// (reports nothing) until the old one's lease would have ended, because the
// old one may still be using the node's partitions. Its releases of them
// take effect only then: confirmed earlier, a partition would go to its
// next owner while the old process still reports it. They are handed on by
// whoever scans first after the hold (every scanner is told when it ends),
// and a leave during the hold hands nothing on.
func TestNoReleaseDuringHold(t *testing.T) {
	t.Parallel()
	s, moving := newHoldingHandoff(t)
	var holdEnd time.Time
	if err := s.e.admin.QueryRow(`SELECT hold_until FROM "` + s.e.schema + `".nodes WHERE node_id = 'a'`).Scan(&holdEnd); err != nil {
		t.Fatal(err)
	}
	before := s.rows()
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil {
		t.Fatal(err)
	}
	if _, err := s.e.admin.Exec(`SELECT "` + s.e.schema + `".leave('a', 'inc-a-restarted', 'r')`); err != nil {
		t.Fatal(err)
	}
	for _, p := range moving {
		if got := s.rows()[p]; got != before[p] {
			t.Errorf("partition %d handed on during the hold: %+v, was %+v", p, got, before[p])
		}
	}
	// c scans: it is told when a's hold ends (a's lease ends later).
	var nextMS int64
	if err := s.e.admin.QueryRow(`SELECT next_expiry_ms FROM "`+s.e.schema+`".renew_and_read('c', 'inc-c', $1, '', '[]', false, true, clock_timestamp())`,
		sqlTTLms).Scan(&nextMS); err != nil {
		t.Fatal(err)
	}
	if untilHold := time.Until(holdEnd).Milliseconds(); nextMS > untilHold+50 {
		t.Errorf("a scan says the next event is in %d ms, but a's hold ends in %d ms", nextMS, untilHold)
	}

	// The hold over, the first scan hands them on.
	if _, err := s.e.admin.Exec(`UPDATE "` + s.e.schema + `".nodes SET hold_until = now() WHERE node_id = 'a'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.renew(nil, "c", false, true, 0); err != nil {
		t.Fatal(err)
	}
	for _, p := range moving {
		if got, want := s.rows()[p], (partitionRow{owner: "b", epoch: before[p].epoch + 1}); got != want {
			t.Errorf("partition %d after the hold: %+v, want %+v", p, got, want)
		}
	}

	// A leave of every ring during a hold ends the lease when the hold
	// would have, and hands nothing on.
	s.takeOver("a", "inc-a-third")
	if err := s.e.admin.QueryRow(`SELECT hold_until FROM "` + s.e.schema + `".nodes WHERE node_id = 'a'`).Scan(&holdEnd); err != nil {
		t.Fatal(err)
	}
	before = s.rows()
	if _, err := s.e.admin.Exec(`SELECT "` + s.e.schema + `".leave('a', 'inc-a-third')`); err != nil {
		t.Fatal(err)
	}
	if got := s.expiresAt("a"); !got.Equal(holdEnd) {
		t.Errorf("after a leave during the hold the lease ends at %v, want the hold's end %v", got, holdEnd)
	}
	if after := s.rows(); !reflect.DeepEqual(after, before) {
		t.Errorf("a leave during the hold changed the partitions:\n%v\nwas\n%v", after, before)
	}
}

// TestUntoldOwnerLosesPartitionsAtOnce: a partition given to a node that
// has not yet been told (no view since) moves straight to a newcomer, epoch
// + 1, instead of waiting for a release the node would only send after its
// next heartbeat; once the node has been told, moving it takes a handoff
// again. Joins right after a takeover no longer chain handoffs.
func TestUntoldOwnerLosesPartitionsAtOnce(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a")
	s.join("b")
	moving := s.handingOff("a", "b")
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil { // b now owns them, untold
		t.Fatal(err)
	}
	before := s.rows()
	s.join("c")
	after := s.rows()
	direct, handoffs := 0, 0
	for p, was := range before {
		now := after[p]
		switch {
		case was.owner == "b" && now.next == "c":
			t.Errorf("partition %d, given to b and never shown to it, waits for b's release: %+v", p, now)
		case was.owner == "b" && now.owner == "c":
			direct++
			if now.epoch != was.epoch+1 {
				t.Errorf("partition %d moved from b to c with epoch %d, want %d", p, now.epoch, was.epoch+1)
			}
		case was.owner == "a" && now.next == "c":
			handoffs++
		case was.owner == "a" && now.owner == "c":
			t.Errorf("partition %d taken from a, which was told it has it, without a handoff: %+v", p, now)
		}
	}
	if direct == 0 || handoffs == 0 {
		t.Fatalf("c's join moved %d of b's untold partitions and handed %d over from a: the setup must exercise both (%v -> %v)",
			direct, handoffs, before, after)
	}

	// b is told, and then a newcomer must wait for its release.
	if _, err := s.renew(nil, "b", false, false, 0); err != nil {
		t.Fatal(err)
	}
	before = s.rows()
	s.join("d")
	fromB := 0
	for p, now := range s.rows() {
		was := before[p]
		if was.owner == "b" && now.owner != "b" {
			t.Errorf("partition %d taken from b, which was told it has it, without a handoff: %+v -> %+v", p, was, now)
		}
		if was.owner == "b" && now.next == "d" {
			fromB++
		}
	}
	if fromB == 0 {
		t.Fatalf("d's join asked nothing of b: the setup must exercise it (%v -> %v)", before, s.rows())
	}
}

// TestConfirmAfterHoldClearsReleased: a partition its owner released during
// a hold, and then confirmed itself once the hold was over, is no longer
// marked released. A flag left behind let a later scan hand the partition
// on from its next owner, who had never released it (two reporters).
func TestConfirmAfterHoldClearsReleased(t *testing.T) {
	t.Parallel()
	s, moving := newHoldingHandoff(t)
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil { // released during the hold
		t.Fatal(err)
	}
	if n := s.releasedCount(); n != len(moving) {
		t.Fatalf("%d partitions marked released during the hold, want %d", n, len(moving))
	}
	// The hold ends, and a's own heartbeat, before any scan, confirms again.
	if _, err := s.e.admin.Exec(`UPDATE "` + s.e.schema + `".nodes SET hold_until = now() WHERE node_id = 'a'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil {
		t.Fatal(err)
	}
	rows := s.rows()
	for _, p := range moving {
		if rows[p].owner != "b" || rows[p].next != "" {
			t.Fatalf("partition %d after a's confirmation: %+v, want b's", p, rows[p])
		}
	}
	if n := s.releasedCount(); n != 0 {
		t.Errorf("%d partitions still marked released after their owner changed", n)
	}
	// b must now hand one of them on (as a rebalance would mark it): a scan
	// must leave it with b until b confirms.
	p := moving[0]
	if _, err := s.e.admin.Exec(`UPDATE "`+s.e.schema+`".partitions SET next_owner = 'c' WHERE ring = 'r' AND partition = $1`, p); err != nil {
		t.Fatal(err)
	}
	if _, err := s.renew(nil, "c", false, true, 0); err != nil {
		t.Fatal(err)
	}
	if got := s.rows()[p]; got.owner != "b" || got.next != "c" {
		t.Errorf("partition %d after c's scan: %+v, want still b's, pending c", p, got)
	}
}

// TestJoinsAreBatched: nodes that record their joins of a ring (join_rings
// with budget 0) are all joined by the next call that takes the ring's
// lock, with one rebalance and one version; the others' second calls then
// find their joins made. A client of a release before version 11 (one call
// with a budget) is batched with them, and the batches of rings of the same
// name in other schemas do not hold it up.
func TestJoinsAreBatched(t *testing.T) {
	s := newSQLNodes(t)
	s.join("a")
	const ring = `[{"ring": "r", "size": 8, "vnodes": 8}]`
	call := func(id string, budget int) string {
		t.Helper()
		var answer string
		if err := s.e.admin.QueryRow(`SELECT "`+s.e.schema+`".join_rings($1, $2, $3::jsonb, $4)::text`, id, "inc-"+id, ring, budget).Scan(&answer); err != nil {
			t.Fatalf("join_rings for %s, budget %d: %v", id, budget, err)
		}
		return answer
	}
	version := func() (v, members int64) {
		t.Helper()
		if err := s.e.admin.QueryRow(`SELECT version, members_changed FROM "`+s.e.schema+`".rings WHERE name = 'r'`).Scan(&v, &members); err != nil {
			t.Fatal(err)
		}
		return v, members
	}
	ids := []string{"b", "c", "d", "e"}
	for _, id := range ids {
		if _, err := s.renew(nil, id, true, false, 0); err != nil {
			t.Fatal(err)
		}
		if got := call(id, 0); !strings.Contains(got, `"status": "waiting"`) {
			t.Fatalf("%s recording its join: %s, want waiting", id, got)
		}
	}
	v0, _ := version()
	if got := call("x-old-client", 1000); !strings.Contains(got, `"not_live"`) {
		t.Fatalf("a node with no lease: %s, want not_live", got)
	}
	if _, err := s.renew(nil, "f", true, false, 0); err != nil {
		t.Fatal(err)
	}
	// Another schema's batch of a ring of the same name goes on meanwhile:
	// it must not keep this one's call from leading.
	other, err := s.e.admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback()
	for _, key := range []string{"leasering join_rings r", "other_schema join_rings r"} {
		if _, err := other.Exec(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, key); err != nil {
			t.Fatal(err)
		}
	}
	if got := call("f", 1000); !strings.Contains(got, `"status": "ok"`) { // as a client before version 11 calls
		t.Fatalf("f joining: %s, want ok", got)
	}
	v1, m1 := version()
	if v1 != v0+1 || m1 != v1 {
		t.Errorf("the ring went from version %d to %d (members changed at %d) for 5 joins, want one version", v0, v1, m1)
	}
	for _, id := range ids {
		if got := call(id, 1000); !strings.Contains(got, `"status": "ok"`) {
			t.Errorf("%s after the batch: %s, want ok", id, got)
		}
	}
	if v2, _ := version(); v2 != v1 {
		t.Errorf("the second calls of the batched nodes moved the ring from version %d to %d", v1, v2)
	}
	var members, waiting int
	if err := s.e.admin.QueryRow(`SELECT (SELECT count(*) FROM "`+s.e.schema+`".members WHERE ring = 'r' AND claimed_by IS NOT NULL),
		(SELECT count(*) FROM "`+s.e.schema+`".joins)`).Scan(&members, &waiting); err != nil {
		t.Fatal(err)
	}
	if members != 6 || waiting != 0 {
		t.Errorf("%d members claimed and %d joins waiting, want 6 and 0", members, waiting)
	}
	for _, id := range append([]string{"a", "f"}, ids...) {
		if _, err := s.renew(nil, id, false, false, 0); err != nil {
			t.Fatal(err)
		}
	}
}
