package main

import (
	"bytes"
	"context"
	"database/sql"
	"os"
	"strings"
	"testing"
	"time"
)

// TestBalanceOnTheDatabase runs `bench balance` against PostgreSQL on a
// small ring: nodes join one by one as clients do (join_rings, since
// schema version 11 the heartbeat only answers "join"), and after each
// join every node holds the floor or ceiling of its share. Before it
// joined through join_rings, the command stopped at the first node.
func TestBalanceOnTheDatabase(t *testing.T) {
	dsn := os.Getenv("LEASERING_TEST_DSN")
	if dsn == "" {
		dsn = defaultDSN
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		if os.Getenv("LEASERING_REQUIRE_DB") != "" {
			t.Fatalf("no PostgreSQL at %s: %v", dsn, err)
		}
		t.Skipf("no PostgreSQL at %s: %v", dsn, err)
	}
	var out bytes.Buffer
	if err := balance(ctx, &out, db, 64, 5); err != nil {
		t.Fatalf("bench balance: %v", err)
	}
	if !strings.Contains(out.String(), "every node held floor or ceil of Q/N at every N: true") {
		t.Errorf("bench balance printed:\n%s\nwant every node within floor or ceil of Q/N at every N", out.String())
	}
}
