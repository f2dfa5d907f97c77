package leasering

import (
	"context"
	"database/sql"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/fakesql"
)

func TestInvariantsSQLSchema(t *testing.T) {
	got, err := InvariantsSQL(DefaultSchema)
	if err != nil || got != strings.ReplaceAll(invariantsSQL, "leasering.", `"leasering".`) {
		t.Errorf("InvariantsSQL(%q) is not sql/invariants.sql with the schema quoted (%v)", DefaultSchema, err)
	}
	got, err = InvariantsSQL("ops_2")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(got, "leasering.") || !strings.Contains(got, `FROM "ops_2".partitions`) ||
		!strings.Contains(got, `"ops_2".vnode_positions(`) {
		t.Errorf("InvariantsSQL(ops_2) does not name ops_2 everywhere:\n%s", got)
	}
	for _, bad := range []string{"", "Leasering", `x"; DROP TABLE t; --`, "pg_temp", "information_schema", strings.Repeat("a", 54)} {
		if _, err := InvariantsSQL(bad); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "schema name") {
			t.Errorf("InvariantsSQL(%q): %v, want ErrInvalidArgument naming the schema", bad, err)
		}
	}
}

// TestInvariantsSQLQualifiesEverything: the query resolves nothing
// through the caller's search_path. Outside comments and strings, every
// operator is written OPERATOR(pg_catalog.x), every function call and
// type names its schema, and every table is the schema's or one of the
// query's own (TestInvariantsIgnoreSearchPath runs it under a hostile
// path).
func TestInvariantsSQLQualifiesEverything(t *testing.T) {
	src := regexp.MustCompile(`--[^\n]*`).ReplaceAllString(invariantsSQL, "")
	src = regexp.MustCompile(`'(?:[^']|'')*'`).ReplaceAllString(src, "''")

	rest := regexp.MustCompile(`OPERATOR\(pg_catalog\.[^)\s]+\)`).ReplaceAllString(src, " ")
	rest = regexp.MustCompile(`::\s*pg_catalog\.[a-z0-9_]+`).ReplaceAllString(rest, " ")
	rest = strings.ReplaceAll(rest, "(*)", "()")
	if i := strings.IndexAny(rest, "+-*/<>=~!@#%^&|`?:"); i >= 0 {
		t.Errorf("an operator not written OPERATOR(pg_catalog.x): %q", rest[max(i-40, 0):min(i+40, len(rest))])
	}

	keywords := map[string]bool{"as": true, "materialized": true, "from": true, "join": true, "exists": true, "lateral": true,
		"and": true, "or": true, "not": true, "in": true, "coalesce": true, "operator": true, "violation": true}
	for _, m := range regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_.]*)\s*\(`).FindAllStringSubmatch(src, -1) {
		name := m[1]
		if !keywords[strings.ToLower(name)] && !strings.HasPrefix(name, "pg_catalog.") && !strings.HasPrefix(name, "leasering.") {
			t.Errorf("function %s( is not qualified", name)
		}
	}
	ctes := map[string]bool{"clock": true, "latest": true, "live_members": true, "violation": true}
	for _, m := range regexp.MustCompile(`(?i)\b(?:from|join)\s+([A-Za-z_][A-Za-z0-9_.]*)`).FindAllStringSubmatch(src, -1) {
		if name := m[1]; !ctes[name] && !strings.HasPrefix(name, "leasering.") {
			t.Errorf("table %s is neither the schema's nor the query's own", name)
		}
	}
}

func TestCheckInvariantsRefusesBadArguments(t *testing.T) {
	db, _ := newMock(t) // no query expected: nothing may be sent
	ctx := context.Background()
	var nilTx *sql.Tx
	for _, c := range []struct {
		name   string
		db     Querier
		schema string
		ttl    time.Duration
		says   string
	}{
		{"nil db", nil, DefaultSchema, DefaultTTL, "db is nil"},
		{"nil tx", nilTx, DefaultSchema, DefaultTTL, "nil *sql.Tx"},
		{"bad schema", db.db, "Bad-Schema", DefaultTTL, `"Bad-Schema"`},
		{"short TTL", db.db, DefaultSchema, MinTTL - 1, "TTL 99.999999ms"},
	} {
		_, err := CheckInvariants(ctx, c.db, c.schema, c.ttl)
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want ErrInvalidArgument saying %s", c.name, err, c.says)
		}
	}
}

func TestCheckInvariantsReadsViolations(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectQuery(regexp.QuoteMeta(`FROM "ops".partitions`)).WithArgs("2500000 microseconds").WillReturnRows(
		fakesql.NewRows([]string{"kind", "ring", "partition", "node", "detail"}).
			AddRow("owner_not_member", "orders", 7, "ghost", "owner ghost, epoch 3; no member row").
			AddRow("lease_not_evicted", nil, nil, "n1", "lease ended at ..."))
	vs, err := CheckInvariants(context.Background(), db.db, "ops", 2500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	want := []Violation{
		{Kind: "owner_not_member", Ring: "orders", Partition: 7, Node: "ghost", Detail: "owner ghost, epoch 3; no member row"},
		{Kind: "lease_not_evicted", Partition: -1, Node: "n1", Detail: "lease ended at ..."},
	}
	if len(vs) != len(want) || vs[0] != want[0] || vs[1] != want[1] {
		t.Errorf("got %+v, want %+v", vs, want)
	}
	if s := vs[0].String(); s != `owner_not_member ring="orders" partition=7 node="ghost": owner ghost, epoch 3; no member row` {
		t.Errorf("String() = %s", s)
	}
	if s := vs[1].String(); s != `lease_not_evicted node="n1": lease ended at ...` {
		t.Errorf("String() = %s", s)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

func TestCheckInvariantsClassifiesErrors(t *testing.T) {
	db, mock := newMock(t)
	mock.ExpectQuery(`FROM "leasering".partitions`).WillReturnError(&pgError{code: "42501", msg: "permission denied for table partitions"})
	_, err := CheckInvariants(context.Background(), db.db, DefaultSchema, DefaultTTL)
	if !errors.Is(err, ErrPermanent) || !strings.Contains(err.Error(), `schema "leasering"`) {
		t.Errorf("a refused read: %v, want ErrPermanent naming the schema", err)
	}
}
