package prometheus

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"io"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/leasering/leasering"
	_ "github.com/lib/pq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// TestScrapeRealValues starts a client on the test database and scrapes
// /metrics: the values are the client's own.
func TestScrapeRealValues(t *testing.T) {
	dsn := os.Getenv("LEASERING_TEST_DSN")
	if dsn == "" {
		if os.Getenv("LEASERING_REQUIRE_DB") == "1" {
			t.Fatal("LEASERING_REQUIRE_DB=1 but no database: set LEASERING_TEST_DSN")
		}
		t.Skip("no PostgreSQL: set LEASERING_TEST_DSN")
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	schema := "lrt_prom_" + hex.EncodeToString(b)
	defer db.Exec(`DROP SCHEMA IF EXISTS "` + schema + `" CASCADE`)

	c, err := leasering.NewClient(db, leasering.WithNodeID("metrics-node"), leasering.WithSchema(schema),
		leasering.WithTTL(time.Second), leasering.WithLogger(slogDiscard()))
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.Lease("orders", 32)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := l.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for (c.Stats().Renewals < 3 || c.Stats().AsyncRenewals < 1) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(c))
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	for _, want := range []string{
		`leasering_partitions_owned{node="metrics-node",ring="orders"} 32`,
		`leasering_fenced{node="metrics-node"} 0`,
		`leasering_renew_failures_total{node="metrics-node"} 0`,
		`leasering_handoff_looks_total{node="metrics-node"} 0`, // alone on its ring: nothing handed to it
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %q:\n%s", want, text)
		}
	}
	for _, metric := range []string{"leasering_renewals_total", "leasering_async_renewals_total", "leasering_lease_left_seconds", "leasering_renew_latency_seconds"} {
		v := valueOf(text, metric)
		if v == "" || v == "0" {
			t.Errorf("%s = %q, want a positive value", metric, v)
		}
	}
}

func valueOf(text, metric string) string {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, metric+"{") {
			return line[strings.LastIndex(line, " ")+1:]
		}
	}
	return ""
}
