package pgxnotify

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// noDB is a leasering.DB that is never used: these tests start no client.
type noDB struct{}

var errNoDB = errors.New("no database in unit tests")

func (noDB) ExecContext(context.Context, string, ...any) (sql.Result, error) { return nil, errNoDB }
func (noDB) QueryContext(context.Context, string, ...any) (*sql.Rows, error) { return nil, errNoDB }
func (noDB) QueryRowContext(context.Context, string, ...any) *sql.Row        { return nil }

func newClient(t *testing.T) *leasering.Client {
	t.Helper()
	c, err := leasering.NewClient(noDB{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// closedAddr returns a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

func TestListenRefusesBadArguments(t *testing.T) {
	c := newClient(t)
	for _, tc := range []struct {
		name    string
		dsn     string
		clients []*leasering.Client
		want    string
	}{
		{"no clients", "postgres://localhost/db", nil, "pgxnotify: no clients"},
		{"nil client", "postgres://localhost/db", []*leasering.Client{c, nil}, "pgxnotify: client 1 of 2 is nil"},
		{"empty dsn", "", []*leasering.Client{c}, "pgxnotify: empty dsn"},
		{"bad dsn", "postgres://localhost:notaport/db", []*leasering.Client{c}, "pgxnotify: dsn: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := Listen(context.Background(), tc.dsn, tc.clients...)
			if err == nil {
				_ = n.Close()
				t.Fatalf("Listen succeeded, want an error starting %q", tc.want)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("Listen: %v, want an error starting %q", err, tc.want)
			}
		})
	}
}

func TestListenFailsWhenNoServerAnswers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := Listen(ctx, "postgres://postgres@"+closedAddr(t)+"/db?connect_timeout=5", newClient(t))
	if err == nil {
		_ = n.Close()
		t.Fatal("Listen succeeded with no server")
	}
	if !strings.HasPrefix(err.Error(), "pgxnotify: connecting: ") {
		t.Fatalf("Listen: %v, want a connection error", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("Listen returned only after its context ended: %v", err)
	}
}

func TestListenGivesUpWhenContextEnds(t *testing.T) {
	// A server that accepts connections and never answers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				_ = c.Close()
			}
		}()
		for {
			conn, err := l.Accept()
			if err != nil {
				return // l closed
			}
			conns = append(conns, conn)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	n, err := Listen(ctx, "postgres://postgres@"+l.Addr().String()+"/db?sslmode=disable", newClient(t))
	if err == nil {
		_ = n.Close()
		t.Fatal("Listen succeeded with a silent server")
	}
	t.Log(err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Listen: %v, want its context's deadline", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("Listen took %v to give up after a 200ms context", d)
	}
}
