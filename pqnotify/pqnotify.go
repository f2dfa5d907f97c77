// Package pqnotify wakes leasering clients the moment a ring changes, with
// lib/pq's LISTEN support, so joins, leaves and handoffs converge in
// milliseconds instead of a heartbeat.
//
// It is an optimisation only: every decision still comes from the
// heartbeat, which keeps polling. It needs a direct connection of its own;
// behind PgBouncer in transaction mode, where LISTEN does not work, leave
// it out.
package pqnotify

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/leasering/leasering"
	"github.com/lib/pq"
)

// Notifier listens for ring changes and wakes the clients concerned.
type Notifier struct {
	l       *pq.Listener
	clients []*leasering.Client
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// Listen connects to dsn, listens on the clients' channels and returns once
// the server has acknowledged, then wakes every client whose schema
// announces a change until Close. After a reconnect it wakes them all, as
// notifications may have been missed meanwhile.
func Listen(dsn string, clients ...*leasering.Client) (*Notifier, error) {
	if len(clients) == 0 {
		return nil, errors.New("pqnotify: no clients")
	}
	byChannel := map[string][]*leasering.Client{}
	for _, c := range clients {
		if c == nil {
			return nil, errors.New("pqnotify: nil client")
		}
		byChannel[c.NotifyChannel()] = append(byChannel[c.NotifyChannel()], c)
	}
	n := &Notifier{clients: clients, stop: make(chan struct{}), done: make(chan struct{})}
	n.l = pq.NewListener(dsn, 10*time.Millisecond, time.Second, func(ev pq.ListenerEventType, _ error) {
		if ev == pq.ListenerEventReconnected {
			n.wakeAll()
		}
	})
	for ch := range byChannel {
		if err := n.l.Listen(ch); err != nil {
			n.l.Close()
			return nil, fmt.Errorf("pqnotify: listen %q: %w", ch, err)
		}
	}
	go n.run(byChannel)
	return n, nil
}

func (n *Notifier) wakeAll() {
	for _, c := range n.clients {
		c.Wake()
	}
}

func (n *Notifier) run(byChannel map[string][]*leasering.Client) {
	defer close(n.done)
	ping := time.NewTicker(30 * time.Second)
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
	var err error
	n.once.Do(func() {
		close(n.stop)
		<-n.done
		err = n.l.Close()
	})
	return err
}
