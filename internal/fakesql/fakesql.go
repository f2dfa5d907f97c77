// Package fakesql is a database/sql driver for the library's unit tests:
// each test lists the calls it expects, in order, and what each answers.
// It keeps the root module free of test dependencies (a depender's module
// graph pulls in whatever the root go.mod requires), and imports only the
// standard library.
//
//	db, mock := fakesql.New()
//	mock.ExpectQuery(`renew_and_read`).WithArgs("a", fakesql.AnyArg()).
//		WillReturnRows(fakesql.NewRows([]string{"lease_ms"}).AddRow(int64(2000)))
//	... code under test runs its calls on db ...
//	if err := mock.ExpectationsWereMet(); err != nil { t.Fatal(err) }
//
// A call must match the first expectation not yet used: its kind (query,
// exec, begin, commit, rollback), its SQL (the expectation's regular
// expression, whitespace collapsed on both sides) and its arguments (each
// equal after driver.DefaultParameterConverter, or matched by an
// Argument). A call that does not match fails with an error saying what
// was expected, and uses nothing up.
package fakesql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strings"
	"sync"
)

// Argument matches one argument of a call.
type Argument interface {
	Match(driver.Value) bool
}

type anyArg struct{}

func (anyArg) Match(driver.Value) bool { return true }

// AnyArg matches any argument.
func AnyArg() Argument { return anyArg{} }

// NewResult is what an Exec answers.
func NewResult(lastInsertID, rowsAffected int64) driver.Result {
	return result{lastInsertID, rowsAffected}
}

type result struct{ id, affected int64 }

func (r result) LastInsertId() (int64, error) { return r.id, nil }
func (r result) RowsAffected() (int64, error) { return r.affected, nil }

// Rows is what a query answers: columns and rows of values.
type Rows struct {
	columns []string
	rows    [][]driver.Value
}

// NewRows starts an answer with these columns.
func NewRows(columns []string) *Rows { return &Rows{columns: columns} }

// AddRow adds a row; it must have a value for each column.
func (r *Rows) AddRow(values ...driver.Value) *Rows {
	if len(values) != len(r.columns) {
		panic(fmt.Sprintf("fakesql: a row of %d values for %d columns", len(values), len(r.columns)))
	}
	r.rows = append(r.rows, values)
	return r
}

// Mock holds a fake database's expectations.
type Mock struct {
	mu       sync.Mutex
	expected []*Expectation
}

type kind string

const (
	kindQuery    kind = "query"
	kindExec     kind = "exec"
	kindBegin    kind = "begin"
	kindCommit   kind = "commit"
	kindRollback kind = "rollback"
)

// Expectation is one expected call and its answer.
type Expectation struct {
	kind   kind
	sql    *regexp.Regexp
	args   []any // nil: any arguments
	rows   *Rows
	result driver.Result
	err    error
	used   bool
}

// WithArgs says what the call's arguments must be.
func (e *Expectation) WithArgs(args ...any) *Expectation {
	if args == nil {
		args = []any{}
	}
	e.args = args
	return e
}

// WillReturnRows answers the query with rows.
func (e *Expectation) WillReturnRows(r *Rows) *Expectation { e.rows = r; return e }

// WillReturnResult answers the exec with r.
func (e *Expectation) WillReturnResult(r driver.Result) *Expectation { e.result = r; return e }

// WillReturnError fails the call with err.
func (e *Expectation) WillReturnError(err error) *Expectation { e.err = err; return e }

func (e *Expectation) String() string {
	if e.sql == nil {
		return string(e.kind)
	}
	return fmt.Sprintf("%s matching %q", e.kind, e.sql.String())
}

// New returns a database whose connections all answer from mock.
func New() (*sql.DB, *Mock) {
	m := &Mock{}
	return sql.OpenDB(connector{m}), m
}

func (m *Mock) expect(k kind, query string) *Expectation {
	e := &Expectation{kind: k}
	if query != "" {
		e.sql = regexp.MustCompile(collapse(query))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expected = append(m.expected, e)
	return e
}

// ExpectQuery expects a query whose SQL matches the regular expression.
func (m *Mock) ExpectQuery(sqlRegexp string) *Expectation { return m.expect(kindQuery, sqlRegexp) }

// ExpectExec expects an exec whose SQL matches the regular expression.
func (m *Mock) ExpectExec(sqlRegexp string) *Expectation { return m.expect(kindExec, sqlRegexp) }

// ExpectBegin expects a transaction to begin.
func (m *Mock) ExpectBegin() *Expectation { return m.expect(kindBegin, "") }

// ExpectCommit expects a transaction to commit.
func (m *Mock) ExpectCommit() *Expectation { return m.expect(kindCommit, "") }

// ExpectRollback expects a transaction to roll back.
func (m *Mock) ExpectRollback() *Expectation { return m.expect(kindRollback, "") }

// ExpectationsWereMet reports the first expectation not used yet.
func (m *Mock) ExpectationsWereMet() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.expected {
		if !e.used {
			return fmt.Errorf("fakesql: expected %s, not called", e)
		}
	}
	return nil
}

// take uses the first expectation not used yet if the call matches it.
func (m *Mock) take(k kind, query string, args []driver.NamedValue) (*Expectation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var next *Expectation
	for _, e := range m.expected {
		if !e.used {
			next = e
			break
		}
	}
	call := string(k)
	if query != "" {
		call = fmt.Sprintf("%s %q", k, collapse(query))
	}
	switch {
	case next == nil:
		return nil, fmt.Errorf("fakesql: %s not expected: every expectation was used", call)
	case next.kind != k:
		return nil, fmt.Errorf("fakesql: %s not expected: the next expectation is %s", call, next)
	case next.sql != nil && !next.sql.MatchString(collapse(query)):
		return nil, fmt.Errorf("fakesql: %s does not match the next expectation, %s", call, next)
	}
	if err := argsMatch(next.args, args); err != nil {
		return nil, fmt.Errorf("fakesql: %s: %w", call, err)
	}
	next.used = true
	return next, nil
}

func argsMatch(want []any, got []driver.NamedValue) error {
	if want == nil {
		return nil
	}
	if len(want) != len(got) {
		return fmt.Errorf("%d arguments, want %d", len(got), len(want))
	}
	for i, w := range want {
		if a, ok := w.(Argument); ok {
			if !a.Match(got[i].Value) {
				return fmt.Errorf("argument %d, %#v, does not match", i+1, got[i].Value)
			}
			continue
		}
		v, err := driver.DefaultParameterConverter.ConvertValue(w)
		if err != nil {
			return fmt.Errorf("expected argument %d, %#v: %w", i+1, w, err)
		}
		if !reflect.DeepEqual(v, got[i].Value) {
			return fmt.Errorf("argument %d is %#v, want %#v", i+1, got[i].Value, v)
		}
	}
	return nil
}

var spaces = regexp.MustCompile(`\s+`)

func collapse(s string) string { return strings.TrimSpace(spaces.ReplaceAllString(s, " ")) }

type connector struct{ m *Mock }

func (c connector) Connect(context.Context) (driver.Conn, error) { return &conn{m: c.m}, nil }
func (c connector) Driver() driver.Driver                        { return fakeDriver{c.m} }

type fakeDriver struct{ m *Mock }

func (d fakeDriver) Open(string) (driver.Conn, error) { return &conn{m: d.m}, nil }

type conn struct{ m *Mock }

var errNoPrepare = errors.New("fakesql: prepared statements are not supported")

func (c *conn) Prepare(string) (driver.Stmt, error) { return nil, errNoPrepare }
func (c *conn) Close() error                        { return nil }
func (c *conn) Begin() (driver.Tx, error)           { return c.BeginTx(context.Background(), driver.TxOptions{}) }

func (c *conn) BeginTx(context.Context, driver.TxOptions) (driver.Tx, error) {
	e, err := c.m.take(kindBegin, "", nil)
	if err != nil {
		return nil, err
	}
	if e.err != nil {
		return nil, e.err
	}
	return tx{c.m}, nil
}

func (c *conn) QueryContext(_ context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	e, err := c.m.take(kindQuery, query, args)
	if err != nil {
		return nil, err
	}
	if e.err != nil {
		return nil, e.err
	}
	if e.rows == nil {
		return nil, fmt.Errorf("fakesql: %s has neither rows nor an error to answer", e)
	}
	return &rows{r: e.rows}, nil
}

func (c *conn) ExecContext(_ context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, err := c.m.take(kindExec, query, args)
	if err != nil {
		return nil, err
	}
	if e.err != nil {
		return nil, e.err
	}
	if e.result == nil {
		return nil, fmt.Errorf("fakesql: %s has neither a result nor an error to answer", e)
	}
	return e.result, nil
}

type tx struct{ m *Mock }

func (t tx) Commit() error   { return t.end(kindCommit) }
func (t tx) Rollback() error { return t.end(kindRollback) }

func (t tx) end(k kind) error {
	e, err := t.m.take(k, "", nil)
	if err != nil {
		return err
	}
	return e.err
}

// rows reads one answer; each query reads its Rows from the start.
type rows struct {
	r   *Rows
	pos int
}

func (r *rows) Columns() []string { return r.r.columns }
func (r *rows) Close() error      { return nil }

func (r *rows) Next(dest []driver.Value) error {
	if r.pos >= len(r.r.rows) {
		return io.EOF
	}
	copy(dest, r.r.rows[r.pos])
	r.pos++
	return nil
}
