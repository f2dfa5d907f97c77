package leasering

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/fakesql"
	"github.com/lib/pq"
)

// TestTransient: only what a retry can cure is retried: connection
// failures, a server starting or stopping or full, a lost race. The rest
// fails at once.
func TestTransient(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{&pgError{"40001", "could not serialize access"}, true},
		{&pgError{"40P01", "deadlock detected"}, true},
		{&pgError{"55P03", "canceling statement due to lock timeout"}, true},
		{&pgError{"57P01", "terminating connection due to administrator command"}, true},
		{&pgError{"57P03", "the database system is starting up"}, true},
		{&pgError{"53300", "sorry, too many clients already"}, true},
		{&pgError{"08006", "connection failure"}, true},
		{&pgError{stateConcurrentStart, "node a is being started by two processes at once"}, true},
		{&pq.Error{Code: "57P01"}, true},
		{fmt.Errorf("checking schema: %w", &pq.Error{Code: "40P01"}), true},
		{refused(), true},
		{io.EOF, true},
		{io.ErrUnexpectedEOF, true},
		{driver.ErrBadConn, true},
		{context.DeadlineExceeded, true},

		{&pgError{"28P01", "password authentication failed for user \"app\""}, false},
		{&pgError{"3D000", "database \"nope\" does not exist"}, false},
		{&pgError{"28000", "role \"nope\" does not exist"}, false},
		{&pgError{"42501", "permission denied for schema leasering"}, false},
		{&pgError{"42939", "unacceptable schema name \"pg_x\""}, false},
		{&pgError{"08P01", "invalid startup packet layout"}, false},
		{&pgError{stateRingSize, "ring r has size 64, not 32"}, false},
		{&pq.Error{Code: "28P01"}, false},
		{&url.Error{Op: "parse", URL: "postgres://x:notaport", Err: errors.New("invalid port")}, false},
		{&net.OpError{Op: "dial", Err: &net.AddrError{Err: "unknown port", Addr: "x"}}, false},
		{&net.DNSError{Err: "no such host", Name: "typo", IsNotFound: true}, false},
		{errors.New(`pq: wrong value for "sslmode"`), false},
	}
	for _, tc := range cases {
		if got := transient(tc.err); got != tc.want {
			t.Errorf("transient(%T %v) = %v, want %v", tc.err, tc.err, got, tc.want)
		}
	}
}

// TestClassifyDBError: errors.Is finds the sentinel and errors.As the
// driver's error, and the text reads once.
func TestClassifyDBError(t *testing.T) {
	cases := []struct {
		err      error
		sentinel error
	}{
		{&pq.Error{Code: "28P01", Message: `password authentication failed for user "app"`}, ErrPermanent},
		{&pq.Error{Code: "42501", Message: "permission denied for schema s"}, ErrPermanent},
		{&pq.Error{Code: stateRingSize, Message: "ring r has size 64, not 32"}, ErrRingSizeMismatch},
		{&pq.Error{Code: stateSchemaNewer, Message: "schema version 9 in the database is newer than this library (5)"}, ErrSchemaVersion},
		{&pq.Error{Code: stateEncoding, Message: "database encoding is LATIN1; leasering needs UTF8 (or SQL_ASCII)"}, ErrUnsupported},
	}
	for _, tc := range cases {
		err := classifyDBError(tc.err)
		var pqErr *pq.Error
		if !errors.Is(err, tc.sentinel) || !errors.As(err, &pqErr) || pqErr.Code != tc.err.(*pq.Error).Code {
			t.Errorf("classifyDBError(%v) = %v: want both %v and the *pq.Error", tc.err, err, tc.sentinel)
		}
		if err.Error() != tc.err.Error() {
			t.Errorf("classifyDBError(%v) reads %q", tc.err, err.Error())
		}
	}
	if err := classifyDBError(&pgError{"40P01", "deadlock detected"}); errors.Is(err, ErrPermanent) {
		t.Errorf("a deadlock is classified permanent: %v", err)
	}
}

// TestStartFailsFastOnPermanentError: Start with context.Background()
// returns a permanent error at once, after one try, with the sentinel and
// the driver's error, and a text that says "leasering:" once.
func TestStartFailsFastOnPermanentError(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db)
	mock.ExpectQuery(`SELECT pg_catalog.to_regclass`).
		WillReturnError(&pq.Error{Code: "28P01", Message: `password authentication failed for user "app"`})
	errc := make(chan error, 1)
	go func() { errc <- c.Start(context.Background()) }()
	var err error
	select {
	case err = <-errc:
	case <-time.After(5 * time.Second):
		t.Fatal("Start still retrying a bad password after 5s")
	}
	var pqErr *pq.Error
	if !errors.Is(err, ErrPermanent) || !errors.As(err, &pqErr) || pqErr.Code != "28P01" {
		t.Fatalf("Start: %v, want ErrPermanent wrapping the *pq.Error", err)
	}
	if n := strings.Count(err.Error(), "leasering:"); n != 1 {
		t.Errorf("error says leasering: %d times: %v", n, err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// TestRingSizeMismatchReadsOnce: the error of a ring of another size names
// the ring and both sizes once, and is ErrRingSizeMismatch.
func TestRingSizeMismatchReadsOnce(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db)
	if _, err := c.Lease("r", 32); err != nil {
		t.Fatal(err)
	}
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnError(&pq.Error{Code: stateRingSize, Message: "ring r has size 64, not 32"})
	mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 0))
	err := c.Start(context.Background())
	if !errors.Is(err, ErrRingSizeMismatch) {
		t.Fatalf("Start: %v, want ErrRingSizeMismatch", err)
	}
	if want := "leasering: start: pq: ring r has size 64, not 32 (LR001)"; err.Error() != want {
		t.Errorf("Start: %q, want %q", err, want)
	}
}

// TestExplicitReadCommittedAfterLR005: when the database says a call runs
// under another isolation level, the client runs that call and every later
// one in an explicit READ COMMITTED transaction.
func TestExplicitReadCommittedAfterLR005(t *testing.T) {
	db, mock := newMock(t)
	// A long TTL keeps the next heartbeat (a wake brings it to a twentieth
	// of a heartbeat after Start) out of the test.
	c := newTestClient(t, db, WithTTL(time.Hour))
	l, _ := c.Lease("orders", 2)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnError(&pq.Error{Code: stateNotReadCommit, Message: "leasering runs in READ COMMITTED transactions, not serializable"})
	mock.ExpectBegin()
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(3600000, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{0, 1}, Epochs: []int64{1, 1}}), nil))
	mock.ExpectCommit()
	if err := c.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if len(l.Values()) != 2 {
		t.Errorf("Values() = %v", l.Values())
	}
	db.expect(func() {
		mock.ExpectBegin()
		mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1))
		mock.ExpectCommit()
	})
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// TestReservedSchemaNames: PostgreSQL's own schemas, and names whose
// notify channel would pass 63 bytes, are refused before any I/O.
func TestReservedSchemaNames(t *testing.T) {
	for _, name := range []string{"pg_catalog", "pg_toast", "pg_x", "information_schema", strings.Repeat("a", 54)} {
		if err := WithSchema(name)(&config{}); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), name) {
			t.Errorf("WithSchema(%q): %v, want ErrInvalidArgument naming it", name, err)
		}
	}
	longest := strings.Repeat("a", 53)
	db, _ := newMock(t)
	c, err := NewClient(db, WithSchema(longest))
	if err != nil {
		t.Fatalf("WithSchema(53 bytes): %v", err)
	}
	if n := len(c.NotifyChannel()); n > 63 {
		t.Errorf("notify channel of the longest schema is %d bytes, PostgreSQL keeps 63", n)
	}
}

// TestNewClientRefusesTx: a *sql.Tx commits once, and the heartbeats must
// commit every few seconds: NewClient refuses it.
func TestNewClientRefusesTx(t *testing.T) {
	db, mock := fakesql.New()
	defer db.Close()
	mock.ExpectBegin()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := NewClient(tx); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "*sql.Tx") {
		t.Errorf("NewClient(*sql.Tx): %v, want ErrInvalidArgument naming *sql.Tx", err)
	}
}

// TestMigrationScriptNamesOnlyItsSchema: once the schema name is written
// in, no identifier of the script names the default schema: every
// qualifier, search_path and REVOKE names the chosen one. For every
// version the client migrates from, so for every file of sql/.
func TestMigrationScriptNamesOnlyItsSchema(t *testing.T) {
	for _, from := range []int{0, 4, 5, 6, SchemaVersion} {
		script, err := migrationScript("my_app", from)
		if err != nil {
			t.Fatalf("migrationScript(my_app, %d): %v", from, err)
		}
		code := regexp.MustCompile(`--[^\n]*`).ReplaceAllString(script, "")
		code = regexp.MustCompile(`'(?:[^']|'')*'`).ReplaceAllString(code, "''")
		if m := regexp.MustCompile(`\bleasering\b`).FindAllStringIndex(code, -1); len(m) > 0 {
			i := m[0][0]
			t.Errorf("the script from version %d for schema my_app still names leasering %d times, first at: %q", from, len(m), code[max(i-60, 0):min(i+40, len(code))])
		}
		want := []string{`SET search_path = "my_app", pg_temp`, `IN SCHEMA "my_app" FROM PUBLIC`}
		if from == 0 {
			want = append(want, `CREATE SCHEMA IF NOT EXISTS "my_app";`)
		}
		for _, w := range want {
			if !strings.Contains(script, w) {
				t.Errorf("the script from version %d lacks %q", from, w)
			}
		}
	}
}

// TestValidSQLKey: keys SQL text cannot hold still have a partition in Go.
func TestValidSQLKey(t *testing.T) {
	for _, key := range []string{"", "a", "é€☃", "🔑"} {
		if !ValidSQLKey(key) {
			t.Errorf("ValidSQLKey(%q) = false", key)
		}
	}
	for _, key := range []string{"a\x00b", "\xff\xfe", "ok\xc3"} {
		if ValidSQLKey(key) {
			t.Errorf("ValidSQLKey(%q) = true", key)
		}
		p := PartitionOf(key, 1024)
		if p < 0 || p >= 1024 || p != PartitionOf(key, 1024) {
			t.Errorf("PartitionOf(%q, 1024) = %d", key, p)
		}
	}
}

// TestEveryRaisedStateIsMapped: every SQLSTATE the SQL raises on purpose
// (the files under sql/, and the migration's guard) means something to the
// client, by code: a sentinel, or a retry. A code added to the SQL without
// a line in lrStates fails here.
func TestEveryRaisedStateIsMapped(t *testing.T) {
	raised := map[string]string{} // code -> where
	errcode := regexp.MustCompile(`ERRCODE\s*=\s*'(LR[0-9A-Z]{3})'`)
	note := func(where, text string) {
		for _, m := range errcode.FindAllStringSubmatch(text, -1) {
			raised[m[1]] = where
		}
	}
	err := filepath.WalkDir("sql", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".sql") {
			return err
		}
		b, err := os.ReadFile(path)
		note(path, string(b))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	script, err := migrationScript(DefaultSchema, 0)
	if err != nil {
		t.Fatal(err)
	}
	note("migrationScript", script)
	if len(raised) == 0 {
		t.Fatal("found no ERRCODE in the SQL")
	}
	for code, where := range raised {
		if _, ok := lrStates[code]; !ok {
			t.Errorf("%s raises SQLSTATE %s, which lrStates does not map", where, code)
		}
	}
	for code, m := range lrStates {
		if _, ok := raised[code]; !ok {
			t.Errorf("lrStates maps %s, which no SQL raises", code)
		}
		err := classifyDBError(&pgError{code, "raised on purpose"})
		switch {
		case m.sentinel != nil && !errors.Is(err, m.sentinel):
			t.Errorf("an error with SQLSTATE %s is classified %v, want %v", code, err, m.sentinel)
		case m.retry && !transient(err):
			t.Errorf("an error with SQLSTATE %s is not retried", code)
		}
	}
}
