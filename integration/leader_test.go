package integration

import (
	"context"
	"fmt"
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
// election. The server is a private cluster of the test's own, so the
// shared one is never disturbed: it is shut down until every candidate has
// seen a heartbeat fail, then started again on the same port. The lease is
// a row: once every candidate has renewed after the restart, the leader
// still leads with the same term, no leadership event happened meanwhile,
// and the checker saw no moment with two leaders.
func TestLeaderSurvivesDatabaseRestart(t *testing.T) {
	t.Parallel()
	cluster := privateCluster(t)
	ttl, hb := 10*time.Second, time.Second
	e := newEnvOn(t, cluster.DSN, ttl, hb)
	var log eventLog
	cs := startCandidates(e, 5, &log)
	chk := e.startChecker("scheduler", 1, ttl+hb)
	before := currentLeader(t, cs, 15*time.Second)
	term := before.leader.Term()
	waitPromoted(t, &log, before)
	failures := make([]int64, len(cs))
	for i, c := range cs {
		failures[i] = c.client.Stats().RenewFailures
	}

	// The whole outage, from the shutdown to the restart, must stay well
	// inside the TTL: the leader must renew before its lease ends.
	outage := ttl / 2
	ctx, cancel := context.WithTimeout(context.Background(), outage)
	defer cancel()
	down := time.Now()
	if err := cluster.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Until(down.Add(outage*3/4)), func() bool {
		for i, c := range cs {
			if c.client.Stats().RenewFailures == failures[i] {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("not every candidate saw a heartbeat fail within %v of the shutdown", outage*3/4)
	}
	if err := cluster.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	t.Logf("PostgreSQL down for %v (restart and wait for failed heartbeats)", up.Sub(down).Round(time.Millisecond))

	// Every candidate renews after the restart (a heartbeat sent since up).
	if !waitFor(ttl/2, func() bool {
		for _, c := range cs {
			if age := c.client.Stats().LastRenewAge; age < 0 || age >= time.Since(up) {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("not every candidate renewed within %v of the restart", ttl/2)
	}
	t.Logf("every candidate renewed %v after the restart", time.Since(up).Round(time.Millisecond))
	if !before.leader.IsLeader() || before.leader.Term() != term {
		after := currentLeader(t, cs, 3*ttl)
		t.Errorf("leadership changed across the restart: %s term %d, was %s term %d", after.id, after.leader.Term(), before.id, term)
	}
	log.mu.Lock()
	for _, le := range log.events {
		if le.at.After(down) {
			t.Errorf("%s: %v term %d after the shutdown", le.node, le.ev.Kind, le.ev.Term)
		}
	}
	log.mu.Unlock()
	chk.finish()
}
