package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

type candidate struct {
	*node
	leader *leasering.Leader
}

type eventLog struct {
	mu     sync.Mutex
	events []loggedEvent
}

type loggedEvent struct {
	at   time.Time
	node string
	ev   leasering.LeaderEvent
}

func (g *eventLog) add(node string, ev leasering.LeaderEvent) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.events = append(g.events, loggedEvent{time.Now(), node, ev})
}

// startCandidates starts n candidates for the election "scheduler", each
// with its events recorded in log.
func startCandidates(e *env, n int, log *eventLog) []*candidate {
	var out []*candidate
	for i := 0; i < n; i++ {
		nd := e.newNode(fmt.Sprintf("c%d", i))
		ld, err := nd.client.Leader("scheduler")
		if err != nil {
			e.t.Fatal(err)
		}
		// The election is a ring of one partition; the checker watches it.
		l, err := nd.client.Lease("scheduler", 1, leasering.WithVNodes(1))
		if err != nil {
			e.t.Fatal(err)
		}
		nd.leases["scheduler"] = l
		events := ld.Events()
		go func(id string) {
			for ev := range events {
				log.add(id, ev)
			}
		}(nd.id)
		e.register(nd)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := nd.client.Start(ctx); err != nil {
			e.t.Fatal(err)
		}
		cancel()
		out = append(out, &candidate{node: nd, leader: ld})
	}
	return out
}

// waitPromoted waits until c's Promoted event for its current term is in
// the log (the event follows IsLeader by a goroutine hop).
func waitPromoted(t *testing.T, log *eventLog, c *candidate) {
	t.Helper()
	term := c.leader.Term()
	ok := waitFor(5*time.Second, func() bool {
		log.mu.Lock()
		defer log.mu.Unlock()
		for _, le := range log.events {
			if le.node == c.id && le.ev.Kind == leasering.Promoted && le.ev.Term == term {
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("no Promoted event for %s term %d", c.id, term)
	}
}

// currentLeader waits for exactly one live candidate to be leader.
func currentLeader(t *testing.T, cs []*candidate, within time.Duration) *candidate {
	t.Helper()
	var found *candidate
	ok := waitFor(within, func() bool {
		found = nil
		for _, c := range cs {
			if c.down.Load() || !c.leader.IsLeader() {
				continue
			}
			if found != nil {
				return false
			}
			found = c
		}
		return found != nil
	})
	if !ok {
		t.Fatalf("no single leader within %v", within)
	}
	return found
}

// TestLeaderElection: five candidates, exactly one leader at every instant
// (the checker), through a leader crash (blackhole), a Resign and a Close;
// terms rise with every new leader, and every Promoted is followed by a
// Demoted before the same node is promoted again. It runs alone: it
// measures failover times.
func TestLeaderElection(t *testing.T) {
	ttl, hb := time.Second, 200*time.Millisecond
	e := newEnv(t, ttl, hb)
	var log eventLog
	cs := startCandidates(e, 5, &log)
	chk := e.startChecker("scheduler", 1, ttl+hb)
	first := currentLeader(t, cs, 10*time.Second)
	if first.leader.Term() <= 0 {
		t.Errorf("leader's term %d", first.leader.Term())
	}
	waitPromoted(t, &log, first)

	first.crash()
	cut := time.Now()
	second := currentLeader(t, cs, 5*ttl)
	crashFailover := time.Since(cut)
	waitPromoted(t, &log, second)

	resigned := time.Now()
	if err := second.leader.Resign(context.Background()); err != nil {
		t.Fatal(err)
	}
	if second.leader.IsLeader() {
		t.Error("still leader after Resign returned")
	}
	third := currentLeader(t, cs, 5*ttl)
	resignFailover := time.Since(resigned)
	if third == second {
		t.Error("the resigned node was elected again at once")
	}
	waitPromoted(t, &log, third)

	closed := time.Now()
	if err := third.client.Close(); err != nil {
		t.Fatal(err)
	}
	third.down.Store(true)
	currentLeader(t, cs, 5*ttl)
	closeFailover := time.Since(closed)

	t.Logf("failover: crash %v (bound TTL+heartbeat %v), Resign %v, Close %v (bound one heartbeat %v)",
		crashFailover.Round(time.Millisecond), ttl+hb, resignFailover.Round(time.Millisecond), closeFailover.Round(time.Millisecond), hb)
	if crashFailover > ttl+hb {
		t.Errorf("failover after a crash took %v, want at most %v", crashFailover, ttl+hb)
	}
	for what, d := range map[string]time.Duration{"Resign": resignFailover, "Close": closeFailover} {
		if d > hb+hb/2 {
			t.Errorf("failover after %s took %v, want at most one heartbeat (%v) plus latency", what, d, hb)
		}
	}
	chk.finish()

	// Terms rise across leaders; each node alternates Promoted and Demoted.
	if !waitFor(5*time.Second, func() bool {
		log.mu.Lock()
		defer log.mu.Unlock()
		promoted := 0
		for _, le := range log.events {
			if le.ev.Kind == leasering.Promoted {
				promoted++
			}
		}
		return promoted >= 4
	}) {
		t.Fatal("fewer than 4 Promoted events")
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	var lastTerm int64
	state := map[string]int64{}
	for _, le := range log.events {
		switch le.ev.Kind {
		case leasering.Promoted:
			if le.ev.Term <= lastTerm {
				t.Errorf("%s promoted to term %d after term %d", le.node, le.ev.Term, lastTerm)
			}
			if state[le.node] != 0 {
				t.Errorf("%s promoted to %d while still leader of %d", le.node, le.ev.Term, state[le.node])
			}
			lastTerm, state[le.node] = le.ev.Term, le.ev.Term
		case leasering.Demoted:
			if state[le.node] != le.ev.Term {
				t.Errorf("%s demoted from %d, but was told it led %d", le.node, le.ev.Term, state[le.node])
			}
			state[le.node] = 0
		}
	}
	t.Logf("%d leadership events, last term %d", len(log.events), lastTerm)
}

// TestLeaderSurvivesDatabaseRestart restarts PostgreSQL under a running
// election. It needs LEASERING_TEST_PG_RESTART=1 and pg_ctlcluster: it
// disturbs every other test using the server, so run it on its own.
func TestLeaderSurvivesDatabaseRestart(t *testing.T) {
	if os.Getenv("LEASERING_TEST_PG_RESTART") != "1" {
		skip(t, "restarts PostgreSQL: set LEASERING_TEST_PG_RESTART=1 and run this test alone")
	}
	versions, _ := filepath.Glob("/etc/postgresql/*")
	if len(versions) != 1 {
		skip(t, fmt.Sprintf("need exactly one cluster under /etc/postgresql, found %v", versions))
	}
	ttl, hb := 10*time.Second, time.Second
	e := newEnv(t, ttl, hb)
	var log eventLog
	cs := startCandidates(e, 5, &log)
	chk := e.startChecker("scheduler", 1, ttl+hb)
	before := currentLeader(t, cs, 15*time.Second)
	term := before.leader.Term()
	start := time.Now()
	out, err := exec.Command("pg_ctlcluster", "--skip-systemctl-redirect", filepath.Base(versions[0]), "main", "restart").CombinedOutput()
	if err != nil {
		t.Fatalf("restart: %v: %s", err, out)
	}
	t.Logf("PostgreSQL restarted in %v", time.Since(start).Round(time.Millisecond))
	// The lease is a row: it survives the restart, and the leader keeps
	// its term once it renews again.
	if !waitFor(ttl, func() bool { return before.leader.IsLeader() && before.leader.Term() == term }) {
		after := currentLeader(t, cs, 3*ttl)
		t.Errorf("leadership changed across the restart: %s term %d, was %s term %d", after.id, after.leader.Term(), before.id, term)
	}
	chk.finish()
}
