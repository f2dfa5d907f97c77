package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/leasering/leasering"
	"github.com/leasering/leasering/pqnotify"
)

// runCmd runs one node. On a terminal it redraws a live view (members, a
// map of the ring coloured by owner, epochs, lease time left, the event
// log); otherwise it prints one line per event.
func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	dsn := dsnFlag(fs)
	id := fs.String("id", "", "node id (default: random)")
	ring := fs.String("ring", "demo", "ring name")
	size := fs.Int("size", 64, "ring size")
	vnodes := fs.Int("vnodes", leasering.DefaultVNodes, "vnodes (weight)")
	ttl := fs.Duration("ttl", 5*time.Second, "lease TTL")
	crash := fs.Bool("crash", false, "on Ctrl-C exit without leaving, so the others take over after the TTL")
	notify := fs.Bool("notify", true, "wake on LISTEN/NOTIFY (needs a direct connection)")
	plain := fs.Bool("plain", false, "plain lines even on a terminal")
	verbose := fs.Bool("v", false, "log the client's events to stderr")
	_ = fs.Parse(args)

	db, err := openDB(*dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	opts := []leasering.Option{leasering.WithTTL(*ttl), leasering.WithLogger(logger(*verbose))}
	if *id != "" {
		opts = append(opts, leasering.WithNodeID(*id), leasering.WithMetadata(*id))
	}
	c, err := leasering.NewClient(db, opts...)
	if err != nil {
		return err
	}
	lease, err := c.Lease(*ring, *size, leasering.WithVNodes(*vnodes))
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	v := &view{c: c, lease: lease, tty: !*plain && isTerminal(os.Stdout), color: colorAllowed()}
	if err := c.Start(ctx); err != nil {
		return err
	}
	v.event("joined ring %q (%d partitions) as %s; Ctrl-C to %s", *ring, *size, c.ID(),
		map[bool]string{true: "crash", false: "leave"}[*crash])
	if *notify {
		if n, err := pqnotify.Listen(*dsn, c); err != nil {
			v.event("no fast wakeup (%v); polling only", err)
		} else {
			defer n.Close()
		}
	}
	changes := lease.Changes()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	healthy := true
	for {
		select {
		case <-ctx.Done():
			if *crash {
				v.event("crashing: exit without leaving")
				v.draw()
				os.Exit(2)
			}
			v.event("leaving")
			v.draw()
			return c.Close()
		case ch, ok := <-changes:
			if !ok {
				v.event("lease ended: %v", lease.Err())
				v.draw()
				return lease.Err()
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
		fmt.Println(line)
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
	fmt.Print(b.String())
}

func (v *view) paint(s string, colour int) string {
	if !v.color {
		return s
	}
	return fmt.Sprintf("\x1b[48;5;%dm\x1b[97m%s\x1b[0m", colour, s)
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func colorAllowed() bool {
	return os.Getenv("NO_COLOR") == "" && os.Getenv("TERM") != "dumb"
}
