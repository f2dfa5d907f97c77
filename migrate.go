package leasering

import (
	"context"
	"embed"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// The schema in sql/: schema.sql makes the tables of this version,
// migrations/NNN_*.sql upgrades the tables from version NNN-1 to NNN, and
// functions.sql replaces every function. A new schema gets schema.sql, an
// older one the migrations above its version, and both then functions.sql.
var (
	//go:embed sql/schema.sql
	schemaSQL string
	//go:embed sql/functions.sql
	functionsSQL string
	//go:embed sql/migrations/*.sql
	migrationFS embed.FS
)

// SchemaVersion is the version of the schema in sql/ this library speaks.
// Bump it with every change to the tables or to what a function does, and
// add the migration that reaches it. A change that keeps what every
// function does (a faster body) needs none: a database already at this
// version keeps the bodies it has.
const SchemaVersion = 21

// oldestUpgradable is the oldest schema version the migrations upgrade.
const oldestUpgradable = 4

// stateSchemaOtherVersion is the SQLSTATE a file of sql/ raises when the
// tables are at another version than the one it applies to: here, another
// process upgraded the schema between our reading its version and our
// migration taking the lock.
const stateSchemaOtherVersion = "LR007"

// sqlFile is one file of sql/: its path there and its text.
type sqlFile struct {
	name, text string
}

// migrations are the files of sql/migrations, each at the index of the
// version it reaches (NNN in its name NNN_*.sql); nil where none does.
var migrations = loadMigrations()

func loadMigrations() []*sqlFile {
	entries, err := migrationFS.ReadDir("sql/migrations")
	if err != nil {
		panic(err)
	}
	out := make([]*sqlFile, SchemaVersion+1)
	for _, e := range entries {
		v, err := strconv.Atoi(strings.SplitN(e.Name(), "_", 2)[0])
		if err != nil || v <= oldestUpgradable || v > SchemaVersion || out[v] != nil {
			panic("leasering: sql/migrations/" + e.Name() + ": not one migration to a version from 5 to SchemaVersion")
		}
		text, err := migrationFS.ReadFile("sql/migrations/" + e.Name())
		if err != nil {
			panic(err)
		}
		out[v] = &sqlFile{name: "migrations/" + e.Name(), text: string(text)}
	}
	return out
}

// migrationFiles lists the files of sql/ that bring a schema at version
// from (0: none) to SchemaVersion, in the order they apply.
func migrationFiles(from int) ([]sqlFile, error) {
	switch {
	case from < 0:
		return nil, fmt.Errorf("%w: MigrationSQL(%d): a schema version is 0 (no schema) or more", ErrInvalidArgument, from)
	case from > SchemaVersion:
		return nil, fmt.Errorf("%w: MigrationSQL(%d): this library knows versions up to %d", ErrSchemaVersion, from, SchemaVersion)
	case from == 0:
		return []sqlFile{{"schema.sql", schemaSQL}, {"functions.sql", functionsSQL}}, nil
	case from < oldestUpgradable:
		return nil, fmt.Errorf("%w: MigrationSQL(%d): this library upgrades versions %d to %d",
			ErrUnsupported, from, oldestUpgradable, SchemaVersion-1)
	}
	var files []sqlFile
	for v := from + 1; v <= SchemaVersion; v++ {
		files = append(files, *migrations[v])
	}
	return append(files, sqlFile{"functions.sql", functionsSQL}), nil
}

// MigrationSQL returns the SQL that brings the schema "leasering" from
// schema version from (0: no schema yet) to SchemaVersion, for users who
// apply it with their own migration tool (and start clients
// WithoutMigration): sql/schema.sql and sql/functions.sql for a new
// schema; for an older one, the files of sql/migrations above its version
// and then sql/functions.sql. Apply it in one transaction. Versions from 4
// upgrade; from = SchemaVersion gives sql/functions.sql alone, which
// changes nothing.
func MigrationSQL(from int) (string, error) {
	files, err := migrationFiles(from)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, f := range files {
		b.WriteString(f.text)
		b.WriteString("\n")
	}
	return b.String(), nil
}

// The files of sql/ name their schema "leasering" in these forms only: as
// the qualifier of every object, in every function's search_path and in
// the statement that takes EXECUTE away from PUBLIC.
const (
	sqlSchemaQualifier = "leasering."
	sqlSchemaCreate    = "CREATE SCHEMA IF NOT EXISTS leasering;"
	sqlSchemaPath      = "search_path = leasering, pg_temp"
	sqlSchemaRevoke    = "IN SCHEMA leasering FROM PUBLIC"
)

// FunctionsSQL returns sql/functions.sql as shipped: the functions alone,
// for a schema whose tables are at SchemaVersion. Most users of their own
// migration tool want MigrationSQL, which includes it.
func FunctionsSQL() string { return functionsSQL }

// quoteIdent quotes a schema name that schemaPattern already accepted.
func quoteIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// migrationScript is MigrationSQL(from) for the given schema, preceded by
// a transaction-level advisory lock. The client sends it as one statement
// string with no parameters, which PostgreSQL runs as one implicit
// transaction on one connection, so the lock is never left behind on a
// pooled connection and concurrent starts apply it one after the other.
// The transaction is READ COMMITTED whatever the database's default (a
// migration that waited for the lock must see what the one before it
// wrote), and its search_path is pg_catalog alone from the first
// statement on.
func migrationScript(schema string, from int) (string, error) {
	src, err := MigrationSQL(from)
	if err != nil {
		return "", err
	}
	q := quoteIdent(schema)
	src = strings.ReplaceAll(src, sqlSchemaCreate, "CREATE SCHEMA IF NOT EXISTS "+q+";")
	src = strings.ReplaceAll(src, sqlSchemaPath, "search_path = "+q+", pg_temp")
	src = strings.ReplaceAll(src, sqlSchemaRevoke, "IN SCHEMA "+q+" FROM PUBLIC")
	src = strings.ReplaceAll(src, sqlSchemaQualifier, q+".")
	return fmt.Sprintf(`SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
SELECT pg_catalog.pg_advisory_xact_lock(%d);
%s
%s`, migrationLockKey(schema), migrationGuard(schema), src), nil
}

// migrationGuard stops the script, under the lock, when the schema is
// already at this version or newer: re-running the DDL would take table
// locks that conflict with the heartbeats of nodes already running.
func migrationGuard(schema string) string {
	table := quoteIdent(schema) + ".schema_version"
	return fmt.Sprintf(`DO $guard$
DECLARE v integer;
BEGIN
    IF pg_catalog.to_regclass('%[1]s') IS NOT NULL THEN
        EXECUTE 'SELECT version FROM %[1]s' INTO v;
        IF v > %[2]d THEN
            RAISE EXCEPTION 'schema version %% in the database is newer than this library (%[2]d)', v
                  USING ERRCODE = '%[3]s';
        ELSIF v = %[2]d THEN
            RAISE EXCEPTION 'schema is already at version %%', v USING ERRCODE = '%[4]s';
        END IF;
    END IF;
END $guard$;`, table, SchemaVersion, stateSchemaNewer, stateSchemaCurrent)
}

// migrationLockKey is the advisory lock key for a schema's migration.
func migrationLockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("leasering migration\x00" + schema))
	return int64(h.Sum64())
}

// queries are the statements the client sends, with the schema quoted in.
// Every parameter is cast to its type, so that the statement means the
// same whatever types a driver announces for its arguments (pgx's exec
// and simple protocol modes announce them from the Go types, or none).
type queries struct {
	schemaExists string
	version      string
	renew        string
	leave        string
	leaveRing    string
	joinRings    string
	readViews    string
	announce     string
}

func newQueries(schema string) queries {
	s := quoteIdent(schema)
	return queries{
		schemaExists: `SELECT pg_catalog.to_regclass($1::pg_catalog.text) IS NOT NULL`,
		version:      `SELECT version FROM ` + s + `.schema_version`,
		renew: `SELECT lease_ms, hold_ms, next_expiry_ms, node_status, changes::pg_catalog.text, changed_rings::pg_catalog.text, db_time,` +
			` wal_insert, wal_flush, durable FROM ` + s +
			`.renew_and_read($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.int4, $4::pg_catalog.text, $5::pg_catalog.jsonb,` +
			` $6::pg_catalog.bool, $7::pg_catalog.bool, $8::pg_catalog.timestamptz, $9::pg_catalog.bool)`,
		leave:     `SELECT ` + s + `.leave($1::pg_catalog.text, $2::pg_catalog.text)`,
		leaveRing: `SELECT ` + s + `.leave($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.text)`,
		joinRings: `SELECT ` + s + `.join_rings($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.jsonb, $4::pg_catalog.int4)::pg_catalog.text`,
		readViews: `SELECT ` + s + `.read_views($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.jsonb)::pg_catalog.text`,
		announce:  `SELECT pg_catalog.pg_notify($1::pg_catalog.text, r) FROM pg_catalog.jsonb_array_elements_text($2::pg_catalog.jsonb) AS r`,
	}
}

// ensureSchema checks the schema version and, if allowed, creates or
// upgrades the schema.
func (c *Client) ensureSchema(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		version, err := c.schemaVersion(ctx)
		if err != nil {
			return err
		}
		switch {
		case version > SchemaVersion:
			return fmt.Errorf("%w: schema %q is at version %d, this library knows %d", ErrSchemaVersion, c.cfg.schema, version, SchemaVersion)
		case version == SchemaVersion:
			return nil
		case !c.cfg.migrate && version == 0:
			return fmt.Errorf("%w: schema %q has no leasering tables and migration is off: apply sql/schema.sql and sql/functions.sql (MigrationSQL(0))", ErrSchemaMissing, c.cfg.schema)
		case version < oldestUpgradable && version != 0:
			return fmt.Errorf("%w: schema %q is at version %d, this library upgrades versions %d to %d", ErrUnsupported, c.cfg.schema, version, oldestUpgradable, SchemaVersion-1)
		case !c.cfg.migrate:
			return fmt.Errorf("%w: schema %q is at version %d, this library needs %d and migration is off: apply MigrationSQL(%d)", ErrSchemaMissing, c.cfg.schema, version, SchemaVersion, version)
		}
		script, err := migrationScript(c.cfg.schema, version)
		if err != nil {
			return err
		}
		_, err = c.db.ExecContext(ctx, script)
		switch {
		case err == nil:
			c.log.Info("leasering: schema ready", "schema", c.cfg.schema, "from_version", version, "to_version", SchemaVersion)
			return nil
		case sqlState(err) == stateSchemaCurrent:
			return nil // another node migrated while we waited
		case sqlState(err) == stateSchemaOtherVersion && attempt < 3:
			continue // an older library upgraded it while we waited: read the version again
		}
		return fmt.Errorf("leasering: migrating schema %q: %w", c.cfg.schema, classifyDBError(err))
	}
}

// schemaVersion reads the schema's version, 0 when it has no tables.
func (c *Client) schemaVersion(ctx context.Context) (int, error) {
	var exists bool
	if err := c.db.QueryRowContext(ctx, c.q.schemaExists, quoteIdent(c.cfg.schema)+".schema_version").Scan(&exists); err != nil {
		return 0, fmt.Errorf("leasering: checking schema %q: %w", c.cfg.schema, classifyDBError(err))
	}
	version := 0
	if exists {
		if err := c.db.QueryRowContext(ctx, c.q.version).Scan(&version); err != nil {
			return 0, fmt.Errorf("leasering: reading the version of schema %q: %w", c.cfg.schema, classifyDBError(err))
		}
	}
	return version, nil
}
