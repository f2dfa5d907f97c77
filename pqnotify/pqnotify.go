// Package pqnotify wakes leasering clients the moment a ring changes, with
// lib/pq's LISTEN support, so joins, leaves and handoffs converge in
// milliseconds instead of a heartbeat. Use it with lib/pq; with pgx, use
// package pgxnotify, which has the same API.
//
// It is an optimisation only: every decision still comes from the
// heartbeat, which keeps polling. It needs a direct connection of its own;
// behind PgBouncer in transaction mode, where LISTEN does not work, leave
// it out.
//
// It is a module of its own (github.com/leasering/leasering/pqnotify), so
// that lib/pq stays out of the module graph of programs that use pgx.
package pqnotify

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/leasering/leasering"
	"github.com/lib/pq"
)

// Reconnect backoff of the listener's connection, and how often an idle
// connection is checked.
const (
	minReconnect = 10 * time.Millisecond
	maxReconnect = time.Second
	pingEvery    = 30 * time.Second
)

// Notifier listens for ring changes and wakes the clients concerned.
type Notifier struct {
	l       *pq.Listener
	clients []*leasering.Client
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	err     error // Close's result

	mu      sync.Mutex
	lastErr error // the last failed connection attempt
}

// Listen connects to dsn, listens on the clients' channels and returns once
// the server has acknowledged, then wakes every client whose schema
// announces a change until Close. After a reconnect it wakes them all, as
// notifications may have been missed meanwhile.
//
// ctx bounds the first connection only: if it ends before the server has
// acknowledged, Listen gives up and returns an error that includes the
// last connection attempt's. Later the notifier reconnects on its own, with
// a backoff of up to a second, until Close.
func Listen(ctx context.Context, dsn string, clients ...*leasering.Client) (*Notifier, error) {
	byChannel, err := channels(clients)
	if err != nil {
		return nil, err
	}
	if dsn == "" {
		return nil, errors.New("pqnotify: empty dsn")
	}
	if _, err := pq.NewConfig(dsn); err != nil {
		return nil, fmt.Errorf("pqnotify: dsn: %w", err)
	}
	n := &Notifier{clients: clients, stop: make(chan struct{}), done: make(chan struct{})}
	n.l = pq.NewListener(dsn, minReconnect, maxReconnect, func(ev pq.ListenerEventType, err error) {
		switch ev {
		case pq.ListenerEventConnectionAttemptFailed:
			n.mu.Lock()
			n.lastErr = err
			n.mu.Unlock()
		case pq.ListenerEventReconnected:
			n.wakeAll()
		}
	})
	// pq's Listen blocks until a connection is up; Close unblocks it.
	listened := make(chan error, 1)
	go func() {
		for ch := range byChannel {
			if err := n.l.Listen(ch); err != nil {
				listened <- fmt.Errorf("pqnotify: listen %q: %w", ch, err)
				return
			}
		}
		listened <- nil
	}()
	select {
	case err = <-listened:
	case <-ctx.Done():
		_ = n.l.Close()
		<-listened
		n.mu.Lock()
		last := n.lastErr
		n.mu.Unlock()
		if last != nil {
			return nil, fmt.Errorf("pqnotify: connecting: %w (last attempt: %v)", ctx.Err(), last)
		}
		return nil, fmt.Errorf("pqnotify: connecting: %w", ctx.Err())
	}
	if err != nil {
		_ = n.l.Close()
		return nil, err
	}
	go n.run(byChannel)
	return n, nil
}

// channels groups clients by their notify channel.
func channels(clients []*leasering.Client) (map[string][]*leasering.Client, error) {
	if len(clients) == 0 {
		return nil, errors.New("pqnotify: no clients")
	}
	byChannel := map[string][]*leasering.Client{}
	for i, c := range clients {
		if c == nil {
			return nil, fmt.Errorf("pqnotify: client %d of %d is nil", i, len(clients))
		}
		byChannel[c.NotifyChannel()] = append(byChannel[c.NotifyChannel()], c)
	}
	return byChannel, nil
}

func (n *Notifier) wakeAll() {
	for _, c := range n.clients {
		c.Wake()
	}
}

func (n *Notifier) run(byChannel map[string][]*leasering.Client) {
	defer close(n.done)
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	for {
		select {
		case <-n.stop:
			return
		case msg := <-n.l.Notify:
			if msg == nil { // the connection was re-established
				n.wakeAll()
				continue
			}
			for _, c := range byChannel[msg.Channel] {
				c.Wake()
			}
		case <-ping.C:
			_ = n.l.Ping() // lets the listener notice a dead connection
		}
	}
}

// Close stops listening and closes the connection. It is idempotent.
func (n *Notifier) Close() error {
	n.once.Do(func() {
		close(n.stop)
		<-n.done
		n.err = n.l.Close()
	})
	return n.err
}
