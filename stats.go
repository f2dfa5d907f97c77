package leasering

import (
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Stats is a snapshot of a client's heartbeat, for metrics and probes.
type Stats struct {
	NodeID           string
	Renewals         int64          // successful heartbeats
	AsyncRenewals    int64          // of those, steady renewals committed without waiting for the disk: the lease counts from each once it is on disk
	RenewFailures    int64          // failed or timed-out heartbeats
	LastRenewLatency time.Duration  // round trip of the last successful heartbeat (without a look's wait for a release)
	LastRenewAge     time.Duration  // time since the last successful heartbeat was sent (-1: none)
	LeaseLeft        time.Duration  // until this node stops reporting partitions (0: not live)
	RingChanges      int64          // ring views received (joins, leaves, handoffs, rebalances)
	HandoffLooks     int64          // heartbeats sent early to hear of partitions handed to this node (see WithDrain)
	LeaseLosses      int64          // times the deadline passed without a renewal (self-fencing)
	Fenced           bool           // another process took this node id over
	Owned            map[string]int // ring -> partitions owned now
}

// stats is what the loop records for Stats. Guarded by its own mutex: the
// loop writes it, any goroutine reads it.
type stats struct {
	mu          sync.Mutex
	renewals    int64
	async       int64
	failures    int64
	latency     time.Duration
	lastSent    time.Time
	deadline    time.Time
	ringChanges int64
	leaseLosses int64
	looks       int64
}

// renewed counts an answered renewal. It is recorded before the answer's
// views are applied, so that whoever sees a partition a heartbeat brought
// also sees that heartbeat in Stats.
func (s *stats) renewed(res renewResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.renewals++
	if res.asked.async && res.wal.async {
		s.async++
	}
	s.latency = res.rtt()
	s.lastSent = res.sent
}

// applied records what a renewal's answer came to: the new deadline and
// the views applied.
func (s *stats) applied(deadline time.Time, views int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deadline = deadline
	s.ringChanges += int64(views)
}

// addViews counts ring views received.
func (s *stats) addViews(n int) {
	s.mu.Lock()
	s.ringChanges += int64(n)
	s.mu.Unlock()
}

func (s *stats) failed() {
	s.mu.Lock()
	s.failures++
	s.mu.Unlock()
}

func (s *stats) looked() {
	s.mu.Lock()
	s.looks++
	s.mu.Unlock()
}

func (s *stats) lost() {
	s.mu.Lock()
	s.leaseLosses++
	s.mu.Unlock()
}

// Stats returns the client's counters and the partitions it owns now.
func (c *Client) Stats() Stats {
	now := c.clock.Now()
	c.st.mu.Lock()
	out := Stats{
		NodeID:           c.cfg.nodeID,
		Renewals:         c.st.renewals,
		AsyncRenewals:    c.st.async,
		RenewFailures:    c.st.failures,
		LastRenewLatency: c.st.latency,
		LastRenewAge:     -1,
		RingChanges:      c.st.ringChanges,
		HandoffLooks:     c.st.looks,
		LeaseLosses:      c.st.leaseLosses,
	}
	if !c.st.lastSent.IsZero() {
		out.LastRenewAge = now.Sub(c.st.lastSent)
	}
	deadline := c.st.deadline
	c.st.mu.Unlock()
	c.mu.Lock()
	leases := c.leaseList()
	out.Fenced = c.fatal != nil
	c.mu.Unlock()
	out.Owned = make(map[string]int, len(leases))
	for _, l := range leases {
		out.Owned[l.name] = len(l.Values())
	}
	if !c.lost.Load() && !out.Fenced && deadline.After(now) {
		out.LeaseLeft = deadline.Sub(now)
	}
	return out
}

// Healthy returns nil while the client holds a valid lease and its last
// successful heartbeat is less than a TTL old; else why not. Use it for
// liveness and readiness probes.
func (c *Client) Healthy() error {
	c.mu.Lock()
	state, fatal := c.state, c.fatal
	c.mu.Unlock()
	switch {
	case fatal != nil:
		return fatal
	case state == stateClosed:
		return ErrClosed
	case state != stateStarted:
		return ErrNotStarted
	case c.lost.Load():
		return ErrLeaseLost
	}
	s := c.Stats()
	if s.LastRenewAge < 0 || s.LastRenewAge > c.cfg.ttl {
		return fmt.Errorf("%w: no successful heartbeat for %v (TTL %v)", ErrLeaseLost, s.LastRenewAge.Round(time.Millisecond), c.cfg.ttl)
	}
	return nil
}

// HealthHandler answers 200 "ok" while c.Healthy() is nil, else 503 with
// the reason: mount it at /healthz.
func HealthHandler(c *Client) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if err := c.Healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
}
