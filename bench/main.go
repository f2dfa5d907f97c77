// Command bench measures leasering against a PostgreSQL server and prints
// Markdown tables for BENCHMARKS.md.
//
//	go run . dbtime    # database time of renew_and_read and rebalance
//	go run . balance   # balance and movement, 1..50 nodes, against a plain
//	                   # vnode ring and bounded-load consistent hashing
//	go run . converge  # time to converge after a join, a leave, a crash
//	go run . handoff   # handoff gaps over a join and a heal, roll-outs,
//	                   # and an SVG of ownership during the join
//	go run . all
//
// The server comes from -dsn, else DATABASE_URL, else the local one. Every
// run works in a schema of its own and drops it at the end.
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/leasering/leasering"
	_ "github.com/lib/pq"
)

const defaultDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

func main() {
	if err := run(os.Stdout, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: bench dbtime|balance|converge|handoff|all [flags]")
	}
	cmd := args[0]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	dsn := fs.String("dsn", "", "PostgreSQL DSN (default $DATABASE_URL, else "+defaultDSN+")")
	size := fs.Int("q", 1024, "balance: ring size")
	maxNodes := fs.Int("nodes", 50, "balance: largest number of nodes")
	runs := fs.Int("runs", 5, "converge: runs of each scenario")
	ttl := fs.Duration("ttl", time.Second, "converge: lease TTL")
	hb := fs.Duration("heartbeat", 100*time.Millisecond, "converge: heartbeat (handoff: 500ms unless given)")
	rollouts := fs.String("rollouts", "10,100", "handoff: roll-out sizes, comma-separated (empty: none)")
	rolloutQ := fs.Int("rollout-q", 4096, "handoff: roll-out ring size")
	svg := fs.String("svg", "handoff-join.svg", "handoff: where to draw ownership during the join (empty: nowhere)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *dsn == "" {
		*dsn = os.Getenv("DATABASE_URL")
	}
	if *dsn == "" {
		*dsn = defaultDSN
	}
	db, err := sql.Open("postgres", *dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx := context.Background()
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("no PostgreSQL at %s (%v): start one, or pass -dsn", *dsn, err)
	}
	switch cmd {
	case "dbtime":
		return dbTime(ctx, w, db)
	case "balance":
		return balance(ctx, w, db, *size, *maxNodes)
	case "converge":
		return converge(ctx, w, *dsn, *runs, *ttl, *hb)
	case "handoff":
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		q, t, h := *size, *ttl, *hb
		if !set["ttl"] {
			t = 2 * time.Second
		}
		if !set["heartbeat"] {
			h = 500 * time.Millisecond
		}
		ns, err := parseSizes(*rollouts)
		if err != nil {
			return err
		}
		return handoffBench(ctx, w, *dsn, q, t, h, ns, *rolloutQ, *svg)
	case "all":
		if err := dbTime(ctx, w, db); err != nil {
			return err
		}
		if err := balance(ctx, w, db, *size, *maxNodes); err != nil {
			return err
		}
		return converge(ctx, w, *dsn, *runs, *ttl, *hb)
	}
	return fmt.Errorf("unknown command %q: want dbtime, balance, converge, handoff or all", cmd)
}

// scratch is a schema of its own with the leasering functions in it.
type scratch struct {
	db     *sql.DB
	name   string // unquoted; bench names are plain
	quoted string
}

func newScratch(ctx context.Context, db *sql.DB) (*scratch, error) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "lrbench_" + hex.EncodeToString(b)
	// A client with no lease migrates the schema on Start.
	c, err := leasering.NewClient(db, leasering.WithSchema(name), leasering.WithNodeID("migrator"),
		leasering.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		return nil, err
	}
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	if err := c.Close(); err != nil {
		return nil, err
	}
	return &scratch{db: db, name: name, quoted: `"` + name + `"`}, nil
}

func (s *scratch) drop() {
	_, _ = s.db.Exec(`DROP SCHEMA IF EXISTS ` + s.quoted + ` CASCADE`)
}

// renew calls renew_and_read as node id with an hour-long lease.
func (s *scratch) renew(ctx context.Context, q interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, id, rings string, claim, scan bool) error {
	_, err := q.ExecContext(ctx, `SELECT * FROM `+s.quoted+`.renew_and_read($1, 'inc', 3600000, '', $2::jsonb, $3, $4, NULL)`,
		id, rings, claim, scan)
	return err
}

func ringArg(ring string, size int, version int64, released []int) string {
	r := fmt.Sprintf(`{"ring":%q,"size":%d,"vnodes":%d,"version":%d`, ring, size, leasering.DefaultVNodes, version)
	if len(released) > 0 {
		r += `,"released":[`
		for i, p := range released {
			if i > 0 {
				r += ","
			}
			r += fmt.Sprint(p)
		}
		r += "]"
	}
	return "[" + r + "}]"
}

// stats summarises durations.
type stats struct{ min, p50, p99, max, mean time.Duration }

func summarize(ds []time.Duration) stats {
	if len(ds) == 0 {
		return stats{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return stats{min: s[0], p50: s[len(s)/2], p99: s[(len(s)*99)/100], max: s[len(s)-1], mean: sum / time.Duration(len(s))}
}

// parseSizes reads a comma-separated list of positive numbers.
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-rollouts: %q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}
