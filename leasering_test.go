package leasering

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
)

// pgError is a database error as the drivers give it: a message and a
// SQLSTATE, read through the SQLState method both drivers have.
type pgError struct{ code, msg string }

func (e *pgError) Error() string    { return "pq: " + e.msg }
func (e *pgError) SQLState() string { return e.code }

// refused is the error of a dial to a port nobody listens on.
func refused() error {
	return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
}

var renewColumns = []string{"lease_ms", "hold_ms", "next_expiry_ms", "node_status", "changes", "changed_rings", "db_time"}

// renewRow is one answer of renew_and_read; db_time is NULL (no clock
// estimate) unless the test gives it.
func renewRow(vals ...driver.Value) *sqlmock.Rows {
	if len(vals) < len(renewColumns) {
		vals = append(vals, nil)
	}
	return sqlmock.NewRows(renewColumns).AddRow(vals...)
}

// newMock returns a mocked DB. sqlmock is not safe for concurrent calls, and
// the client may have a hung heartbeat and a fresh one in flight at once,
// so calls are serialised; a call waiting its turn still honours its ctx.
// Once the heartbeat runs, add expectations through expect.
func newMock(t *testing.T) (*serialDB, sqlmock.Sqlmock) {
	t.Helper()
	db, mock, err := sqlmock.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &serialDB{db: db, turn: make(chan struct{}, 1)}, mock
}

type serialDB struct {
	db   *sql.DB
	turn chan struct{}
}

func (s *serialDB) take(ctx context.Context) error {
	select {
	case s.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *serialDB) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if err := s.take(ctx); err != nil {
		return nil, err
	}
	defer func() { <-s.turn }()
	return s.db.ExecContext(ctx, q, args...)
}

func (s *serialDB) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if err := s.take(ctx); err != nil {
		return nil, err
	}
	defer func() { <-s.turn }()
	return s.db.QueryContext(ctx, q, args...)
}

// expect adds expectations while no call is in flight.
func (s *serialDB) expect(f func()) {
	s.turn <- struct{}{}
	defer func() { <-s.turn }()
	f()
}

// QueryRowContext cannot report a cancelled wait through *sql.Row, so it
// waits for its turn without a deadline; tests that hang calls use ctx-aware
// delays, which end.
func (s *serialDB) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	s.turn <- struct{}{}
	defer func() { <-s.turn }()
	return s.db.QueryRowContext(ctx, q, args...)
}

// BeginTx takes its turn only to begin: the transaction's own statements
// run on it directly (tests that use it make one call at a time).
func (s *serialDB) BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	if err := s.take(ctx); err != nil {
		return nil, err
	}
	defer func() { <-s.turn }()
	return s.db.BeginTx(ctx, opts)
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTestClient(t *testing.T, db DB, opts ...Option) *Client {
	t.Helper()
	c, err := NewClient(db, append([]Option{WithNodeID("a"), WithLogger(discard())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ringsArg matches the heartbeat's JSON argument against want.
type ringsArg []ringRequest

func (want ringsArg) Match(v driver.Value) bool {
	s, ok := v.(string)
	if !ok {
		return false
	}
	var got []ringRequest
	if err := json.Unmarshal([]byte(s), &got); err != nil {
		return false
	}
	return reflect.DeepEqual(normalize(got), normalize(want))
}

func normalize(rs []ringRequest) []ringRequest {
	out := make([]ringRequest, len(rs))
	for i, r := range rs {
		if len(r.Released) == 0 {
			r.Released = nil
		}
		out[i] = r
	}
	return out
}

func changesJSON(t *testing.T, cs ...ringChange) string {
	b, err := json.Marshal(cs)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// expectSchemaCurrent expects the start-up schema check to find this version.
func expectSchemaCurrent(mock sqlmock.Sqlmock) {
	mock.ExpectQuery(`SELECT pg_catalog.to_regclass`).WithArgs(`"leasering".schema_version`).
		WillReturnRows(sqlmock.NewRows([]string{"ok"}).AddRow(true))
	mock.ExpectQuery(`SELECT version FROM "leasering".schema_version`).
		WillReturnRows(sqlmock.NewRows([]string{"version"}).AddRow(SchemaVersion))
}

// met reports whether every expectation was used, between calls.
func met(db *serialDB, mock sqlmock.Sqlmock) bool {
	var err error
	db.expect(func() { err = mock.ExpectationsWereMet() })
	return err == nil
}

func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestOptionValidation(t *testing.T) {
	db, mock := newMock(t)
	cases := []struct {
		name string
		opts []Option
		want string
	}{
		{"empty node id", []Option{WithNodeID("")}, "node id is empty"},
		{"long node id", []Option{WithNodeID(strings.Repeat("x", 201))}, "201 bytes, at most 200"},
		{"NUL in node id", []Option{WithNodeID("a\x00b")}, "without NUL"},
		{"short TTL", []Option{WithTTL(50 * time.Millisecond)}, "TTL 50ms is below the minimum 100ms"},
		{"zero heartbeat", []Option{WithHeartbeat(0)}, "heartbeat 0s must be positive"},
		{"heartbeat above TTL/2", []Option{WithTTL(time.Second), WithHeartbeat(600 * time.Millisecond)}, "heartbeat 600ms is above TTL/2"},
		{"default heartbeat of a larger TTL", []Option{WithHeartbeat(6 * time.Second)}, "above TTL/2 (TTL 10s)"},
		{"negative drain", []Option{WithDrain(-time.Second)}, "drain -1s"},
		{"bad schema", []Option{WithSchema("Robert'); DROP")}, `schema name "Robert'); DROP"`},
		{"schema with digit first", []Option{WithSchema("1abc")}, `schema name "1abc"`},
		{"nil logger", []Option{WithLogger(nil)}, "logger is nil"},
		{"nil option", []Option{nil}, "nil option"},
		{"long metadata", []Option{WithMetadata(strings.Repeat("m", 5000))}, "at most 4096 bytes (got 5000 bytes)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewClient(db, tc.opts...)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("err = %v, want ErrInvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to say %q", err, tc.want)
			}
		})
	}
	if _, err := NewClient(nil); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "db is nil") {
		t.Errorf("NewClient(nil) = %v", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

func TestLeaseValidation(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db)
	cases := []struct {
		name string
		ring string
		size int
		opts []LeaseOption
		want string
	}{
		{"empty name", "", 8, nil, "ring name is empty"},
		{"long name", strings.Repeat("r", 300), 8, nil, "300 bytes"},
		{"zero size", "r", 0, nil, "ring size 0 is outside 1..65536"},
		{"huge size", "r", 65537, nil, "ring size 65537 is outside 1..65536"},
		{"zero vnodes", "r", 8, []LeaseOption{WithVNodes(0)}, "vnodes 0 is outside 1..256"},
		{"many vnodes", "r", 8, []LeaseOption{WithVNodes(257)}, "vnodes 257 is outside 1..256"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Lease(tc.ring, tc.size, tc.opts...)
			if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrInvalidArgument saying %q", err, tc.want)
			}
		})
	}
	l1, err := c.Lease("r", 8)
	if err != nil {
		t.Fatal(err)
	}
	if l2, err := c.Lease("r", 8); err != nil || l2 != l1 {
		t.Errorf("reopening with the same size: %v, %v; want the same lease", l2, err)
	}
	if _, err := c.Lease("r", 16); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "already open with size 8") {
		t.Errorf("reopening with another size: %v", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Errorf("validation touched the database: %v", err)
	}
}

func TestStartMakesExactlyTheseCalls(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithMetadata("10.0.0.1:80"))
	l, err := c.Lease("orders", 8, WithVNodes(4))
	if err != nil {
		t.Fatal(err)
	}
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`SELECT lease_ms, hold_ms, next_expiry_ms, node_status, changes::pg_catalog.text, changed_rings::pg_catalog.text, db_time FROM "leasering".renew_and_read\(\$1::pg_catalog.text, \$2::pg_catalog.text, \$3::pg_catalog.int4, \$4::pg_catalog.text, \$5::pg_catalog.jsonb, \$6::pg_catalog.bool, \$7::pg_catalog.bool, \$8::pg_catalog.timestamptz\)`).
		WithArgs("a", sqlmock.AnyArg(), int64(10000), "10.0.0.1:80",
			ringsArg{{Ring: "orders", Size: 8, VNodes: 4, Version: 0}}, true, true, sqlmock.AnyArg()).
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
		mock.ExpectExec(`SELECT "leasering".leave\(\$1::pg_catalog.text, \$2::pg_catalog.text\)`).WithArgs("a", sqlmock.AnyArg()).
			WillReturnResult(sqlmock.NewResult(0, 1))
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
		WillReturnRows(sqlmock.NewRows([]string{"ok"}).AddRow(false))
	mock.ExpectExec(`^SET TRANSACTION ISOLATION LEVEL READ COMMITTED;\s*SELECT pg_catalog.set_config\('search_path', 'pg_catalog, pg_temp', true\);\s*SELECT pg_catalog.pg_advisory_xact_lock\(-?\d+\);\s*DO \$guard\$.*CREATE SCHEMA IF NOT EXISTS "my_app";.*CREATE TABLE IF NOT EXISTS "my_app".nodes.*SET search_path = "my_app", pg_temp.*CREATE OR REPLACE FUNCTION "my_app".renew_and_read`).
		WillReturnResult(sqlmock.NewResult(0, 0))
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
	mock.ExpectQuery(`SELECT pg_catalog.to_regclass`).WillReturnRows(sqlmock.NewRows([]string{"ok"}).AddRow(true))
	mock.ExpectQuery(`SELECT version`).WillReturnRows(sqlmock.NewRows([]string{"version"}).AddRow(SchemaVersion + 1))
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

// TestSelfFencing: once the renewals fail, Values empties before the
// granted lease ends, and fills again when a renewal succeeds (a lost
// answer is harmless: the next one carries the same state).
func TestSelfFencing(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(400*time.Millisecond), WithHeartbeat(50*time.Millisecond))
	l, _ := c.Lease("orders", 4)
	view := changesJSON(t, ringChange{Ring: "orders", Version: 2, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}})
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(400, 0, nil, "ok", view, nil))
	for i := 0; i < 3; i++ {
		mock.ExpectQuery(`renew_and_read`).WillReturnError(errors.New("connection reset"))
	}
	mock.ExpectQuery(`renew_and_read`).WillReturnError(errors.New("answer lost"))
	start := time.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(l.Values()) != 2 {
		t.Fatalf("Values() = %v after Start", l.Values())
	}
	waitUntil(t, time.Second, "Values to empty", func() bool { return len(l.Values()) == 0 })
	if took := time.Since(start); took >= 400*time.Millisecond {
		t.Errorf("stopped reporting %v after the renew, at or after the 400ms lease", took)
	}
	waitUntil(t, 2*time.Second, "all failing renewals", func() bool { return met(db, mock) })
	db.expect(func() {
		mock.ExpectQuery(`renew_and_read`).
			WithArgs("a", sqlmock.AnyArg(), int64(400), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 2}}, false, true, sqlmock.AnyArg()).
			WillReturnRows(renewRow(400, 0, nil, "ok", nil, nil))
	})
	waitUntil(t, 2*time.Second, "Values to come back", func() bool { return len(l.Values()) == 2 })
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

// TestRevokedAfterLeaseLossWaitsForLock: a partition revoked after the
// lease was lost and regained is not in Values, but it was reported until
// the loss: a Lock taken on one of its keys before then still holds its
// release back until Unlock (the lock's context ended, its holder may not
// have stopped yet).
func TestRevokedAfterLeaseLossWaitsForLock(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(400*time.Millisecond), WithHeartbeat(50*time.Millisecond),
		WithDrain(50*time.Millisecond), WithMaxDrain(time.Minute))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(400, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 2, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}}), nil))
	for i := 0; i < 3; i++ {
		mock.ExpectQuery(`renew_and_read`).WillReturnError(errors.New("connection reset"))
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("key-%d", i); PartitionOf(k, 4) == 1 {
			key = k
		}
	}
	lockCtx, err := l.Lock(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 2*time.Second, "the lease to be lost", func() bool { return len(l.Values()) == 0 })
	if !errors.Is(context.Cause(lockCtx), ErrLeaseLost) {
		t.Errorf("lock context cause %v, want ErrLeaseLost", context.Cause(lockCtx))
	}
	waitUntil(t, 2*time.Second, "the failing renewals", func() bool { return met(db, mock) })
	db.expect(func() {
		mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(400, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 3, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}, Revoking: []int{1}}), nil))
		for i := 0; i < 3; i++ { // the lock is held: no release
			mock.ExpectQuery(`renew_and_read`).
				WithArgs("a", sqlmock.AnyArg(), int64(400), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 3}}, false, true, sqlmock.AnyArg()).
				WillReturnRows(renewRow(400, 0, nil, "ok", nil, nil))
		}
	})
	waitUntil(t, 2*time.Second, "the regained lease's heartbeats", func() bool { return met(db, mock) })
	if got := l.Values(); !reflect.DeepEqual(got, []int{0}) {
		t.Errorf("Values() = %v after the revoke, want [0]", got)
	}
	db.expect(func() {
		mock.ExpectQuery(`renew_and_read`).
			WithArgs("a", sqlmock.AnyArg(), int64(400), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 3, Released: []int{1}}}, false, true, sqlmock.AnyArg()).
			WillReturnRows(renewRow(400, 0, nil, "ok",
				changesJSON(t, ringChange{Ring: "orders", Version: 4, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}}), nil))
	})
	l.Unlock(key)
	waitUntil(t, 2*time.Second, "the release after Unlock", func() bool { return met(db, mock) })
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

// TestHandoffReleaseAfterDrain: a revoked partition leaves Values at once
// and is reported released only after the drain time.
func TestHandoffReleaseAfterDrain(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second), WithHeartbeat(500*time.Millisecond), WithDrain(150*time.Millisecond))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 4, Status: "ok", Partitions: []int{0, 3}, Epochs: []int64{1, 1}}), nil))
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 5, Status: "ok", Partitions: []int{0, 3}, Epochs: []int64{1, 1}, Revoking: []int{3}}), nil))
	mock.ExpectQuery(`renew_and_read`).
		WithArgs("a", sqlmock.AnyArg(), int64(2000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 5, Released: []int{3}}}, false, true, sqlmock.AnyArg()).
		WillReturnRows(renewRow(2000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 6, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}}), nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 2*time.Second, "the revoke", func() bool { return reflect.DeepEqual(l.Values(), []int{0}) })
	// The drain counts from when the client heard of the revoke, which this
	// goroutine may see later under load.
	c.mu.Lock()
	revoked := l.revokedAt[3]
	c.mu.Unlock()
	waitUntil(t, 2*time.Second, "the release", func() bool { return met(db, mock) })
	if took := time.Since(revoked); took < 150*time.Millisecond || took > 450*time.Millisecond {
		t.Errorf("release sent %v after the revoke; want after the 150ms drain and before the next heartbeat", took)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

// TestNeverReportedReleasedAtOnce: a partition revoked in the same view
// that gave it (a newcomer's join retargeted it before this node heard) was
// never in Values, so its release goes at once, without a drain.
func TestNeverReportedReleasedAtOnce(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(time.Second), WithDrain(time.Second))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 5, Status: "ok", Partitions: []int{0, 3}, Epochs: []int64{1, 1}, Revoking: []int{3}}), nil))
	mock.ExpectQuery(`renew_and_read`).
		WithArgs("a", sqlmock.AnyArg(), int64(10000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 5, Released: []int{3}}}, false, true, sqlmock.AnyArg()).
		WillReturnRows(renewRow(10000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 6, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}}), nil))
	start := time.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := l.Values(); !reflect.DeepEqual(got, []int{0}) {
		t.Fatalf("Values() = %v, want [0]", got)
	}
	waitUntil(t, 2*time.Second, "the release", func() bool { return met(db, mock) })
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("release sent %v after the view; want at once, not after the 1s drain or the 1s heartbeat", took)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

func TestFencedClientStops(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(time.Second), WithHeartbeat(100*time.Millisecond))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(1000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{2}, Epochs: []int64{4}}), nil))
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(0, 0, nil, "fenced", `{"incarnation":"other"}`, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 2*time.Second, "fencing", func() bool { return errors.Is(c.Err(), ErrFenced) })
	if len(l.Values()) != 0 || !errors.Is(l.Err(), ErrFenced) || !strings.Contains(l.Err().Error(), "other") {
		t.Errorf("after fencing: Values %v, Err %v", l.Values(), l.Err())
	}
	if err := c.Close(); err != nil { // no leave: the id is someone else's now
		t.Errorf("Close after fencing: %v", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

func TestHoldDelaysReporting(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second), WithHeartbeat(time.Second))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 200, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{1}, Epochs: []int64{9}}), nil))
	start := time.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(l.Values()) != 0 {
		t.Fatal("reported during the hold")
	}
	waitUntil(t, time.Second, "the end of the hold", func() bool { return len(l.Values()) == 1 })
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("reported %v after start, before the 200ms hold ended", took)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

// TestRevokedDuringHoldReleasedAtOnce: partitions a node holds (a new
// process on a taken-over id) are not in Values, so one revoked during the
// hold is released at once, without a drain; the database hands it on when
// the hold ends.
func TestRevokedDuringHoldReleasedAtOnce(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(300*time.Millisecond), WithDrain(2*time.Second))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 5000, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{1, 2}, Epochs: []int64{9, 9}}), nil))
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 4500, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 2, Status: "ok", Partitions: []int{1, 2}, Epochs: []int64{9, 9}, Revoking: []int{2}}), nil))
	var revoked time.Time
	mock.ExpectQuery(`renew_and_read`).
		WithArgs("a", sqlmock.AnyArg(), int64(10000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 2, Released: []int{2}}}, false, true, sqlmock.AnyArg()).
		WillReturnRows(renewRow(10000, 4000, nil, "ok", nil, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 2*time.Second, "the revoke", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if l.version == 2 && revoked.IsZero() {
			revoked = time.Now()
		}
		return l.version == 2
	})
	waitUntil(t, 2*time.Second, "the release", func() bool { return met(db, mock) })
	if took := time.Since(revoked); took > 250*time.Millisecond {
		t.Errorf("release sent %v after the revoke; want at once, not after the 2s drain or the next heartbeat", took)
	}
	if len(l.Values()) != 0 {
		t.Error("reported during the hold")
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

// TestReleaseResentWhenHoldEnds: a release sent during a hold only marks
// the partition; the client sends it again as soon as the hold is over,
// when it hands the partition on, rather than a heartbeat later.
func TestReleaseResentWhenHoldEnds(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(10*time.Second), WithHeartbeat(2*time.Second))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(10000, 400, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{1, 2}, Epochs: []int64{9, 9}, Revoking: []int{2}}), nil))
	release := ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 1, Released: []int{2}}}
	mock.ExpectQuery(`renew_and_read`). // at once, during the hold: marks it
						WithArgs("a", sqlmock.AnyArg(), int64(10000), "", release, false, true, sqlmock.AnyArg()).
						WillReturnRows(renewRow(10000, 400, nil, "ok", nil, nil))
	// The wake the new lease left brings one more forward (a twentieth of
	// a heartbeat after the last), still during the hold.
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", sqlmock.AnyArg(), int64(10000), "", release, false, true, sqlmock.AnyArg()).
		WillReturnRows(renewRow(10000, 300, nil, "ok", nil, nil))
	mock.ExpectQuery(`renew_and_read`). // when the hold is over: hands it on
						WithArgs("a", sqlmock.AnyArg(), int64(10000), "", release, false, true, sqlmock.AnyArg()).
						WillReturnRows(renewRow(10000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 2, Status: "ok", Partitions: []int{1}, Epochs: []int64{9}}), nil))
	start := time.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 3*time.Second, "the release after the hold", func() bool { return met(db, mock) })
	if took := time.Since(start); took < 350*time.Millisecond || took > 1500*time.Millisecond {
		t.Errorf("release resent %v after Start; want when the 400ms hold ends, well before the 2s heartbeat", took)
	}
	waitUntil(t, 2*time.Second, "partition 1 to be reported", func() bool { return reflect.DeepEqual(l.Values(), []int{1}) })
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
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
			WithArgs("a", sqlmock.AnyArg(), int64(2000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8}}, false, true, sqlmock.AnyArg()).
			WillReturnRows(renewRow(2000, 0, nil, "ok",
				`[{"ring":"orders","status":"size_mismatch","size":64}]`, nil))
	})
	l, err := c.Lease("orders", 4)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := l.Wait(ctx); !errors.Is(err, ErrRingSizeMismatch) || !strings.Contains(err.Error(), "size 64") {
		t.Fatalf("Wait = %v, want ErrRingSizeMismatch naming size 64", err)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

func TestCloseDoesNotHang(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(300*time.Millisecond), WithHeartbeat(100*time.Millisecond))
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(300, 0, nil, "ok", nil, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The leave hangs far longer than the test.
	db.expect(func() {
		mock.ExpectExec(`leave`).WillDelayFor(time.Hour).WillReturnResult(sqlmock.NewResult(0, 1))
	})
	start := time.Now()
	err := c.Close()
	if took := time.Since(start); took > time.Second {
		t.Errorf("Close took %v with a hanging database", took)
	}
	if err == nil {
		t.Error("Close with a hanging leave returned nil")
	}
	if !met(db, mock) {
		t.Error("Close never tried to leave")
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
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })

	// A cancelled context ends the retries.
	db2, mock2 := newMock(t)
	c2 := newTestClient(t, db2)
	for i := 0; i < 50; i++ {
		mock2.ExpectQuery(`SELECT pg_catalog.to_regclass`).WillReturnError(refused())
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if err := c2.Start(ctx2); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Start with a dead database: %v, want the deadline and the last error", err)
	}
}

// scanArg records the heartbeat's p_scan argument and when it was sent.
type scanArg struct {
	mu    sync.Mutex
	at    []time.Time
	scans []bool
}

func (s *scanArg) Match(v driver.Value) bool {
	b, ok := v.(bool)
	if ok {
		s.mu.Lock()
		s.at = append(s.at, time.Now())
		s.scans = append(s.scans, b)
		s.mu.Unlock()
	}
	return ok
}

// TestScanOnlyAfterKnownExpiry: the scan for lapsed leases, the one part of
// a heartbeat whose cost grows with the nodes, is skipped until the
// earliest other lease end the database reported has passed.
func TestScanOnlyAfterKnownExpiry(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second), WithHeartbeat(100*time.Millisecond))
	_, _ = c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", sqlmock.AnyArg(), int64(2000), "", sqlmock.AnyArg(), true, true, sqlmock.AnyArg()).
		WillReturnRows(renewRow(2000, 0, 300, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}}), nil))
	rec := &scanArg{}
	const beats = 8
	for i := 0; i < beats; i++ {
		mock.ExpectQuery(`renew_and_read`).WithArgs("a", sqlmock.AnyArg(), int64(2000), "", sqlmock.AnyArg(), false, rec, sqlmock.AnyArg()).
			WillReturnRows(renewRow(2000, 0, nil, "ok", nil, nil))
	}
	start := time.Now()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the heartbeats", func() bool { return met(db, mock) })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i, at := range rec.at {
		if at.Sub(start) < 300*time.Millisecond && rec.scans[i] {
			t.Errorf("heartbeat %d, %v after start, scanned before the reported expiry (300ms)", i, at.Sub(start).Round(time.Millisecond))
		}
	}
	if !rec.scans[beats-1] {
		t.Errorf("heartbeat %d, %v after start, did not scan after the reported expiry (300ms)", beats-1, rec.at[beats-1].Sub(start).Round(time.Millisecond))
	}
	if rec.scans[0] {
		t.Error("the first heartbeat after start scanned although the next expiry was 300ms away")
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

// TestProbeAfterTimeout: a heartbeat that timed out may have extended the
// lease without the client knowing, so the next call is a probe that
// extends nothing (TTL 0); once a probe is answered in time the client
// renews at once.
func TestProbeAfterTimeout(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(400*time.Millisecond), WithHeartbeat(50*time.Millisecond))
	_, _ = c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(400, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{0}, Epochs: []int64{1}}), nil))
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", sqlmock.AnyArg(), int64(400), "", sqlmock.AnyArg(), false, true, sqlmock.AnyArg()).
		WillDelayFor(time.Second).WillReturnRows(renewRow(400, 0, nil, "ok", nil, nil))
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", sqlmock.AnyArg(), int64(0), "", `[]`, false, false, sqlmock.AnyArg()).
		WillReturnRows(renewRow(150, 0, nil, "ok", nil, nil))
	mock.ExpectQuery(`renew_and_read`).WithArgs("a", sqlmock.AnyArg(), int64(400), "", sqlmock.AnyArg(), false, true, sqlmock.AnyArg()).
		WillReturnRows(renewRow(400, 0, nil, "ok", nil, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 3*time.Second, "timeout, probe, renewal", func() bool { return met(db, mock) })
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}

// TestRejoinWithoutViewForgets: after its lease lapsed, a node may have lost
// partitions to others; if the answer that rejoins it carries no fresh view
// of a ring (its work was skipped), the lease reports nothing and asks for
// the whole view.
func TestRejoinWithoutViewForgets(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(2*time.Second), WithHeartbeat(50*time.Millisecond))
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 3, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}}), nil))
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "rejoined", nil, nil))
	mock.ExpectQuery(`renew_and_read`).
		WithArgs("a", sqlmock.AnyArg(), int64(2000), "", ringsArg{{Ring: "orders", Size: 4, VNodes: 8, Version: 0}}, false, true, sqlmock.AnyArg()).
		WillDelayFor(300 * time.Millisecond).
		WillReturnRows(renewRow(2000, 0, nil, "ok",
			changesJSON(t, ringChange{Ring: "orders", Version: 5, Status: "ok", Partitions: []int{1}, Epochs: []int64{2}}), nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Second, "Values to empty after the rejoin", func() bool { return len(l.Values()) == 0 })
	waitUntil(t, 2*time.Second, "the fresh view", func() bool { return reflect.DeepEqual(l.Values(), []int{1}) })
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(sqlmock.NewResult(0, 1)) })
}
