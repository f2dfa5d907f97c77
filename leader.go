package leasering

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// LeaderEventKind says what happened to a Leader.
type LeaderEventKind int

const (
	// Promoted: this node became leader for Term.
	Promoted LeaderEventKind = iota + 1
	// Demoted: this node stopped being leader for Term.
	Demoted
	// Errored: leadership was lost to an error (Err), or the election
	// ended for good (ErrFenced, ErrRingSizeMismatch). Always preceded by
	// Demoted when this node was leader.
	Errored
)

func (k LeaderEventKind) String() string {
	switch k {
	case Promoted:
		return "promoted"
	case Demoted:
		return "demoted"
	case Errored:
		return "errored"
	}
	return fmt.Sprintf("LeaderEventKind(%d)", int(k))
}

// LeaderEvent is one change of leadership seen by this node.
type LeaderEvent struct {
	Kind LeaderEventKind
	Term int64 // the term promoted to or demoted from
	Err  error // with Errored
}

// LeaderOption configures a Leader.
type LeaderOption func(*leaderConfig) error

type leaderConfig struct {
	onPromoted func(term int64)
	onDemoted  func(term int64)
}

// OnPromoted calls f, in order with the other events, when this node
// becomes leader. f runs on the Leader's own goroutine: while it runs, later
// events wait (the heartbeat does not).
func OnPromoted(f func(term int64)) LeaderOption {
	return func(c *leaderConfig) error {
		if f == nil {
			return fmt.Errorf("%w: OnPromoted func is nil", ErrInvalidArgument)
		}
		c.onPromoted = f
		return nil
	}
}

// OnDemoted calls f when this node stops being leader, for whatever reason.
func OnDemoted(f func(term int64)) LeaderOption {
	return func(c *leaderConfig) error {
		if f == nil {
			return fmt.Errorf("%w: OnDemoted func is nil", ErrInvalidArgument)
		}
		c.onDemoted = f
		return nil
	}
}

// Leader is this node's candidacy in a leader election: a ring of one
// partition, renewed by the client's heartbeat at no extra cost. The
// leader keeps leadership while it renews (no election happens then), and
// its term, the partition's epoch, fences its writes in SQL with
// holds(name, 0, term).
type Leader struct {
	lease *Lease
	cfg   leaderConfig

	eventsOnce sync.Once
	events     chan LeaderEvent
	wantEvents atomic.Bool
}

// Leader joins the election called name. Like Lease, it does no I/O; the
// node becomes a candidate on Start or on its next heartbeat.
func (c *Client) Leader(name string, opts ...LeaderOption) (*Leader, error) {
	var cfg leaderConfig
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil leader option", ErrInvalidArgument)
		}
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	l, err := c.Lease(name, 1, WithVNodes(1))
	if err != nil {
		return nil, err
	}
	ld := &Leader{lease: l, cfg: cfg, events: make(chan LeaderEvent)}
	if cfg.onPromoted != nil || cfg.onDemoted != nil {
		ld.eventsOnce.Do(func() { go ld.run() })
	}
	return ld, nil
}

// IsLeader reports whether this node is leader now. It costs what
// Lease.Owns does: no lock, no I/O.
func (ld *Leader) IsLeader() bool { return ld.lease.Owns(0) }

// Term is the current term while this node is leader, else 0. Terms rise
// with every change of leader.
func (ld *Leader) Term() int64 {
	t, _ := ld.lease.Epoch(0)
	return t
}

// Events returns the leadership changes in order. The heartbeat never waits
// for the reader; a slow reader gets the changes coalesced (a Promoted that
// ended before it was read is dropped), but never loses a Demoted for a
// term it was told of. The channel is closed when the election ends (Close,
// fencing). Every call returns the same channel.
func (ld *Leader) Events() <-chan LeaderEvent {
	ld.wantEvents.Store(true)
	ld.eventsOnce.Do(func() { go ld.run() })
	return ld.events
}

// Resign gives up leadership at once: this node stops acting as leader
// before the database hands the term on, another candidate is leader on its
// next heartbeat, and this node stays a candidate. It does nothing when
// this node is not leader.
func (ld *Leader) Resign(ctx context.Context) error {
	if !ld.IsLeader() {
		return nil
	}
	return ld.lease.resign(ctx)
}

// run turns lease snapshots into events.
func (ld *Leader) run() {
	defer close(ld.events)
	var told int64 // the term the reader believes we lead, 0 for none
	l := ld.lease
	for {
		changed, err := l.state()
		term, leader := l.Epoch(0)
		var pending []LeaderEvent
		if told != 0 && (!leader || term != told) {
			pending = append(pending, LeaderEvent{Kind: Demoted, Term: told})
			if cause := l.c.lostCause(); cause != nil && err == nil {
				pending = append(pending, LeaderEvent{Kind: Errored, Term: told, Err: cause})
			}
		}
		if leader && term != told && err == nil {
			pending = append(pending, LeaderEvent{Kind: Promoted, Term: term})
		}
		if err != nil && err != ErrClosed {
			pending = append(pending, LeaderEvent{Kind: Errored, Term: told, Err: err})
		}
		for _, ev := range pending {
			if !ld.deliver(ev, changed, err != nil) {
				break // the state moved on: recompute from what the reader was told
			}
			switch ev.Kind {
			case Demoted:
				told = 0
			case Promoted:
				told = ev.Term
			}
		}
		if err != nil {
			return
		}
		if len(pending) == 0 {
			<-changed
		}
	}
}

// deliver hands ev to the callbacks and the Events reader. A Promoted not
// yet taken is withdrawn if leadership ends meanwhile (deliver returns
// false); every other event waits for the reader.
func (ld *Leader) deliver(ev LeaderEvent, changed <-chan struct{}, final bool) bool {
	switch {
	case ev.Kind == Promoted && ld.cfg.onPromoted != nil:
		ld.cfg.onPromoted(ev.Term)
	case ev.Kind == Demoted && ld.cfg.onDemoted != nil:
		ld.cfg.onDemoted(ev.Term)
	}
	if !ld.wantEvents.Load() {
		return true
	}
	if ev.Kind != Promoted || final {
		ld.events <- ev
		return true
	}
	for {
		select {
		case ld.events <- ev:
			return true
		case <-changed:
			if t, ok := ld.lease.Epoch(0); !ok || t != ev.Term {
				return false
			}
			changed, _ = ld.lease.state()
		}
	}
}
