package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"io"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// On a database without leasering schemas, status says so and how to make
// one, and exits 0; asked for a schema that is not there, it fails.
func TestStatusOnEmptyDatabase(t *testing.T) {
	dsn := freshDatabase(t)
	code, out, errOut := run(t, "status", "-dsn", dsn)
	if code != 0 || errOut != "" {
		t.Fatalf("status: exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"No schema in this database holds leasering's tables", "ringnode demo", "leasering.NewClient"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	code, out, errOut = run(t, "status", "-dsn", dsn, "-schema", "leasering")
	if code != 1 || out != "" || !strings.Contains(errOut, `schema "leasering" holds no leasering tables`) || !strings.Contains(errOut, "ringnode demo") {
		t.Errorf("status -schema leasering: exit %d, stdout %q, stderr %q; want 1 and an error", code, out, errOut)
	}
	code, _, errOut = run(t, "status", "-dsn", dsn, "-schema", "Bad-Name")
	if code != 2 || !strings.Contains(errOut, `schema name "Bad-Name"`) {
		t.Errorf("status -schema Bad-Name: exit %d, stderr %q; want 2 and an error naming it", code, errOut)
	}
}

// withParam adds a connection parameter to a URL DSN.
func withParam(t *testing.T, dsn, key, value string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Skipf("LEASERING_TEST_DSN is not a URL: %v", err)
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// status lists every leasering schema with its rings, members included;
// a role granted only SELECT on ring_members (the README's grant for
// operators) sees the rings that have members.
func TestStatusListsSchemasAndRings(t *testing.T) {
	admin, err := sql.Open("postgres", testDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	role := "lrt_role_" + randomHex(t)
	if _, err := admin.Exec("CREATE ROLE " + role); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // after the database is dropped: cleanups run last first
		if _, err := admin.Exec("DROP ROLE IF EXISTS " + role); err != nil {
			t.Errorf("dropping role %s: %v", role, err)
		}
	})
	dsn := freshDatabase(t)
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := func(schema, ring, id string) *leasering.Client {
		c, err := leasering.NewClient(db, leasering.WithSchema(schema), leasering.WithNodeID(id),
			leasering.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Lease(ring, 16); err != nil {
			t.Fatal(err)
		}
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	start("lrt_a", "orders", "node-1")
	start("lrt_b", "jobs", "node-2")
	if err := start("lrt_b", "gone", "node-3").Close(); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"GRANT USAGE ON SCHEMA lrt_a, lrt_b TO " + role,
		"GRANT SELECT ON lrt_a.ring_members, lrt_b.ring_members TO " + role,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}

	rowRE := func(ring, node string) *regexp.Regexp {
		return regexp.MustCompile(`(?m)^` + ring + ` +16 +\d+ +` + regexp.QuoteMeta(node))
	}
	code, out, errOut := run(t, "status", "-dsn", dsn)
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	t.Log("\n" + out)
	ia, ib := strings.Index(out, "schema lrt_a "), strings.Index(out, "schema lrt_b ")
	if ia < 0 || ib < ia {
		t.Errorf("status does not list schemas lrt_a and lrt_b in order:\n%s", out)
	}
	for _, re := range []*regexp.Regexp{rowRE("orders", "node-1"), rowRE("jobs", "node-2"), rowRE("gone", "(no members)")} {
		if !re.MatchString(out) {
			t.Errorf("status output does not match %s:\n%s", re, out)
		}
	}

	code, out, errOut = run(t, "status", "-dsn", withParam(t, dsn, "options", "-c role="+role), "-schema", "lrt_b")
	if code != 0 {
		t.Fatalf("status as %s: exit %d: %s", role, code, errOut)
	}
	t.Logf("as %s:\n%s", role, out)
	if !rowRE("jobs", "node-2").MatchString(out) || strings.Contains(out, "gone") || strings.Contains(out, "lrt_a") {
		t.Errorf("status -schema lrt_b as a role granted only ring_members: want ring jobs only:\n%s", out)
	}
}

func randomHex(t *testing.T) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
