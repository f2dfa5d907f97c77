package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/leasering/leasering"
)

// runTTL is run's lease time: short, so a takeover after -crash is
// quick to watch.
const runTTL = 5 * time.Second

var runAbout = fmt.Sprintf(`Runs one node on a ring until Ctrl-C, then leaves (or, with -crash, exits
without leaving). Start it in several terminals with different -id values
and watch the partitions move. On a terminal it redraws a live view: the
members, a map of the ring coloured by owner, epochs, lease time left and
the event log; piped, it prints one line per event. It uses schema %s
and creates it if it is missing.

The TTL defaults to %v, not the library's %v (leasering.DefaultTTL),
so that after -crash you see the others take over within seconds.`, leasering.DefaultSchema, runTTL, leasering.DefaultTTL)

// runCmd runs one node. On a terminal it redraws a live view (members, a
// map of the ring coloured by owner, epochs, lease time left, the event
// log); otherwise it prints one line per event.
func runCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("run", runAbout)
	dsn := dsnFlag(fs)
	id := fs.String("id", "", "node `id` (default: random)")
	ring := fs.String("ring", "demo", "ring `name`")
	size := fs.Int("size", 64, "ring `size`: partitions, 1.."+fmt.Sprint(leasering.MaxRingSize)+"; every member must give the same")
	vnodes := fs.Int("vnodes", leasering.DefaultVNodes, fmt.Sprintf("vnodes, 1..%d: the node's weight", leasering.MaxVNodes))
	ttl := fs.Duration("ttl", runTTL, fmt.Sprintf("lease TTL, at least %v; %v here so a takeover is quick to watch (library default: %v); the heartbeat is a tenth of it", leasering.MinTTL, runTTL, leasering.DefaultTTL))
	crash := fs.Bool("crash", false, "on Ctrl-C exit without leaving, so the others take over after the TTL")
	notify := fs.Bool("notify", true, "wake on LISTEN/NOTIFY (needs a direct connection)")
	plain := fs.Bool("plain", false, "plain lines even on a terminal")
	verbose := fs.Bool("v", false, "log the client's events to stderr")
	if code, done := parse(fs, args, stdout, stderr); done {
		return code
	}
	if err := checkSize(*size); err != nil {
		return usageError(stderr, "run", err)
	}
	if err := checkTTL(*ttl); err != nil {
		return usageError(stderr, "run", err)
	}
	if *vnodes < 1 || *vnodes > leasering.MaxVNodes {
		return usageError(stderr, "run", fmt.Errorf("-vnodes %d is outside 1..%d", *vnodes, leasering.MaxVNodes))
	}
	code, err := runNode(stdout, stderr, runOptions{dsn: sharedDSN(dsn, stderr), id: *id, ring: *ring, size: *size, vnodes: *vnodes,
		ttl: *ttl, crash: *crash, notify: *notify, plain: *plain, verbose: *verbose})
	if err != nil {
		return failed(stderr, "run", err)
	}
	return code
}

type runOptions struct {
	dsn, id, ring                 string
	size, vnodes                  int
	ttl                           time.Duration
	crash, notify, plain, verbose bool
}

// exitCrashed is run's exit code after -crash.
const exitCrashed = 2

// runNode runs the node until a signal; with crash it then returns
// exitCrashed without leaving.
func runNode(stdout, stderr io.Writer, o runOptions) (int, error) {
	db, err := openDB(o.dsn)
	if err != nil {
		return exitError, err
	}
	defer db.Close()
	opts := []leasering.Option{leasering.WithTTL(o.ttl), leasering.WithLogger(logger(o.verbose, stderr))}
	if o.id != "" {
		opts = append(opts, leasering.WithNodeID(o.id), leasering.WithMetadata(o.id))
	}
	c, err := leasering.NewClient(db, opts...)
	if err != nil {
		return exitError, err
	}
	lease, err := c.Lease(o.ring, o.size, leasering.WithVNodes(o.vnodes))
	if err != nil {
		return exitError, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	v := &view{out: stdout, c: c, lease: lease, tty: !o.plain && isTerminal(stdout), color: colorAllowed()}
	if err := c.Start(ctx); err != nil {
		return exitError, err
	}
	v.event("joined ring %q (%d partitions) as %s; Ctrl-C to %s", o.ring, o.size, c.ID(),
		map[bool]string{true: "crash", false: "leave"}[o.crash])
	if o.notify {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		stopListening, err := listen(lctx, o.dsn, c)
		cancel()
		if err != nil {
			v.event("no fast wakeup (%v); polling only", err)
		} else {
			defer stopListening()
		}
	}
	changes := lease.Changes()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	healthy := true
	for {
		select {
		case <-ctx.Done():
			if o.crash {
				v.event("crashing: exit without leaving")
				v.draw()
				return exitCrashed, nil // main exits at once: no Close, no leave
			}
			v.event("leaving")
			v.draw()
			return exitOK, c.Close()
		case ch, ok := <-changes:
			if !ok {
				v.event("lease ended: %v", lease.Err())
				v.draw()
				return exitError, lease.Err()
			}
			if len(ch.Assigned) > 0 {
				v.event("assigned %s", compact(ch.Assigned))
			}
			if len(ch.Revoked) > 0 {
				v.event("revoked %s", compact(ch.Revoked))
			}
		case <-tick.C:
		}
		switch err := c.Healthy(); {
		case err != nil && healthy:
			v.event("lost the database: %v", err)
			healthy = false
		case err == nil && !healthy:
			v.event("database back")
			healthy = true
		}
		v.draw()
	}
}

// view renders one node.
type view struct {
	out   io.Writer
	c     *leasering.Client
	lease *leasering.Lease
	tty   bool
	color bool
	log   []string
}

func (v *view) event(format string, args ...any) {
	line := time.Now().Format("15:04:05.000") + "  " + fmt.Sprintf(format, args...)
	v.log = append(v.log, line)
	if len(v.log) > 12 {
		v.log = v.log[len(v.log)-12:]
	}
	if !v.tty {
		fmt.Fprintln(v.out, line)
	}
}

// palette colours owners on the ring map (ANSI 256-colour backgrounds).
var palette = []int{24, 28, 130, 90, 31, 64, 166, 97, 30, 100, 125, 60}

func (v *view) draw() {
	if !v.tty {
		return
	}
	s := v.c.Stats()
	members := v.lease.Members()
	letter := map[string]string{}
	colour := map[string]int{}
	var b strings.Builder
	b.WriteString("\x1b[H\x1b[2J")
	fmt.Fprintf(&b, "node %s   ring %s (%d)   lease left %.1fs   heartbeats %d   failures %d\n",
		v.c.ID(), v.lease.Name(), v.lease.Size(), s.LeaseLeft.Seconds(), s.Renewals, s.RenewFailures)
	b.WriteString("members:")
	for i, m := range members {
		letter[m.ID] = string(rune('a' + i%26))
		colour[m.ID] = palette[i%len(palette)]
		fmt.Fprintf(&b, "  %s=%s(%d)", v.paint(letter[m.ID], colour[m.ID]), m.ID, m.VNodes)
	}
	b.WriteString("\n\nring (one cell per partition, by owner; ours in capitals):\n")
	for p := 0; p < v.lease.Size(); p++ {
		cell := "."
		if m, ok := v.lease.OwnerOf(p); ok {
			cell = letter[m.ID]
			if v.lease.Owns(p) {
				cell = strings.ToUpper(cell)
			}
			cell = v.paint(cell, colour[m.ID])
		}
		b.WriteString(cell)
		if (p+1)%64 == 0 {
			b.WriteByte('\n')
		}
	}
	parts := v.lease.Partitions()
	owned := make([]int, len(parts))
	var lo, hi int64
	for i, p := range parts {
		owned[i] = p.Partition
		if i == 0 || p.Epoch < lo {
			lo = p.Epoch
		}
		hi = max(hi, p.Epoch)
	}
	fmt.Fprintf(&b, "\n\nowned %d: %s\nepochs %d..%d\n\nevents:\n", len(owned), compact(owned), lo, hi)
	for _, line := range v.log {
		b.WriteString("  " + line + "\n")
	}
	fmt.Fprint(v.out, b.String())
}

func (v *view) paint(s string, colour int) string {
	if !v.color {
		return s
	}
	return fmt.Sprintf("\x1b[48;5;%dm\x1b[97m%s\x1b[0m", colour, s)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func colorAllowed() bool {
	return os.Getenv("NO_COLOR") == "" && os.Getenv("TERM") != "dumb"
}
