package main

import (
	"context"
	"fmt"
	"time"

	"github.com/leasering/leasering"
	"github.com/lib/pq"
)

// listen wakes c whenever its schema announces a ring change, and after a
// reconnect, until stop is called. It is package pqnotify in small:
// pqnotify is a module of its own, which the root module, this command's,
// cannot require.
func listen(ctx context.Context, dsn string, c *leasering.Client) (stop func(), err error) {
	l := pq.NewListener(dsn, 10*time.Millisecond, time.Second, nil)
	listened := make(chan error, 1)
	go func() { listened <- l.Listen(c.NotifyChannel()) }() // blocks until connected; Close unblocks it
	select {
	case err = <-listened:
	case <-ctx.Done():
		_ = l.Close()
		<-listened
		err = ctx.Err()
	}
	if err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("listen %q: %w", c.NotifyChannel(), err)
	}
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		ping := time.NewTicker(30 * time.Second)
		defer ping.Stop()
		for {
			select {
			case <-done:
				return
			case <-l.Notify: // a change, or nil after a reconnect: wake either way
				c.Wake()
			case <-ping.C:
				_ = l.Ping() // lets the listener notice a dead connection
			}
		}
	}()
	return func() {
		close(done)
		<-exited
		_ = l.Close()
	}, nil
}
