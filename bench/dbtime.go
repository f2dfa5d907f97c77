package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"time"
)

var executionTime = regexp.MustCompile(`Execution Time: ([0-9.]+) ms`)

type querier interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}

// explain runs query under EXPLAIN ANALYZE (without per-node timing) and
// returns the server's execution time: database time, without the round
// trip or the commit's WAL flush.
func explain(ctx context.Context, q querier, query string, args ...any) (time.Duration, error) {
	rows, err := q.QueryContext(ctx, "EXPLAIN (ANALYZE, TIMING OFF) "+query, args...)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return 0, err
		}
		if m := executionTime.FindStringSubmatch(line); m != nil {
			ms, err := strconv.ParseFloat(m[1], 64)
			return time.Duration(ms * float64(time.Millisecond)), err
		}
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no execution time in EXPLAIN output")
}

// buildRing makes ring "r" of size q with n members (m0000, m0001, ...)
// whose leases last an hour, balanced, with every handoff done and every
// node told of its partitions (so a join moves them by handoff). The
// first member joins as a client does (renew_and_read, join_rings); the
// others are inserted in bulk and placed by one rebalance, which is
// quicker than n joins and gives the same shape.
func buildRing(ctx context.Context, s *scratch, q, n int) error {
	if err := s.renew(ctx, s.db, "m0000", ringArg("r", q, 0, nil), true, true); err != nil {
		return err
	}
	if _, err := s.db.ExecContext(ctx, `SELECT `+s.quoted+`.join_rings('m0000', 'inc', $1::jsonb, 60000)`, ringArg("r", q, 0, nil)); err != nil {
		return err
	}
	if _, err := s.db.ExecContext(ctx, `
		INSERT INTO `+s.quoted+`.nodes (node_id, incarnation, expires_at, hold_until, metadata, ttl_ms)
		SELECT 'm' || lpad(i::text, 4, '0'), 'inc', now() + interval '1 hour', '-infinity', '', 60000
		  FROM generate_series(1, $1 - 1) AS i`, n); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, `
		INSERT INTO `+s.quoted+`.members (ring, node_id, vnodes, positions)
		SELECT 'r', node_id, 8, `+s.quoted+`.vnode_positions('r', node_id, 8)
		  FROM `+s.quoted+`.nodes WHERE node_id <> 'm0000';
		SELECT `+s.quoted+`.rebalance('r');
		UPDATE `+s.quoted+`.partitions SET owner = next_owner, next_owner = NULL, epoch = epoch + 1
		 WHERE ring = 'r' AND next_owner IS NOT NULL;
		SELECT `+s.quoted+`.bump_version('r', true);
		UPDATE `+s.quoted+`.members m SET seen = r.version FROM `+s.quoted+`.rings r WHERE r.name = m.ring; -- every node has read its view
		ANALYZE `+s.quoted+`.nodes; ANALYZE `+s.quoted+`.members; ANALYZE `+s.quoted+`.partitions; ANALYZE `+s.quoted+`.rings`)
	return err
}

func ringVersion(ctx context.Context, s *scratch) (int64, error) {
	var v int64
	err := s.db.QueryRowContext(ctx, `SELECT version FROM `+s.quoted+`.rings WHERE name = 'r'`).Scan(&v)
	return v, err
}

// renewTimes measures m0000's steady heartbeat: database time without and
// with the scan for the earliest other lease end, and the wall time of a
// whole call (round trip and commit included), waiting for the disk and
// not (p_async, as a client's steady renewal asks: ondisk.go).
func renewTimes(ctx context.Context, s *scratch, q, iterations int) (plain, scan, wall, async stats, err error) {
	v, err := ringVersion(ctx, s)
	if err != nil {
		return
	}
	rings := ringArg("r", q, v, nil)
	query := `SELECT * FROM ` + s.quoted + `.renew_and_read('m0000', 'inc', 3600000, '', $1::jsonb, false, $2, NULL)`
	asyncQuery := `SELECT * FROM ` + s.quoted + `.renew_and_read('m0000', 'inc', 3600000, '', $1::jsonb, false, false, NULL, true)`
	var ps, ss, ws, as []time.Duration
	for i := 0; i < iterations; i++ {
		d, err := explain(ctx, s.db, query, rings, false)
		if err != nil {
			return plain, scan, wall, async, err
		}
		ps = append(ps, d)
		if d, err = explain(ctx, s.db, query, rings, true); err != nil {
			return plain, scan, wall, async, err
		}
		ss = append(ss, d)
		start := time.Now()
		if err := s.renew(ctx, s.db, "m0000", rings, false, false); err != nil {
			return plain, scan, wall, async, err
		}
		ws = append(ws, time.Since(start))
		start = time.Now()
		if _, err := s.db.ExecContext(ctx, asyncQuery, rings); err != nil {
			return plain, scan, wall, async, err
		}
		as = append(as, time.Since(start))
	}
	return summarize(ps), summarize(ss), summarize(ws), summarize(as), nil
}

// rebalanceTime measures the rebalance after one more node joins a ring of
// q with n members; each try is rolled back.
func rebalanceTime(ctx context.Context, s *scratch, tries int) (stats, int, error) {
	var ds []time.Duration
	moved := 0
	for i := 0; i < tries; i++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return stats{}, 0, err
		}
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO `+s.quoted+`.nodes (node_id, incarnation, expires_at, hold_until, ttl_ms) VALUES ('joiner', 'i', now() + interval '1 hour', now(), 60000);
			INSERT INTO `+s.quoted+`.members (ring, node_id, vnodes, positions) VALUES ('r', 'joiner', 8, `+s.quoted+`.vnode_positions('r', 'joiner', 8))`); err != nil {
			_ = tx.Rollback()
			return stats{}, 0, err
		}
		d, err := explain(ctx, tx, `SELECT `+s.quoted+`.rebalance('r')`)
		if err == nil {
			err = tx.QueryRowContext(ctx, `SELECT count(*) FROM `+s.quoted+`.partitions WHERE ring = 'r' AND 'joiner' IN (owner, next_owner)`).Scan(&moved)
		}
		_ = tx.Rollback()
		if err != nil {
			return stats{}, 0, err
		}
		ds = append(ds, d)
	}
	return summarize(ds), moved, nil
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond)) }
func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func dbTime(ctx context.Context, w io.Writer, db *sql.DB) error {
	fmt.Fprintln(w, "### Database time: renew_and_read, steady state (one ring of 1024)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| members | without scan, p50 | mean | with scan, p50 | mean | average (one scan per 9 heartbeats) | whole call, p50 (round trip + commit) | the same, async (no wait for the disk) |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, n := range []int{10, 100, 1000} {
		s, err := newScratch(ctx, db)
		if err != nil {
			return err
		}
		err = buildRing(ctx, s, 1024, n)
		var plain, scan, wall, async stats
		if err == nil {
			plain, scan, wall, async, err = renewTimes(ctx, s, 1024, 300)
		}
		s.drop()
		if err != nil {
			return err
		}
		// With the default heartbeat (TTL/10) a client scans once per
		// TTL - heartbeat, that is once in nine heartbeats.
		avg := (8*plain.mean + scan.mean) / 9
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s | %s |\n", n, us(plain.p50), us(plain.mean), us(scan.p50), us(scan.mean), us(avg), us(wall.p50), us(async.p50))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "### Database time: rebalance after a join")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| ring size Q | members N | p50 | max | partitions moved to the newcomer |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|")
	for _, c := range []struct{ q, n, tries int }{{1024, 100, 30}, {16384, 1000, 10}} {
		s, err := newScratch(ctx, db)
		if err != nil {
			return err
		}
		err = buildRing(ctx, s, c.q, c.n)
		var st stats
		moved := 0
		if err == nil {
			st, moved, err = rebalanceTime(ctx, s, c.tries)
		}
		s.drop()
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "| %d | %d | %s | %s | %d |\n", c.q, c.n, ms(st.p50), ms(st.max), moved)
	}
	fmt.Fprintln(w)
	return nil
}
