package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/leasering/leasering"
)

const statusAbout = `Prints, for every schema in the database that holds leasering's tables
(or for the one -schema names), its rings with their size and version, and
each member's vnodes, partitions owned and incoming, highest epoch and
lease time left. It reads the catalog, each schema's schema_version and
rings tables and its ring_members view, and writes nothing. A role granted
only ring_members sees the rings that have members.`

// statusCmd prints the operator view.
func statusCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("status", statusAbout)
	dsn := dsnFlag(fs)
	schema := fs.String("schema", "", "show only this leasering `schema` (default: every schema that holds leasering's tables)")
	if code, done := parse(fs, args, stdout, stderr); done {
		return code
	}
	db, err := openDB(sharedDSN(dsn, stderr))
	if err != nil {
		return failed(stderr, "status", err)
	}
	defer db.Close()
	if *schema != "" {
		// NewClient does no I/O; it checks the name as every node would.
		if _, err := leasering.NewClient(db, leasering.WithSchema(*schema)); err != nil {
			return usageError(stderr, "status", fmt.Errorf("-schema: %w", err))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := status(ctx, stdout, db, *schema); err != nil {
		return failed(stderr, "status", err)
	}
	return exitOK
}

// howToCreate tells where leasering schemas come from.
const howToCreate = "A schema is created by the first node that starts on it: run `ringnode demo` (schema " +
	demoSchema + "), or start a node with leasering.NewClient (schema " + leasering.DefaultSchema + " unless WithSchema names another)."

// leaseringSchemas returns the schemas that hold a table schema_version and
// a view ring_members, the two objects status reads.
func leaseringSchemas(ctx context.Context, db *sql.DB) ([]string, error) {
	rows, err := db.QueryContext(ctx, `
		SELECT n.nspname
		  FROM pg_catalog.pg_namespace n
		 WHERE EXISTS (SELECT FROM pg_catalog.pg_class c
		                WHERE c.relnamespace OPERATOR(pg_catalog.=) n.oid
		                  AND c.relname OPERATOR(pg_catalog.=) 'schema_version'
		                  AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::"char"[]))
		   AND EXISTS (SELECT FROM pg_catalog.pg_class c
		                WHERE c.relnamespace OPERATOR(pg_catalog.=) n.oid
		                  AND c.relname OPERATOR(pg_catalog.=) 'ring_members'
		                  AND c.relkind OPERATOR(pg_catalog.=) 'v')
		 ORDER BY n.nspname COLLATE "C"`)
	if err != nil {
		return nil, fmt.Errorf("listing leasering schemas: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// status prints every leasering schema, or only, when it is not empty, the
// schema named.
func status(ctx context.Context, out io.Writer, db *sql.DB, only string) error {
	schemas, err := leaseringSchemas(ctx, db)
	if err != nil {
		return err
	}
	if only != "" {
		found := false
		for _, s := range schemas {
			found = found || s == only
		}
		if !found {
			have := "none holds them"
			if len(schemas) > 0 {
				have = "those that do: " + strings.Join(schemas, ", ")
			}
			return fmt.Errorf("schema %q holds no leasering tables (%s). %s", only, have, howToCreate)
		}
		schemas = []string{only}
	}
	if len(schemas) == 0 {
		fmt.Fprintln(out, "No schema in this database holds leasering's tables.")
		fmt.Fprintln(out, howToCreate)
		return nil
	}
	var unread []string
	printed := false
	for _, s := range schemas {
		var b bytes.Buffer
		err := schemaStatus(ctx, &b, db, s)
		switch {
		case err == nil:
		case only == "" && (sqlState(err) == "42P01" || sqlState(err) == "3F000"):
			continue // dropped since it was listed
		default:
			unread = append(unread, s)
			b.Reset()
			fmt.Fprintf(&b, "schema %s: %v\n", s, err)
		}
		if printed {
			fmt.Fprintln(out)
		}
		out.Write(b.Bytes())
		printed = true
	}
	if len(unread) > 0 {
		return fmt.Errorf("could not read schema(s) %s", strings.Join(unread, ", "))
	}
	return nil
}

// sqlState is the SQLSTATE of a database error, or "".
func sqlState(err error) string {
	var e interface{ SQLState() string }
	if errors.As(err, &e) {
		return e.SQLState()
	}
	return ""
}

// quoteIdent quotes a name for SQL.
func quoteIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

type ringInfo struct {
	size    int
	version int64
	members []string // table rows, tab-separated
}

// schemaStatus prints one schema: its version, then a table of its rings
// and members. Rings without members come from the rings table when the
// role may read it; operators granted only ring_members see the rings that
// have members.
func schemaStatus(ctx context.Context, out io.Writer, db *sql.DB, schema string) error {
	q := quoteIdent(schema)
	var version int
	if err := db.QueryRowContext(ctx, `SELECT version FROM `+q+`.schema_version`).Scan(&version); err != nil {
		return fmt.Errorf("reading schema_version: %w", err)
	}
	rings := map[string]*ringInfo{}
	var names []string
	ring := func(name string, size int, version int64) *ringInfo {
		r := rings[name]
		if r == nil {
			r = &ringInfo{size: size, version: version}
			rings[name] = r
			names = append(names, name)
		}
		return r
	}
	rows, err := db.QueryContext(ctx, `SELECT ring, size, version, node_id, vnodes, owned, incoming,
		coalesce(max_epoch, 0), extract(epoch FROM lease_left)::float8
		FROM `+q+`.ring_members ORDER BY ring COLLATE "C", node_id COLLATE "C"`)
	if err != nil {
		return fmt.Errorf("reading ring_members: %w", err)
	}
	for rows.Next() {
		var name, node string
		var size, vnodes, owned, incoming int
		var version, epoch int64
		var left float64
		if err := rows.Scan(&name, &size, &version, &node, &vnodes, &owned, &incoming, &epoch, &left); err != nil {
			rows.Close()
			return err
		}
		r := ring(name, size, version)
		r.members = append(r.members, fmt.Sprintf("%s\t%d\t%d\t%d\t%d\t%.1fs", node, vnodes, owned, incoming, epoch, left))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading ring_members: %w", err)
	}
	if err := emptyRings(ctx, db, q, ring); err != nil {
		return err
	}
	sort.Strings(names)

	fmt.Fprintf(out, "schema %s (schema version %d): %d ring(s)\n", schema, version, len(names))
	if len(names) == 0 {
		fmt.Fprintln(out, "  no rings yet: a ring appears when its first member joins")
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RING\tSIZE\tVERSION\tNODE\tVNODES\tOWNED\tINCOMING\tMAX EPOCH\tLEASE LEFT")
	for _, name := range names {
		r := rings[name]
		if len(r.members) == 0 {
			fmt.Fprintf(tw, "%s\t%d\t%d\t(no members)\t-\t-\t-\t-\t-\n", name, r.size, r.version)
		}
		for _, m := range r.members {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", name, r.size, r.version, m)
		}
	}
	return tw.Flush()
}

// emptyRings adds the rings that have no members, read from the rings
// table. A role that may read only ring_members gets an insufficient
// privilege error (42501), which is no failure: it sees the other rings.
func emptyRings(ctx context.Context, db *sql.DB, q string, ring func(string, int, int64) *ringInfo) error {
	rows, err := db.QueryContext(ctx, `SELECT name, size, version FROM `+q+`.rings`)
	if err != nil {
		if sqlState(err) == "42501" {
			return nil
		}
		return fmt.Errorf("reading rings: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var size int
		var version int64
		if err := rows.Scan(&name, &size, &version); err != nil {
			return err
		}
		ring(name, size, version)
	}
	return rows.Err()
}
