package leasering

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestOptionValidation(t *testing.T) {
	db, mock := newMock(t)
	cases := []struct {
		name string
		opts []Option
		want string
	}{
		{"empty node id", []Option{WithNodeID("")}, "node id is empty"},
		{"long node id", []Option{WithNodeID(strings.Repeat("x", 201))}, "201 bytes, at most 200"},
		{"NUL in node id", []Option{WithNodeID("a\x00b")}, "without NUL"},
		{"short TTL", []Option{WithTTL(50 * time.Millisecond)}, "TTL 50ms is below the minimum 100ms"},
		{"zero heartbeat", []Option{WithHeartbeat(0)}, "heartbeat 0s must be positive"},
		{"heartbeat above TTL/2", []Option{WithTTL(time.Second), WithHeartbeat(600 * time.Millisecond)}, "heartbeat 600ms is above TTL/2"},
		{"default heartbeat of a larger TTL", []Option{WithHeartbeat(6 * time.Second)}, "above TTL/2 (TTL 10s)"},
		{"negative drain", []Option{WithDrain(-time.Second)}, "drain -1s"},
		{"bad schema", []Option{WithSchema("Robert'); DROP")}, `schema name "Robert'); DROP"`},
		{"schema with digit first", []Option{WithSchema("1abc")}, `schema name "1abc"`},
		{"nil logger", []Option{WithLogger(nil)}, "logger is nil"},
		{"nil option", []Option{nil}, "nil option"},
		{"long metadata", []Option{WithMetadata(strings.Repeat("m", 5000))}, "at most 4096 bytes (got 5000 bytes)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewClient(db, tc.opts...)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("err = %v, want ErrInvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to say %q", err, tc.want)
			}
		})
	}
	if _, err := NewClient(nil); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "db is nil") {
		t.Errorf("NewClient(nil) = %v", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

func TestLeaseValidation(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db)
	cases := []struct {
		name string
		ring string
		size int
		opts []LeaseOption
		want string
	}{
		{"empty name", "", 8, nil, "ring name is empty"},
		{"long name", strings.Repeat("r", 300), 8, nil, "300 bytes"},
		{"zero size", "r", 0, nil, "ring size 0 is outside 1..65536"},
		{"huge size", "r", 65537, nil, "ring size 65537 is outside 1..65536"},
		{"zero vnodes", "r", 8, []LeaseOption{WithVNodes(0)}, "vnodes 0 is outside 1..256"},
		{"many vnodes", "r", 8, []LeaseOption{WithVNodes(257)}, "vnodes 257 is outside 1..256"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Lease(tc.ring, tc.size, tc.opts...)
			if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrInvalidArgument saying %q", err, tc.want)
			}
		})
	}
	l1, err := c.Lease("r", 8)
	if err != nil {
		t.Fatal(err)
	}
	if l2, err := c.Lease("r", 8); err != nil || l2 != l1 {
		t.Errorf("reopening with the same size: %v, %v; want the same lease", l2, err)
	}
	if _, err := c.Lease("r", 16); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "already open with size 8") {
		t.Errorf("reopening with another size: %v", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Errorf("validation touched the database: %v", err)
	}
}
