package leasering

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Defaults. The heartbeat defaults to a tenth of the TTL, so a node rides
// out nine lost heartbeats before its lease lapses.
const (
	DefaultTTL      = 10 * time.Second
	DefaultSchema   = "leasering"
	DefaultVNodes   = 8
	MinTTL          = 100 * time.Millisecond
	MaxRingSize     = 65536
	MaxVNodes       = 256
	maxNameBytes    = 200
	maxMetadataSize = 4096
)

// A schema name is at most 53 bytes so that its notify channel,
// "leasering:" and the name, fits PostgreSQL's 63-byte identifiers.
var schemaPattern = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,52}$`)

// Option configures a Client. Each one checks its value; NewClient returns
// the first error.
type Option func(*config) error

type config struct {
	nodeID       string
	ttl          time.Duration
	heartbeat    time.Duration // 0: ttl/10
	drain        time.Duration // -1: one heartbeat
	maxDrain     time.Duration // 0: TTL
	schema       string
	migrate      bool
	logger       *slog.Logger
	metadata     string
	renewTimeout time.Duration // one heartbeat attempt: ttl/2
}

func defaultConfig() config {
	return config{ttl: DefaultTTL, drain: -1, schema: DefaultSchema, migrate: true}
}

// WithNodeID sets the node's id (default: random per process). A process
// restarted with the same id takes its partitions back without a rebalance,
// and the old process, if it still runs, is fenced (ErrFenced). Two live
// processes must never share an id: give each replica a stable, unique one
// (a StatefulSet pod name) or leave the default.
func WithNodeID(id string) Option {
	return func(c *config) error {
		if err := checkName("node id", id); err != nil {
			return err
		}
		c.nodeID = id
		return nil
	}
}

// WithTTL sets the lease time (default 10s, at least 100ms). A node that
// cannot renew for this long loses its partitions to the others; it stops
// reporting them a little before that.
func WithTTL(d time.Duration) Option {
	return func(c *config) error {
		if d < MinTTL {
			return fmt.Errorf("%w: TTL %v is below the minimum %v", ErrInvalidArgument, d, MinTTL)
		}
		c.ttl = d
		return nil
	}
}

// WithHeartbeat sets how often the lease is renewed and changes are read
// (default TTL/10). It must be positive and at most TTL/2.
func WithHeartbeat(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("%w: heartbeat %v must be positive", ErrInvalidArgument, d)
		}
		c.heartbeat = d
		return nil
	}
}

// WithDrain sets how long a node keeps a revoked partition out of use before
// it confirms the release to the database (default one heartbeat). Work
// already running on the partition has this long to finish. Zero confirms
// on the next heartbeat.
func WithDrain(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("%w: drain %v must not be negative", ErrInvalidArgument, d)
		}
		c.drain = d
		return nil
	}
}

// WithMaxDrain bounds how long a revoked partition waits for the Locks on
// its keys to be released before it is handed over anyway (default: the
// TTL). It must not be below the drain time.
func WithMaxDrain(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("%w: max drain %v must be positive", ErrInvalidArgument, d)
		}
		c.maxDrain = d
		return nil
	}
}

// WithSchema sets the PostgreSQL schema that holds leasering's tables and
// functions (default "leasering"). Lower-case letters, digits and '_', not
// starting with a digit, at most 53 characters (the notify channel,
// "leasering:" and the name, must fit PostgreSQL's 63), and not one of
// PostgreSQL's own: pg_catalog, any other pg_ name, information_schema.
func WithSchema(name string) Option {
	return func(c *config) error {
		switch {
		case !schemaPattern.MatchString(name):
			return fmt.Errorf("%w: schema name %q: want lower-case letters, digits and '_', not starting with a digit, 1 to 53 characters", ErrInvalidArgument, name)
		case strings.HasPrefix(name, "pg_"), name == "information_schema":
			return fmt.Errorf("%w: schema name %q is reserved for PostgreSQL's own catalogs: choose another (not pg_..., not information_schema)", ErrInvalidArgument, name)
		}
		c.schema = name
		return nil
	}
}

// WithoutMigration stops Start from creating or upgrading the schema. Apply
// sql/functions.sql with your own migration tool instead (in one
// transaction); Start still checks the schema version.
func WithoutMigration() Option {
	return func(c *config) error {
		c.migrate = false
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return fmt.Errorf("%w: logger is nil", ErrInvalidArgument)
		}
		c.logger = l
		return nil
	}
}

// WithMetadata attaches a short text to the node, such as its address,
// shown to operators in the ring_members view.
func WithMetadata(s string) Option {
	return func(c *config) error {
		if len(s) > maxMetadataSize || !utf8.ValidString(s) || containsNUL(s) {
			return fmt.Errorf("%w: metadata must be valid UTF-8 without NUL, at most %d bytes (got %d bytes)", ErrInvalidArgument, maxMetadataSize, len(s))
		}
		c.metadata = s
		return nil
	}
}

func (c *config) finish() error {
	if c.heartbeat == 0 {
		c.heartbeat = c.ttl / 10
	}
	if c.heartbeat > c.ttl/2 {
		return fmt.Errorf("%w: heartbeat %v is above TTL/2 (TTL %v): the lease would lapse after one lost heartbeat", ErrInvalidArgument, c.heartbeat, c.ttl)
	}
	if c.drain < 0 {
		c.drain = c.heartbeat
	}
	if c.maxDrain == 0 {
		c.maxDrain = max(c.ttl, c.drain)
	}
	if c.maxDrain < c.drain {
		return fmt.Errorf("%w: max drain %v is below the drain %v", ErrInvalidArgument, c.maxDrain, c.drain)
	}
	c.renewTimeout = c.ttl / 2
	if c.logger == nil {
		c.logger = slog.Default()
	}
	if c.nodeID == "" {
		c.nodeID = "node-" + randomHex(6)
	}
	return nil
}

// LeaseOption configures one Lease.
type LeaseOption func(*leaseConfig) error

type leaseConfig struct {
	vnodes int
}

// WithVNodes sets how many points the node takes on the ring (default 8,
// 1 to 256). It is also the node's weight: its share of the partitions is
// in proportion to it.
func WithVNodes(n int) LeaseOption {
	return func(c *leaseConfig) error {
		if n < 1 || n > MaxVNodes {
			return fmt.Errorf("%w: vnodes %d is outside 1..%d", ErrInvalidArgument, n, MaxVNodes)
		}
		c.vnodes = n
		return nil
	}
}

func checkName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalidArgument, what)
	case len(s) > maxNameBytes:
		return fmt.Errorf("%w: %s %.20q... is %d bytes, at most %d allowed", ErrInvalidArgument, what, s, len(s), maxNameBytes)
	case !utf8.ValidString(s) || containsNUL(s):
		return fmt.Errorf("%w: %s %q must be valid UTF-8 without NUL bytes", ErrInvalidArgument, what, s)
	}
	return nil
}

func checkRingSize(size int) error {
	if size < 1 || size > MaxRingSize {
		return fmt.Errorf("%w: ring size %d is outside 1..%d", ErrInvalidArgument, size, MaxRingSize)
	}
	return nil
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}
