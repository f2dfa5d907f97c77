package pqnotify

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

func TestListenRefusesBadArguments(t *testing.T) {
	c := newClient(t)
	for _, tc := range []struct {
		name    string
		dsn     string
		clients []*leasering.Client
		want    string
	}{
		{"no clients", "postgres://localhost/db", nil, "pqnotify: no clients"},
		{"nil client", "postgres://localhost/db", []*leasering.Client{c, nil}, "pqnotify: client 1 of 2 is nil"},
		{"empty dsn", "", []*leasering.Client{c}, "pqnotify: empty dsn"},
		{"bad dsn", "postgres://localhost/db?sslmode=sometimes", []*leasering.Client{c}, "pqnotify: dsn: "},
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

// TestListenGivesUpWhenContextEnds: lib/pq's listener retries a refused
// connection for ever; Listen stops at its context's end and says why the
// last attempt failed.
func TestListenGivesUpWhenContextEnds(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	n, err := Listen(ctx, "postgres://postgres@"+addr+"/db?sslmode=disable", newClient(t))
	if err == nil {
		_ = n.Close()
		t.Fatal("Listen succeeded with no server")
	}
	t.Log(err)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last attempt: ") {
		t.Fatalf("Listen: %v, want its context's deadline and the last attempt's error", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("Listen took %v to give up after a 300ms context", d)
	}
}
