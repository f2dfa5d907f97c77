package leasering

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"reflect"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/fakesql"
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

var renewColumns = []string{"lease_ms", "hold_ms", "next_expiry_ms", "node_status", "changes", "changed_rings", "db_time", "wal_insert", "wal_flush", "durable"}

// renewRow is one answer of renew_and_read; db_time is NULL (no clock
// estimate) unless the test gives it, and the lease on disk (durable)
// unless the test gives the WAL's place.
func renewRow(vals ...driver.Value) *fakesql.Rows {
	if len(vals) < 7 {
		vals = append(vals, nil)
	}
	if len(vals) < len(renewColumns) {
		vals = append(vals, int64(0), int64(0), true)
	}
	return fakesql.NewRows(renewColumns).AddRow(vals...)
}

// newMock returns a mocked DB. The mock answers calls in order, and
// the client may have a hung heartbeat and a fresh one in flight at once,
// so calls are serialised; a call waiting its turn still honours its ctx.
// Once the heartbeat runs, add expectations through expect.
func newMock(t *testing.T) (*serialDB, *fakesql.Mock) {
	t.Helper()
	db, mock := fakesql.New()
	t.Cleanup(func() { db.Close() })
	return &serialDB{db: db, turn: make(chan struct{}, 1), hangStart: make(chan struct{})}, mock
}

type serialDB struct {
	db   *sql.DB
	turn chan struct{}

	mu        sync.Mutex
	hangs     int               // the next this many calls hang
	hung      []context.Context // of the calls that hang
	hangStart chan struct{}     // closed and replaced when a call starts to hang
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
	if s.hangHere(ctx) {
		return nil, ctx.Err()
	}
	if err := s.take(ctx); err != nil {
		return nil, err
	}
	defer func() { <-s.turn }()
	return s.db.ExecContext(ctx, q, args...)
}

// expect adds expectations while no call is in flight.
func (s *serialDB) expect(f func()) {
	s.turn <- struct{}{}
	defer func() { <-s.turn }()
	f()
}

// hang makes the next call (ExecContext or QueryRowContext) hang, without
// reaching the mock, until its context ends; then it fails with the
// context's error.
func (s *serialDB) hang() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hangs++
}

// hanging is how many calls hang now: their context has not ended.
func (s *serialDB) hanging() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ctx := range s.hung {
		if ctx.Err() == nil {
			n++
		}
	}
	return n
}

// waitHanging waits until a call hangs.
func (s *serialDB) waitHanging(t *testing.T) {
	t.Helper()
	for {
		s.mu.Lock()
		started := s.hangStart
		s.mu.Unlock()
		if s.hanging() > 0 {
			return
		}
		select {
		case <-started:
		case <-time.After(guard):
			t.Fatalf("no call hangs after %v", guard)
		}
	}
}

// hangHere hangs the call if one is to hang, until ctx ends, and reports
// whether it did.
func (s *serialDB) hangHere(ctx context.Context) bool {
	s.mu.Lock()
	if s.hangs == 0 {
		s.mu.Unlock()
		return false
	}
	s.hangs--
	s.hung = append(s.hung, ctx)
	close(s.hangStart)
	s.hangStart = make(chan struct{})
	s.mu.Unlock()
	<-ctx.Done()
	s.mu.Lock()
	s.hung = slices.DeleteFunc(s.hung, func(c context.Context) bool { return c == ctx })
	s.mu.Unlock()
	return true
}

// QueryRowContext cannot report a cancelled wait through *sql.Row, so it
// waits for its turn without a deadline; calls that hang (see hang) wait
// outside their turn.
func (s *serialDB) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	if s.hangHere(ctx) {
		return s.db.QueryRowContext(ctx, q, args...) // fails at once: ctx has ended
	}
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

// newTestClient is a client on db (from newMock) with node id "a" and a
// fake clock, driven by the test (see testNode).
func newTestClient(t *testing.T, db *serialDB, opts ...Option) *testNode {
	t.Helper()
	c, err := NewClient(db, append([]Option{WithNodeID("a"), WithLogger(discard())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return drive(t, c, db)
}

// sentWhen is a ringsArg that also calls check as the call is made.
type sentWhen struct {
	want  ringsArg
	check func()
}

func (s sentWhen) Match(v driver.Value) bool {
	if !s.want.Match(v) {
		return false
	}
	s.check()
	return true
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
		r.LaterIfBusy = false // every request says it: TestRingRequestsSayLaterIfBusy
		r.SettleWake = false  // the same
		r.OwnOnly = false     // TestRingRequestsSayOwnOnlyAfterAView
		r.OwnView = false     // the same
		r.OwnerIDs = false    // the same
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
func expectSchemaCurrent(mock *fakesql.Mock) {
	mock.ExpectQuery(`SELECT pg_catalog.to_regclass`).WithArgs(`"leasering".schema_version`).
		WillReturnRows(fakesql.NewRows([]string{"ok"}).AddRow(true))
	mock.ExpectQuery(`SELECT version FROM "leasering".schema_version`).
		WillReturnRows(fakesql.NewRows([]string{"version"}).AddRow(SchemaVersion))
}

// met reports whether every expectation was used, between calls.
func met(db *serialDB, mock *fakesql.Mock) bool {
	var err error
	db.expect(func() { err = mock.ExpectationsWereMet() })
	return err == nil
}
