// Package localpg finds a PostgreSQL server for tests and demos, starting a
// private throwaway cluster from locally installed binaries when nothing
// else is available.
//
// Find tries, in order: an explicit DSN (Options.DSN, then the environment
// variables named in Options.DSNEnv), a Docker engine (through the
// Options.Docker callback, so this package does not import a Docker client),
// and finally Start, which runs initdb and postgres from the local
// installation in a fresh temporary directory.
//
// A private cluster listens only on 127.0.0.1 (and a Unix socket inside its
// directory), trusts every local connection, runs with fsync off and is
// deleted by Stop. Its server can be shut down and started again on the
// same port and data (Cluster.Shutdown, Cluster.Restart), for tests of a
// database restart. Ask StopOnSignal to stop it on Ctrl-C or SIGTERM too. On
// Linux the postmaster is also killed when the process that started it dies,
// and a later Start removes directories left behind by such processes.
//
// The package uses only the standard library: it does not need a PostgreSQL
// driver, it speaks just enough of the wire protocol to create the database.
package localpg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// Options tells Find where to look for a server.
type Options struct {
	// DSN, when not empty, is used as is (typically a command-line flag's
	// value). It wins over DSNEnv.
	DSN string
	// DSNEnv names environment variables, checked in order; the first
	// non-empty one is used as is.
	DSNEnv []string
	// Docker, when not nil, is tried after the explicit DSNs. It returns a
	// DSN and a function that removes the container. It returns an empty
	// DSN and a nil error when no engine is reachable (Find then goes on
	// quietly), or an error when an engine answered but the container
	// failed (Find goes on too and mentions the error in Server.Source).
	Docker func(ctx context.Context) (dsn string, stop func(), err error)
}

// Server is a PostgreSQL server returned by Find.
type Server struct {
	// DSN is a URL for lib/pq and the like.
	DSN string
	// Source says where the server came from, e.g. "dsn from
	// $LEASERING_TEST_DSN", "docker: 1.20s" or "private cluster at
	// /tmp/localpg-123: 0.61s".
	Source string
	// Cluster is the private cluster when Find started one, else nil.
	Cluster *Cluster

	once sync.Once
	stop func() error
	err  error
}

// Stop releases the server: it removes the Docker container or stops and
// deletes the private cluster. It does nothing for an explicit DSN. It is
// safe to call more than once and from several goroutines.
func (s *Server) Stop() error {
	s.once.Do(func() {
		if s.stop != nil {
			s.err = s.stop()
		}
	})
	return s.err
}

// Find returns a server: an explicit DSN, else one from the Docker
// callback, else a private cluster made by Start. The caller must call
// Server.Stop. The error wraps ErrNoPostgres when no PostgreSQL binaries
// were found and no other source gave a server.
func Find(ctx context.Context, opts Options) (*Server, error) {
	return find(ctx, opts, defaultSearch())
}

// find is Find with the binaries looked for as s says.
func find(ctx context.Context, opts Options, s search) (*Server, error) {
	if opts.DSN != "" {
		return &Server{DSN: opts.DSN, Source: "dsn given explicitly"}, nil
	}
	for _, name := range opts.DSNEnv {
		if v := os.Getenv(name); v != "" {
			return &Server{DSN: v, Source: "dsn from $" + name}, nil
		}
	}
	var dockerErr error
	if opts.Docker != nil {
		t0 := time.Now()
		dsn, stop, err := opts.Docker(ctx)
		switch {
		case err != nil:
			dockerErr = err
		case dsn != "":
			srv := &Server{DSN: dsn, Source: fmt.Sprintf("docker: %.2fs", time.Since(t0).Seconds())}
			if stop != nil {
				srv.stop = func() error { stop(); return nil }
			}
			return srv, nil
		}
	}
	c, err := start(ctx, s)
	if err != nil {
		if errors.Is(err, ErrNoPostgres) && len(opts.DSNEnv) > 0 {
			err = fmt.Errorf("%w; or set $%s to a server's DSN", err, opts.DSNEnv[0])
		}
		if dockerErr != nil {
			return nil, fmt.Errorf("%w (docker failed too: %v)", err, dockerErr)
		}
		return nil, err
	}
	srv := &Server{DSN: c.DSN, Cluster: c, stop: c.Stop,
		Source: fmt.Sprintf("private cluster at %s: %.2fs", c.Dir, c.StartTime.Seconds())}
	if dockerErr != nil {
		srv.Source += fmt.Sprintf(" (docker failed: %v)", dockerErr)
	}
	return srv, nil
}

// StopOnSignal stops s when the process gets SIGINT (Ctrl-C) or SIGTERM and
// then exits with status 128+signal (130 for SIGINT, 143 for SIGTERM). Call
// the returned release function once s has been stopped normally: it
// unregisters the handler. s is typically a *Server or a *Cluster.
func StopOnSignal(s interface{ Stop() error }) (release func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			code := 130
			if sig == syscall.SIGTERM {
				code = 143
			}
			if err := s.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "localpg: %v: stopping PostgreSQL: %v\n", sig, err)
			} else {
				fmt.Fprintf(os.Stderr, "localpg: %v: PostgreSQL stopped\n", sig)
			}
			os.Exit(code)
		case <-done:
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(ch)
			close(done)
		})
	}
}

// ErrNoPostgres is wrapped by the error Start (and Find) return when no
// PostgreSQL server binaries (initdb and postgres) are installed.
var ErrNoPostgres = errors.New("localpg: no PostgreSQL server binaries found")
