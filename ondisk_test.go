package leasering

import (
	"testing"
	"time"
)

// TestLeaseCountsFromRenewalsOnDisk: a renewal that committed without
// waiting for the disk extends what the client reports only once a later
// answer shows the WAL flushed past the call after it; one that committed
// durably counts at once, and puts every earlier one on disk. TTL 10s, a
// margin of 1s, heartbeats 1s apart.
func TestLeaseCountsFromRenewalsOnDisk(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	const sec = time.Second
	s := &schedule{heartbeat: sec, margin: sec, asyncFloor: asyncFloor(10 * sec), jitter: func(time.Duration) time.Duration { return 0 }}
	renew := func(sent time.Duration, wal walPlace) {
		s.renewed(at(sent+10*time.Millisecond), renewal{sent: at(sent), recv: at(sent + 10*time.Millisecond), lease: 10 * sec, nextExpiry: -1, wal: wal})
	}
	check := func(what string, want time.Duration) {
		t.Helper()
		if !s.deadline.Equal(at(want)) {
			t.Errorf("%s: deadline %v, want %v", what, s.deadline.Sub(t0), want)
		}
	}

	if s.mayGoAsync(t0) {
		t.Error("a heartbeat asks to go without the disk before any renewal is on disk")
	}
	renew(0, walPlace{known: true, insert: 100, flush: 100}) // durable (the claim)
	check("a durable renewal", 9*sec)
	if !s.mayGoAsync(at(sec)) {
		t.Error("with 8s of a 10s lease on disk, the next heartbeat does not ask to go without the disk")
	}
	renew(1*sec, walPlace{known: true, insert: 200, flush: 150, async: true})
	check("an async renewal, the one on disk before it", 9*sec)
	renew(2*sec, walPlace{known: true, insert: 300, flush: 250, async: true})
	check("the first async one placed below 300, not flushed (250)", 9*sec)
	renew(3*sec, walPlace{known: true, insert: 400, flush: 300, async: true})
	check("flushed to 300: the renewal sent at 1s is on disk", 10*sec)
	renew(4*sec, walPlace{known: true, insert: 500, flush: 500, async: true})
	check("flushed to 500: those sent at 2s and 3s are; 4s's is not placed yet", 12*sec)

	// The lease on disk runs short (the WAL writer stalls): from half a
	// TTL left, the heartbeat waits for the disk.
	if !s.mayGoAsync(at(7 * sec)) {
		t.Error("with 5s of the lease on disk left, half the TTL, the heartbeat waits for the disk")
	}
	if s.mayGoAsync(at(7*sec + time.Millisecond)) {
		t.Error("with less than half the TTL on disk, the heartbeat still asks to go without the disk")
	}
	renew(5*sec, walPlace{known: true, insert: 600, flush: 550, async: true})
	check("flushed to 550: the 4s renewal (placed below 600) is not", 12*sec)
	renew(6*sec, walPlace{known: true, insert: 700, flush: 600})
	check("a durable renewal counts at once", 15*sec)
	renew(7*sec, walPlace{known: true, insert: 800, flush: 700, async: true})
	check("after a durable one, an async one waits again", 15*sec)

	// A renewal whose answer gave no positions (a late answer on a
	// standby) places nothing; one later that does places the one before.
	renew(8*sec, walPlace{async: true})
	check("no positions: nothing on disk moves", 15*sec)
	renew(9*sec, walPlace{known: true, insert: 900, flush: 900, async: true})
	check("the 8s renewal placed below 900 and flushed", 17*sec)
}

// TestAsyncOnlyWithRoomOnDisk: at a heartbeat of a quarter of the TTL the
// lease on disk, two heartbeats old, leaves less than half a TTL, so the
// heartbeats alternate: a durable renewal, then one without the wait.
func TestAsyncOnlyWithRoomOnDisk(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	const ttl, hb = 2 * time.Second, 500 * time.Millisecond
	s := &schedule{heartbeat: hb, margin: ttl / 10, asyncFloor: asyncFloor(ttl), jitter: func(time.Duration) time.Duration { return 0 }}
	var asked []bool
	lsn := int64(0)
	for i := range 8 {
		sent := at(time.Duration(i) * hb)
		o := s.launch(sent)
		asked = append(asked, o.async)
		lsn += 100
		// The WAL writer is slow: the flush reaches the insert of two
		// calls before.
		s.renewed(sent.Add(5*time.Millisecond), renewal{sent: sent, recv: sent.Add(5 * time.Millisecond), lease: ttl, nextExpiry: -1,
			wal: walPlace{known: true, insert: lsn, flush: lsn - 200, async: o.async}})
		if left := s.deadline.Sub(sent); left < ttl-s.margin-2*hb {
			t.Errorf("heartbeat %d: %v of the lease left as it is answered, want at least %v", i, left, ttl-s.margin-2*hb)
		}
	}
	want := []bool{false, true, false, true, false, true, false, true}
	for i := range want {
		if asked[i] != want[i] {
			t.Errorf("heartbeats asked to go without the disk: %v, want %v", asked, want)
			break
		}
	}
}
