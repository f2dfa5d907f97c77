package integration

import (
	"database/sql"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests drive the SQL functions directly, as nodes that exist only as
// rows, to pin down protocol steps the chaos test covers only by chance.
// The lease is a minute long so that nothing lapses unless a test says so.

const sqlTTLms = 60000

// sqlNodes is a schema migrated by a real client, then driven by hand.
type sqlNodes struct {
	t       *testing.T
	e       *env
	mu      sync.Mutex        // over version and inc: tests renew from several goroutines
	version map[string]int64  // ring version each node last saw
	inc     map[string]string // incarnation of each node id, "inc-<id>" unless set
	// laterIfBusy: renew says later_if_busy, as a client of schema version
	// 12 on does (without, as an older client)
	laterIfBusy bool
	// ownOnly: renew says own_only, as a client of schema version 15 on
	// does within a few heartbeats of its last view
	ownOnly bool
	// incoming: renew says incoming, as a client does while partitions
	// are pending to its node
	incoming bool
	// ownView: renew says own_view, as a client of schema version 17 on
	// does while its routing is fresh
	ownView bool
	// ownerIDs: renew says owner_ids, as a client of schema version 18 on
	// does when it asks for the routing
	ownerIDs bool
	// async: renew says p_async, as a client of schema version 19 on does
	// while its lease on disk has room
	async bool
	// settleWake: renew says settle_wake, as a client of schema version
	// 20 on does
	settleWake bool
}

func newSQLNodes(t *testing.T) *sqlNodes {
	t.Helper()
	e := newEnv(t, 2*time.Second, 200*time.Millisecond)
	e.inv.ttl = sqlTTLms * time.Millisecond // for the invariant check: the nodes driven by hand hold minute-long leases
	// The only use of a client here: install the schema.
	n := e.startNode("installer", "installer", 1)
	if err := n.client.Close(); err != nil {
		t.Fatal(err)
	}
	return &sqlNodes{t: t, e: e, version: map[string]int64{}, inc: map[string]string{}}
}

// heartbeat is one renew_and_read answer.
type heartbeat struct {
	leaseMS int64
	status  string
	// where the WAL stood, and whether the lease is on disk (version 19)
	walInsert, walFlush int64
	durable             bool
	changes             []struct {
		Ring    string `json:"ring"`
		Version int64  `json:"version"`
		Status  string `json:"status"`
		Busy    bool   `json:"busy"`
		// what TestOwnViewLeavesRoutingOut reads
		OwnView    bool     `json:"own_view"`
		Partitions []int    `json:"partitions"`
		MemberIDs  []string `json:"member_ids"`
		Changed    []int    `json:"changed"`
		// and TestOwnersByIDMatchTheIndexes
		Owners   []int    `json:"owners"`
		OwnerIDs []string `json:"owner_ids"`
		// and TestBurstOfJoinsMovesOnceSettled
		SettlesMS int64 `json:"settles_ms"`
	}
}

// queryRower is where a call of renew runs: a pool, or a transaction
// whose other statements see what the call did.
type queryRower interface {
	QueryRow(query string, args ...any) *sql.Row
}

// renew calls renew_and_read for node id on ring "r" (size 8), sent
// sentAgo before now on the database's clock, releasing released. db is
// where the call runs (nil: the admin pool).
func (s *sqlNodes) renew(db queryRower, id string, claim, scan bool, sentAgo time.Duration, released ...int) (heartbeat, error) {
	if db == nil {
		db = s.e.admin
	}
	s.mu.Lock()
	inc := s.inc[id]
	if inc == "" {
		inc = "inc-" + id
	}
	ring := map[string]any{"ring": "r", "size": 8, "vnodes": 8, "version": s.version[id], "released": released}
	if s.laterIfBusy {
		ring["later_if_busy"] = true
	}
	if s.ownOnly {
		ring["own_only"] = true
	}
	if s.incoming {
		ring["incoming"] = true
	}
	if s.ownView {
		ring["own_view"] = true
	}
	if s.ownerIDs {
		ring["owner_ids"] = true
	}
	if s.settleWake {
		ring["settle_wake"] = true
	}
	rings, _ := json.Marshal([]map[string]any{ring})
	var h heartbeat
	var changes sql.NullString
	async := s.async
	s.mu.Unlock()
	var walInsert, walFlush sql.NullInt64
	err := db.QueryRow(`SELECT lease_ms, node_status, changes::text, wal_insert, wal_flush, durable FROM "`+s.e.schema+`".renew_and_read($1, $2, $3, '', $4::jsonb, $5, $6,
			clock_timestamp() - $7 * interval '1 millisecond', $8)`,
		id, inc, sqlTTLms, string(rings), claim, scan, sentAgo.Milliseconds(), async).Scan(&h.leaseMS, &h.status, &changes, &walInsert, &walFlush, &h.durable)
	h.walInsert, h.walFlush = walInsert.Int64, walFlush.Int64
	if err != nil {
		return h, err
	}
	if changes.Valid {
		if err := json.Unmarshal([]byte(changes.String), &h.changes); err != nil {
			return h, err
		}
		s.mu.Lock()
		for _, c := range h.changes {
			if c.Version > 0 { // a view ('later' and the like carry none)
				s.version[id] = c.Version
			}
		}
		s.mu.Unlock()
	}
	return h, nil
}

// join starts each node as a client does: a heartbeat that takes the id,
// join_rings for ring "r", and a heartbeat that reads the view.
func (s *sqlNodes) join(ids ...string) {
	s.t.Helper()
	for _, id := range ids {
		if _, err := s.renew(nil, id, true, false, 0); err != nil {
			s.t.Fatalf("join %s: %v", id, err)
		}
		inc := s.inc[id]
		if inc == "" {
			inc = "inc-" + id
		}
		var answer string
		if err := s.e.admin.QueryRow(`SELECT "`+s.e.schema+`".join_rings($1, $2, '[{"ring": "r", "size": 8, "vnodes": 8}]', 1000)::text`,
			id, inc).Scan(&answer); err != nil || !strings.Contains(answer, `"status": "ok"`) {
			s.t.Fatalf("join_rings for %s: %s (%v)", id, answer, err)
		}
		if _, err := s.renew(nil, id, false, false, 0); err != nil {
			s.t.Fatalf("first view of %s: %v", id, err)
		}
	}
}

// takeOver starts incarnation inc of node id, which takes the id over and
// holds until the old incarnation's lease would have ended.
func (s *sqlNodes) takeOver(id, inc string) {
	s.t.Helper()
	s.inc[id], s.version[id] = inc, 0
	if _, err := s.renew(nil, id, true, false, 0); err != nil {
		s.t.Fatalf("%s takes %s over: %v", inc, id, err)
	}
}

// partitionRow is one row of the partitions table.
type partitionRow struct {
	owner, next string
	epoch       int64
}

// expectNoneNamed fails the test for every partition of ring "r" that
// still names the evicted node id as owner or pending owner.
func (s *sqlNodes) expectNoneNamed(id string) {
	s.t.Helper()
	for p, row := range s.rows() {
		if row.owner == id || row.next == id {
			s.t.Errorf("partition %d still names the evicted %s: %+v", p, id, row)
		}
	}
}

// rows returns ring "r"'s partitions table.
func (s *sqlNodes) rows() map[int]partitionRow {
	s.t.Helper()
	rows, err := s.e.admin.Query(`SELECT partition, coalesce(owner, ''), coalesce(next_owner, ''), epoch
		FROM "` + s.e.schema + `".partitions WHERE ring = 'r'`)
	if err != nil {
		s.t.Fatal(err)
	}
	defer rows.Close()
	out := map[int]partitionRow{}
	for rows.Next() {
		var p int
		var r partitionRow
		if err := rows.Scan(&p, &r.owner, &r.next, &r.epoch); err != nil {
			s.t.Fatal(err)
		}
		out[p] = r
	}
	if err := rows.Err(); err != nil {
		s.t.Fatal(err)
	}
	return out
}

// handingOff lists the partitions node from must release to node to.
func (s *sqlNodes) handingOff(from, to string) []int {
	s.t.Helper()
	var ps []int
	rows, err := s.e.admin.Query(`SELECT partition FROM "`+s.e.schema+`".partitions
		WHERE ring = 'r' AND owner = $1 AND next_owner = $2 ORDER BY partition`, from, to)
	if err != nil {
		s.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var p int
		if err := rows.Scan(&p); err != nil {
			s.t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

func (s *sqlNodes) expiresAt(id string) time.Time {
	s.t.Helper()
	var at time.Time
	if err := s.e.admin.QueryRow(`SELECT expires_at FROM "`+s.e.schema+`".nodes WHERE node_id = $1`, id).Scan(&at); err != nil {
		s.t.Fatalf("lease of %s: %v", id, err)
	}
	return at
}

func (s *sqlNodes) expire(ids ...string) {
	s.t.Helper()
	for _, id := range ids {
		if _, err := s.e.admin.Exec(`UPDATE "`+s.e.schema+`".nodes SET expires_at = now() - interval '1 second' WHERE node_id = $1`, id); err != nil {
			s.t.Fatal(err)
		}
	}
}

func (s *sqlNodes) exists(id string) bool {
	s.t.Helper()
	var n int
	if err := s.e.admin.QueryRow(`SELECT count(*) FROM "`+s.e.schema+`".nodes WHERE node_id = $1`, id).Scan(&n); err != nil {
		s.t.Fatal(err)
	}
	return n == 1
}

// TestDelayedHeartbeatLeaseCountsFromSend: a heartbeat that arrives late
// but within a quarter of a lease renews, and the lease it grants counts
// from when it was sent, not from its arrival: a node that fails right
// after sending a heartbeat the network delays is not kept alive in the
// database past TTL of its failure. An older attempt landing after a newer
// one never shortens the lease the newer one granted.
func TestDelayedHeartbeatLeaseCountsFromSend(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a")
	delay := sqlTTLms / 8 * time.Millisecond // well within a quarter of a lease
	ttl := sqlTTLms * time.Millisecond
	// A lease that ends soon, as one a heartbeat ago would (the join's is
	// newer than the heartbeat below claims to be).
	if _, err := s.e.admin.Exec(`UPDATE "` + s.e.schema + `".nodes SET expires_at = now() + interval '1 second' WHERE node_id = 'a'`); err != nil {
		t.Fatal(err)
	}
	h, err := s.renew(nil, "a", false, false, delay)
	if err != nil {
		t.Fatal(err)
	}
	if h.status != "ok" {
		t.Fatalf("delayed heartbeat answered %q, want ok", h.status)
	}
	if left := time.Duration(h.leaseMS) * time.Millisecond; left > ttl-delay || left < ttl-delay-5*time.Second {
		t.Errorf("a heartbeat sent %v ago granted %v of lease, want TTL - %v = %v", delay, left, delay, ttl-delay)
	}
	if _, err := s.renew(nil, "a", false, false, 0); err != nil {
		t.Fatal(err)
	}
	fresh := s.expiresAt("a")
	if _, err := s.renew(nil, "a", false, false, delay); err != nil {
		t.Fatal(err)
	}
	if got := s.expiresAt("a"); !got.Equal(fresh) {
		t.Errorf("an older heartbeat landing after a newer one moved the lease end from %v to %v", fresh, got)
	}
}

// TestLateHeartbeatConfirmsReleases: a heartbeat that arrives late extends
// nothing, but the releases it carries take effect at once (the node
// stopped using those partitions before it sent them), so a node that
// turned slow does not hold up a handoff for the rest of its lease. A late
// heartbeat from a node whose lease has lapsed confirms nothing.
func TestLateHeartbeatConfirmsReleases(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a")
	s.join("b") // a must hand half of the ring to b
	moving := s.handingOff("a", "b")
	if len(moving) != 4 {
		t.Fatalf("after b joined, a hands %v to b, want 4 partitions: %v", moving, s.rows())
	}
	before := s.rows()
	leaseEnd := s.expiresAt("a")

	// Late: sent a quarter of a lease and more ago.
	h, err := s.renew(nil, "a", false, false, sqlTTLms/4*time.Millisecond+time.Second, moving[:2]...)
	if err != nil {
		t.Fatal(err)
	}
	if h.status != "ok" || len(h.changes) != 0 {
		t.Errorf("late heartbeat answered status %q with %d ring changes, want ok and none", h.status, len(h.changes))
	}
	if got := s.expiresAt("a"); !got.Equal(leaseEnd) {
		t.Errorf("late heartbeat moved a's lease end from %v to %v", leaseEnd, got)
	}
	after := s.rows()
	for p, row := range before {
		want := row
		if p == moving[0] || p == moving[1] {
			want = partitionRow{owner: "b", epoch: row.epoch + 1}
		}
		if after[p] != want {
			t.Errorf("partition %d after a's late release: %+v, want %+v (before: %+v)", p, after[p], want, row)
		}
	}

	// Lapsed: the same late heartbeat releases nothing (the node's rows are
	// left for whoever evicts it).
	s.expire("a")
	h, err = s.renew(nil, "a", false, false, sqlTTLms/4*time.Millisecond+time.Second, moving[2:]...)
	if err != nil {
		t.Fatal(err)
	}
	if h.status != "lapsed" {
		t.Errorf("late heartbeat of a lapsed node answered %q, want lapsed", h.status)
	}
	for _, p := range moving[2:] {
		if got := s.rows()[p]; got != before[p] {
			t.Errorf("partition %d after a lapsed node's late release: %+v, want it unchanged (%+v)", p, got, before[p])
		}
	}
}

func (s *sqlNodes) releasedCount() int {
	s.t.Helper()
	var n int
	if err := s.e.admin.QueryRow(`SELECT count(*) FROM "` + s.e.schema + `".partitions WHERE ring = 'r' AND released`).Scan(&n); err != nil {
		s.t.Fatal(err)
	}
	return n
}

// TestRenewalAtLeaseEndKeepsPartitions: a node whose renewal is in flight
// as its lease ends holds its row; an evictor that evicts another node
// meanwhile must not take it for dead and give its partitions away. It did
// (its rebalance read the old lease end), and the renewal, whose view was
// read before the evictor committed, kept reporting them: two reporters.
func TestRenewalAtLeaseEndKeepsPartitions(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a", "b", "c", "d")
	var moving []int
	for _, to := range []string{"b", "c", "d"} {
		moving = append(moving, s.handingOff("a", to)...)
	}
	if _, err := s.renew(nil, "a", false, false, 0, moving...); err != nil { // a hands them over
		t.Fatal(err)
	}
	before := s.rows()
	if len(s.owned(before, "c")) == 0 {
		t.Fatalf("c owns nothing: %v", before)
	}
	s.expire("c", "d")
	renewal, err := s.e.admin.Begin() // c's renewal, not yet committed
	if err != nil {
		t.Fatal(err)
	}
	defer renewal.Rollback()
	if _, err := renewal.Exec(`UPDATE "` + s.e.schema + `".nodes SET expires_at = now() + interval '1 minute' WHERE node_id = 'c'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.renew(nil, "a", false, true, 0); err != nil { // a scans: evicts d
		t.Fatal(err)
	}
	if s.exists("d") != false {
		t.Fatal("a's scan did not evict d")
	}
	for p, r := range s.rows() {
		if before[p].owner == "c" && r.owner != "c" {
			t.Errorf("partition %d moved from c, whose renewal was in flight, to %q", p, r.owner)
		}
	}
	if err := renewal.Commit(); err != nil {
		t.Fatal(err)
	}
}
