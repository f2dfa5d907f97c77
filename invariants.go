package leasering

import (
	"context"
	"database/sql"
	_ "embed"
	"fmt"
	"strings"
	"time"
)

//go:embed sql/invariants.sql
var invariantsSQL string

// Violation is one piece of protocol state that no correct run leaves
// behind, a row of sql/invariants.sql.
type Violation struct {
	Kind      string // what is broken; sql/invariants.sql lists the kinds and why each cannot happen
	Ring      string // "" when it is not about one ring
	Partition int    // -1 when it is not about one partition
	Node      string // "" when it is not about one node
	Detail    string // the values that break it, for people
}

func (v Violation) String() string {
	var b strings.Builder
	b.WriteString(v.Kind)
	if v.Ring != "" {
		fmt.Fprintf(&b, " ring=%q", v.Ring)
	}
	if v.Partition >= 0 {
		fmt.Fprintf(&b, " partition=%d", v.Partition)
	}
	if v.Node != "" {
		fmt.Fprintf(&b, " node=%q", v.Node)
	}
	return b.String() + ": " + v.Detail
}

// InvariantsSQL returns sql/invariants.sql for the given schema (checked
// as WithSchema checks it): one query that finds broken protocol state and
// returns a row per violation, with the columns kind, ring, partition,
// node and detail. Its one parameter, $1, is an interval: the longest TTL
// of the schema's clients. Run it as the schema's owner; it writes
// nothing.
func InvariantsSQL(schema string) (string, error) {
	var cfg config
	if err := WithSchema(schema)(&cfg); err != nil {
		return "", err
	}
	return strings.ReplaceAll(invariantsSQL, sqlSchemaQualifier, quoteIdent(schema)+"."), nil
}

// Querier is what CheckInvariants needs: a *sql.DB, *sql.Conn or *sql.Tx.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// CheckInvariants runs InvariantsSQL(schema) on db and returns the
// violations it finds, none for a healthy schema. ttl is the longest TTL
// of the schema's clients (DefaultTTL unless they set WithTTL), which three
// kinds depend on (a lease past one TTL from now, and what other nodes'
// heartbeats would have cleaned up two TTLs ago): a ttl shorter than a
// client's flags healthy state. db may be a *sql.Tx (the query only
// reads), which then sees its own changes.
func CheckInvariants(ctx context.Context, db Querier, schema string, ttl time.Duration) ([]Violation, error) {
	switch d := db.(type) {
	case nil:
		return nil, fmt.Errorf("%w: db is nil", ErrInvalidArgument)
	case *sql.DB:
		if d == nil {
			return nil, fmt.Errorf("%w: db is a nil *sql.DB", ErrInvalidArgument)
		}
	case *sql.Conn:
		if d == nil {
			return nil, fmt.Errorf("%w: db is a nil *sql.Conn", ErrInvalidArgument)
		}
	case *sql.Tx:
		if d == nil {
			return nil, fmt.Errorf("%w: db is a nil *sql.Tx", ErrInvalidArgument)
		}
	}
	if ttl < MinTTL {
		return nil, fmt.Errorf("%w: TTL %v is below the minimum %v", ErrInvalidArgument, ttl, MinTTL)
	}
	query, err := InvariantsSQL(schema)
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, query, fmt.Sprintf("%d microseconds", ttl.Microseconds()))
	if err != nil {
		return nil, fmt.Errorf("leasering: checking the invariants of schema %q: %w", schema, classifyDBError(err))
	}
	defer rows.Close()
	var out []Violation
	for rows.Next() {
		var ring, node sql.NullString
		var partition sql.NullInt32
		v := Violation{Partition: -1}
		if err := rows.Scan(&v.Kind, &ring, &partition, &node, &v.Detail); err != nil {
			return nil, fmt.Errorf("leasering: reading the invariants of schema %q: %w", schema, classifyDBError(err))
		}
		v.Ring, v.Node = ring.String, node.String
		if partition.Valid {
			v.Partition = int(partition.Int32)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("leasering: reading the invariants of schema %q: %w", schema, classifyDBError(err))
	}
	return out, nil
}
