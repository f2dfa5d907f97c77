package fakesql

import (
	"context"
	"database/sql/driver"
	"errors"
	"strings"
	"testing"
)

type evenArg struct{}

func (evenArg) Match(v driver.Value) bool { n, ok := v.(int64); return ok && n%2 == 0 }

func TestCallsMatchTheExpectationsInOrder(t *testing.T) {
	ctx := context.Background()
	db, mock := New()
	defer db.Close()
	mock.ExpectQuery(`renew_and_read\(\$1`).WithArgs("a", AnyArg(), evenArg{}, int(7)).
		WillReturnRows(NewRows([]string{"lease_ms", "status"}).AddRow(2000, "ok"))
	mock.ExpectExec(`leave`).WillReturnResult(NewResult(0, 1))

	// Out of order: the next expectation is the query.
	if _, err := db.ExecContext(ctx, `SELECT leave()`); err == nil || !strings.Contains(err.Error(), "next expectation is query") {
		t.Fatalf("an exec before the expected query: %v", err)
	}
	// The SQL does not match.
	if err := db.QueryRowContext(ctx, `SELECT read_views($1)`, "a").Scan(new(int)); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("another query: %v", err)
	}
	// An argument does not match: odd, where evenArg wants even.
	if err := db.QueryRowContext(ctx, "SELECT *\n\t FROM renew_and_read($1, $2, $3, $4)", "a", true, 3, 7).Scan(new(int), new(string)); err == nil ||
		!strings.Contains(err.Error(), "argument 3") {
		t.Fatalf("an odd third argument: %v", err)
	}
	if err := mock.ExpectationsWereMet(); err == nil {
		t.Fatal("no call matched, yet the expectations were met")
	}
	// Whitespace collapsed; an int matches the int64 the driver gets.
	var lease int64
	var status string
	if err := db.QueryRowContext(ctx, "SELECT *\n\t FROM renew_and_read($1, $2, $3, $4)", "a", true, 4, 7).Scan(&lease, &status); err != nil {
		t.Fatal(err)
	}
	if lease != 2000 || status != "ok" {
		t.Fatalf("got %d %q, want 2000 ok", lease, status)
	}
	if err := mock.ExpectationsWereMet(); err == nil || !strings.Contains(err.Error(), "exec") {
		t.Fatalf("the exec is left: %v", err)
	}
	res, err := db.ExecContext(ctx, `SELECT leave()`)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("%d rows affected, want 1", n)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `SELECT leave()`); err == nil || !strings.Contains(err.Error(), "every expectation was used") {
		t.Fatalf("a call past the last expectation: %v", err)
	}
}

func TestErrorsAndTransactions(t *testing.T) {
	ctx := context.Background()
	db, mock := New()
	defer db.Close()
	reset := errors.New("connection reset")
	mock.ExpectBegin()
	mock.ExpectQuery(`renew_and_read`).WithArgs().WillReturnError(reset)
	mock.ExpectCommit()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRowContext(ctx, `SELECT renew_and_read()`).Scan(new(int)); !errors.Is(err, reset) {
		t.Fatalf("got %v, want the expectation's error", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
	// A rollback nobody expected fails.
	mock.ExpectBegin()
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err == nil {
		t.Fatal("an unexpected rollback succeeded")
	}
}
