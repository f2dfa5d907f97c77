package leasering

import (
	"context"
	"database/sql"
)

// DB is what the client needs from a database handle. *sql.DB, *sql.Conn
// and *sql.Tx all satisfy it, with any PostgreSQL driver that uses $1-style
// placeholders (lib/pq, pgx's stdlib).
//
// A *sql.DB is the normal choice: the heartbeat then takes any free
// connection from the pool, so one broken connection costs one attempt, not
// the lease.
type DB interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}
