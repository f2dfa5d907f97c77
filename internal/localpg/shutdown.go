package localpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Stop stops the server at once (an immediate shutdown: it is throwaway)
// and removes Dir. It is safe to call more than once and from several
// goroutines; later calls return the first call's result.
func (c *Cluster) Stop() error {
	c.once.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Cluster) stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	var errs []error
	if s := c.srv; s != nil {
		c.srv = nil
		if !s.kill() {
			errs = append(errs, fmt.Errorf("postgres (pid %d) ignored SIGQUIT for %v and was killed", s.cmd.Process.Pid, stopWait))
		}
	}
	if c.lock != nil {
		_ = c.lock.Close()
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("localpg: stopping cluster at %s: %w", c.Dir, err)
	}
	return nil
}

// kill sends SIGQUIT (immediate shutdown) to the postmaster, waits for it
// to exit, SIGKILLs its process group when it does not in stopWait and, in
// any case, once it has exited, to take stray backends down too. It
// returns false when SIGKILL was needed.
func (s *server) kill() bool {
	clean := true
	select {
	case <-s.exited:
	default:
		_ = quit(s.cmd.Process)
		t := time.NewTimer(stopWait)
		defer t.Stop()
		select {
		case <-s.exited:
		case <-t.C:
			clean = false
			killGroup(s.cmd.Process.Pid)
			<-s.exited
		}
	}
	killGroup(s.cmd.Process.Pid)
	return clean
}

// ErrStopped is returned by Shutdown and Restart after Stop.
var ErrStopped = errors.New("localpg: cluster stopped")

// Shutdown stops the server with PostgreSQL's fast shutdown (SIGINT: open
// sessions are ended, a checkpoint is written) and keeps the data
// directory, for Restart. Until then connections to Port are refused.
// When the server has not exited by ctx's deadline, it is killed
// (immediate shutdown, then SIGKILL), its data is still kept, and the
// error wraps ctx.Err(). Shutdown of a server already shut down does
// nothing; after Stop it returns ErrStopped.
func (c *Cluster) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return ErrStopped
	}
	return c.shutdown(ctx)
}

// shutdown is Shutdown with c.mu held.
func (c *Cluster) shutdown(ctx context.Context) error {
	s := c.srv
	if s == nil {
		return nil
	}
	c.srv = nil
	t0 := time.Now()
	select {
	case <-s.exited:
	default:
		_ = fastShutdown(s.cmd.Process)
		select {
		case <-s.exited:
		case <-ctx.Done():
			s.kill()
			return fmt.Errorf("localpg: shutting down the server at %s: not down after %v, killed: %w",
				c.Dir, time.Since(t0).Round(time.Millisecond), ctx.Err())
		}
	}
	killGroup(s.cmd.Process.Pid)
	return nil
}

// Restart shuts the server down as Shutdown does, if it runs, and starts it
// again on the same data directory, port and socket directory; it returns
// when database test takes connections. Sessions are lost, data is kept.
// The server log goes on in the same file. Restart fails when another
// process has taken the port meanwhile; the server then stays shut down
// (Stop still removes everything). Without a deadline in ctx, Restart gives
// up after a minute. After Stop it returns ErrStopped.
func (c *Cluster) Restart(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return ErrStopped
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultWait)
		defer cancel()
	}
	if err := c.shutdown(ctx); err != nil {
		return err
	}
	logPath := filepath.Join(c.Dir, logName)
	var logFrom int64
	if fi, err := os.Stat(logPath); err == nil {
		logFrom = fi.Size()
	}
	// The port may be held for a moment by another process looking for a
	// free one (see freePort): try again for up to bindRetry.
	bindUntil := time.Now().Add(bindRetry)
	for {
		err := c.startServer(ctx, c.Port, logFrom)
		if err == nil {
			break
		}
		log := readFrom(logPath, logFrom)
		if bytes.Contains(log, []byte("could not bind")) {
			if ctx.Err() == nil && time.Now().Before(bindUntil) {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			err = fmt.Errorf("port %d is taken by another process: %v", c.Port, err)
		}
		return fmt.Errorf("localpg: restarting %s: %v%s", filepath.Join(c.BinDir, "postgres"), err, lastLines("server log", log))
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port))
	if err := whileStarting(ctx, func() error { return execSQL(ctx, addr, "postgres", "test", "SELECT 1") }); err != nil {
		return fmt.Errorf("localpg: connecting to %s after the restart: %v%s", addr, err,
			lastLines("server log", readFrom(logPath, logFrom)))
	}
	return nil
}

// bindRetry is how long Restart tries to bind a port held by another
// process.
const bindRetry = time.Second

// readFrom returns the file at path from offset on, or nothing.
func readFrom(path string, offset int64) []byte {
	b, _ := os.ReadFile(path)
	if offset > int64(len(b)) {
		return nil
	}
	return b[offset:]
}
