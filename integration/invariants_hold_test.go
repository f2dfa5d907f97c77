package integration

import (
	"testing"
	"time"
)

// TestInvariantsHoldThroughHandoffsHoldsAndEvictions drives nodes by hand
// through the protocol's steps and checks after each one, with each
// transient state in place: handoffs in flight, releases confirmed, a
// takeover that holds, a release during the hold, the hold's end, a lease
// that just lapsed, an eviction and a leave.
func TestInvariantsHoldThroughHandoffsHoldsAndEvictions(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.e.mustHold(t, "after the install")
	s.join("a")
	s.e.mustHold(t, "after a joined")
	s.join("b", "c")
	s.e.mustHold(t, "after b and c joined, handoffs in flight")
	toB := s.handingOff("a", "b")
	if len(toB) == 0 {
		t.Fatalf("a hands nothing to b: %v", s.rows())
	}
	if _, err := s.renew(nil, "a", false, false, 0, toB[0]); err != nil {
		t.Fatal(err)
	}
	s.e.mustHold(t, "after a released one partition to b")
	s.takeOver("a", "inc-a-restarted")
	s.e.mustHold(t, "after a new incarnation of a took over, holding")
	if _, err := s.renew(nil, "b", false, true, 0); err != nil {
		t.Fatal(err)
	}
	s.e.mustHold(t, "after b's scan during a's hold")
	rest := append(s.handingOff("a", "b"), s.handingOff("a", "c")...)
	if _, err := s.renew(nil, "a", false, false, 0, rest...); err != nil {
		t.Fatal(err)
	}
	if s.releasedCount() == 0 {
		t.Fatalf("nothing marked released during the hold: %v", s.rows())
	}
	s.e.mustHold(t, "after a released the rest during its hold")
	if _, err := s.e.admin.Exec(`UPDATE "` + s.e.schema + `".nodes SET hold_until = now() WHERE node_id = 'a'`); err != nil {
		t.Fatal(err)
	}
	s.e.mustHold(t, "after a's hold ended")
	if _, err := s.renew(nil, "c", false, true, 0); err != nil {
		t.Fatal(err)
	}
	if n := s.releasedCount(); n != 0 {
		t.Fatalf("%d partitions still released after c's scan", n)
	}
	s.e.mustHold(t, "after c's scan handed them on")
	s.expire("c")
	s.e.mustHold(t, "after c's lease lapsed")
	if _, err := s.renew(nil, "b", false, true, 0); err != nil {
		t.Fatal(err)
	}
	if s.exists("c") {
		t.Fatal("b's scan did not evict c")
	}
	s.e.mustHold(t, "after b evicted c")
	if _, err := s.e.admin.Exec(`SELECT "` + s.e.schema + `".leave('b', 'inc-b')`); err != nil {
		t.Fatal(err)
	}
	s.e.mustHold(t, "after b left")
}

// TestInvariantsHoldThroughJoinHandoffAndTakeover runs real nodes through
// joins (handoffs), a restart under the same id (a takeover that holds)
// and a crash (its partitions taken over), checking every 20 ms all along
// and once each step has settled.
func TestInvariantsHoldThroughJoinHandoffAndTakeover(t *testing.T) {
	t.Parallel()
	const ring, size = "inv", 32
	e := newEnv(t, time.Second, 100*time.Millisecond)
	a := e.startNode("a", ring, size)
	stop := e.watchInvariants(20 * time.Millisecond)
	defer stop()
	e.waitConverged(ring, size, nil, 10*time.Second)
	e.mustHold(t, "with a alone")
	b := e.startNode("b", ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	e.mustHold(t, "after b joined and a handed over")
	e.startNode("c", ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	e.mustHold(t, "after c joined")
	a.down.Store(true) // a new process takes the id over; the old one is fenced
	e.unregister(a)
	e.startNode("a", ring, size)
	e.waitConverged(ring, size, nil, 10*time.Second)
	e.mustHold(t, "after a new process took a's id over")
	b.crash()
	e.waitConverged(ring, size, nil, 10*time.Second)
	e.mustHold(t, "after a and c took b's partitions over")
}

// TestRejoinAfterEmptyRebalanceOwnsTheRing: a node whose lease lapsed, and
// that renews before anyone evicts it, is given the ring's partitions when
// the ring lost its other member meanwhile. Schema version 6 leaves them
// without owner while the node heartbeats (G3), as the invariant check
// found (unowned_with_live_member): the other member's leave rebalanced the
// ring with no live member, the renewal keeps the node's member row, and
// reclaiming it (claim_vnodes) does not rebalance.
func TestRejoinAfterEmptyRebalanceOwnsTheRing(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a", "b")
	if _, err := s.renew(nil, "a", false, false, 0, s.handingOff("a", "b")...); err != nil {
		t.Fatal(err)
	}
	s.expire("a")
	if _, err := s.e.admin.Exec(`SELECT "` + s.e.schema + `".leave('b', 'inc-b')`); err != nil {
		t.Fatal(err)
	}
	if h, err := s.renew(nil, "a", false, true, 0); err != nil || h.status != "rejoined" {
		t.Fatalf("a's renewal of its lapsed lease: %+v (%v), want rejoined", h, err)
	}
	// What a client does next: join_rings, then a heartbeat that reads the view.
	var answer string
	if err := s.e.admin.QueryRow(`SELECT "` + s.e.schema + `".join_rings('a', 'inc-a', '[{"ring": "r", "size": 8, "vnodes": 8}]', 1000)::text`).Scan(&answer); err != nil {
		t.Fatal(err)
	}
	if _, err := s.renew(nil, "a", false, true, 0); err != nil {
		t.Fatal(err)
	}
	for p, r := range s.rows() {
		if r.owner != "a" {
			t.Errorf("partition %d: %+v, want a's", p, r)
		}
	}
}
