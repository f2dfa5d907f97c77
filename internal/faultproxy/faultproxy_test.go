package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	hangWait = 200 * time.Millisecond // read deadline used to prove a hang
	failWait = 5 * time.Second        // bound on waiting for an expected event
)

// startEcho starts an echo server on loopback and returns its address. It is
// stopped, and its goroutines waited for, when the test ends.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func newProxy(t *testing.T) *Proxy {
	t.Helper()
	p, err := New(startEcho(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), failWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and expects it echoed back within failWait.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(failWait)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

// expectHang writes msg and checks that a read with a short deadline times
// out, with no data, EOF or reset.
func expectHang(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(failWait)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write while blackholed: %v", err)
	}
	if err := c.SetReadDeadline(time.Now().Add(hangWait)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(make([]byte, 64))
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read while blackholed = %d, %v; want 0 and a timeout", n, err)
	}
}

// expectClosed checks that c sees EOF or a reset within failWait.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(failWait)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read = %v; want EOF or connection reset", err)
		}
		return
	}
}

func TestPass(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	roundTrip(t, c, "hello")
	roundTrip(t, c, "world")

	// A larger transfer, written and read concurrently.
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	if err := c.SetDeadline(time.Now().Add(failWait)); err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() { _, err := c.Write(data); werr <- err }()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("large echo corrupted")
	}
}

func TestHalfClose(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	if err := c.SetDeadline(time.Now().Add(failWait)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Fatalf("ReadAll = %q, %v; want \"bye\", nil", got, err)
	}
}

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

func TestDialFailure(t *testing.T) {
	// A target that refuses connections: the client is closed, not hung.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p, err := New(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// The handshake completes before the proxy dials the target, but the
	// reset can still race the client's connect.
	c, err := net.DialTimeout("tcp", p.Addr(), failWait)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatal(err)
		}
		return
	}
	defer c.Close()
	expectClosed(t, c)
}

// startGreeter starts a server on loopback that writes name to each
// connection, then echoes it, and returns its address.
func startGreeter(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if _, err := c.Write([]byte(name)); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// greeting reads the greeter's name from c.
func greeting(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(failWait)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	return string(got)
}

// TestSetTarget: a switch resets the connections to the old server, and
// new ones reach the new server.
func TestSetTarget(t *testing.T) {
	p, err := New(startGreeter(t, "old"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	c := dial(t, p)
	if g := greeting(t, c, 3); g != "old" {
		t.Fatalf("greeting %q, want old", g)
	}
	p.SetTarget(startGreeter(t, "new"))
	expectClosed(t, c)
	c2 := dial(t, p)
	if g := greeting(t, c2, 3); g != "new" {
		t.Fatalf("greeting after the switch %q, want new", g)
	}
	roundTrip(t, c2, "hello")
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
