package leasering

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/fakesql"
)

// The errors as the drivers give them through a transaction-mode
// PgBouncer (seen in integration/pgbouncer_test.go's runs).
var (
	errUnnamedMissing = &pgError{"26000", "unnamed prepared statement does not exist (26000)"}
	errCachedMissing  = &pgError{"26000", `prepared statement "stmtcache_5196" does not exist`}
	errCachedExists   = &pgError{"42P05", `prepared statement "stmtcache_5196" already exists`}
	errBindMismatch   = &pgError{"08P01", `bind message supplies 8 parameters, but prepared statement "" requires 2 (08P01)`}
	errStatementMode  = &pgError{"08P01", "transaction blocks not allowed in statement pooling mode"}
)

func TestPoolerAdvice(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{errUnnamedMissing, adviceSplitStatements},
		{errCachedMissing, adviceSplitStatements},
		{errCachedExists, adviceSplitStatements},
		{errBindMismatch, adviceSplitStatements},
		{errStatementMode, adviceSplitStatements}, // not from a BEGIN: a split call
		{fmt.Errorf("leasering: checking schema: %w", classifyDBError(errUnnamedMissing)), adviceSplitStatements},
		{&pgError{"08P01", "invalid startup packet layout"}, adviceSplitStatements}, // by SQLSTATE: any protocol violation
		{&beginError{errStatementMode}, adviceStatementMode},
		{&beginError{&pgError{"08006", "connection failure"}}, ""},
		{&pgError{"28P01", "password authentication failed"}, ""},
		{&pgError{"40P01", "deadlock detected"}, ""},
		{refused(), ""},
		{errors.New("prepared statement does not exist"), ""}, // no SQLSTATE: not a server's answer
		{nil, ""},
	} {
		if got := poolerAdvice(tc.err); got != tc.want {
			t.Errorf("poolerAdvice(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	for _, setting := range []string{"binary_parameters=yes", "default_query_exec_mode=exec", "simple_protocol"} {
		if !strings.Contains(adviceSplitStatements, setting) {
			t.Errorf("the advice does not name %s: %s", setting, adviceSplitStatements)
		}
	}
}

// records keeps the records a client logs.
type records struct {
	mu  sync.Mutex
	all []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, rec)
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

// at returns the messages logged at level.
func (r *records) at(level slog.Level) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range r.all {
		if rec.Level == level {
			out = append(out, rec.Message)
		}
	}
	return out
}

// TestStartFailsUnsupportedBehindSplittingPooler: a pooler's mark on the
// schema check or on the first heartbeat fails Start at once with
// ErrUnsupported, the driver's error and the advice, logged once at Error.
func TestStartFailsUnsupportedBehindSplittingPooler(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		when string // "schema" or "heartbeat"
	}{
		{"lib/pq schema check", errUnnamedMissing, "schema"},
		{"lib/pq first heartbeat", errBindMismatch, "heartbeat"},
		{"pgx cache", errCachedExists, "schema"},
		{"pgx cache heartbeat", errCachedMissing, "heartbeat"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, mock := newMock(t)
			logs := &records{}
			c := newTestClient(t, db, WithLogger(slog.New(logs)))
			if _, err := c.Lease("orders", 8); err != nil {
				t.Fatal(err)
			}
			if tc.when == "schema" {
				mock.ExpectQuery(`SELECT pg_catalog.to_regclass`).WillReturnError(tc.err)
			} else {
				expectSchemaCurrent(mock)
				mock.ExpectQuery(`renew_and_read`).WillReturnError(tc.err)
				mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) // the heartbeat may have committed
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := c.Start(ctx)
			if !errors.Is(err, ErrUnsupported) || !errors.Is(err, ErrPermanent) || !errors.Is(err, tc.err) {
				t.Fatalf("Start: %v; want ErrUnsupported, ErrPermanent and the driver's error", err)
			}
			if ctx.Err() != nil {
				t.Fatalf("Start retried until its context ended: %v", err)
			}
			for _, want := range []string{tc.err.Error(), "binary_parameters=yes", "default_query_exec_mode=exec"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Start's error %q does not say %q", err, want)
				}
			}
			if got := logs.at(slog.LevelError); len(got) != 1 || !strings.Contains(got[0], "binary_parameters=yes") {
				t.Errorf("Error-level log lines: %q; want the advice once", got)
			}
			if err := mock.ExpectationsWereMet(); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestHeartbeatPoolerErrorLoggedOnce: heartbeats that fail with a pooler's
// mark are retried like any failure, and the advice is logged once.
func TestHeartbeatPoolerErrorLoggedOnce(t *testing.T) {
	db, mock := newMock(t)
	logs := &records{}
	c := newTestClient(t, db, WithLogger(slog.New(logs)), WithTTL(2*time.Second), WithHeartbeat(20*time.Millisecond))
	if _, err := c.Lease("orders", 8); err != nil {
		t.Fatal(err)
	}
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}}), nil))
	for _, err := range []error{errBindMismatch, errUnnamedMissing, errCachedExists, errBindMismatch} {
		mock.ExpectQuery(`renew_and_read`).WillReturnError(err)
	}
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok", nil, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.runUntil(time.Second, "the failures and a renewal after them", func() bool { return met(db, mock) && c.Stats().Renewals == 2 })
	if s := c.Stats(); s.RenewFailures != 4 {
		t.Errorf("RenewFailures = %d, want 4", s.RenewFailures)
	}
	if got := logs.at(slog.LevelError); len(got) != 1 || !strings.Contains(got[0], "default_query_exec_mode=exec") {
		t.Errorf("Error-level log lines: %q; want the advice once", got)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}

// TestStatementModeAdvice: PgBouncer's statement mode refusing the
// explicit READ COMMITTED transaction fails Start with ErrUnsupported.
func TestStatementModeAdvice(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnError(&pgError{stateNotReadCommit, "not READ COMMITTED"})
	mock.ExpectBegin().WillReturnError(errStatementMode)
	mock.ExpectBegin().WillReturnError(errStatementMode) // the leave after a heartbeat that may have committed
	err := c.Start(context.Background())
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "statement mode") {
		t.Fatalf("Start: %v; want ErrUnsupported naming statement mode", err)
	}
}
