package leasering

import (
	"context"
	"database/sql"
	"fmt"
)

// DB is what the client needs from a database handle: a *sql.DB or a
// *sql.Conn, with any PostgreSQL driver that uses $1-style placeholders
// (lib/pq, pgx's stdlib).
//
// A *sql.DB is the normal choice: the heartbeat then takes any free
// connection from the pool, so one broken connection costs one attempt, not
// the lease. A *sql.Conn ties the client to one connection: when it breaks,
// the lease is lost. A *sql.Tx has the methods but is refused by NewClient:
// the heartbeats must commit on their own, every few seconds, for as long
// as the client runs, and a transaction commits once.
type DB interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// checkDB refuses what cannot carry a client.
func checkDB(db DB) error {
	switch d := db.(type) {
	case nil:
		return fmt.Errorf("%w: db is nil", ErrInvalidArgument)
	case *sql.DB:
		if d == nil {
			return fmt.Errorf("%w: db is a nil *sql.DB", ErrInvalidArgument)
		}
	case *sql.Conn:
		if d == nil {
			return fmt.Errorf("%w: db is a nil *sql.Conn", ErrInvalidArgument)
		}
	case *sql.Tx:
		return fmt.Errorf("%w: db is a *sql.Tx: each heartbeat must commit on its own; pass the *sql.DB (or a *sql.Conn)", ErrInvalidArgument)
	}
	return nil
}
