package integration

import (
	"database/sql"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// oldSchemas are the schema versions this library upgrades, each as its
// release shipped sql/functions.sql (testdata holds copies from git
// history: `git show <commit>:sql/functions.sql`, and from version 7
// sql/schema.sql before it).
var oldSchemas = []struct {
	name    string
	version int
	file    string
	client  oldClient
}{
	{"v4", 4, "testdata/functions_v4_3a1cd10.sql", oldClient{}},
	{"v5-first", 5, "testdata/functions_v5_a9b1bc2.sql", oldClient{forgetOnRejoin: true}}, // no claimed_by yet
	{"v5", 5, "testdata/functions_v5_ec05b67.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v6", 6, "testdata/functions_v6_d26a4fa.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	// From version 7 on, a release ships schema.sql and functions.sql:
	// the copy is the two, one after the other.
	{"v7", 7, "testdata/schema_and_functions_v7_a49746f.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v8", 8, "testdata/schema_and_functions_v8_38dba32.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v9", 9, "testdata/schema_and_functions_v9_c180b10.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v10", 10, "testdata/schema_and_functions_v10_a0b7cc7.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v11", 11, "testdata/schema_and_functions_v11_5dfb324.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v12", 12, "testdata/schema_and_functions_v12_be18648.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v13", 13, "testdata/schema_and_functions_v13_2c9dd7f.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v14", 14, "testdata/schema_and_functions_v14_9863102.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v15", 15, "testdata/schema_and_functions_v15_ac1bf04.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v16", 16, "testdata/schema_and_functions_v16_b369403.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v17", 17, "testdata/schema_and_functions_v17_2e68044.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v18", 18, "testdata/schema_and_functions_v18_8b27473.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v19", 19, "testdata/schema_and_functions_v19_930ab43.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v20", 20, "testdata/schema_and_functions_v20_72c992e.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
}

// oldClient is how the Go client of an older release read the heartbeat's
// answers.
type oldClient struct {
	// joinRings: it joins rings with join_rings when an answer says
	// 'join' (and knows 'later' and 'view'); before, the heartbeat joined
	// them, and an answer it does not know fails the heartbeat.
	joinRings bool
	// forgetOnRejoin: a 'rejoined' answer makes it forget every ring whose
	// view did not come with it (it asks again from version 0).
	forgetOnRejoin bool
}

// installOld applies an old release's sql/functions.sql to e's schema, as
// that release's client did.
func installOld(t testing.TB, e *env, file string, version int) {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Exec(forSchema(string(src), e.schema)); err != nil {
		t.Fatalf("installing %s: %v", file, err)
	}
	if v := schemaVersionOf(t, e.admin, e.schema); v != version {
		t.Fatalf("%s installed version %d, want %d", file, v, version)
	}
}

// forSchema is SQL of sql/ (or an older release's) for schema, as the Go
// client writes it: the schema's name in place of "leasering".
func forSchema(src, schema string) string {
	q := `"` + schema + `"`
	src = strings.ReplaceAll(src, "CREATE SCHEMA IF NOT EXISTS leasering;", "CREATE SCHEMA IF NOT EXISTS "+q+";")
	src = strings.ReplaceAll(src, "search_path = leasering, pg_temp", "search_path = "+q+", pg_temp")
	src = strings.ReplaceAll(src, "IN SCHEMA leasering FROM PUBLIC", "IN SCHEMA "+q+" FROM PUBLIC")
	return strings.ReplaceAll(src, "leasering.", q+".")
}

func schemaVersionOf(t testing.TB, db *sql.DB, schema string) int {
	t.Helper()
	var v int
	if err := db.QueryRow(`SELECT version FROM "` + schema + `".schema_version`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// catalogOf describes schema's objects as the catalog has them: tables and
// their options and privileges, columns in order with types, nullability
// and defaults, constraints, indexes, functions (signature, language,
// properties, settings, privileges and a hash of the body) and views, with
// the schema's name written S.
func catalogOf(t testing.TB, db *sql.DB, schema string) []string {
	t.Helper()
	rows, err := db.Query(`
		SELECT 'relation ' || c.relname || ' kind=' || c.relkind::text || ' options=' || coalesce(array_to_string(c.reloptions, ','), '')
		       || ' acl=' || coalesce(c.relacl::text, '')
		  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
		UNION ALL
		SELECT 'column ' || c.relname || ' #' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) || ' ' || a.attname
		       || ' ' || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
		       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
		  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
		 WHERE n.nspname = $1
		UNION ALL
		SELECT 'constraint ' || c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
		  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = $1
		UNION ALL
		SELECT 'index ' || pg_get_indexdef(i.indexrelid)
		  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = $1
		UNION ALL
		SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') returns '
		       || pg_get_function_result(p.oid) || ' ' || l.lanname || ' volatile=' || p.provolatile::text
		       || ' secdef=' || p.prosecdef::text || ' strict=' || p.proisstrict::text || ' parallel=' || p.proparallel::text
		       || ' config=' || coalesce(array_to_string(p.proconfig, ','), '') || ' acl=' || coalesce(p.proacl::text, '')
		       || ' body=' || md5(replace(p.prosrc, $1, 'S'))
		  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
		 WHERE n.nspname = $1
		UNION ALL
		SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid)
		  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'v'
		ORDER BY 1`, schema)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.ReplaceAll(line, schema, "S"))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUpgradedCatalogMatchesNew: a schema upgraded from each version the
// library upgrades has the catalog of a new one, object for object:
// columns, constraints, indexes, function signatures and bodies, views,
// privileges. Nothing of an older version is left behind.
func TestUpgradedCatalogMatchesNew(t *testing.T) {
	t.Parallel()
	fresh := newEnv(t, 2*time.Second, 200*time.Millisecond)
	if err := fresh.startNode("installer", "r", 8).client.Close(); err != nil {
		t.Fatal(err)
	}
	want := catalogOf(t, fresh.admin, fresh.schema)
	for _, old := range oldSchemas {
		t.Run(old.name, func(t *testing.T) {
			e := newEnv(t, 2*time.Second, 200*time.Millisecond)
			installOld(t, e, old.file, old.version)
			if err := e.startNode("installer", "r", 8).client.Close(); err != nil {
				t.Fatal(err)
			}
			if v := schemaVersionOf(t, e.admin, e.schema); v != leasering.SchemaVersion {
				t.Fatalf("upgraded to version %d, want %d", v, leasering.SchemaVersion)
			}
			got := catalogOf(t, e.admin, e.schema)
			for _, line := range got {
				if !slices.Contains(want, line) {
					t.Errorf("only the upgraded schema has: %s", line)
				}
			}
			for _, line := range want {
				if !slices.Contains(got, line) {
					t.Errorf("only the new schema has: %s", line)
				}
			}
		})
	}
}

// TestSQLFilesRefuseOtherVersions: each file of sql/ refuses tables at a
// version it does not apply to, with LR007 (LR002 for tables newer than
// this release, from schema.sql and functions.sql), and changes nothing.
func TestSQLFilesRefuseOtherVersions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2*time.Second, 200*time.Millisecond)
	installOld(t, e, "testdata/schema_and_functions_v7_a49746f.sql", 7)
	fresh := must(leasering.MigrationSQL(0))
	upgrade := must(leasering.MigrationSQL(7))
	newer := "UPDATE S.schema_version SET version = " + strconv.Itoa(leasering.SchemaVersion+1)
	cases := []struct {
		what, setup, script, state string
	}{
		{"schema.sql at version 7", "", fresh, "LR007"},
		{"functions.sql at version 7", "", leasering.FunctionsSQL(), "LR007"},
		{"migration 6 to 7 at version 7", "", must(leasering.MigrationSQL(6)), "LR007"},
		{"migration 7 to 8 at version 8", "UPDATE S.schema_version SET version = 8", upgrade, "LR007"},
		{"schema.sql at a newer version", newer, fresh, "LR002"},
		{"functions.sql at a newer version", newer, leasering.FunctionsSQL(), "LR002"},
	}
	for _, c := range cases {
		tx, err := e.admin.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if c.setup != "" {
			if _, err := tx.Exec(strings.ReplaceAll(c.setup, "S.", `"`+e.schema+`".`)); err != nil {
				t.Fatal(err)
			}
		}
		_, err = tx.Exec(forSchema(c.script, e.schema))
		_ = tx.Rollback()
		if got := sqlStateOf(err); got != c.state {
			t.Errorf("%s: %v, want SQLSTATE %s", c.what, err, c.state)
		}
	}
	if v := schemaVersionOf(t, e.admin, e.schema); v != 7 {
		t.Errorf("the schema is at version %d after the refusals, want 7", v)
	}
}

// TestREADMEPsqlCommands runs the README's psql commands (Applying the
// schema yourself), each on a database of its own: on none, and on the
// schema of each version upgraded. Each yields a schema at this version
// with the catalog of a new one.
func TestREADMEPsqlCommands(t *testing.T) {
	t.Parallel()
	psql, err := exec.LookPath("psql")
	if err != nil {
		skip(t, "no psql on PATH")
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| (none yet|at version (\\d+)) \\| `psql ([^`]+)` \\|$")
	admin := openPool(t, needDB(t))
	var want []string
	for i, m := range row.FindAllStringSubmatch(string(readme), -1) {
		from, _ := strconv.Atoi(m[2])
		if (i == 0) != (from == 0) {
			t.Fatalf("README: the first command must be for a new schema: %q", m[0])
		}
		db := scratchDatabase(t, admin, "")
		dsn := dsnWith(t, testDSN, "", db)
		dbAdmin := openPool(t, dsn)
		if from > 0 {
			file := ""
			for _, old := range oldSchemas {
				if old.version == from {
					file = old.file // the last release of that version
				}
			}
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("version %d: %v", from, err)
			}
			if _, err := dbAdmin.Exec(string(src)); err != nil {
				t.Fatalf("installing %s: %v", file, err)
			}
		}
		cmd := exec.Command(psql, append([]string{"-X", "-q", "-d", dsn}, strings.Fields(m[3])...)...)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", m[0], err, out)
		}
		if v := schemaVersionOf(t, dbAdmin, "leasering"); v != leasering.SchemaVersion {
			t.Errorf("%s: version %d, want %d", m[0], v, leasering.SchemaVersion)
		}
		got := catalogOf(t, dbAdmin, "leasering")
		if from == 0 {
			want = got
		} else if !slices.Equal(got, want) {
			t.Errorf("%s: the catalog differs from a new schema's", m[0])
		}
	}
	if want == nil {
		t.Fatal("the README has no psql command")
	}
	t.Logf("%d README commands applied", len(row.FindAllString(string(readme), -1)))
}
