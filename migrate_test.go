package leasering

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/leasering/leasering/internal/fakesql"
)

// TestMigrationSQLIsTheFiles: MigrationSQL(from) is the files of sql/, as
// they are on disk, in the order they apply: schema.sql and functions.sql
// for a new schema; the migrations above from and functions.sql for an
// older one. sql/migrations holds one file for each version above the
// oldest upgradable.
func TestMigrationSQLIsTheFiles(t *testing.T) {
	disk, err := filepath.Glob("sql/migrations/*.sql")
	if err != nil {
		t.Fatal(err)
	}
	var versions []int
	for _, f := range disk {
		v, err := strconv.Atoi(strings.SplitN(filepath.Base(f), "_", 2)[0])
		if err != nil {
			t.Errorf("%s: no version", f)
		}
		versions = append(versions, v)
	}
	if want := seq(oldestUpgradable+1, SchemaVersion); !slices.Equal(versions, want) {
		t.Errorf("sql/migrations reaches versions %v, want %v", versions, want)
	}
	for _, c := range []struct {
		from  int
		files []string
	}{
		{0, []string{"schema.sql", "functions.sql"}},
		{4, slices.Concat(disk, []string{"functions.sql"})},
		{5, slices.Concat(disk[1:], []string{"functions.sql"})},
		{6, slices.Concat(disk[2:], []string{"functions.sql"})},
		{SchemaVersion, []string{"functions.sql"}},
	} {
		var want strings.Builder
		for _, f := range c.files {
			b, err := os.ReadFile(filepath.Join("sql", strings.TrimPrefix(f, "sql/")))
			if err != nil {
				t.Fatal(err)
			}
			want.Write(b)
			want.WriteString("\n")
		}
		got, err := MigrationSQL(c.from)
		if err != nil || got != want.String() {
			t.Errorf("MigrationSQL(%d) is not %v (%v)", c.from, c.files, err)
		}
	}
	for _, c := range []struct {
		from     int
		sentinel error
	}{{-1, ErrInvalidArgument}, {1, ErrUnsupported}, {3, ErrUnsupported}, {SchemaVersion + 1, ErrSchemaVersion}} {
		if _, err := MigrationSQL(c.from); !errors.Is(err, c.sentinel) || !strings.Contains(err.Error(), fmt.Sprintf("MigrationSQL(%d)", c.from)) {
			t.Errorf("MigrationSQL(%d): %v, want %v naming the version", c.from, err, c.sentinel)
		}
	}
}

func seq(from, to int) []int {
	var out []int
	for v := from; v <= to; v++ {
		out = append(out, v)
	}
	return out
}

// TestSQLFilesCheckTheirVersions: every file of sql/ names, and checks the
// tables for, the version it applies to, so that bumping SchemaVersion
// without them fails here.
func TestSQLFilesCheckTheirVersions(t *testing.T) {
	v := strconv.Itoa(SchemaVersion)
	want := map[string][]string{
		"sql/schema.sql": {"schema version " + v + ".", ") > " + v + " THEN", ") < " + v + " THEN",
			"this file (" + v + ")'", "VALUES (" + v + ")"},
		"sql/functions.sql": {"schema version " + v + ".", ") > " + v + " THEN", "IS DISTINCT FROM " + v + " THEN",
			"this file (" + v + ")'", "not " + v + ":"},
	}
	for n := oldestUpgradable + 1; n <= SchemaVersion; n++ {
		was, is := strconv.Itoa(n-1), strconv.Itoa(n)
		want[filepath.Join("sql", migrations[n].name)] = []string{"from schema version " + was + " to " + is + ".",
			"IS DISTINCT FROM " + was + " THEN", "upgrades version " + was + "'", "SET version = " + is + ";"}
	}
	for file, texts := range want {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, text := range texts {
			if !strings.Contains(string(b), text) {
				t.Errorf("%s lacks %q", file, text)
			}
		}
	}
}

// TestREADMEAppliesMigrationSQL: the README's psql commands, one for a new
// schema and one for each version upgraded, apply the files MigrationSQL
// returns, in its order.
func TestREADMEAppliesMigrationSQL(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| (none yet|at version (\\d+)) \\| `psql -v ON_ERROR_STOP=1 -1((?: -f \\S+)+)` \\|$")
	seen := map[int]bool{}
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		from, _ := strconv.Atoi(m[2])
		files, err := migrationFiles(from)
		if err != nil {
			t.Errorf("README: %q: %v", m[0], err)
			continue
		}
		var want []string
		for _, f := range files {
			want = append(want, "-f", "sql/"+f.name)
		}
		if got := strings.Fields(m[3]); !slices.Equal(got, want) {
			t.Errorf("README, from version %d: %v, want %v", from, got, want)
		}
		seen[from] = true
	}
	for _, from := range append([]int{0}, seq(oldestUpgradable, SchemaVersion-1)...) {
		if !seen[from] {
			t.Errorf("README has no psql command for a schema at version %d", from)
		}
	}
}

// TestStartRefusesSchemaTooOldToUpgrade: a schema older than the oldest
// upgradable version is left as it is, with ErrUnsupported naming its
// version.
func TestStartRefusesSchemaTooOldToUpgrade(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db)
	mock.ExpectQuery(`SELECT pg_catalog.to_regclass`).WillReturnRows(fakesql.NewRows([]string{"ok"}).AddRow(true))
	mock.ExpectQuery(`SELECT version`).WillReturnRows(fakesql.NewRows([]string{"version"}).AddRow(oldestUpgradable - 1))
	err := c.Start(context.Background())
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "version 3") {
		t.Fatalf("Start on a schema at version 3: %v, want ErrUnsupported naming the version", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Errorf("calls after the version check: %v", err)
	}
}

// TestStartReadsTheVersionAgainAfterLR007: a migration built for the
// version read before the lock, which finds another version under it
// (another library upgraded the schema meanwhile), is built again for the
// version read anew.
func TestStartReadsTheVersionAgainAfterLR007(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db)
	mock.ExpectQuery(`SELECT pg_catalog.to_regclass`).WillReturnRows(fakesql.NewRows([]string{"ok"}).AddRow(false))
	mock.ExpectExec(`CREATE TABLE IF NOT EXISTS "leasering".nodes`).
		WillReturnError(&pgError{stateSchemaOtherVersion, "the schema is at version 6: upgrade it with the files of sql/migrations above that version, not schema.sql"})
	mock.ExpectQuery(`SELECT pg_catalog.to_regclass`).WillReturnRows(fakesql.NewRows([]string{"ok"}).AddRow(true))
	mock.ExpectQuery(`SELECT version`).WillReturnRows(fakesql.NewRows([]string{"version"}).AddRow(6))
	mock.ExpectExec(`ALTER TABLE "leasering".nodes RENAME COLUMN report_from TO hold_until`).WillReturnResult(fakesql.NewResult(0, 0))
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(9990, 0, nil, "ok", nil, nil))
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// TestPerRingFunctionsArePLpgSQL: a SQL function with a SET clause is
// never inlined, and PostgreSQL plans its body again on every call (a view
// of a ring cost 3 times as much as the same query in plpgsql). The only
// ones left are called once per statement.
func TestPerRingFunctionsArePLpgSQL(t *testing.T) {
	onceACall := []string{"holds", "evict_expired"}
	fn := regexp.MustCompile(`(?s)CREATE OR REPLACE FUNCTION leasering\.(\w+)\(.*?\nAS \$\$`)
	var sqlWithSet []string
	for _, m := range fn.FindAllStringSubmatch(functionsSQL, -1) {
		if strings.Contains(m[0], "\nLANGUAGE sql") && strings.Contains(m[0], "\nSET search_path") {
			sqlWithSet = append(sqlWithSet, m[1])
		}
	}
	if !slices.Equal(sqlWithSet, onceACall) {
		t.Errorf("SQL functions with a SET clause: %v, want only %v (make the others plpgsql)", sqlWithSet, onceACall)
	}
}
