package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// TestRoutingAgreesWithOwnership: once converged, every node's Owner(key)
// names the node whose OwnsKey(key) is true, Members lists everyone with
// metadata, and Successors starts with the owner and names distinct members.
func TestRoutingAgreesWithOwnership(t *testing.T) {
	t.Parallel()
	const q = 64
	e := newEnv(t, time.Second, 100*time.Millisecond)
	for _, id := range []string{"a", "b", "c"} {
		e.startNodeWith(id, []leasering.Option{leasering.WithMetadata("10.0.0." + id + ":8080")}, "orders", q)
	}
	e.waitConverged("orders", q, nil, 10*time.Second)
	nodes := e.live()
	// Routing tables arrive with the heartbeat after the last change.
	settled := waitFor(5*time.Second, func() bool {
		for _, n := range nodes {
			if len(n.leases["orders"].Members()) != 3 {
				return false
			}
			for k := 0; k < 200; k++ {
				key := fmt.Sprintf("key-%d", k)
				o, ok := n.leases["orders"].Owner(key)
				if !ok || !ownerReports(nodes, o.ID, key) {
					return false
				}
			}
		}
		return true
	})
	if !settled {
		t.Fatal("routing never agreed with ownership")
	}
	for _, n := range nodes {
		l := n.leases["orders"]
		for _, m := range l.Members() {
			if m.Metadata != "10.0.0."+m.ID+":8080" || m.VNodes != leasering.DefaultVNodes {
				t.Errorf("member %+v: wrong metadata or vnodes", m)
			}
		}
		for k := 0; k < 200; k++ {
			key := fmt.Sprintf("key-%d", k)
			succ := l.Successors(key, 5)
			owner, _ := l.Owner(key)
			if len(succ) != 3 || succ[0].ID != owner.ID || succ[1].ID == succ[0].ID || succ[2].ID == succ[1].ID || succ[2].ID == succ[0].ID {
				t.Fatalf("%s: Successors(%q, 5) = %v, owner %s", n.id, key, succ, owner.ID)
			}
			other := nodes[0].leases["orders"].Successors(key, 3)
			for i := range succ {
				if succ[i].ID != other[i].ID {
					t.Fatalf("nodes disagree on Successors(%q): %v vs %v", key, succ, other)
				}
			}
		}
	}
}

func ownerReports(nodes []*node, id, key string) bool {
	for _, n := range nodes {
		if n.leases["orders"].OwnsKey(key) != (n.id == id) {
			return false
		}
	}
	return true
}

// TestUnreadRoutingCatchesUpOnFirstRead: a node whose routing nobody reads
// takes views of what it owns only, so its routing stays as its first view
// gave it while others join; the first read wakes it, and its next
// heartbeat brings the routing's changes.
func TestUnreadRoutingCatchesUpOnFirstRead(t *testing.T) {
	t.Parallel()
	const q = 64
	e := newEnv(t, time.Second, 100*time.Millisecond)
	a := e.startNode("a", "orders", q)
	e.waitConverged("orders", q, nil, 10*time.Second)
	e.startNode("b", "orders", q)
	e.startNode("c", "orders", q)
	e.waitConverged("orders", q, nil, 10*time.Second)
	// Two more heartbeats of a's, each of which would have brought the
	// routing had it been read.
	renewals := a.client.Stats().Renewals
	if !waitFor(5*time.Second, func() bool { return a.client.Stats().Renewals >= renewals+2 }) {
		t.Fatal("a did not renew")
	}
	l := a.leases["orders"]
	read := time.Now()
	if got := len(l.Members()); got != 1 {
		t.Errorf("a's first read of the routing lists %d members, want 1: its first view's, b and c unread", got)
	}
	nodes := e.live()
	caughtUp := waitFor(5*time.Second, func() bool {
		if len(l.Members()) != 3 {
			return false
		}
		for k := 0; k < 100; k++ {
			key := fmt.Sprintf("key-%d", k)
			if o, ok := l.Owner(key); !ok || !ownerReports(nodes, o.ID, key) {
				return false
			}
		}
		return true
	})
	if !caughtUp {
		t.Fatal("a's routing never caught up after its first read")
	}
	t.Logf("a's routing caught up %v after its first read (heartbeat 100ms)", time.Since(read).Round(time.Millisecond))
}
