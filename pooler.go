package leasering

import "errors"

// A connection pooler in transaction or statement mode (PgBouncer's
// pool_mode = transaction or statement) hands each transaction, or each
// statement, to whichever server connection is free. Whatever a driver
// splits over two round trips may then run on two connections, and the
// server answers with errors no retry cures. The library sends one
// statement per call and keeps no session state, so the cure is a driver
// setting that sends each call in one round trip (see README, PgBouncer).
// These are the errors the library recognises, by SQLSTATE:
const (
	// 26000 invalid_sql_statement_name: "unnamed prepared statement does
	// not exist" (lib/pq's default, pgx's describe_exec mode: the Bind went
	// to another connection than the Parse), or "prepared statement
	// "stmtcache_…" does not exist" (pgx's statement cache).
	statePreparedMissing = "26000"
	// 42P05 duplicate_prepared_statement: "prepared statement
	// "stmtcache_…" already exists" (pgx's statement cache meets a server
	// connection another client prepared the same statement on).
	statePreparedExists = "42P05"
	// 08P01 protocol_violation: the server could not follow what the
	// driver sent. From the server: "bind message supplies 8 parameters,
	// but prepared statement "" requires 2" (the Bind met another client's
	// unnamed statement). From PgBouncer in statement mode, refusing the
	// BEGIN of an explicit transaction: "transaction blocks not allowed in
	// statement pooling mode".
	stateProtocolViolation = "08P01"
)

// The advice for each kind of pooler trouble.
const (
	adviceSplitStatements = "a connection pooler in transaction or statement mode (such as PgBouncer) ran the driver's " +
		"prepare and execute on different server connections; send each call in one round trip: with lib/pq add " +
		"binary_parameters=yes to the DSN, with pgx default_query_exec_mode=exec (or simple_protocol), " +
		"or use session pooling"
	adviceStatementMode = "PgBouncer's statement mode refuses the explicit READ COMMITTED transactions this client " +
		"runs because the default transaction isolation is not READ COMMITTED; use transaction or session " +
		"pooling, or make READ COMMITTED the default for the nodes' role"
)

// poolerAdvice returns what to do about err when it is the mark of a
// connection pooler that splits what the driver sends, else "". Like every
// database error, it is judged by its SQLSTATE, never its text: a protocol
// violation is the statement mode's refusal when it answered the BEGIN of
// an explicit transaction (see inTx), and a split call otherwise.
func poolerAdvice(err error) string {
	switch sqlState(err) {
	case statePreparedMissing, statePreparedExists:
		return adviceSplitStatements
	case stateProtocolViolation:
		var begin *beginError
		if errors.As(err, &begin) {
			return adviceStatementMode
		}
		return adviceSplitStatements
	}
	return ""
}

// poolerError is a Start error that a pooler caused: it wraps
// ErrUnsupported and the error, and its text ends with the advice.
type poolerError struct {
	err    error
	advice string
}

func (e *poolerError) Error() string   { return e.err.Error() + "; " + e.advice }
func (e *poolerError) Unwrap() []error { return []error{ErrUnsupported, e.err} }

// checkPooler logs, once per client and at Error level, the advice for an
// error that a pooler caused, and returns the error wrapped in a
// poolerError; any other error comes back as it is.
func (c *Client) checkPooler(err error) error {
	advice := poolerAdvice(err)
	if advice == "" {
		return err
	}
	if c.poolerLogged.CompareAndSwap(false, true) {
		c.log.Error("leasering: "+advice, "err", err)
	}
	return &poolerError{err: err, advice: advice}
}
