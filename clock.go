package leasering

import "time"

// clock is the time the client reads and waits on: the heartbeat loop,
// Start's retries and Close's wait. A client uses the system's monotonic
// clock; the unit tests give it a fake one that they move by hand, so that
// no test waits for real time to pass.
//
// The database calls' own contexts keep real deadlines: they bound a
// driver, not the protocol.
type clock interface {
	Now() time.Time
	// NewTimer is the heartbeat loop's one timer, which it resets before
	// each wait.
	NewTimer(d time.Duration) timer
	// After is a one-off wait.
	After(d time.Duration) <-chan time.Time
}

// timer is the part of *time.Timer the loop uses.
type timer interface {
	C() <-chan time.Time
	Reset(d time.Duration)
	Stop()
}

// systemClock is the real clock.
type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (systemClock) NewTimer(d time.Duration) timer         { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time   { return t.t.C }
func (t systemTimer) Reset(d time.Duration) { t.t.Reset(d) }
func (t systemTimer) Stop()                 { t.t.Stop() }
