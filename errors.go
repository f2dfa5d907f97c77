package leasering

import "errors"

// Sentinel errors. Every error the package returns that matches one of these
// wraps it, so callers test with errors.Is.
// errUnlocked is the cause of a Lock's context after Unlock.
var errUnlocked = errors.New("leasering: unlocked")

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
)
