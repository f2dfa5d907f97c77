package integration

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"time"

	"github.com/leasering/leasering"
	"github.com/leasering/leasering/internal/faultproxy"
)

func (r *chaosRun) partition() (healthy, faulty, empty []*chaosSlot) {
	for _, s := range r.slots {
		switch {
		case s.n == nil:
			empty = append(empty, s)
		case s.fault != "":
			faulty = append(faulty, s)
		default:
			healthy = append(healthy, s)
		}
	}
	return healthy, faulty, empty
}

// join starts a node in an empty slot: half the time under the slot's own
// id again (a restart: static membership takes the id over), else a new id.
func (r *chaosRun) join(s *chaosSlot) {
	s.starts++
	id := s.name
	switch {
	case r.chk == nil: // the initial nodes
	case s.starts > 1 && r.rng.IntN(2) == 0:
		r.counts["join (restart, same id)"]++
	default:
		if s.starts > 1 {
			id = fmt.Sprintf("%s-%d", s.name, s.starts)
		}
		r.counts["join (new id)"]++
	}
	r.mu.Lock()
	logs := r.logs[id]
	if logs == nil {
		logs = &nodeLog{}
		r.logs[id] = logs
	}
	r.mu.Unlock()
	n := r.e.newNode(id, leasering.WithLogger(slog.New(logs)))
	l, err := n.client.Lease(chaosRing, chaosSize)
	if err != nil {
		r.t.Fatal(err)
	}
	n.leases[chaosRing] = l
	r.e.register(n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.client.Start(ctx); err != nil {
		r.t.Fatalf("start %s: %v", id, err)
	}
	s.n = n
	r.mu.Lock()
	if sp := r.impaired[id]; len(sp) > 0 && sp[len(sp)-1].to.IsZero() {
		sp[len(sp)-1].to = time.Now() // an id started again: healthy from now
	}
	r.mu.Unlock()
	r.event("join %s", id)
}

// leave closes a node gracefully.
func (r *chaosRun) leave(s *chaosSlot) {
	n := s.n
	n.down.Store(true)
	r.fail(n.id) // G3 counts from a leave too: its partitions move then
	if err := n.client.Close(); err != nil {
		r.t.Errorf("close %s: %v", n.id, err)
	}
	if got := n.leases[chaosRing].Values(); len(got) != 0 {
		r.t.Errorf("%s reports %d partitions after Close", n.id, len(got))
	}
	r.e.unregister(n)
	r.release(n)
	s.n, s.fault = nil, ""
	r.counts["leave"]++
	r.event("leave %s", n.id)
}

// crash cuts a node off for good, then stops its client in the background:
// its leave cannot reach the database, so its lease simply lapses.
func (r *chaosRun) crash(s *chaosSlot) {
	n := s.n
	n.proxy.SetMode(faultproxy.Blackhole)
	n.down.Store(true)
	s.n, s.fault = nil, ""
	r.counts["crash"]++
	r.fail(n.id)
	r.event("crash %s", n.id)
	r.closing.Add(1)
	go func() {
		defer r.closing.Done()
		_ = n.client.Close()
		r.e.unregister(n)
		r.release(n)
	}()
}

// release frees a stopped node's pool and proxy.
func (r *chaosRun) release(n *node) {
	n.proxy.SetMode(faultproxy.Refuse)
	_ = n.db.Close()
	_ = n.proxy.Close()
}

// cut blackholes or refuses a node's connections for 0.2 to 2.5 TTLs.
func (r *chaosRun) cut(s *chaosSlot, kind string, mode faultproxy.Mode) {
	s.n.down.Store(true)
	r.fail(s.n.id)
	s.n.proxy.SetMode(mode)
	s.fault, s.since = kind, time.Now()
	s.healAt = time.Now().Add(time.Duration(200+r.rng.IntN(2300)) * chaosTTL / 1000)
	r.counts[kind]++
	r.event("%s %s until %s", kind, s.n.id, fmt.Sprintf("+%.3fs", s.healAt.Sub(r.begin).Seconds()))
}

// slow delays a node's traffic so that a round trip takes 0.4 to 1.2 TTLs,
// for 1 to 3 TTLs.
func (r *chaosRun) slow(s *chaosSlot) {
	s.n.down.Store(true)
	r.fault(s.n.id)
	rtt := time.Duration(400+r.rng.IntN(800)) * chaosTTL / 1000
	s.n.proxy.SetLatency(rtt / 2)
	s.fault, s.since = "latency", time.Now()
	s.healAt = time.Now().Add(time.Duration(1000+r.rng.IntN(2000)) * chaosTTL / 1000)
	r.counts["latency"]++
	r.event("latency %v round trip on %s until +%.3fs", rtt, s.n.id, s.healAt.Sub(r.begin).Seconds())
}

// healDue ends the faults whose time is up.
func (r *chaosRun) healDue(now time.Time) {
	for _, s := range r.slots {
		if s.n != nil && s.fault != "" && !now.Before(s.healAt) {
			s.n.proxy.SetLatency(0)
			s.n.proxy.SetMode(faultproxy.Pass)
			s.n.down.Store(false)
			r.mu.Lock()
			delete(r.faulted, s.n.id)
			if sp := r.impaired[s.n.id]; len(sp) > 0 {
				sp[len(sp)-1].to = now
			}
			r.mu.Unlock()
			r.event("heal %s (%s)", s.n.id, s.fault)
			s.fault = ""
		}
	}
}

// restartPostgres restarts the server. No node can renew meanwhile, so G3
// is suspended until the nodes have had a lease's time to come back, and
// one more: the restarted server takes nothing over until a TTL after it
// noticed the restart (G9).
func (r *chaosRun) restartPostgres() {
	r.chk.paused.Store(true)
	start := time.Now()
	out, err := exec.Command("pg_ctlcluster", "--skip-systemctl-redirect", r.restart, "main", "restart").CombinedOutput()
	if err != nil {
		r.t.Fatalf("restarting PostgreSQL: %v: %s", err, out)
	}
	if !waitFor(30*time.Second, func() bool { return pingable(r.e.admin) }) {
		r.t.Fatal("PostgreSQL did not come back within 30s")
	}
	r.t.Logf("PostgreSQL restarted in %v", time.Since(start).Round(time.Millisecond))
	r.lastPG = time.Now()
	r.counts["postgres restart"]++
	time.AfterFunc(2*chaosTTL+2*chaosHeartbeat, func() { r.chk.paused.Store(false) })
}

// fail records that node id fails now.
func (r *chaosRun) fail(id string) {
	r.mu.Lock()
	r.failed[id] = time.Now()
	r.impaired[id] = append(r.impaired[id], span{from: r.failed[id]})
	delete(r.faulted, id)
	delete(r.survived, id)
	r.mu.Unlock()
}

// fault records that node id is slowed down from now: a failure, unless a
// renewal the database accepts shows otherwise (see watchLeases).
func (r *chaosRun) fault(id string) {
	r.mu.Lock()
	r.failed[id] = time.Now()
	r.impaired[id] = append(r.impaired[id], span{from: r.failed[id]})
	r.faulted[id] = true
	delete(r.survived, id)
	r.mu.Unlock()
}
