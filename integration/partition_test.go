package integration

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/leasering/leasering"
	"github.com/lib/pq"
)

// randomKey makes keys of every kind: empty, ASCII, multi-byte UTF-8, long.
func randomKey(r *rand.Rand) string {
	switch r.IntN(6) {
	case 0:
		return ""
	case 1:
		return strings.Repeat(string(rune('a'+r.IntN(26))), r.IntN(2000))
	}
	runes := []rune("abcXYZ0189-_/:.é€☃ключ键🔑")
	var b strings.Builder
	for n := r.IntN(40); n > 0; n-- {
		b.WriteRune(runes[r.IntN(len(runes))])
	}
	return b.String()
}

// TestPartitionOfMatchesSQL: Go's PartitionOf and SQL's partition_of agree
// on 10,000 random keys for sizes 1, 7, 1024 and 65536.
func TestPartitionOfMatchesSQL(t *testing.T) {
	t.Parallel()
	e := newEnv(t, time.Second, 100*time.Millisecond)
	n := e.newNode("migrator")
	if err := n.client.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	keys := make([]string, 10000)
	for i := range keys {
		keys[i] = randomKey(r)
		if !utf8.ValidString(keys[i]) {
			t.Fatalf("bad key %q", keys[i])
		}
	}
	for _, size := range []int{1, 7, 1024, 65536} {
		rows, err := e.admin.Query(`SELECT k, "`+e.schema+`".partition_of(k, $2) FROM unnest($1::text[]) AS k`, pq.Array(keys), size)
		if err != nil {
			t.Fatal(err)
		}
		checked := 0
		for rows.Next() {
			var k string
			var p int
			if err := rows.Scan(&k, &p); err != nil {
				t.Fatal(err)
			}
			if got := leasering.PartitionOf(k, size); got != p {
				t.Errorf("size %d, key %q: Go %d, SQL %d", size, k, got, p)
			}
			checked++
		}
		rows.Close()
		if checked != len(keys) {
			t.Fatalf("checked %d keys, want %d", checked, len(keys))
		}
	}
}
