package leasering

import (
	"context"
	_ "embed"
	"fmt"
	"hash/fnv"
	"strings"
)

//go:embed sql/functions.sql
var functionsSQL string

// SchemaVersion is the version of sql/functions.sql this library speaks.
// Bump it with every change to that file.
const SchemaVersion = 7

// functions.sql names its schema "leasering" in these forms only: as the
// qualifier of every object, in every function's search_path and in the
// statement that takes EXECUTE away from PUBLIC.
const (
	sqlSchemaQualifier = "leasering."
	sqlSchemaCreate    = "CREATE SCHEMA IF NOT EXISTS leasering;"
	sqlSchemaPath      = "search_path = leasering, pg_temp"
	sqlSchemaRevoke    = "IN SCHEMA leasering FROM PUBLIC"
)

// FunctionsSQL returns sql/functions.sql as shipped, for users who apply it
// with their own migration tool (use it with WithoutMigration). It creates
// the default schema "leasering"; apply it in one transaction.
func FunctionsSQL() string { return functionsSQL }

// quoteIdent quotes a schema name that schemaPattern already accepted.
func quoteIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// migrationScript is functions.sql for the given schema, preceded by a
// transaction-level advisory lock. The client sends it as one statement
// string with no parameters, which PostgreSQL runs as one implicit
// transaction on one connection, so the lock is never left behind on a
// pooled connection and concurrent starts apply it one after the other.
// The transaction is READ COMMITTED whatever the database's default (a
// migration that waited for the lock must see what the one before it
// wrote), and its search_path is pg_catalog alone from the first
// statement on.
func migrationScript(schema string) string {
	q := quoteIdent(schema)
	src := strings.ReplaceAll(FunctionsSQL(), sqlSchemaCreate, "CREATE SCHEMA IF NOT EXISTS "+q+";")
	src = strings.ReplaceAll(src, sqlSchemaPath, "search_path = "+q+", pg_temp")
	src = strings.ReplaceAll(src, sqlSchemaRevoke, "IN SCHEMA "+q+" FROM PUBLIC")
	src = strings.ReplaceAll(src, sqlSchemaQualifier, q+".")
	return fmt.Sprintf(`SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
SELECT pg_catalog.pg_advisory_xact_lock(%d);
%s
%s`, migrationLockKey(schema), migrationGuard(schema), src)
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
		renew: `SELECT lease_ms, hold_ms, next_expiry_ms, node_status, changes::pg_catalog.text, changed_rings::pg_catalog.text, db_time FROM ` + s +
			`.renew_and_read($1::pg_catalog.text, $2::pg_catalog.text, $3::pg_catalog.int4, $4::pg_catalog.text, $5::pg_catalog.jsonb,` +
			` $6::pg_catalog.bool, $7::pg_catalog.bool, $8::pg_catalog.timestamptz)`,
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
	var exists bool
	if err := c.db.QueryRowContext(ctx, c.q.schemaExists, quoteIdent(c.cfg.schema)+".schema_version").Scan(&exists); err != nil {
		return fmt.Errorf("leasering: checking schema %q: %w", c.cfg.schema, classifyDBError(err))
	}
	version := 0
	if exists {
		if err := c.db.QueryRowContext(ctx, c.q.version).Scan(&version); err != nil {
			return fmt.Errorf("leasering: reading the version of schema %q: %w", c.cfg.schema, classifyDBError(err))
		}
	}
	switch {
	case version > SchemaVersion:
		return fmt.Errorf("%w: schema %q is at version %d, this library knows %d", ErrSchemaVersion, c.cfg.schema, version, SchemaVersion)
	case version == SchemaVersion:
		return nil
	case !c.cfg.migrate && version == 0:
		return fmt.Errorf("%w: schema %q has no leasering tables and migration is off: apply sql/functions.sql (FunctionsSQL)", ErrSchemaMissing, c.cfg.schema)
	case !c.cfg.migrate:
		return fmt.Errorf("%w: schema %q is at version %d, this library needs %d and migration is off", ErrSchemaMissing, c.cfg.schema, version, SchemaVersion)
	}
	if _, err := c.db.ExecContext(ctx, migrationScript(c.cfg.schema)); err != nil {
		if sqlState(err) == stateSchemaCurrent {
			return nil // another node migrated while we waited
		}
		return fmt.Errorf("leasering: migrating schema %q: %w", c.cfg.schema, classifyDBError(err))
	}
	c.log.Info("leasering: schema ready", "schema", c.cfg.schema, "from_version", version, "to_version", SchemaVersion)
	return nil
}
