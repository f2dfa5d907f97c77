package leasering

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
)

// Sentinel errors. Every error the package returns that matches one of these
// wraps it, so callers test with errors.Is.
var (
	// ErrInvalidArgument marks bad input: an option, a name, a size. The
	// message names the value and what is allowed. Nothing was written.
	ErrInvalidArgument = errors.New("leasering: invalid argument")

	// ErrClosed is returned by calls made after Close.
	ErrClosed = errors.New("leasering: client closed")

	// ErrNotStarted is returned by calls that need a started client.
	ErrNotStarted = errors.New("leasering: client not started")

	// ErrAlreadyStarted is returned by a second Start.
	ErrAlreadyStarted = errors.New("leasering: client already started")

	// ErrFenced means another process took this node id over (it started
	// with the same WithNodeID). This process has stopped reporting
	// partitions and stays stopped: two processes must not share an id.
	ErrFenced = errors.New("leasering: node id taken over by another process")

	// ErrRingSizeMismatch means the ring already exists with another size.
	// A ring's size is fixed when it is created.
	ErrRingSizeMismatch = errors.New("leasering: ring exists with another size")

	// ErrSchemaVersion means the database schema was written by a newer
	// version of this library.
	ErrSchemaVersion = errors.New("leasering: database schema is newer than this library")

	// ErrRevoked is the cause of a Lock's context when its partition is
	// handed to another node.
	ErrRevoked = errors.New("leasering: partition revoked")

	// ErrLeaseLost is the cause of a Lock's context when the client could
	// not renew its lease in time and stopped reporting partitions.
	ErrLeaseLost = errors.New("leasering: lease lost")

	// ErrSchemaMissing means migration is turned off and the schema is not
	// in the database.
	ErrSchemaMissing = errors.New("leasering: schema not found in the database")

	// ErrUnsupported means the database cannot run leasering as it is set
	// up: its encoding is neither UTF8 nor SQL_ASCII, or a connection
	// pooler (PgBouncer in transaction or statement mode) runs what the
	// driver splits over two round trips on two server connections; the
	// error then names the driver setting that cures it (see pooler.go).
	ErrUnsupported = errors.New("leasering: database setup not supported")

	// ErrPermanent marks a database error that no retry can cure: a bad
	// password, a missing database or role, a missing privilege, a DSN
	// the driver cannot parse, any SQL error that is not on the list of
	// transient ones (see transient). Start returns it at once. The
	// driver's own error is wrapped too: errors.As finds *pq.Error or
	// *pgconn.PgError with its SQLSTATE.
	ErrPermanent = errors.New("leasering: database error")
)

// errUnlocked is the cause of a Lock's context after Unlock.
var errUnlocked = errors.New("leasering: unlocked")

// The SQLSTATEs the SQL functions raise on purpose (class LR; see the head
// of sql/functions.sql).
const (
	stateRingSize        = "LR001"
	stateSchemaNewer     = "LR002"
	stateSchemaCurrent   = "LR003"
	stateConcurrentStart = "LR004"
	stateNotReadCommit   = "LR005"
	stateEncoding        = "LR006"
	// A scan's wait for another evictor that evicted nothing undoes itself
	// with it; it never leaves the database.
	stateNothingEvicted = "LR008"
	// A look's try of an owner's release lock undoes itself with it
	// (releasing); it never leaves the database.
	stateTryUndone = "LR009"
)

// lrStates says what each of them means to the client: the sentinel a
// database error with that SQLSTATE wraps, or that a retry may cure it.
// Every code the SQL raises is here (TestEveryRaisedStateIsMapped).
var lrStates = map[string]struct {
	sentinel error
	retry    bool
}{
	stateRingSize:        {sentinel: ErrRingSizeMismatch},
	stateSchemaNewer:     {sentinel: ErrSchemaVersion},
	stateSchemaCurrent:   {},            // the migration's guard: the schema is current, ensureSchema is done
	stateConcurrentStart: {retry: true}, // two processes started one node id at once
	stateNotReadCommit:   {retry: true}, // the client retries in a READ COMMITTED transaction (inTx)
	stateEncoding:        {sentinel: ErrUnsupported},
	// Another process migrated between our reading the version and our
	// migration taking its lock: ensureSchema reads the version again.
	stateSchemaOtherVersion: {retry: true},
	stateNothingEvicted:     {retry: true}, // caught in scan_and_evict; were it to escape, the next heartbeat scans again
	stateTryUndone:          {retry: true}, // caught in releasing; were it to escape, the next look tries again
}

// sqlState is the SQLSTATE of a database error, "" for any other error.
// Both lib/pq's *pq.Error and pgx's *pgconn.PgError have this method, so
// the library needs neither driver.
func sqlState(err error) string {
	var e interface{ SQLState() string }
	if errors.As(err, &e) {
		return e.SQLState()
	}
	return ""
}

// transientStates are the SQLSTATEs a retry can cure: the server is
// starting, stopping or full, or the transaction lost a race (and the LR
// states marked retry).
var transientStates = map[string]bool{
	"40001": true, // serialization_failure
	"40P01": true, // deadlock_detected
	"55P03": true, // lock_not_available (lock_timeout)
	"57014": true, // query_canceled (statement_timeout; a cancel of ours)
	"57P01": true, // admin_shutdown
	"57P02": true, // crash_shutdown
	"57P03": true, // cannot_connect_now (starting up, in recovery)
	"53300": true, // too_many_connections
}

// transient reports whether another try may succeed where err failed: a
// transient SQLSTATE, any of class 08 (connection exception), or a network
// error: refused, reset, closed, timed out. Everything else, a bad
// password (28P01), a missing database (3D000) or role (28000), a missing
// privilege (42501), a reserved schema name (42939), a DSN that does not
// parse, is permanent.
func transient(err error) bool {
	if state := sqlState(err); state != "" {
		// Class 08 is the connection's: refused, broken, failed; but a
		// protocol violation (08P01) is a client that sends what the server
		// cannot read, such as a malformed DSN option.
		return transientStates[state] || lrStates[state].retry || (strings.HasPrefix(state, "08") && state != "08P01")
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns.IsTimeout || dns.IsTemporary // not a name that does not exist
	}
	var addr *net.AddrError
	var parse *net.ParseError
	if errors.As(err, &addr) || errors.As(err, &parse) {
		return false // a host or port that does not parse
	}
	var op *net.OpError
	var netErr net.Error
	switch {
	case errors.Is(err, driver.ErrBadConn), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ETIMEDOUT),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, context.DeadlineExceeded):
		return true
	case errors.As(err, &op):
		return true // a dial, a read or a write that failed on the way
	case errors.As(err, &netErr) && netErr.Timeout():
		return true
	}
	return false
}

// dbError is a database error with the sentinel it means. Its text is the
// driver's (which carries the server's message) so that it reads once;
// errors.Is finds the sentinel and errors.As the driver's error.
type dbError struct {
	sentinel error
	err      error
}

func (e *dbError) Error() string   { return e.err.Error() }
func (e *dbError) Unwrap() []error { return []error{e.sentinel, e.err} }

// classifyDBError wraps a database error in the sentinel its SQLSTATE
// means: one of the library's own (class LR), or ErrPermanent for what no
// retry cures. Transient errors come back as they are.
func classifyDBError(err error) error {
	if err == nil {
		return nil
	}
	sentinel := lrStates[sqlState(err)].sentinel
	if sentinel == nil {
		if transient(err) || errors.Is(err, context.Canceled) {
			return err
		}
		sentinel = ErrPermanent
	}
	return &dbError{sentinel: sentinel, err: err}
}
