// Command ringnode shows leasering at work against a PostgreSQL server.
//
//	ringnode demo     a 5-node cluster in one process, put through joins,
//	                  crashes, a network blackhole and a graceful leave
//	ringnode run      one node; run it in several terminals and watch
//	ringnode status   the rings, members and leases, from the database
//
// The database comes from -dsn, else DATABASE_URL, else the local server.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/leasering/leasering"
	_ "github.com/lib/pq"
)

const defaultDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

func main() {
	cmd := "demo"
	args := os.Args[1:]
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "demo":
		err = demoCmd(args)
	case "run":
		err = runCmd(args)
	case "status":
		err = statusCmd(args)
	default:
		err = fmt.Errorf("unknown command %q: want demo, run or status", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ringnode:", err)
		os.Exit(1)
	}
}

// dsnFlag adds -dsn to fs.
func dsnFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("DATABASE_URL")
	if def == "" {
		def = defaultDSN
	}
	return fs.String("dsn", def, "PostgreSQL connection string (default: $DATABASE_URL, else the local server)")
}

// openDB opens dsn and checks that a server answers.
func openDB(dsn string) (*sql.DB, error) {
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("no PostgreSQL answers at %s (%v); start one (Debian: apt-get install postgresql) or pass -dsn", redact(dsn), err)
	}
	return db, nil
}

func redact(dsn string) string {
	if i := strings.Index(dsn, "@"); i > 0 {
		if j := strings.Index(dsn, "://"); j > 0 && j < i {
			return dsn[:j+3] + "…" + dsn[i:]
		}
	}
	return dsn
}

func logger(verbose bool) *slog.Logger {
	if !verbose {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// statusCmd prints the operator view.
func statusCmd(args []string) error {
	fs := flag.NewFlagSet("status", flag.ExitOnError)
	dsn := dsnFlag(fs)
	schema := fs.String("schema", leasering.DefaultSchema, "leasering schema")
	_ = fs.Parse(args)
	db, err := openDB(*dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := leasering.NewClient(db, leasering.WithSchema(*schema)); err != nil {
		return err // validates the schema name before it goes into SQL
	}
	rows, err := db.Query(`SELECT ring, size, version, node_id, vnodes, owned, incoming, coalesce(max_epoch, 0),
		extract(epoch FROM lease_left)::numeric(10,1) FROM "` + *schema + `".ring_members ORDER BY ring, node_id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	fmt.Printf("%-16s %6s %8s %-20s %6s %6s %8s %9s %10s\n", "RING", "SIZE", "VERSION", "NODE", "VNODES", "OWNED", "INCOMING", "MAX EPOCH", "LEASE LEFT")
	for rows.Next() {
		var ring, node string
		var size, vnodes, owned, incoming int
		var version, epoch int64
		var left float64
		if err := rows.Scan(&ring, &size, &version, &node, &vnodes, &owned, &incoming, &epoch, &left); err != nil {
			return err
		}
		fmt.Printf("%-16s %6d %8d %-20s %6d %6d %8d %9d %9.1fs\n", ring, size, version, node, vnodes, owned, incoming, epoch, left)
	}
	return rows.Err()
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// compact writes sorted partitions as ranges: 0-3,7,9-10.
func compact(ps []int) string {
	var b strings.Builder
	for i := 0; i < len(ps); {
		j := i
		for j+1 < len(ps) && ps[j+1] == ps[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j > i {
			fmt.Fprintf(&b, "%d-%d", ps[i], ps[j])
		} else {
			fmt.Fprintf(&b, "%d", ps[i])
		}
		i = j + 1
	}
	return b.String()
}

var errNotConverged = errors.New("did not converge")
