package integration

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// These benchmarks measure database time (EXPLAIN ANALYZE's execution
// time), not round trips. Run them with
//
//	LEASERING_TEST_DSN=... go test ./integration -run '^$' -bench DBTime

var executionTime = regexp.MustCompile(`Execution Time: ([0-9.]+) ms`)

// explainMS runs query under EXPLAIN ANALYZE and returns its execution time.
func explainMS(b *testing.B, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, query string, args ...any) float64 {
	rows, err := q.QueryContext(context.Background(), "EXPLAIN (ANALYZE, TIMING OFF) "+query, args...)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			b.Fatal(err)
		}
		if m := executionTime.FindStringSubmatch(line); m != nil {
			ms, _ := strconv.ParseFloat(m[1], 64)
			return ms
		}
	}
	b.Fatal("no execution time in EXPLAIN output")
	return 0
}

// ringOf creates a ring of size q with n members whose leases last an hour,
// by calling renew_and_read as n starting nodes would.
func ringOf(b *testing.B, e *env, q, n int) {
	c := e.newNode("migrator")
	if err := c.client.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	_ = c.client.Close()
	for i := 0; i < n; i++ {
		rings := fmt.Sprintf(`[{"ring":"r","size":%d,"vnodes":8,"version":0}]`, q)
		if _, err := e.admin.Exec(`SELECT * FROM "`+e.schema+`".renew_and_read($1, 'inc', 3600000, '', $2::jsonb, true, true)`,
			fmt.Sprintf("m%04d", i), rings); err != nil {
			b.Fatal(err)
		}
	}
}

// benchRenewSteady measures one steady heartbeat of a member of a ring of
// 1024 with the given number of members; scan adds the search for the
// earliest other lease end, which a client asks for about once per lease.
func benchRenewSteady(b *testing.B, members int, scan bool) {
	e := newEnv(b, time.Hour, time.Second)
	ringOf(b, e, 1024, members)
	var version int64
	if err := e.admin.QueryRow(`SELECT version FROM "` + e.schema + `".rings WHERE name = 'r'`).Scan(&version); err != nil {
		b.Fatal(err)
	}
	rings := fmt.Sprintf(`[{"ring":"r","size":1024,"vnodes":8,"version":%d}]`, version)
	query := `SELECT * FROM "` + e.schema + `".renew_and_read('m0000', 'inc', 3600000, '', $1::jsonb, false, $2)`
	total := 0.0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		total += explainMS(b, e.admin, query, rings, scan)
	}
	b.ReportMetric(total*1000/float64(b.N), "db-µs/op")
}

func BenchmarkDBTimeRenewSteady10(b *testing.B)   { benchRenewSteady(b, 10, false) }
func BenchmarkDBTimeRenewSteady100(b *testing.B)  { benchRenewSteady(b, 100, false) }
func BenchmarkDBTimeRenewSteady1000(b *testing.B) { benchRenewSteady(b, 1000, false) }
func BenchmarkDBTimeRenewScan10(b *testing.B)     { benchRenewSteady(b, 10, true) }
func BenchmarkDBTimeRenewScan100(b *testing.B)    { benchRenewSteady(b, 100, true) }
func BenchmarkDBTimeRenewScan1000(b *testing.B)   { benchRenewSteady(b, 1000, true) }

// benchRebalance measures one rebalance after a join: a ring of q with n
// members gains one, and rebalance decides what moves. Each iteration is
// rolled back.
func benchRebalance(b *testing.B, q, n int) {
	e := newEnv(b, time.Hour, time.Second)
	ringOf(b, e, q, n)
	s := `"` + e.schema + `"`
	total := 0.0
	moved := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tx, err := e.admin.Begin()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO ` + s + `.nodes (node_id, incarnation, expires_at, report_from) VALUES ('joiner', 'i', now() + interval '1 hour', now());
			INSERT INTO ` + s + `.members (ring, node_id, vnodes, positions) VALUES ('r', 'joiner', 8, ` + s + `.vnode_positions('r', 'joiner', 8))`); err != nil {
			b.Fatal(err)
		}
		total += explainMS(b, tx, `SELECT `+s+`.rebalance('r')`)
		if err := tx.QueryRow(`SELECT count(*) FROM ` + s + `.partitions WHERE ring = 'r' AND next_owner = 'joiner'`).Scan(&moved); err != nil {
			b.Fatal(err)
		}
		_ = tx.Rollback()
	}
	b.ReportMetric(total/float64(b.N), "db-ms/op")
	b.ReportMetric(float64(moved), "moved")
}

func BenchmarkDBTimeRebalanceQ1024N100(b *testing.B)   { benchRebalance(b, 1024, 100) }
func BenchmarkDBTimeRebalanceQ16384N1000(b *testing.B) { benchRebalance(b, 16384, 1000) }

var _ = leasering.SchemaVersion
