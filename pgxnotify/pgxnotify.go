// Package pgxnotify wakes leasering clients the moment a ring changes, with
// pgx's LISTEN support, so joins, leaves and handoffs converge in
// milliseconds instead of a heartbeat. Use it with pgx (its stdlib driver
// or its own connections); with lib/pq, use package pqnotify, which has the
// same API.
//
// It is an optimisation only: every decision still comes from the
// heartbeat, which keeps polling. It needs a direct connection of its own;
// behind PgBouncer in transaction mode, where LISTEN does not work, leave
// it out.
//
// It is a module of its own (github.com/leasering/leasering/pgxnotify), so
// that pgx stays out of the module graph of programs that do not use it.
package pgxnotify

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/leasering/leasering"
)

// Timings of the listener's connection: the reconnect backoff, how long an
// idle connection waits before a ping checks it, and how long a ping, a
// LISTEN or a close may take.
const (
	minReconnect = 10 * time.Millisecond
	maxReconnect = time.Second
	pingEvery    = 30 * time.Second
	opTimeout    = 10 * time.Second
)

// Notifier listens for ring changes and wakes the clients concerned.
type Notifier struct {
	cfg       *pgx.ConnConfig
	clients   []*leasering.Client
	byChannel map[string][]*leasering.Client
	channels  []string // sorted, for a stable LISTEN order
	cancel    context.CancelFunc
	done      chan struct{}
	once      sync.Once
	err       error // Close's result
}

// Listen connects to dsn, listens on the clients' channels and returns once
// the server has acknowledged, then wakes every client whose schema
// announces a change until Close. After a reconnect it wakes them all, as
// notifications may have been missed meanwhile.
//
// ctx bounds the first connection only: if it fails, or ctx ends first,
// Listen returns the error. Later the notifier reconnects on its own, with
// a backoff of up to a second, until Close.
func Listen(ctx context.Context, dsn string, clients ...*leasering.Client) (*Notifier, error) {
	if len(clients) == 0 {
		return nil, errors.New("pgxnotify: no clients")
	}
	byChannel := map[string][]*leasering.Client{}
	for i, c := range clients {
		if c == nil {
			return nil, fmt.Errorf("pgxnotify: client %d of %d is nil", i, len(clients))
		}
		byChannel[c.NotifyChannel()] = append(byChannel[c.NotifyChannel()], c)
	}
	if dsn == "" {
		return nil, errors.New("pgxnotify: empty dsn")
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("pgxnotify: dsn: %w", err)
	}
	n := &Notifier{cfg: cfg, clients: clients, byChannel: byChannel, done: make(chan struct{})}
	for ch := range byChannel {
		n.channels = append(n.channels, ch)
	}
	sort.Strings(n.channels)
	conn, err := n.connect(ctx)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go n.run(runCtx, conn)
	return n, nil
}

// connect opens a connection and listens on every channel.
func (n *Notifier) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, n.cfg.Copy())
	if err != nil {
		return nil, fmt.Errorf("pgxnotify: connecting: %w", err)
	}
	for _, ch := range n.channels {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			closeConn(conn)
			return nil, fmt.Errorf("pgxnotify: listen %q: %w", ch, err)
		}
	}
	return conn, nil
}

func closeConn(conn *pgx.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return conn.Close(ctx)
}

func (n *Notifier) wakeAll() {
	for _, c := range n.clients {
		c.Wake()
	}
}

// run waits for notifications on conn, and reconnects when it breaks,
// until ctx ends.
func (n *Notifier) run(ctx context.Context, conn *pgx.Conn) {
	defer close(n.done)
	defer func() {
		if conn != nil {
			n.err = closeConn(conn)
		}
	}()
	for {
		if conn == nil {
			conn = n.reconnect(ctx)
			if conn == nil {
				return // ctx ended
			}
			n.wakeAll() // notifications may have been missed
		}
		if !n.wait(ctx, conn) {
			_ = closeConn(conn)
			conn = nil
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// wait waits up to pingEvery for a notification on conn and wakes the
// clients concerned; with none, it pings. It reports whether conn is still
// good.
func (n *Notifier) wait(ctx context.Context, conn *pgx.Conn) bool {
	wctx, cancel := context.WithTimeout(ctx, pingEvery)
	note, err := conn.WaitForNotification(wctx)
	cancel()
	switch {
	case err == nil:
		for _, c := range n.byChannel[note.Channel] {
			c.Wake()
		}
		return true
	case ctx.Err() != nil:
		return true // Close: run closes conn
	case errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed():
		pctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		return conn.Ping(pctx) == nil
	default:
		return false
	}
}

// reconnect connects again, with a backoff from minReconnect doubling up
// to maxReconnect, until it succeeds (it returns the connection) or ctx
// ends (nil).
func (n *Notifier) reconnect(ctx context.Context) *pgx.Conn {
	backoff := minReconnect
	for {
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		conn, err := n.connect(cctx)
		cancel()
		if err == nil {
			return conn
		}
		backoff = min(2*backoff, maxReconnect)
	}
}

// Close stops listening and closes the connection. It is idempotent.
func (n *Notifier) Close() error {
	n.once.Do(func() {
		n.cancel()
		<-n.done
	})
	return n.err
}
