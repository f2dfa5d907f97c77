package integration

import (
	"database/sql"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTakeoverWithNewMetadataLocksRingsInNameOrder: a takeover that brings
// new metadata sends the node's details out again on each of its rings,
// and takes those rings' locks in name order, as every other transaction
// does. It took them in the order it found its member rows, so it could
// hold ring b while it waited for ring a, held by a transaction that goes
// on to b: a deadlock. Rings a and b are each held by a transaction of
// their own; the takeover must be seen waiting for a's, never b's.
func TestTakeoverWithNewMetadataLocksRingsInNameOrder(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	if _, err := s.renew(nil, "x", true, false, 0); err != nil {
		t.Fatal(err)
	}
	for _, ring := range []string{"b", "a"} { // member rows found b first
		arg, _ := json.Marshal([]map[string]any{{"ring": ring, "size": 8, "vnodes": 8}})
		var answer string
		if err := s.e.admin.QueryRow(`SELECT "`+s.e.schema+`".join_rings('x', 'inc-x', $1::jsonb, 1000)::text`, string(arg)).Scan(&answer); err != nil || !strings.Contains(answer, `"ok"`) {
			t.Fatalf("join_rings %s: %s (%v)", ring, answer, err)
		}
	}
	hold := func(ring string) (*sql.Tx, int) {
		tx, err := s.e.admin.Begin()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback() })
		var pid int
		if err := tx.QueryRow(`SELECT pg_backend_pid() FROM "`+s.e.schema+`".rings WHERE name = $1 FOR UPDATE`, ring).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return tx, pid
	}
	holdA, pidA := hold("a")
	holdB, pidB := hold("b")

	conn := openPool(t, s.e.dsn)
	conn.SetMaxOpenConns(1)
	var pid int
	if err := conn.QueryRow(`SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	takeover := func() error {
		_, err := conn.Exec(`SELECT * FROM "`+s.e.schema+`".renew_and_read('x', 'inc-x2', $1, 'new metadata', '[]', true, false, clock_timestamp())`, sqlTTLms)
		return err
	}
	// The takeover waits at most its lock wait (20 ms) and fails: try until
	// a wait is seen.
	seen := false
	deadline := time.Now().Add(20 * time.Second)
	for !seen && time.Now().Before(deadline) {
		done := make(chan error, 1)
		go func() { done <- takeover() }()
		for running := true; running; {
			select {
			case <-done:
				running = false
			default:
				var blockers string
				if err := s.e.admin.QueryRow(`SELECT pg_blocking_pids($1)::text`, pid).Scan(&blockers); err != nil {
					t.Fatal(err)
				}
				switch blockers {
				case "{}":
				case "{" + strconv.Itoa(pidA) + "}":
					seen = true
				default:
					t.Fatalf("the takeover waits for %s (ring a's holder is %d, ring b's %d): it takes ring b before ring a", blockers, pidA, pidB)
				}
			}
		}
	}
	if !seen {
		t.Fatal("the takeover was never seen waiting for ring a")
	}
	if err := holdA.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := holdB.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := takeover(); err != nil {
		t.Fatalf("the takeover with both rings free: %v", err)
	}
	var changed int
	if err := s.e.admin.QueryRow(`SELECT count(*) FROM "` + s.e.schema + `".rings r JOIN "` + s.e.schema + `".members m ON m.ring = r.name
		WHERE m.node_id = 'x' AND r.members_changed = r.version AND m.changed = r.version`).Scan(&changed); err != nil || changed != 2 {
		t.Errorf("after the takeover with new metadata, %d of x's 2 rings announce its details again (%v)", changed, err)
	}
}
