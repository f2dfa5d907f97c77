package faultproxy

import (
	"errors"
	"io"
	"math/rand"
	"net"
	"sync"
	"testing"
	"time"
)

func TestBlackholeExisting(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	roundTrip(t, c, "before")
	p.SetMode(Blackhole)
	expectHang(t, c, "during")
	expectHang(t, c, "still")
}

func TestBlackholeNew(t *testing.T) {
	p := newProxy(t)
	p.SetMode(Blackhole)
	c := dial(t, p)
	expectHang(t, c, "hello")
}

func TestBlackholeThenPass(t *testing.T) {
	p := newProxy(t)
	existing := dial(t, p)
	roundTrip(t, existing, "before")
	p.SetMode(Blackhole)
	fresh := dial(t, p) // accepted while blackholed
	expectHang(t, existing, "x")
	expectHang(t, fresh, "y")

	p.SetMode(Pass)
	// Blackholed connections are reset rather than resumed.
	expectClosed(t, existing)
	expectClosed(t, fresh)
	// New connections work.
	roundTrip(t, dial(t, p), "after")
}

func TestRefuse(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	roundTrip(t, c, "before")
	p.SetMode(Refuse)
	expectClosed(t, c)

	// A new connection may complete the handshake (the kernel accepts it)
	// but is closed straight away.
	nc, err := net.DialTimeout("tcp", p.Addr(), failWait)
	if err == nil {
		t.Cleanup(func() { nc.Close() })
		expectClosed(t, nc)
	}

	p.SetMode(Pass)
	roundTrip(t, dial(t, p), "after")
}

func TestRefuseWhileBlackholed(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	roundTrip(t, c, "before")
	p.SetMode(Blackhole)
	expectHang(t, c, "x")
	p.SetMode(Refuse)
	expectClosed(t, c)
}

func TestLatency(t *testing.T) {
	const d = 50 * time.Millisecond
	p := newProxy(t)
	c := dial(t, p)
	roundTrip(t, c, "warm-up")

	p.SetLatency(d)
	start := time.Now()
	roundTrip(t, c, "slow")
	// The delay applies in each direction.
	if rt := time.Since(start); rt < 2*d {
		t.Fatalf("round trip with latency %v took %v; want at least %v", d, rt, 2*d)
	}

	p.SetLatency(0)
	roundTrip(t, c, "fast")
}

func TestLatencyThenBlackholeDropsQueued(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	roundTrip(t, c, "warm-up")
	p.SetLatency(300 * time.Millisecond)
	if _, err := c.Write([]byte("queued")); err != nil {
		t.Fatal(err)
	}
	// The chunk is either queued (waiting out its delay) or not yet read;
	// either way it must not be delivered once blackholed.
	p.SetMode(Blackhole)
	p.SetLatency(0)
	if err := c.SetReadDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(make([]byte, 64))
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read = %d, %v; want 0 and a timeout", n, err)
	}
}

func TestConcurrentModes(t *testing.T) {
	p := newProxy(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(i)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				p.SetMode(Mode(r.Intn(3)))
				p.SetLatency(time.Duration(r.Intn(3)) * time.Millisecond)
				time.Sleep(time.Duration(r.Intn(2000)) * time.Microsecond)
			}
		}()
	}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
				if err != nil {
					continue
				}
				for range 5 {
					_ = c.SetDeadline(time.Now().Add(20 * time.Millisecond))
					if _, err := c.Write([]byte("ping")); err != nil {
						break
					}
					if _, err := c.Read(buf); err != nil {
						var ne net.Error
						if !errors.As(err, &ne) || !ne.Timeout() {
							break
						}
					}
				}
				c.Close()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // let the chaos run; not for synchronisation
	close(stop)
	wg.Wait()

	// The proxy still works afterwards.
	p.SetMode(Pass)
	p.SetLatency(0)
	roundTrip(t, dial(t, p), "still alive")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestLatencyThenRefuseDropsQueued: bytes delayed on their way are never
// delivered once the proxy refuses, so the server never sees what the
// client sent during the delay (a replication stream cut in flight).
func TestLatencyThenRefuseDropsQueued(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan struct{})
	received := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(first)
			received <- nil
			return
		}
		defer c.Close()
		b := make([]byte, len("sent"))
		_, _ = io.ReadFull(c, b)
		close(first)
		rest, _ := io.ReadAll(c) // until the reset
		received <- append(b, rest...)
	}()
	t.Cleanup(func() { ln.Close() })
	p, err := New(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	c := dial(t, p)
	if _, err := c.Write([]byte("sent")); err != nil {
		t.Fatal(err)
	}
	<-first
	p.SetLatency(time.Second)
	if _, err := c.Write([]byte("delayed")); err != nil {
		t.Fatal(err)
	}
	// The chunk is either queued (waiting out its delay) or not yet read;
	// either way it must never reach the server once the proxy refuses.
	p.SetMode(Refuse)
	select {
	case b := <-received:
		if string(b) != "sent" {
			t.Fatalf("the server received %q, want only %q", b, "sent")
		}
	case <-time.After(failWait):
		t.Fatal("the server's connection was not closed")
	}
}
