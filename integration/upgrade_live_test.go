package integration

import (
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// reporter is anything that reports partitions: a node of this release or
// of an older one.
type reporter struct {
	name   string
	values func() []int
}

func newReporter(n *node) reporter {
	return reporter{n.id, func() []int { return n.leases["r"].Values() }}
}

func oldReporter(o *oldNode) reporter { return reporter{o.id, o.values} }

// g2Watch reads every reporter without pause and records each partition
// that two reported at the same instant (read twice a round, as checker
// does: if a reports p in both of its reads and b in a read between them,
// they reported it at once).
type g2Watch struct {
	mu         sync.Mutex
	reporters  []reporter
	violations []string
	rounds     int
	stopc      chan struct{}
	done       chan struct{}
}

func watchG2(t *testing.T) *g2Watch {
	w := &g2Watch{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stopc:
				return
			default:
			}
			w.mu.Lock()
			rs := slices.Clone(w.reporters)
			w.mu.Unlock()
			first, second := make([][]int, len(rs)), make([][]int, len(rs))
			for i, r := range rs {
				first[i] = r.values()
			}
			for i, r := range rs {
				second[i] = r.values()
			}
			w.mu.Lock()
			w.rounds++
			for a := range rs {
				for b := range rs {
					between := first[b]
					if b < a {
						between = second[b]
					}
					if a == b || len(w.violations) >= 10 {
						continue
					}
					for _, p := range intersect(intersect(first[a], second[a]), between) {
						w.violations = append(w.violations, fmt.Sprintf("G2: partition %d reported by %s and %s at once", p, rs[a].name, rs[b].name))
					}
				}
			}
			w.mu.Unlock()
			time.Sleep(100 * time.Microsecond)
		}
	}()
	t.Cleanup(func() {
		close(w.stopc)
		<-w.done
		t.Logf("G2 watch: %d rounds", w.rounds)
		for _, v := range w.violations {
			t.Error(v)
		}
	})
	return w
}

func (w *g2Watch) add(r reporter) {
	w.mu.Lock()
	w.reporters = append(w.reporters, r)
	w.mu.Unlock()
}

// waitShared waits until every partition of ring r (64) is reported by
// exactly one of rs and each reports 12 or 13, or fails.
func waitShared(t *testing.T, within time.Duration, rs ...reporter) {
	t.Helper()
	describe := func() (string, bool) {
		count := map[string]int{}
		by := make([][]string, 64)
		for _, r := range rs {
			for _, p := range r.values() {
				by[p] = append(by[p], r.name)
				count[r.name]++
			}
		}
		ok := true
		for _, b := range by {
			ok = ok && len(b) == 1
		}
		lo := 64 / len(rs)
		for _, r := range rs {
			ok = ok && (count[r.name] == lo || (64%len(rs) != 0 && count[r.name] == lo+1))
		}
		return fmt.Sprint(count), ok
	}
	if !waitFor(within, func() bool { _, ok := describe(); return ok }) {
		got, _ := describe()
		t.Fatalf("ring r not shared among %d reporters within %v: %s", len(rs), within, got)
	}
}

// TestUpgradeWithLiveNodes: nodes of each release the library upgrades run
// on ring r, driven as their client drove them; the first node of this
// release migrates the schema under them and joins with a second one.
// Nothing is reported twice throughout; the old nodes keep their member
// rows and partitions and share the ring with the new ones. Then an old
// node's lease lapses: a node of a release that joins with join_rings (5
// and later) rejoins; an older one reads answers it does not know, reports
// nothing, and the partitions it held wait until it stops. When the old
// nodes stop, the new ones take the ring.
func TestUpgradeWithLiveNodes(t *testing.T) {
	for _, old := range oldSchemas {
		t.Run(old.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, 2*time.Second, 200*time.Millisecond)
			installOld(t, e, old.file, old.version)
			w := watchG2(t)
			var olds []*oldNode
			var all []reporter
			for i := range 3 {
				o := startOldNode(t, e, fmt.Sprintf("old-%d", i), old.client)
				olds = append(olds, o)
				all = append(all, oldReporter(o))
				w.add(oldReporter(o))
			}
			waitShared(t, 20*time.Second, all...)

			for _, id := range []string{"new-1", "new-2"} {
				n := e.startNode(id, "r", 64)
				all = append(all, newReporter(n))
				w.add(newReporter(n))
			}
			if v := schemaVersionOf(t, e.admin, e.schema); v != leasering.SchemaVersion {
				t.Fatalf("schema at version %d after the first new node started, want %d", v, leasering.SchemaVersion)
			}
			if old.version < 8 {
				// The upgrade to version 8 cannot tell whether its server
				// just took over from another: it starts a grace of the
				// longest TTL, the default (10 s) for rows that never said
				// theirs.
				var grace float64
				if err := e.admin.QueryRow(`SELECT extract(epoch FROM grace_until - noticed_at) FROM "` + e.schema + `".server_identity`).Scan(&grace); err != nil {
					t.Fatal(err)
				}
				if grace != 10 {
					t.Errorf("the upgrade from version %d started a grace of %vs, want 10s", old.version, grace)
				}
			}
			waitShared(t, 20*time.Second, all...)
			for _, o := range olds {
				var claimedBy sql.NullString
				if err := e.admin.QueryRow(`SELECT claimed_by FROM "`+e.schema+`".members WHERE ring = 'r' AND node_id = $1`, o.id).Scan(&claimedBy); err != nil || claimedBy.String != o.inc {
					t.Errorf("%s's member row after the upgrade: claimed by %q (%v), want %q", o.id, claimedBy.String, err, o.inc)
				}
			}

			lapsing := olds[0]
			held := lapsing.values()
			lapsing.mu.Lock()
			lapsing.lapseNext = true
			lapsing.mu.Unlock()
			if !waitFor(10*time.Second, func() bool { lapsing.mu.Lock(); defer lapsing.mu.Unlock(); return lapsing.lapsed }) {
				t.Fatal("the lapsing node's heartbeat did not run")
			}
			n := e.startNode("new-3", "r", 64) // the ring changes
			all = append(all, newReporter(n))
			w.add(newReporter(n))
			if old.client.joinRings {
				waitShared(t, 20*time.Second, all...)
			} else {
				// Its client fails every heartbeat from now on and stops
				// reporting once its last lease ends; what it held stays
				// its in the database, and nobody reports it.
				if !waitFor(10*time.Second, func() bool {
					lapsing.mu.Lock()
					unreadable := lapsing.unreadable
					lapsing.mu.Unlock()
					return unreadable >= 3 && len(lapsing.values()) == 0
				}) {
					t.Fatalf("%s still reads its answers or reports %v after its lease lapsed", lapsing.id, lapsing.values())
				}
				for _, p := range held {
					var owner string
					if err := e.admin.QueryRow(`SELECT coalesce(owner, '') FROM "`+e.schema+`".partitions WHERE ring = 'r' AND partition = $1`, p).Scan(&owner); err != nil || owner != lapsing.id {
						t.Errorf("partition %d, held by %s before its lease lapsed, is %q's (%v)", p, lapsing.id, owner, err)
					}
				}
				lapsing.stop()
				waitShared(t, 20*time.Second, all[1:]...)
			}

			for _, o := range olds {
				o.stop()
			}
			waitShared(t, 20*time.Second, all[3:]...)
		})
	}
}
