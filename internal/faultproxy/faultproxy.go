// Package faultproxy is a small TCP proxy for integration tests. It sits
// between one client and a server (typically PostgreSQL) and can be switched
// at run time between forwarding normally, silently dropping all traffic
// (a network partition that looks like a hang) and refusing connections
// (the peer sees the connection reset). It can also add one-way latency.
//
// Mode semantics:
//
//   - Pass: bytes are forwarded in both directions.
//   - Blackhole: nothing is forwarded and nothing is answered. New connections
//     are accepted (the kernel completes the handshake) but never dialled
//     through to the target. Existing connections are kept open; the bytes
//     the proxy reads from either side are dropped, like packets lost by the
//     network, so neither peer sees EOF or a reset — only silence.
//   - Refuse: existing connections are closed with a reset (SO_LINGER 0) on
//     both sides, and new connections are reset immediately after accept.
//
// A connection that has been blackholed never forwards again: when the mode
// goes back to Pass, every connection that saw Blackhole is closed with a
// reset, so clients notice the failure and reconnect cleanly instead of
// resuming a byte stream with a hole in it. Connections opened after the
// switch to Pass work normally.
//
// Mode and latency changes apply at once to existing and new connections.
// SetTarget points the proxy at another server, as a failover manager moves
// a service address: existing connections are reset, new ones go there.
// All methods are safe for concurrent use. Close waits until every goroutine
// started by the proxy has exited.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Mode selects how the proxy treats traffic.
type Mode int

const (
	// Pass forwards bytes normally.
	Pass Mode = iota
	// Blackhole accepts new connections but never forwards or answers;
	// existing connections stop forwarding in both directions without being
	// closed. Bytes read while blackholed are dropped.
	Blackhole
	// Refuse resets existing connections and resets new ones right after
	// accepting them.
	Refuse
)

// String returns the mode's name.
func (m Mode) String() string {
	switch m {
	case Pass:
		return "Pass"
	case Blackhole:
		return "Blackhole"
	case Refuse:
		return "Refuse"
	default:
		return fmt.Sprintf("Mode(%d)", int(m))
	}
}

const (
	chunkSize   = 32 << 10
	queueLen    = 64
	dialTimeout = 10 * time.Second
)

// Proxy is a TCP proxy listening on loopback. Create it with New.
type Proxy struct {
	ln     net.Listener
	ctx    context.Context // cancelled by Close; aborts dials
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine started by the proxy

	mu      sync.Mutex
	target  string
	mode    Mode
	latency time.Duration
	closed  bool
	conns   map[*conn]struct{}
}

// conn is one proxied connection. Its mutable fields are guarded by Proxy.mu.
type conn struct {
	client  net.Conn
	server  net.Conn // nil until the target has been dialled
	tainted bool     // has been blackholed; never forwards again
	closed  bool
	done    chan struct{} // closed when the connection is closed
}

// New listens on 127.0.0.1:0 and forwards every accepted connection to
// target (host:port).
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		ln:     ln,
		target: target,
		ctx:    ctx,
		cancel: cancel,
		conns:  make(map[*conn]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the proxy's listening address, "127.0.0.1:NNNNN".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetMode switches the proxy to mode m. It applies at once to existing and
// new connections. Switching from Blackhole back to Pass resets the
// connections that were blackholed.
func (p *Proxy) SetMode(m Mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
	if p.closed {
		return
	}
	for c := range p.conns {
		switch m {
		case Blackhole:
			c.tainted = true
		case Refuse:
			p.closeConnLocked(c, true)
		case Pass:
			if c.tainted {
				p.closeConnLocked(c, true)
			}
		}
	}
}

// SetTarget makes new connections go to target (host:port) and resets the
// existing ones, so that their clients reconnect, to target.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = target
	for c := range p.conns {
		p.closeConnLocked(c, true)
	}
}

// SetLatency adds a one-way delay of d to each chunk forwarded, in both
// directions. Zero means no delay. The delay applies to chunks read after
// the call.
func (p *Proxy) SetLatency(d time.Duration) {
	if d < 0 {
		d = 0
	}
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// Close closes the listener and all connections, and waits for the proxy's
// goroutines to exit. It is idempotent; later calls return nil.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closed = true
	p.cancel()
	err := p.ln.Close()
	for c := range p.conns {
		p.closeConnLocked(c, false)
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return
			}
			// Transient failure (e.g. too many open files): back off briefly.
			t := time.NewTimer(10 * time.Millisecond)
			select {
			case <-t.C:
			case <-p.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			nc.Close()
			return
		}
		if p.mode == Refuse {
			p.mu.Unlock()
			closeNet(nc, true)
			continue
		}
		blackholed := p.mode == Blackhole
		c := &conn{client: nc, tainted: blackholed, done: make(chan struct{})}
		p.conns[c] = struct{}{}
		p.wg.Add(1) // under mu with closed == false, so before Close's Wait
		p.mu.Unlock()
		go p.handle(c, blackholed)
	}
}

// handle runs one connection until both directions are finished or the
// connection is closed.
func (p *Proxy) handle(c *conn, blackholed bool) {
	defer p.wg.Done()
	defer p.remove(c)

	if blackholed {
		// Accepted while blackholed: never dial, never answer, drop input.
		drain(c.client)
		return
	}

	p.mu.Lock()
	target := p.target
	p.mu.Unlock()
	d := net.Dialer{Timeout: dialTimeout}
	sc, err := d.DialContext(p.ctx, "tcp", target)
	if err != nil {
		p.closeConn(c, true)
		return
	}
	p.mu.Lock()
	if c.closed {
		p.mu.Unlock()
		closeNet(sc, true)
		return
	}
	c.server = sc
	p.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(c, c.client, sc) }()
	go func() { defer wg.Done(); p.pipe(c, sc, c.client) }()
	wg.Wait()
}

type chunk struct {
	data []byte
	due  time.Time
}

// pipe forwards one direction, src to dst. A reader goroutine stamps each
// chunk with its delivery time; the writer (this goroutine) delivers it when
// due, so latency delays chunks without limiting throughput. The forwarding
// state is checked both when a chunk is read and just before it is written,
// so a mode change also stops chunks already queued.
func (p *Proxy) pipe(c *conn, src, dst net.Conn) {
	queue := make(chan chunk, queueLen)
	readErr := make(chan error, 1)
	readerDone := make(chan struct{})
	defer func() { <-readerDone }()

	go func() {
		defer close(readerDone)
		defer close(queue)
		buf := make([]byte, chunkSize)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if lat, ok := p.forwardState(c); ok {
					ck := chunk{data: append([]byte(nil), buf[:n]...), due: time.Now().Add(lat)}
					select {
					case queue <- ck:
					case <-c.done:
						readErr <- net.ErrClosed
						return
					}
				}
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()

	for {
		var ck chunk
		var ok bool
		select {
		case ck, ok = <-queue:
		case <-c.done:
			return
		}
		if !ok {
			break
		}
		if wait := time.Until(ck.due); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-c.done:
				t.Stop()
				return
			}
		}
		if _, ok := p.forwardState(c); !ok {
			continue // blackholed (dropped) or closed
		}
		if _, err := dst.Write(ck.data); err != nil {
			p.closeConn(c, true)
			return
		}
	}

	err := <-readErr
	if _, ok := p.forwardState(c); !ok {
		// Blackholed: do not pass the EOF on; the other direction, if any,
		// keeps running until the connection is closed.
		return
	}
	if errors.Is(err, io.EOF) {
		// Half-close: pass the FIN on and let the other direction finish.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return
		}
		p.closeConn(c, false)
		return
	}
	// Reset or other error: propagate it abruptly.
	p.closeConn(c, true)
}

// forwardState reports the current latency and whether c may forward bytes.
func (p *Proxy) forwardState(c *conn) (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.latency, p.mode == Pass && !c.tainted && !c.closed
}

func (p *Proxy) closeConn(c *conn, reset bool) {
	p.mu.Lock()
	p.closeConnLocked(c, reset)
	p.mu.Unlock()
}

func (p *Proxy) closeConnLocked(c *conn, reset bool) {
	if c.closed {
		return
	}
	c.closed = true
	close(c.done)
	closeNet(c.client, reset)
	if c.server != nil {
		closeNet(c.server, reset)
	}
}

func (p *Proxy) remove(c *conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.closeConnLocked(c, false)
	p.mu.Unlock()
}

// closeNet closes nc; with reset, it first sets SO_LINGER to 0 so that the
// kernel sends RST instead of FIN.
func closeNet(nc net.Conn, reset bool) {
	if reset {
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
	}
	_ = nc.Close()
}

// drain reads and discards from nc until it fails.
func drain(nc net.Conn) {
	buf := make([]byte, chunkSize)
	for {
		if _, err := nc.Read(buf); err != nil {
			return
		}
	}
}
