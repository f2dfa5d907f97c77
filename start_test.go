package leasering

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/fakesql"
)

func TestStartMakesExactlyTheseCalls(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithMetadata("10.0.0.1:80"))
	l, err := c.Lease("orders", 8, WithVNodes(4))
	if err != nil {
		t.Fatal(err)
	}
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`SELECT lease_ms, hold_ms, next_expiry_ms, node_status, changes::pg_catalog.text, changed_rings::pg_catalog.text, db_time, wal_insert, wal_flush, durable FROM "leasering".renew_and_read\(\$1::pg_catalog.text, \$2::pg_catalog.text, \$3::pg_catalog.int4, \$4::pg_catalog.text, \$5::pg_catalog.jsonb, \$6::pg_catalog.bool, \$7::pg_catalog.bool, \$8::pg_catalog.timestamptz, \$9::pg_catalog.bool\)`).
		WithArgs("a", fakesql.AnyArg(), int64(10000), "10.0.0.1:80",
			ringsArg{{Ring: "orders", Size: 8, VNodes: 4, Version: 0}}, true, true, fakesql.AnyArg(), false).
		WillReturnRows(renewRow(9990, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 3, Status: "ok",
				Partitions: []int{1, 5, 6}, Epochs: []int64{1, 2, 3}, Revoking: []int{6}}), nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := l.Values(); !reflect.DeepEqual(got, []int{1, 5}) {
		t.Errorf("Values() = %v, want [1 5] (6 is being handed over)", got)
	}
	if !l.Owns(5) || l.Owns(6) || l.Owns(0) || l.Owns(-1) || l.Owns(8) {
		t.Error("Owns disagrees with Values")
	}
	if e, ok := l.Epoch(5); !ok || e != 2 {
		t.Errorf("Epoch(5) = %d, %v; want 2, true", e, ok)
	}
	if _, ok := l.Epoch(6); ok {
		t.Error("Epoch of a partition being handed over reported as owned")
	}
	if err := c.Start(context.Background()); !errors.Is(err, ErrAlreadyStarted) {
		t.Errorf("second Start: %v", err)
	}
	db.expect(func() {
		mock.ExpectExec(`SELECT "leasering".leave\(\$1::pg_catalog.text, \$2::pg_catalog.text\)`).WithArgs("a", fakesql.AnyArg()).
			WillReturnResult(fakesql.NewResult(0, 1))
	})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if len(l.Values()) != 0 || !errors.Is(l.Err(), ErrClosed) {
		t.Errorf("after Close: Values %v, Err %v", l.Values(), l.Err())
	}
	if _, err := c.Lease("other", 8); !errors.Is(err, ErrClosed) {
		t.Errorf("Lease after Close: %v", err)
	}
	if err := c.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

func TestStartMigratesWithLockInOneStatement(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithSchema("my_app"))
	mock.ExpectQuery(`SELECT pg_catalog.to_regclass`).WithArgs(`"my_app".schema_version`).
		WillReturnRows(fakesql.NewRows([]string{"ok"}).AddRow(false))
	mock.ExpectExec(`^SET TRANSACTION ISOLATION LEVEL READ COMMITTED;\s*SELECT pg_catalog.set_config\('search_path', 'pg_catalog, pg_temp', true\);\s*SELECT pg_catalog.pg_advisory_xact_lock\(-?\d+\);\s*DO \$guard\$.*CREATE SCHEMA IF NOT EXISTS "my_app";.*CREATE TABLE IF NOT EXISTS "my_app".nodes.*SET search_path = "my_app", pg_temp.*CREATE OR REPLACE FUNCTION "my_app".renew_and_read`).
		WillReturnResult(fakesql.NewResult(0, 0))
	mock.ExpectQuery(`FROM "my_app".renew_and_read`).
		WillReturnRows(renewRow(9990, 0, nil, "ok", nil, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

func TestStartRefusesNewerSchema(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db)
	mock.ExpectQuery(`SELECT pg_catalog.to_regclass`).WillReturnRows(fakesql.NewRows([]string{"ok"}).AddRow(true))
	mock.ExpectQuery(`SELECT version`).WillReturnRows(fakesql.NewRows([]string{"version"}).AddRow(SchemaVersion + 1))
	err := c.Start(context.Background())
	if !errors.Is(err, ErrSchemaVersion) {
		t.Fatalf("Start on a newer schema: %v", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Errorf("calls after the version check: %v", err)
	}
}

func TestStartReportsRingSizeMismatch(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db)
	if _, err := c.Lease("orders", 8); err != nil {
		t.Fatal(err)
	}
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnError(&pgError{stateRingSize, "ring orders has size 16, not 8"})
	err := c.Start(context.Background())
	if !errors.Is(err, ErrRingSizeMismatch) || !strings.Contains(err.Error(), "orders has size 16, not 8") {
		t.Fatalf("Start: %v, want ErrRingSizeMismatch naming the ring", err)
	}
}

func TestLeaseAfterStartFailsOnSizeMismatch(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second), WithHeartbeat(time.Second))
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok", nil, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	db.expect(func() {
		mock.ExpectQuery(`renew_and_read`).
			WithArgs("a", fakesql.AnyArg(), int64(2000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8}}, false, true, fakesql.AnyArg(), fakesql.AnyArg()).
			WillReturnRows(renewRow(2000, 0, nil, "ok",
				`[{"ring":"orders","status":"size_mismatch","size":64}]`, nil))
	})
	l, err := c.Lease("orders", 4)
	if err != nil {
		t.Fatal(err)
	}
	c.runUntil(time.Second, "the heartbeat that joins", func() bool { return l.Err() != nil })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := l.Wait(ctx); !errors.Is(err, ErrRingSizeMismatch) || !strings.Contains(err.Error(), "size 64") {
		t.Fatalf("Wait = %v, want ErrRingSizeMismatch naming size 64", err)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

func TestCloseDoesNotHang(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(time.Minute))
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(60000, 0, nil, "ok", nil, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	db.hang() // the leave, until Close gives up on it
	c.free()
	start := c.clk.Now()
	errc := make(chan error, 1)
	go func() { errc <- c.Client.Close() }()
	db.waitHanging(t)
	waitAfter(t, c.clk, start.Add(5*time.Second)) // Close waits min(TTL, 5s)
	c.clk.advance(5 * time.Second)
	if err := <-errc; err == nil {
		t.Error("Close with a hanging leave returned nil")
	}

	// Close of a client never started makes no call.
	db2, mock2 := newMock(t)
	c2 := newTestClient(t, db2)
	if err := c2.Close(); err != nil {
		t.Error(err)
	}
	if err := mock2.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// TestStartRetriesTransientErrors: a deadlock or a dropped connection on
// the first heartbeat is retried; Start succeeds when the database does.
func TestStartRetriesTransientErrors(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db)
	l, _ := c.Lease("orders", 2)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnError(&pgError{"40P01", "deadlock detected"})
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}}), nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("Start after one transient failure: %v", err)
	}
	if len(l.Values()) != 2 {
		t.Errorf("Values() = %v", l.Values())
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })

	// The context's end ends the retries, with the last error.
	db2, mock2 := newMock(t)
	c2 := newTestClient(t, db2)
	mock2.ExpectQuery(`SELECT pg_catalog.to_regclass`).WillReturnError(refused())
	ctx2, cancel2 := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c2.Client.Start(ctx2) }()
	waitAfter(t, c2.clk, time.Time{}) // the first retry's backoff
	cancel2()
	if err := <-errc; !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Start with a dead database: %v, want the context's end and the last error", err)
	}
}
