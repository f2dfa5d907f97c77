package integration

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/faultproxy"
)

var (
	chaosDuration = flag.Duration("chaos.duration", 40*time.Second,
		"how long TestChaos injects faults (the full run: -chaos.duration=5m)")
	chaosSeed = flag.Uint64("chaos.seed", 0, "TestChaos's seed (0: from the clock); a failure prints it")
)

// chaos parameters: 20 slots for nodes, a lease of two seconds with the
// default ratio of heartbeat to TTL (1/10). Every fault's length is in TTLs.
const (
	chaosSlots      = 20
	chaosRing       = "chaos"
	chaosSize       = 256
	chaosTTL        = 2 * time.Second
	chaosHeartbeat  = 200 * time.Millisecond
	chaosMinHealthy = 5                // faults never leave fewer healthy nodes
	chaosMaxFaulty  = 6                // nodes under a network fault at once
	chaosCheckpoint = 15 * time.Second // faults stop and the ring must settle this often
	chaosSettle     = 10 * chaosTTL    // G4: balanced within this once faults stop
)

// chaosSlot is one place for a node: empty, running, or running under a
// network fault until healAt.
type chaosSlot struct {
	name   string
	since  time.Time // of the fault
	starts int
	n      *node
	fault  string // "", "blackhole", "refuse", "latency"
	healAt time.Time
}

type chaosRun struct {
	t       *testing.T
	begin   time.Time
	e       *env
	rng     *rand.Rand
	chk     *checker
	slots   []*chaosSlot
	counts  map[string]int
	settled []time.Duration
	closing sync.WaitGroup // crashed nodes being torn down
	restart string         // pg_ctlcluster version, when restarts are allowed
	lastPG  time.Time

	mu       sync.Mutex           // guards what the checker reads
	failed   map[string]time.Time // node id -> when the chaos last made it fail or leave
	faulted  map[string]bool      // node id -> slowed, and no renewal has shown it survived that yet
	survived map[string]time.Time // node id -> when a slowdown began that a renewal showed it survived
	impaired map[string][]span    // node id -> when the chaos had it cut off, slowed, crashed or gone
	renewals int                  // slowdowns a renewal showed the node survived
	assigned map[int][]assignedAt // partition -> who the database gave it to, and since when
	leases   map[string][]leaseAt // node id -> its lease ends as the database had them
	waits    map[lockWaitKey]*lockWait
	logs     map[string]*nodeLog // node id -> its client's recent log lines
	dumped   bool                // the first G3 report has shown the logs
}

// TestChaos runs 20 nodes, each with its own pool behind its own proxy, and
// for -chaos.duration applies random joins, graceful leaves, crashes,
// blackholes, refusals, latency close to the TTL and, with
// LEASERING_TEST_PG_RESTART=1, restarts of PostgreSQL. The checker fails it
// on any partition reported by two nodes at once (G2) or left unowned
// longer than TTL + heartbeat while a healthy node exists (G3); every
// checkpoint stops the faults and requires exact balance within the settle
// time (G4). The invariant check (invariants_test.go) runs every second
// and at the end. It runs alone (not parallel): it measures time.
func TestChaos(t *testing.T) {
	seed := *chaosSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -chaos.seed=%d)", seed, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("TestChaos failed with seed %d: rerun with go test ./integration -run TestChaos -chaos.seed=%d", seed, seed)
		}
	})
	e := newEnv(t, chaosTTL, chaosHeartbeat)
	defer e.watchInvariants(time.Second)()
	r := &chaosRun{t: t, e: e, begin: time.Now(), failed: map[string]time.Time{}, faulted: map[string]bool{}, survived: map[string]time.Time{}, impaired: map[string][]span{}, assigned: map[int][]assignedAt{}, leases: map[string][]leaseAt{}, waits: map[lockWaitKey]*lockWait{}, logs: map[string]*nodeLog{}, rng: rand.New(rand.NewPCG(seed, seed>>32)), counts: map[string]int{}}
	if os.Getenv("LEASERING_TEST_PG_RESTART") == "1" {
		versions, _ := filepath.Glob("/etc/postgresql/*")
		if len(versions) == 1 {
			r.restart = filepath.Base(versions[0])
		} else {
			t.Logf("PostgreSQL restarts off: need one cluster under /etc/postgresql, found %v", versions)
		}
	}
	for i := 0; i < chaosSlots; i++ {
		r.slots = append(r.slots, &chaosSlot{name: fmt.Sprintf("c%02d", i)})
	}
	for _, s := range r.slots[:chaosSlots*3/4] {
		r.join(s)
	}
	r.settle("start")
	r.chk = e.startChecker(chaosRing, chaosSize, chaosTTL+chaosHeartbeat)
	r.chk.explain = r.explain
	r.chk.explainG2 = r.explainG2
	r.chk.excuse = r.excuse
	r.chk.deliver, r.chk.hardLimit = r.deliver, chaosTTL+2*chaosHeartbeat+chaosTTL/2 // and a heartbeat's longest round trip
	r.chk.heldImpaired = r.heldImpaired
	stopWatch := r.watchAssignments()
	defer stopWatch()
	r.lastPG = time.Now()

	end := time.Now().Add(*chaosDuration)
	nextCheckpoint := time.Now().Add(chaosCheckpoint)
	for time.Now().Before(end) && !t.Failed() {
		r.healDue(time.Now())
		if time.Now().After(nextCheckpoint) {
			r.settle("checkpoint")
			nextCheckpoint = time.Now().Add(chaosCheckpoint)
			continue
		}
		r.step()
		time.Sleep(time.Duration(50+r.rng.IntN(350)) * time.Millisecond)
	}
	r.settle("end")
	r.chk.finish()
	r.closing.Wait()
	r.report()
}

// step injects one random fault or membership change.
func (r *chaosRun) step() {
	healthy, faulty, empty := r.partition()
	switch x := r.rng.IntN(100); {
	case x < 20 && len(empty) > 0:
		r.join(pick(r.rng, empty))
	case x < 32 && len(healthy) > chaosMinHealthy:
		r.leave(pick(r.rng, healthy))
	case x < 44 && len(healthy) > chaosMinHealthy:
		r.crash(pick(r.rng, healthy))
	case x < 50 && len(faulty) > 0:
		r.crash(pick(r.rng, faulty))
	case x < 65 && len(healthy) > chaosMinHealthy && len(faulty) < chaosMaxFaulty:
		r.cut(pick(r.rng, healthy), "blackhole", faultproxy.Blackhole)
	case x < 78 && len(healthy) > chaosMinHealthy && len(faulty) < chaosMaxFaulty:
		r.cut(pick(r.rng, healthy), "refuse", faultproxy.Refuse)
	case x < 95 && len(healthy) > chaosMinHealthy && len(faulty) < chaosMaxFaulty:
		r.slow(pick(r.rng, healthy))
	case x >= 95 && r.restart != "" && time.Since(r.lastPG) > 20*time.Second:
		r.restartPostgres()
	}
}

func pick[T any](rng *rand.Rand, xs []T) T { return xs[rng.IntN(len(xs))] }

func (r *chaosRun) at(t time.Time) string {
	return fmt.Sprintf("+%.3fs", t.Sub(r.begin).Seconds())
}

func (r *chaosRun) elapsed() string {
	return fmt.Sprintf("+%.3fs", time.Since(r.begin).Seconds())
}

// event logs a chaos action (shown with -v or on failure).
func (r *chaosRun) event(format string, args ...any) {
	r.t.Logf("%s "+format, append([]any{r.elapsed()}, args...)...)
}

func pingable(db *sql.DB) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return db.PingContext(ctx) == nil
}

// settle heals every fault and requires exact balance within chaosSettle.
func (r *chaosRun) settle(why string) {
	r.t.Helper()
	for _, s := range r.slots {
		if s.fault != "" {
			s.healAt = time.Time{}
		}
	}
	r.healDue(time.Now())
	start := time.Now()
	ok := waitFor(chaosSettle, func() bool {
		_, good := converged(r.e.live(), chaosRing, chaosSize, nil)
		return good
	})
	if !ok {
		r.t.Fatalf("G4: %s: not balanced %v after the faults stopped: %s", why, chaosSettle, describe(r.e.live(), chaosRing, chaosSize))
	}
	r.settled = append(r.settled, time.Since(start))
	if why == "checkpoint" {
		r.counts["checkpoint"]++
	}
}

func (r *chaosRun) report() {
	names := make([]string, 0, len(r.counts))
	for k := range r.counts {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	total := 0
	for _, k := range names {
		fmt.Fprintf(&b, " %s=%d", k, r.counts[k])
		if k != "checkpoint" {
			total += r.counts[k]
		}
	}
	longest := time.Duration(0)
	for _, d := range r.settled {
		longest = max(longest, d)
	}
	r.t.Logf("chaos: %v, %d faults and membership changes:%s", *chaosDuration, total, b.String())
	r.mu.Lock()
	r.t.Logf("chaos: %d slowdowns survived by a heartbeat sent after they began (G3 counts from that heartbeat)", r.renewals)
	r.mu.Unlock()
	r.t.Logf("chaos: balanced after each of %d settles, the slowest in %v", len(r.settled), longest.Round(time.Millisecond))
}
