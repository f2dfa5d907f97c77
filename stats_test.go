package leasering

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/leasering/leasering/internal/fakesql"
)

func TestStatsAndHealth(t *testing.T) {
	db, mock := newMock(t)
	c := newTestClient(t, db, WithTTL(300*time.Millisecond), WithHeartbeat(50*time.Millisecond))
	if err := c.Healthy(); !errors.Is(err, ErrNotStarted) {
		t.Errorf("Healthy before Start: %v", err)
	}
	l, _ := c.Lease("orders", 4)
	expectSchemaCurrent(mock)
	mock.ExpectQuery(`renew_and_read`).WillReturnRows(renewRow(300, 0, nil, "ok",
		changesJSON(t, ringChange{Ring: "orders", Version: 1, Status: "ok", Partitions: []int{0, 1, 2}, Epochs: []int64{1, 1, 1}}), nil))
	for i := 0; i < 20; i++ {
		mock.ExpectQuery(`renew_and_read`).WillReturnError(errors.New("connection refused"))
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := c.Stats()
	if s.Renewals != 1 || s.Owned["orders"] != 3 || s.RingChanges != 1 || s.LeaseLeft <= 0 || s.NodeID != "a" {
		t.Errorf("stats after Start: %+v", s)
	}
	if err := c.Healthy(); err != nil {
		t.Errorf("Healthy after Start: %v", err)
	}
	rec := httptest.NewRecorder()
	HealthHandler(c.Client).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("healthz %d", rec.Code)
	}
	c.runUntil(time.Second, "the lease to be lost", func() bool { return len(l.Values()) == 0 })
	if err := c.Healthy(); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("Healthy once the lease is lost: %v, want ErrLeaseLost", err)
	}
	s = c.Stats()
	if s.RenewFailures == 0 || s.LeaseLosses != 1 || s.LeaseLeft != 0 || s.Owned["orders"] != 0 {
		t.Errorf("stats after the lease was lost: %+v", s)
	}
	rec = httptest.NewRecorder()
	HealthHandler(c.Client).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("healthz %d after the lease was lost", rec.Code)
	}
	db.expect(func() { mock.ExpectExec(`leave`).WillReturnResult(fakesql.NewResult(0, 1)) })
}
