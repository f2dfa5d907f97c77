package leasering

import (
	"errors"
	"testing"
	"time"
)

func nextEvent(t *testing.T, ch <-chan LeaderEvent) LeaderEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("events closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return LeaderEvent{}
}

func TestLeaderEventsOrderAndCoalescing(t *testing.T) {
	l := newLease(nil, "sched", 1, 1)
	var promoted, demoted []int64
	ld := &Leader{lease: l, events: make(chan LeaderEvent), cfg: leaderConfig{
		onPromoted: func(term int64) { promoted = append(promoted, term) },
		onDemoted:  func(term int64) { demoted = append(demoted, term) },
	}}
	ch := ld.Events()
	leader := func(term int64) *snapshot { return newSnapshot(1, []int{0}, []int64{term}) }

	l.publish(leader(3), ErrRevoked)
	if ev := nextEvent(t, ch); ev.Kind != Promoted || ev.Term != 3 {
		t.Fatalf("got %+v, want Promoted 3", ev)
	}
	if !ld.IsLeader() || ld.Term() != 3 {
		t.Errorf("IsLeader %v Term %d", ld.IsLeader(), ld.Term())
	}
	// Lost and won again while nobody reads: the Demoted of term 3 still
	// comes, then the Promoted of the new term.
	l.publish(emptySnapshot, ErrRevoked)
	l.publish(leader(5), ErrRevoked)
	if ev := nextEvent(t, ch); ev.Kind != Demoted || ev.Term != 3 {
		t.Fatalf("got %+v, want Demoted 3", ev)
	}
	if ev := nextEvent(t, ch); ev.Kind != Promoted || ev.Term != 5 {
		t.Fatalf("got %+v, want Promoted 5", ev)
	}
	// Fenced while leader: Demoted, then Errored, then the channel closes.
	l.fail(ErrFenced)
	if ev := nextEvent(t, ch); ev.Kind != Demoted || ev.Term != 5 {
		t.Fatalf("got %+v, want Demoted 5", ev)
	}
	if ev := nextEvent(t, ch); ev.Kind != Errored || !errors.Is(ev.Err, ErrFenced) {
		t.Fatalf("got %+v, want Errored ErrFenced", ev)
	}
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("event after the end")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("events not closed")
	}
	if len(promoted) < 2 || promoted[len(promoted)-1] != 5 || len(demoted) != 2 {
		t.Errorf("callbacks: promoted %v demoted %v", promoted, demoted)
	}
}

func TestLeaderPromotedWithdrawnWhenLostUnread(t *testing.T) {
	l := newLease(nil, "sched", 1, 1)
	ld := &Leader{lease: l, events: make(chan LeaderEvent)}
	ch := ld.Events()
	l.publish(newSnapshot(1, []int{0}, []int64{7}), ErrRevoked)
	// Leadership ends before the reader looks: the Promoted may be
	// withdrawn, but if it was taken, its Demoted follows.
	l.publish(emptySnapshot, ErrRevoked)
	l.fail(ErrClosed)
	var got []LeaderEvent
	for ev := range ch {
		got = append(got, ev)
	}
	switch len(got) {
	case 0:
	case 2:
		if got[0].Kind != Promoted || got[1].Kind != Demoted || got[1].Term != 7 {
			t.Errorf("events %+v", got)
		}
	default:
		t.Errorf("events %+v: want none, or Promoted then Demoted", got)
	}
}
