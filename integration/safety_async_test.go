package integration

import (
	"database/sql"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/faultproxy"
)

// Renewals that commit without waiting for the disk (ondisk.go, schema
// version 19).

// TestOnlySteadyRenewalsSkipTheFlush: a renewal that says p_async and
// writes nothing but its lease end (a scan that evicts nobody included)
// commits with synchronous_commit off and says it is not durable; a claim,
// an eviction, a ring's change, or a call without p_async commits durably,
// also where the session's own setting is off (raised to local); and the
// WAL positions it answers bound the commits before it.
func TestOnlySteadyRenewalsSkipTheFlush(t *testing.T) {
	t.Parallel()
	s := newSQLNodes(t)
	s.join("a")
	// What a durable call leaves synchronous_commit at: the server's
	// setting, or local where that is off (a private test cluster's is).
	var durably string
	if err := s.e.admin.QueryRow(`SELECT CASE current_setting('synchronous_commit') WHEN 'off' THEN 'local' ELSE current_setting('synchronous_commit') END`).Scan(&durably); err != nil {
		t.Fatal(err)
	}
	call := func(what string, sessionOff, scan, claim bool) (heartbeat, string) {
		t.Helper()
		tx, err := s.e.admin.Begin()
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }()
		if sessionOff {
			if _, err := tx.Exec(`SET LOCAL synchronous_commit = off`); err != nil {
				t.Fatal(err)
			}
		}
		var before int64
		if err := tx.QueryRow(`SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn`).Scan(&before); err != nil {
			t.Fatal(err)
		}
		h, err := s.renew(tx, "a", claim, scan, 0)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		var setting string
		var after int64
		if err := tx.QueryRow(`SELECT current_setting('synchronous_commit'), pg_current_wal_insert_lsn() - '0/0'::pg_lsn`).Scan(&setting, &after); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if h.status != "ok" || h.walInsert < before || h.walInsert > after || h.walFlush <= 0 {
			t.Errorf("%s: status %s, wal_insert %d (the WAL was at %d before the call, %d after), wal_flush %d",
				what, h.status, h.walInsert, before, after, h.walFlush)
		}
		return h, setting
	}

	s.async = true
	if h, setting := call("a steady renewal with p_async", false, false, false); h.durable || setting != "off" {
		t.Errorf("a steady renewal with p_async: durable %v, synchronous_commit %s; want not durable, off", h.durable, setting)
	}
	if h, setting := call("a scan with p_async", false, true, false); h.durable || setting != "off" {
		t.Errorf("a scan that evicts nobody, with p_async: durable %v, synchronous_commit %s; want not durable, off", h.durable, setting)
	}
	if h, setting := call("a claim with p_async", false, false, true); !h.durable || setting != durably {
		t.Errorf("a claim with p_async: durable %v, synchronous_commit %s; want durable, %s", h.durable, setting, durably)
	}
	s.join("b") // a's next heartbeat gets a view
	if h, setting := call("a renewal with a view, p_async", true, false, false); !h.durable || setting != "local" || len(h.changes) == 0 {
		t.Errorf("a renewal with a view, p_async, in a session set off: durable %v, synchronous_commit %s, %d rings answered; want durable, local, a view",
			h.durable, setting, len(h.changes))
	}
	// b's lease lapses: a's scan evicts it.
	if _, err := s.e.admin.Exec(`UPDATE "` + s.e.schema + `".nodes SET expires_at = now() - interval '1 second' WHERE node_id = 'b'`); err != nil {
		t.Fatal(err)
	}
	if h, setting := call("a scan that evicts, with p_async", false, true, false); !h.durable || setting != durably {
		t.Errorf("a scan that evicts, with p_async: durable %v, synchronous_commit %s; want durable, %s", h.durable, setting, durably)
	}
	var gone bool
	if err := s.e.admin.QueryRow(`SELECT NOT EXISTS (SELECT 1 FROM "` + s.e.schema + `".nodes WHERE node_id = 'b')`).Scan(&gone); err != nil || !gone {
		t.Fatalf("b not evicted by a's scan (%v): the case above tested nothing", err)
	}
	s.async = false
	if h, setting := call("a steady renewal without p_async", false, false, false); !h.durable || setting != durably {
		t.Errorf("a steady renewal without p_async: durable %v, synchronous_commit %s; want durable, %s", h.durable, setting, durably)
	}
	if h, setting := call("the same in a session set off", true, false, false); !h.durable || setting != "local" {
		t.Errorf("a steady renewal without p_async in a session set off: durable %v, synchronous_commit %s; want durable, local", h.durable, setting)
	}

	// The other entry points, in a session set off.
	if _, err := s.renew(nil, "c", true, false, 0); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`SELECT "` + s.e.schema + `".join_rings('c', 'inc-c', '[{"ring": "r", "size": 8, "vnodes": 8}]', 1000)::text`,
		`SELECT "` + s.e.schema + `".read_views('c', 'inc-c', '[{"ring": "r", "size": 8, "vnodes": 8, "version": 0}]')::text`,
		`SELECT "` + s.e.schema + `".leave('c', 'inc-c')::text`,
	} {
		tx, err := s.e.admin.Begin()
		if err != nil {
			t.Fatal(err)
		}
		var answer sql.NullString
		var setting string
		if _, err := tx.Exec(`SET LOCAL synchronous_commit = off`); err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(q).Scan(&answer); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if err := tx.QueryRow(`SELECT current_setting('synchronous_commit')`).Scan(&setting); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if setting != "local" {
			t.Errorf("%s in a session set off: synchronous_commit %s after it, want local", q, setting)
		}
	}
	var left bool
	if err := s.e.admin.QueryRow(`SELECT NOT EXISTS (SELECT 1 FROM "` + s.e.schema + `".nodes WHERE node_id = 'c')`).Scan(&left); err != nil || !left {
		t.Errorf("c did not leave (%v): the calls above did not run as a node's", err)
	}
}

// TestAsyncRenewalsLostInACrash: renewals that committed without waiting
// for the disk are lost when a server process crashes (the WAL writer,
// told to sleep 10 s here, had not written them), and the database goes
// back to the lease end of the last renewal on disk. The client never
// counted past that: the lease end it reported until just before the
// crash is at most the one the database kept. Counted from its last
// answer, as before version 19, it would have been past it by the
// renewals lost.
func TestAsyncRenewalsLostInACrash(t *testing.T) {
	t.Parallel()
	const ttl, hb = 4 * time.Second, 200 * time.Millisecond
	cluster := privateCluster(t)
	e := newEnvOn(t, cluster.DSN, ttl, hb)
	// Nothing else puts the WAL on disk meanwhile: no WAL writer round,
	// no autovacuum commit (whose flush would take ours along).
	for _, q := range []string{`ALTER SYSTEM SET wal_writer_delay = '10s'`, `ALTER SYSTEM SET autovacuum = off`, `SELECT pg_reload_conf()`} {
		if _, err := e.admin.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	n := e.startNode("a", "r", 8)
	e.waitConverged("r", 8, nil, 10*time.Second)
	dbEnd := func() (end, now time.Time, err error) {
		err = e.admin.QueryRow(`SELECT expires_at, clock_timestamp() FROM "`+e.schema+`".nodes WHERE node_id = 'a'`).Scan(&end, &now)
		return end, now, err
	}
	// Up to three crashes: one may lose nothing (the WAL writer's round
	// came just before it).
	for attempt := 1; ; attempt++ {
		// Wait until the database's lease end runs ahead of the client's
		// by more than the margin and four heartbeats: renewals not on
		// disk, more than the margin of them.
		var clientEnd time.Time
		if !waitFor(10*time.Second, func() bool {
			st := n.client.Stats()
			left, seen := st.LeaseLeft, time.Now()
			end, _, err := dbEnd()
			if err != nil || left <= 0 || st.AsyncRenewals < 3 {
				return false
			}
			clientEnd = seen.Add(left)
			return end.Sub(clientEnd) > ttl/10+4*hb
		}) {
			st := n.client.Stats()
			end, now, err := dbEnd()
			t.Fatalf("the client's lease end never fell behind the database's: %d async renewals of %d; lease left %v, the database's %v (%v)",
				st.AsyncRenewals, st.Renewals, st.LeaseLeft, end.Sub(now), err)
		}
		// Cut the node off first: a renewal of its own after the server
		// recovered would hide what the crash lost.
		n.proxy.SetMode(faultproxy.Blackhole)
		before, _, err := dbEnd()
		if err != nil {
			t.Fatal(err)
		}
		var after time.Time
		crashServer(t, e.admin, func() bool {
			var err error
			after, _, err = dbEnd()
			return err == nil
		})
		n.proxy.SetMode(faultproxy.Pass)
		t.Logf("crash %d: lease end: the client's %s, the database's before the crash %s, after %s",
			attempt, clientEnd.Format("15:04:05.000"), before.Format("15:04:05.000"), after.Format("15:04:05.000"))
		if clientEnd.After(after) {
			t.Errorf("the client counted its lease to %s, past the %s the database kept after the crash (by %v)",
				clientEnd.Format("15:04:05.000"), after.Format("15:04:05.000"), clientEnd.Sub(after))
		}
		if after.Before(before) {
			break // renewals were lost: tested
		}
		if attempt == 3 {
			t.Fatalf("%d crashes lost no renewal: nothing was tested", attempt)
		}
	}
	// And it renews on.
	if !waitFor(10*time.Second, func() bool {
		end, now, err := dbEnd()
		return err == nil && end.After(now.Add(ttl/2))
	}) {
		t.Fatal("no renewal within 10s of the crash")
	}
	t.Logf("lease losses through the crashes (cut off meanwhile): %d", n.client.Stats().LeaseLosses)
}
