package integration

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
)

// nodeLog is a slog handler that keeps a client's last log lines (every
// heartbeat, at debug level), for the first G3 report.
type nodeLog struct {
	mu       sync.Mutex
	entries  []logEntry
	warnings bool // keep only warnings and errors
}

type logEntry struct {
	at   time.Time
	line string
}

func (l *nodeLog) Enabled(_ context.Context, lv slog.Level) bool {
	return !l.warnings || lv >= slog.LevelWarn
}
func (l *nodeLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *nodeLog) WithGroup(string) slog.Handler      { return l }

func (l *nodeLog) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(strings.TrimPrefix(rec.Message, "leasering: "))
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.entries) >= 200 {
		l.entries = append(l.entries[:0], l.entries[100:]...)
	}
	l.entries = append(l.entries, logEntry{at: time.Now(), line: b.String()})
	return nil
}

// lockWait is a heartbeat (or leave) of this schema seen waiting for a
// lock, for explain: G3 gaps have come from evictions that waited.
type lockWaitKey struct {
	pid   int
	start time.Time // the statement's start, on the database's clock
}

type lockWait struct {
	first, last time.Time // seen waiting, on the local clock
	what, by    string    // the waiting call and who blocked it
}

// leaseAt is a node's lease end (zero: no row) as seen from a time on, both
// on the local clock.
type leaseAt struct {
	at, end time.Time
}

// assignedAt is a partition's owner and pending owner as the database had
// them from a time on.
type assignedAt struct {
	at          time.Time // the end of the read that first saw it: it happened before this
	after       time.Time // the start of the read before: it happened after this
	owner, next string
	part        int
}

// explain says who the database gives partition p to now, and, since the
// gap began, who it gave it to, those nodes' lease ends and what the chaos
// did to them.
func (r *chaosRun) explain(p int, since time.Time, lastBy string) string {
	var owner, next sql.NullString
	var epoch int64
	var ownerLease, nextLease sql.NullFloat64
	err := r.e.admin.QueryRow(`SELECT p.owner, p.next_owner, p.epoch,
			extract(epoch FROM o.expires_at - clock_timestamp()), extract(epoch FROM n.expires_at - clock_timestamp())
		  FROM "`+r.e.schema+`".partitions p
		  LEFT JOIN "`+r.e.schema+`".nodes o ON o.node_id = p.owner
		  LEFT JOIN "`+r.e.schema+`".nodes n ON n.node_id = p.next_owner
		 WHERE p.ring = $1 AND p.partition = $2`, chaosRing, p).Scan(&owner, &next, &epoch, &ownerLease, &nextLease)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "at %s the database gives it to %s (lease left %.3fs), next owner %q (lease left %.3fs), epoch %d; "+
		"last reported at %s by %q",
		r.elapsed(), owner.String, ownerLease.Float64, next.String, nextLease.Float64, epoch, r.at(since), lastBy)
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := map[string]bool{lastBy: true}
	b.WriteString("; assignments:")
	for i, a := range r.assigned[p] {
		if i+1 < len(r.assigned[p]) && r.assigned[p][i+1].at.Before(since.Add(-time.Second)) {
			continue
		}
		fmt.Fprintf(&b, " %s %s>%s", r.at(a.at), a.owner, a.next)
		ids[a.owner], ids[a.next] = true, true
	}
	for id := range ids {
		if id == "" || strings.HasPrefix(id, "(") {
			continue
		}
		fmt.Fprintf(&b, "; %s:", id)
		if f, ok := r.failed[id]; ok {
			fmt.Fprintf(&b, " failed %s,", r.at(f))
			if x, ok := r.survived[id]; ok {
				fmt.Fprintf(&b, " (a renewal sent then survived the slowdown of %s),", r.at(x))
			}
		}
		for i, l := range r.leases[id] {
			if i+1 < len(r.leases[id]) && r.leases[id][i+1].at.Before(since.Add(-time.Second)) {
				continue
			}
			if l.end.IsZero() {
				fmt.Fprintf(&b, " %s gone", r.at(l.at))
			} else {
				fmt.Fprintf(&b, " %s ends %s", r.at(l.at), r.at(l.end))
			}
		}
	}
	var waits []string
	for k, w := range r.waits {
		if w.last.After(since) {
			waits = append(waits, fmt.Sprintf("%s-%s pid %d %s blocked by [%s]", r.at(w.first), r.at(w.last), k.pid, w.what, w.by))
		}
	}
	sort.Strings(waits)
	if len(waits) > 0 {
		fmt.Fprintf(&b, "; lock waits since: %s", strings.Join(waits, " | "))
	}
	if !r.dumped {
		// Once per run: every client's log since shortly before the gap.
		r.dumped = true
		var lines []logEntry
		for id, l := range r.logs {
			l.mu.Lock()
			for _, e := range l.entries {
				if e.at.After(since.Add(-300 * time.Millisecond)) {
					lines = append(lines, logEntry{e.at, id + " " + e.line})
				}
			}
			l.mu.Unlock()
		}
		sort.Slice(lines, func(i, j int) bool { return lines[i].at.Before(lines[j].at) })
		b.WriteString("; client logs since:")
		for _, e := range lines {
			fmt.Fprintf(&b, "\n        %s %s", r.at(e.at), e.line)
		}
	}
	return b.String()
}

// explainG2 says, for a partition reported by nodes a and b at once, who
// the database gave it to lately and what both clients logged.
func (r *chaosRun) explainG2(p int, a, b string) string {
	since := time.Now().Add(-3 * time.Second)
	r.mu.Lock()
	defer r.mu.Unlock()
	var s strings.Builder
	fmt.Fprintf(&s, "at %s; assignments:", r.elapsed())
	for _, x := range r.assigned[p] {
		if x.at.After(since) {
			fmt.Fprintf(&s, " %s %s>%s", r.at(x.at), x.owner, x.next)
		}
	}
	for _, id := range []string{a, b} {
		if f, ok := r.failed[id]; ok {
			fmt.Fprintf(&s, "; %s failed %s", id, r.at(f))
		}
		if l := r.logs[id]; l != nil {
			l.mu.Lock()
			for _, e := range l.entries {
				if e.at.After(since) {
					fmt.Fprintf(&s, "\n        %s %s %s", r.at(e.at), id, e.line)
				}
			}
			l.mu.Unlock()
		}
	}
	return s.String()
}

// watchAssignments polls the partitions table every 10 ms and records
// every change of owner or pending owner, for excuse.
func (r *chaosRun) watchAssignments() (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var prev time.Time
		for {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			// The state read is the database's at some moment between the
			// query's start and the end of its answer: an assignment seen
			// first here was made after the previous read's start and
			// before this read's end. Under load the two ends lie tens of
			// milliseconds apart, so each bound is kept for the rule that
			// needs it (deliver: the end for when the owner could hear, the
			// start before for whether the database decided in time).
			start := time.Now()
			after := prev
			if after.IsZero() {
				after = start
			}
			prev = start
			rows, err := r.e.admin.Query(`SELECT partition, coalesce(owner, ''), coalesce(next_owner, '')
				FROM "`+r.e.schema+`".partitions WHERE ring = $1`, chaosRing)
			if err != nil {
				continue // PostgreSQL restarting
			}
			var seen []assignedAt
			for rows.Next() {
				var a assignedAt
				if rows.Scan(&a.part, &a.owner, &a.next) != nil {
					break
				}
				seen = append(seen, a)
			}
			rows.Close()
			end := time.Now()
			r.mu.Lock()
			for _, a := range seen {
				a.at, a.after = end, after
				h := r.assigned[a.part]
				if len(h) == 0 || h[len(h)-1].owner != a.owner || h[len(h)-1].next != a.next {
					r.assigned[a.part] = append(h, a)
				}
			}
			r.mu.Unlock()
			r.watchLeases()
			r.watchLockWaits()
		}
	}()
	return func() { close(done); <-finished }
}

// watchLockWaits records the calls of this schema waiting for a lock and
// what blocks them, for explain.
func (r *chaosRun) watchLockWaits() {
	rows, err := r.e.admin.Query(`SELECT a.pid, a.query_start, left(a.query, 60),
			coalesce((SELECT string_agg(b.pid || ' ' || b.state || coalesce(' waiting ' || b.wait_event_type || ':' || b.wait_event, '') || ' ' || left(b.query, 60), '; ')
			            FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid))), '')
		  FROM pg_stat_activity a
		 WHERE a.wait_event_type = 'Lock' AND position($1 in a.query) > 0`, `"`+r.e.schema+`".`)
	if err != nil {
		return
	}
	defer rows.Close()
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for rows.Next() {
		var k lockWaitKey
		var what, by string
		if rows.Scan(&k.pid, &k.start, &what, &by) != nil {
			return
		}
		w := r.waits[k]
		if w == nil {
			w = &lockWait{first: now, what: strings.ReplaceAll(what, `"`+r.e.schema+`".`, ""), by: strings.ReplaceAll(by, `"`+r.e.schema+`".`, "")}
			r.waits[k] = w
		}
		w.last = now
	}
}

// watchLeases records every node's lease end, for explain.
func (r *chaosRun) watchLeases() {
	before := time.Now()
	rows, err := r.e.admin.Query(`SELECT node_id, extract(epoch FROM expires_at - clock_timestamp()) FROM "` + r.e.schema + `".nodes`)
	if err != nil {
		return
	}
	defer rows.Close()
	now := time.Now()
	seen := map[string]bool{}
	r.mu.Lock()
	defer r.mu.Unlock()
	for rows.Next() {
		var id string
		var left float64
		if rows.Scan(&id, &left) != nil {
			return
		}
		seen[id] = true
		end := now.Add(time.Duration(left * float64(time.Second)))
		// A lease counts from its heartbeat's send (see renew_and_read), so
		// one that ends more than a TTL after a slowdown began was renewed
		// by a heartbeat sent after it. With pgx (one round trip per call)
		// the heartbeat a node sends within a heartbeat of a slowdown
		// reaches the database within a quarter of a lease when the round
		// trip is under half a TTL, and renews; with lib/pq (two round
		// trips) it never does. The node had not failed then: G3 counts
		// from that send. Only for that heartbeat (sent within two
		// heartbeats of the slowdown, for a late timer) and once per
		// slowdown: its answer, as slow, leaves the node's estimate of the
		// database clock late by the trip back, so no later heartbeat
		// should renew, and one that does is shown, not excused. The end is
		// taken early (from before the query), so a renewal sent before the
		// slowdown never passes for one sent after.
		if sent := before.Add(time.Duration(left*float64(time.Second)) - chaosTTL); r.faulted[id] && sent.After(r.failed[id]) {
			delete(r.faulted, id)
			if into := sent.Sub(r.failed[id]); into <= 2*chaosHeartbeat {
				r.survived[id] = r.failed[id]
				r.failed[id] = sent
				r.renewals++
				r.event("%s renewed by a heartbeat sent at %s, %v into its slowdown", id, r.at(sent), into.Round(time.Millisecond))
			} else if l := r.logs[id]; l != nil {
				r.event("%s renewed by a heartbeat sent at %s, %v into its slowdown (not excused); its log:", id, r.at(sent), into.Round(time.Millisecond))
				l.mu.Lock()
				for _, e := range l.entries {
					if e.at.After(r.failed[id].Add(-time.Second)) {
						r.t.Logf("        %s %s %s", r.at(e.at), id, e.line)
					}
				}
				l.mu.Unlock()
			}
		}
		h := r.leases[id]
		// Re-reads of the same end differ by the query's latency.
		if len(h) == 0 || h[len(h)-1].end.IsZero() || h[len(h)-1].end.Sub(end).Abs() > 20*time.Millisecond {
			r.leases[id] = append(h, leaseAt{at: now, end: end})
		}
	}
	if rows.Err() != nil {
		return
	}
	for id, h := range r.leases {
		if !seen[id] && !h[len(h)-1].end.IsZero() {
			r.leases[id] = append(h, leaseAt{at: now})
		}
	}
}
