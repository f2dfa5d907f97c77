package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func TestCompact(t *testing.T) {
	for _, tc := range []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{4}, "4"},
		{[]int{0, 1, 2, 3, 7, 9, 10}, "0-3,7,9-10"},
	} {
		if got := compact(tc.in); got != tc.want {
			t.Errorf("compact(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestDemoRunsEndToEnd runs the README's first command, faster, against
// the test database: every step converges and the summary is printed.
func TestDemoRunsEndToEnd(t *testing.T) {
	dsn := os.Getenv("LEASERING_TEST_DSN")
	if dsn == "" {
		if os.Getenv("LEASERING_REQUIRE_DB") == "1" {
			t.Fatal("LEASERING_REQUIRE_DB=1 but no database: set LEASERING_TEST_DSN")
		}
		t.Skip("no PostgreSQL: set LEASERING_TEST_DSN")
	}
	var out bytes.Buffer
	if err := runDemo(&out, []string{"-dsn", dsn, "-ttl", "500ms", "-size", "32"}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{"start a b c d e", "join f", "crash b", "blackhole c", "close d", "summary", "ownership snapshots read"} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q:\n%s", want, text)
		}
	}
	t.Log("\n" + text)
}
