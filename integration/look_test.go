package integration

import (
	"database/sql"
	"encoding/json"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// look is one renew_and_read call of node id on ring "r" that waits for
// partitions handed to it (incoming), letting the database wait awaitMS for
// the ring to move, and with onItsWayMS, that long in all while the release
// is on its way (await_release_ms); it returns ring "r"'s answer and the
// call's time.
func (s *sqlNodes) look(id string, awaitMS int, onItsWayMS ...int) (answer map[string]any, took time.Duration) {
	s.t.Helper()
	s.mu.Lock()
	req := map[string]any{"ring": "r", "size": 8, "vnodes": 8, "version": s.version[id], "incoming": true, "await_ms": awaitMS}
	if len(onItsWayMS) > 0 {
		req["await_release_ms"] = onItsWayMS[0]
	}
	rings, _ := json.Marshal([]map[string]any{req})
	s.mu.Unlock()
	var changes sql.NullString
	began := time.Now()
	if err := s.e.admin.QueryRow(`SELECT changes::text FROM "`+s.e.schema+`".renew_and_read($1, $2, $3, '', $4::jsonb, false, false, clock_timestamp())`,
		id, "inc-"+id, sqlTTLms, string(rings)).Scan(&changes); err != nil {
		s.t.Fatalf("look of %s: %v", id, err)
	}
	took = time.Since(began)
	var out []map[string]any
	if changes.Valid {
		if err := json.Unmarshal([]byte(changes.String), &out); err != nil {
			s.t.Fatal(err)
		}
	}
	for _, ch := range out {
		if ch["ring"] == "r" {
			return ch, took
		}
	}
	s.t.Fatalf("look of %s: no answer for ring r in %s", id, changes.String)
	return nil, took
}

// wantGiven fails unless a look's answer, after took, is b's view with
// every partition of moving.
func wantGiven(t *testing.T, answer map[string]any, took time.Duration, moving []int) {
	t.Helper()
	if answer["status"] != "ok" {
		t.Fatalf("after %v the look answered %v; want b's view with the partitions released to it", took, answer)
	}
	var got []int
	for _, p := range answer["partitions"].([]any) {
		got = append(got, int(p.(float64)))
	}
	for _, p := range moving {
		if !slices.Contains(got, p) {
			t.Errorf("partition %d released to b is not in b's view %v", p, got)
		}
	}
}

// TestLookWaitsForTheRelease: a look (a heartbeat sent when partitions
// handed to the node are due) may wait in the database for the owner's
// release, and answers within a few milliseconds of its commit with the
// view that gives them, saying how long it waited; without a release it
// answers when its wait ends, with the dues. Before, a look that came
// just before the release was answered at once, and the node heard of the
// partitions only with its next look, a poll or more later (CI: a heal's
// gap 13 ms past its bound).
func TestLookWaitsForTheRelease(t *testing.T) {
	s := newSQLNodes(t)
	moving := s.toldHandoff()
	if _, err := s.renew(nil, "b", false, false, 0); err != nil { // b at the ring's version
		t.Fatal(err)
	}

	// No release: the look answers when its wait ends, with the dues.
	answer, took := s.look("b", 150)
	if answer["status"] != "incoming" || took < 150*time.Millisecond || took > time.Second {
		t.Errorf("a look that nothing answers: %v after %v; want the dues ('incoming') after its wait of 150ms", answer, took)
	}
	if w, _ := answer["waited_ms"].(float64); w < 150 || w > 1000 {
		t.Errorf("waited_ms %v, want 150 or a little more", answer["waited_ms"])
	}

	// With less than half of its lease left, a look does not wait: the
	// renewal after the wait counts the lease from the call's start.
	if _, err := s.e.admin.Exec(`UPDATE "` + s.e.schema + `".nodes SET expires_at = now() + interval '20 seconds' WHERE node_id = 'b'`); err != nil {
		t.Fatal(err)
	}
	answer, took = s.look("b", 150)
	if w, _ := answer["waited_ms"].(float64); w != 0 || took > 100*time.Millisecond {
		t.Errorf("with 20s of a 60s lease left, a look waited %vms and took %v; want no wait", answer["waited_ms"], took)
	}

	// The release comes 200ms into a wait of 5s.
	var released time.Time
	done := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		_, err := s.renew(nil, "a", false, false, 0, moving...)
		released = time.Now()
		done <- err
	}()
	answer, took = s.look("b", 5000)
	heard := time.Now()
	if err := <-done; err != nil {
		t.Fatalf("a's release: %v", err)
	}
	wantGiven(t, answer, took, moving)
	if took < 150*time.Millisecond || heard.Sub(released) > 100*time.Millisecond {
		t.Errorf("the look took %v and answered %v after the release's answer; want about 200ms, within a few ms of the release",
			took, heard.Sub(released))
	}
	if w, _ := answer["waited_ms"].(float64); w < 150 || w > float64(took.Milliseconds()+1) {
		t.Errorf("waited_ms %v, want about 200 and at most the call's %v", answer["waited_ms"], took)
	}
	t.Logf("the look took %v; answered %v after the release's answer came back", took, heard.Sub(released))
}

// TestViewBehindABusyLockSaysLater: a heartbeat whose view is behind and
// whose member row is locked (a batch of joins share-locks the members)
// past its lock wait answers 'later' (busy), so that the client asks again
// soon, rather than nothing, which left the view for its next regular
// heartbeat (CI: a crashed node's partitions reported 20-29 ms past G3's
// bound). Only to a client that says it backs off from those
// (later_if_busy): an older one gets nothing, as it did, for it would ask
// again at once, and the oldest fail on a status they do not know.
func TestViewBehindABusyLockSaysLater(t *testing.T) {
	s := newSQLNodes(t)
	s.join("a", "b")
	if _, err := s.renew(nil, "a", false, false, 0); err != nil {
		t.Fatal(err)
	}
	s.join("c") // a's view is behind now
	tx, err := s.e.admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`SELECT 1 FROM "` + s.e.schema + `".members WHERE ring = 'r' AND node_id = 'a' FOR SHARE`); err != nil {
		t.Fatal(err)
	}
	h, err := s.renew(nil, "a", false, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.changes) != 0 {
		t.Errorf("to a client before version 12, a heartbeat whose view is behind a busy lock answered %+v; want nothing", h.changes)
	}
	s.laterIfBusy = true
	h, err = s.renew(nil, "a", false, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	var later bool
	for _, ch := range h.changes {
		later = later || ch.Ring == "r" && ch.Status == "later" && ch.Busy
	}
	if !later {
		t.Errorf("a heartbeat whose view is behind a busy lock answered %+v; want ring r 'later', busy", h.changes)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	// Without the lock the view comes; with a view current, nothing.
	for _, want := range []string{"ok", ""} {
		h, err = s.renew(nil, "a", false, false, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		for _, ch := range h.changes {
			if ch.Ring == "r" {
				got = ch.Status
			}
		}
		if got != want {
			t.Errorf("then: ring r %q, want %q", got, want)
		}
	}
}

// TestLookWaitsForAReleaseOnItsWay: past its await_ms a look goes on
// waiting while the owner of a partition pending to it is in the call that
// releases it (sent ahead of its drain's end, which commits at that end),
// and answers within a few milliseconds of the commit with the view that
// gives them. The node's due counts from when its owner was told in the
// database, the owner's drain from when the answer reached it, up to 190
// ms later for the view of a rebalance of a whole ring (TestRollout): a
// look that gave up at its await_ms came a few milliseconds before the
// commit, and the next a poll later.
func TestLookWaitsForAReleaseOnItsWay(t *testing.T) {
	s := newSQLNodes(t)
	moving := s.toldHandoff()
	if _, err := s.renew(nil, "b", false, false, 0); err != nil { // b at the ring's version
		t.Fatal(err)
	}

	// Nothing on its way: the look answers when its await_ms ends.
	answer, took := s.look("b", 50, 2000)
	if answer["status"] != "incoming" || took > 500*time.Millisecond {
		t.Errorf("with no release on its way a look answered %v after %v; want the dues after its await_ms of 50ms", answer, took)
	}

	var released time.Time
	done := make(chan error, 1)
	release := func(afterMS int) {
		go func() {
			_, err := s.releaseAhead("a", afterMS, 0, moving...)
			released = time.Now()
			done <- err
		}()
		if err := s.untilSleeping(); err != nil { // a's call sleeps until its drain's end
			t.Fatal(err)
		}
	}

	// A client before version 14 does not say await_release_ms: it waits
	// its await_ms alone, as it did, though a's releasing call is on its
	// way (its lock, held here as that call holds it).
	tx, err := s.e.admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.Exec(`SELECT pg_advisory_xact_lock($1)`, s.releaseKey("a")); err != nil {
		t.Fatal(err)
	}
	answer, took = s.look("b", 50)
	_ = tx.Rollback()
	if answer["status"] != "incoming" || took > 500*time.Millisecond {
		t.Errorf("without await_release_ms a look answered %v after %v; want the dues after its await_ms of 50ms", answer, took)
	}

	release(400)
	answer, took = s.look("b", 50, 2000)
	heard := time.Now()
	if err := <-done; err != nil {
		t.Fatalf("a's release: %v", err)
	}
	wantGiven(t, answer, took, moving)
	if took < 200*time.Millisecond || heard.Sub(released) > 100*time.Millisecond {
		t.Errorf("the look took %v and answered %v after the release's answer; want past its await_ms of 50ms, within a few ms of the release",
			took, heard.Sub(released))
	}
	t.Logf("the look took %v; answered %v after the release's answer came back", took, heard.Sub(released))
}

// TestReleaseAwaitedSleepsUntilTheCommit: a look's wait for a release on
// its way (release_awaited) says false at once, and takes no lock, while
// no call holds the owner's release lock. While one does (exclusively, as
// ring_work holds it), the look sleeps in the lock's queue until that call
// commits, or until its bound. It asks for the lock shared, so every look
// waiting wakes at the one commit (asked for exclusively, the 89 looks of
// a roll-out were granted it one after another, the last 125 ms after the
// commit); and it leaves no lock behind, nor a lock_timeout of its own:
// a lock it kept would hold up the owner's next releasing call until the
// look's commit.
func TestReleaseAwaitedSleepsUntilTheCommit(t *testing.T) {
	s := newSQLNodes(t)
	q := `"` + s.e.schema + `"`
	k := s.releaseKey("a")
	key := strconv.FormatInt(k, 10)
	awaited := func(boundMS int) (held bool, took time.Duration) {
		tx, err := s.e.admin.Begin()
		if err != nil {
			t.Error(err)
			return false, 0
		}
		defer func() { _ = tx.Rollback() }()
		if _, err := tx.Exec(`SET LOCAL lock_timeout = '20ms'`); err != nil { // as renew_and_read sets it
			t.Error(err)
			return false, 0
		}
		began := time.Now()
		if err := tx.QueryRow(`SELECT `+q+`.release_awaited(ARRAY[`+key+`]::bigint[], clock_timestamp() + $1 * interval '1 millisecond')`,
			boundMS).Scan(&held); err != nil {
			t.Error(err)
			return false, 0
		}
		took = time.Since(began)
		var locks int
		var timeout string
		if err := tx.QueryRow(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`).Scan(&locks); err != nil {
			t.Error(err)
		}
		if err := tx.QueryRow(`SHOW lock_timeout`).Scan(&timeout); err != nil {
			t.Error(err)
		}
		if locks != 0 || timeout != "20ms" {
			t.Errorf("release_awaited left %d advisory locks and lock_timeout %s in the transaction; want none and 20ms", locks, timeout)
		}
		return held, took
	}

	if held, took := awaited(2000); held || took > time.Second {
		t.Errorf("with no release on its way: %v after %v; want false at once", held, took)
	}

	owner, err := s.e.admin.Begin() // a's releasing call, as ring_work holds it
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = owner.Rollback() }()
	if _, err := owner.Exec(`SELECT pg_advisory_xact_lock(` + key + `)`); err != nil {
		t.Fatal(err)
	}
	if held, took := awaited(300); !held || took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("with a release on its way that does not end: %v after %v; want true at its bound of 300ms", held, took)
	}

	// Three looks wait; the owner's call commits.
	const looks = 3
	type result struct {
		held bool
		at   time.Time
	}
	results := make(chan result, looks)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // a failure below rolls the owner back, which ends their waits
	for range looks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			held, _ := awaited(20000)
			results <- result{held, time.Now()}
		}()
	}
	var modes []string
	deadline := time.Now().Add(10 * time.Second)
	for len(modes) < looks && time.Now().Before(deadline) {
		modes = s.waitersOf(k)
		time.Sleep(5 * time.Millisecond)
	}
	if len(modes) != looks || slices.ContainsFunc(modes, func(m string) bool { return m != "ShareLock" }) {
		t.Errorf("the looks waiting asked for the lock as %v; want %d ShareLock", modes, looks)
	}
	if err := owner.Commit(); err != nil {
		t.Fatal(err)
	}
	committed := time.Now()
	for range looks {
		r := <-results
		if !r.held || r.at.Sub(committed) > 2*time.Second {
			t.Errorf("a look waiting said %v %v after the commit; want true at once (its bound: 20s)", r.held, r.at.Sub(committed))
		}
	}
}

// TestReleaseOutwaitsALooksTry: a look that polls for a release not yet
// begun holds the owner's release lock, shared, for the moment of each
// try, and on a starved CPU that moment can outlast a heartbeat's
// lock_timeout of 20 ms. The owner's releasing call waits it out
// (hold_release_key) rather than failing: waited for under that timeout,
// the whole release was undone and sent again a heartbeat later.
func TestReleaseOutwaitsALooksTry(t *testing.T) {
	s := newSQLNodes(t)
	moving := s.toldHandoff()
	q := `"` + s.e.schema + `"`

	look, err := s.e.admin.Begin() // b's try, held as long as a descheduled backend might
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = look.Rollback() }()
	if _, err := look.Exec(`SELECT pg_advisory_xact_lock_shared($1)`, s.releaseKey("a")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // a failure below lets b's lock go (deferred), which ends a's wait
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := s.releaseAhead("a", 0, 0, moving...)
		done <- err
	}()
	key := s.releaseKey("a")
	waiting := func() bool { return slices.Contains(s.waitersOf(key), "ExclusiveLock") }
	deadline := time.Now().Add(10 * time.Second)
	for !waiting() {
		if time.Now().After(deadline) {
			t.Fatal("a's releasing call never waited for its release lock")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the scenario: the try outlasts lock_timeout five times over
	if err := look.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("a's release: %v", err)
	}
	var confirmed int
	ids, _ := json.Marshal(moving)
	if err := s.e.admin.QueryRow(`SELECT count(*) FROM `+q+`.partitions WHERE ring = 'r'
		AND partition IN (SELECT jsonb_array_elements_text($1::jsonb)::integer) AND (owner = 'b' OR released)`, string(ids)).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	if confirmed != len(moving) {
		t.Errorf("after a look's try held the release lock 100 ms, %d of the %d partitions a released are released or b's; want all", confirmed, len(moving))
	}
}

// releaseKey is the key of owner's release lock on ring "r" as the
// functions compute it: release_key reads current_schema(), which is the
// schema inside them and the caller's own outside.
func (s *sqlNodes) releaseKey(owner string) int64 {
	s.t.Helper()
	tx, err := s.e.admin.Begin()
	if err != nil {
		s.t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.Exec(`SELECT pg_catalog.set_config('search_path', $1, true)`, `"`+s.e.schema+`"`); err != nil {
		s.t.Fatal(err)
	}
	var key int64
	if err := tx.QueryRow(`SELECT "`+s.e.schema+`".release_key('r', $1)`, owner).Scan(&key); err != nil {
		s.t.Fatal(err)
	}
	return key
}

// waitersOf is the modes of the requests waiting for the advisory lock of
// key k, and of no other (pg_locks shows a bigint key as its high and low
// 32 bits: classid, objid).
func (s *sqlNodes) waitersOf(k int64) []string {
	s.t.Helper()
	rows, err := s.e.admin.Query(`SELECT mode FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
		AND objsubid = 1 AND classid = $1::bigint::oid AND objid = $2::bigint::oid`, int64(uint32(uint64(k)>>32)), int64(uint32(k)))
	if err != nil {
		s.t.Fatal(err)
	}
	defer rows.Close()
	var modes []string
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			s.t.Fatal(err)
		}
		modes = append(modes, m)
	}
	if err := rows.Err(); err != nil {
		s.t.Fatal(err)
	}
	return modes
}

// TestReleaseAwaitedWakesForEachOwner: a look that waits for partitions
// of two owners whose releasing calls are both on their way must not sleep
// until the one it found first commits: the other's commit, which moves
// the ring, would go unseen. With several keys it sleeps 10 ms at a time,
// and its caller looks again in between.
func TestReleaseAwaitedWakesForEachOwner(t *testing.T) {
	s := newSQLNodes(t)
	q := `"` + s.e.schema + `"`
	for _, owner := range []string{"a", "c"} {
		tx, err := s.e.admin.Begin() // owner's releasing call, as ring_work holds it
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }()
		if _, err := tx.Exec(`SELECT pg_advisory_xact_lock($1)`, s.releaseKey(owner)); err != nil {
			t.Fatal(err)
		}
	}
	var held bool
	began := time.Now()
	if err := s.e.admin.QueryRow(`SELECT `+q+`.release_awaited(ARRAY[$1, $2]::bigint[], clock_timestamp() + interval '5 seconds')`,
		s.releaseKey("a"), s.releaseKey("c")).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); !held || took > 2*time.Second {
		t.Errorf("with two releases on their way, neither ending: %v after %v; want true within its slice of 10 ms, not at its bound of 5s", held, took)
	}
}
