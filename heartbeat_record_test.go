package leasering

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/fakesql"
)

// recordLog keeps the text of every record, for tests of what is logged.
type recordLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *recordLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *recordLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *recordLog) WithGroup(string) slog.Handler            { return l }
func (l *recordLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}

// TestHeartbeatRecordSaysPoolWait: a heartbeat's Debug record says how long
// the call waited for a connection of the *sql.DB's pool, which its round
// trip leaves out (many nodes on one pool queue there: BENCHMARKS.md,
// Handoff gaps and roll-outs), how many releases it carried, and whether
// the node waits for partitions handed to it.
func TestHeartbeatRecordSaysPoolWait(t *testing.T) {
	db, mock := fakesql.New()
	defer db.Close()
	db.SetMaxOpenConns(1)
	log := &recordLog{}
	c, err := NewClient(db, WithNodeID("a"), WithLogger(slog.New(log)))
	if err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock()
	c.clock = clk

	ctx := context.Background()
	held, err := db.Conn(ctx) // the pool's one connection, taken by another node
	if err != nil {
		t.Fatal(err)
	}
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok", nil, nil))
	done := make(chan renewResult, 1)
	go func() {
		done <- c.renew(ctx, []ringRequest{{Ring: "r", Size: 4, VNodes: 8, Version: 3, Released: []int{1, 2}, Incoming: true}}, renewOpts{})
	}()
	for deadline := time.Now().Add(5 * time.Second); db.Stats().WaitCount == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the heartbeat never queued for the pool's connection")
		}
	}
	clk.advance(40 * time.Millisecond)
	_ = held.Close()
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.poolWait != 40*time.Millisecond || res.released != 2 || !res.waiting {
		t.Errorf("pool wait %v, released %d, waiting %v; want 40ms, 2, true", res.poolWait, res.released, res.waiting)
	}
	c.apply(res, clk.Now())
	log.expectHeartbeatSays(t, "pool_wait=40ms", "released=2", "waiting=true")
}

// expectHeartbeatSays fails the test unless the first heartbeat record
// says each of wants.
func (l *recordLog) expectHeartbeatSays(t *testing.T, wants ...string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.HasPrefix(line, "leasering: heartbeat ") {
			for _, want := range wants {
				if !strings.Contains(line, want) {
					t.Errorf("heartbeat record %q does not say %s", line, want)
				}
			}
			return
		}
	}
	t.Errorf("no heartbeat record in %q", l.lines)
}

// TestHeartbeatRecordSaysViewsAndLater: a heartbeat's Debug record says how
// many rings' views it applied and how many rings were left for later, and
// whether a busy lock left one (the client then backs off): a node that
// renewed without a partition it was given shows why (CI: a chaos run's
// report 65 ms past the rule, whose heartbeats' answers no record showed).
func TestHeartbeatRecordSaysViewsAndLater(t *testing.T) {
	db, mock := fakesql.New()
	defer db.Close()
	log := &recordLog{}
	c, err := NewClient(db, WithNodeID("a"), WithLogger(slog.New(log)))
	if err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock()
	c.clock = clk
	for _, ring := range []string{"orders", "users"} {
		if _, err := c.Lease(ring, 4); err != nil {
			t.Fatal(err)
		}
	}
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(2000, 0, nil, "ok",
		`[{"ring": "orders", "status": "later", "busy": true}, {"ring": "users", "version": 7, "status": "ok", "partitions": [0, 1], "epochs": [1, 1], "revoking": []}]`, nil))
	res := c.renew(context.Background(), []ringRequest{{Ring: "orders", Size: 4, VNodes: 8}, {Ring: "users", Size: 4, VNodes: 8}}, renewOpts{})
	if res.err != nil {
		t.Fatal(res.err)
	}
	c.apply(res, clk.Now())
	log.expectHeartbeatSays(t, "views=1", "later=1", "busy=true")
}
