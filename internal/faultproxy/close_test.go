package faultproxy

import (
	"errors"
	"net"
	"runtime"
	"testing"
	"time"
)

func TestCloseUnblocks(t *testing.T) {
	p := newProxy(t)
	passing := dial(t, p)
	roundTrip(t, passing, "hi")
	p.SetMode(Blackhole)
	held := dial(t, p)
	expectHang(t, held, "x")

	// Readers blocked with no deadline.
	errs := make(chan error, 2)
	for _, c := range []net.Conn{passing, held} {
		if err := c.SetReadDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		go func() {
			_, err := c.Read(make([]byte, 64))
			errs <- err
		}()
	}

	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close = %v", err)
		}
	case <-time.After(failWait):
		t.Fatal("Close did not return")
	}
	for range 2 {
		select {
		case err := <-errs:
			if err == nil {
				t.Fatal("read succeeded after Close")
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("read after Close = %v; want EOF or reset", err)
			}
		case <-time.After(failWait):
			t.Fatal("read still blocked after Close")
		}
	}

	if err := p.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	p.SetMode(Pass) // harmless after Close
	p.SetLatency(time.Millisecond)
	if c, err := net.DialTimeout("tcp", p.Addr(), failWait); err == nil {
		c.Close()
		t.Fatal("dial succeeded after Close")
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	echo := startEcho(t)
	base := runtime.NumGoroutine()

	p, err := New(echo)
	if err != nil {
		t.Fatal(err)
	}
	var clients []net.Conn
	newClient := func() net.Conn {
		c, err := net.DialTimeout("tcp", p.Addr(), failWait)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		return c
	}
	p.SetLatency(time.Hour) // a chunk stuck waiting for its due time
	c := newClient()
	if _, err := c.Write([]byte("stuck")); err != nil {
		t.Fatal(err)
	}
	p.SetLatency(0)
	roundTrip(t, newClient(), "pass")
	blackholed := newClient()
	roundTrip(t, blackholed, "pass")
	p.SetMode(Blackhole)
	expectHang(t, blackholed, "x")
	expectHang(t, newClient(), "y")

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		c.Close()
	}
	// Close waits for the proxy's goroutines; the echo server's handlers
	// exit once the proxy has closed its side, so poll briefly for them.
	deadline := time.Now().Add(failWait)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines: %d, want <= %d\n%s", runtime.NumGoroutine(), base, buf[:n])
		}
		time.Sleep(5 * time.Millisecond)
	}
}
