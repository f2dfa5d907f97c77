package integration

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasering/leasering"
)

// oldSchemas are the schema versions this library upgrades, each as its
// release shipped sql/functions.sql (testdata holds copies from git
// history: `git show <commit>:sql/functions.sql`, and from version 7
// sql/schema.sql before it).
var oldSchemas = []struct {
	name    string
	version int
	file    string
	client  oldClient
}{
	{"v4", 4, "testdata/functions_v4_3a1cd10.sql", oldClient{}},
	{"v5-first", 5, "testdata/functions_v5_a9b1bc2.sql", oldClient{forgetOnRejoin: true}}, // no claimed_by yet
	{"v5", 5, "testdata/functions_v5_ec05b67.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v6", 6, "testdata/functions_v6_d26a4fa.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	// From version 7 on, a release ships schema.sql and functions.sql:
	// the copy is the two, one after the other.
	{"v7", 7, "testdata/schema_and_functions_v7_a49746f.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v8", 8, "testdata/schema_and_functions_v8_38dba32.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v9", 9, "testdata/schema_and_functions_v9_c180b10.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
	{"v10", 10, "testdata/schema_and_functions_v10_a0b7cc7.sql", oldClient{forgetOnRejoin: true, joinRings: true}},
}

// oldClient is how the Go client of an older release read the heartbeat's
// answers.
type oldClient struct {
	// joinRings: it joins rings with join_rings when an answer says
	// 'join' (and knows 'later' and 'view'); before, the heartbeat joined
	// them, and an answer it does not know fails the heartbeat.
	joinRings bool
	// forgetOnRejoin: a 'rejoined' answer makes it forget every ring whose
	// view did not come with it (it asks again from version 0).
	forgetOnRejoin bool
}

// installOld applies an old release's sql/functions.sql to e's schema, as
// that release's client did.
func installOld(t testing.TB, e *env, file string, version int) {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Exec(forSchema(string(src), e.schema)); err != nil {
		t.Fatalf("installing %s: %v", file, err)
	}
	if v := schemaVersionOf(t, e.admin, e.schema); v != version {
		t.Fatalf("%s installed version %d, want %d", file, v, version)
	}
}

// forSchema is SQL of sql/ (or an older release's) for schema, as the Go
// client writes it: the schema's name in place of "leasering".
func forSchema(src, schema string) string {
	q := `"` + schema + `"`
	src = strings.ReplaceAll(src, "CREATE SCHEMA IF NOT EXISTS leasering;", "CREATE SCHEMA IF NOT EXISTS "+q+";")
	src = strings.ReplaceAll(src, "search_path = leasering, pg_temp", "search_path = "+q+", pg_temp")
	src = strings.ReplaceAll(src, "IN SCHEMA leasering FROM PUBLIC", "IN SCHEMA "+q+" FROM PUBLIC")
	return strings.ReplaceAll(src, "leasering.", q+".")
}

func schemaVersionOf(t testing.TB, db *sql.DB, schema string) int {
	t.Helper()
	var v int
	if err := db.QueryRow(`SELECT version FROM "` + schema + `".schema_version`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// catalogOf describes schema's objects as the catalog has them: tables and
// their options and privileges, columns in order with types, nullability
// and defaults, constraints, indexes, functions (signature, language,
// properties, settings, privileges and a hash of the body) and views, with
// the schema's name written S.
func catalogOf(t testing.TB, db *sql.DB, schema string) []string {
	t.Helper()
	rows, err := db.Query(`
		SELECT 'relation ' || c.relname || ' kind=' || c.relkind::text || ' options=' || coalesce(array_to_string(c.reloptions, ','), '')
		       || ' acl=' || coalesce(c.relacl::text, '')
		  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
		UNION ALL
		SELECT 'column ' || c.relname || ' #' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) || ' ' || a.attname
		       || ' ' || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
		       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
		  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
		 WHERE n.nspname = $1
		UNION ALL
		SELECT 'constraint ' || c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
		  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = $1
		UNION ALL
		SELECT 'index ' || pg_get_indexdef(i.indexrelid)
		  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = $1
		UNION ALL
		SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') returns '
		       || pg_get_function_result(p.oid) || ' ' || l.lanname || ' volatile=' || p.provolatile::text
		       || ' secdef=' || p.prosecdef::text || ' strict=' || p.proisstrict::text || ' parallel=' || p.proparallel::text
		       || ' config=' || coalesce(array_to_string(p.proconfig, ','), '') || ' acl=' || coalesce(p.proacl::text, '')
		       || ' body=' || md5(replace(p.prosrc, $1, 'S'))
		  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
		 WHERE n.nspname = $1
		UNION ALL
		SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid)
		  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'v'
		ORDER BY 1`, schema)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.ReplaceAll(line, schema, "S"))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUpgradedCatalogMatchesNew: a schema upgraded from each version the
// library upgrades has the catalog of a new one, object for object:
// columns, constraints, indexes, function signatures and bodies, views,
// privileges. Nothing of an older version is left behind.
func TestUpgradedCatalogMatchesNew(t *testing.T) {
	t.Parallel()
	fresh := newEnv(t, 2*time.Second, 200*time.Millisecond)
	if err := fresh.startNode("installer", "r", 8).client.Close(); err != nil {
		t.Fatal(err)
	}
	want := catalogOf(t, fresh.admin, fresh.schema)
	for _, old := range oldSchemas {
		t.Run(old.name, func(t *testing.T) {
			e := newEnv(t, 2*time.Second, 200*time.Millisecond)
			installOld(t, e, old.file, old.version)
			if err := e.startNode("installer", "r", 8).client.Close(); err != nil {
				t.Fatal(err)
			}
			if v := schemaVersionOf(t, e.admin, e.schema); v != leasering.SchemaVersion {
				t.Fatalf("upgraded to version %d, want %d", v, leasering.SchemaVersion)
			}
			got := catalogOf(t, e.admin, e.schema)
			for _, line := range got {
				if !slices.Contains(want, line) {
					t.Errorf("only the upgraded schema has: %s", line)
				}
			}
			for _, line := range want {
				if !slices.Contains(got, line) {
					t.Errorf("only the new schema has: %s", line)
				}
			}
		})
	}
}

// oldNode is a node of an older release, driven by hand: it calls
// renew_and_read with that release's arguments and reads the answers as
// that release's client did. values() reports what that client's Values()
// would: the partitions of its last view it was not told to give up, from
// the heartbeat that told it, while its lease lasts.
type oldNode struct {
	t       testing.TB
	db      *sql.DB
	schema  string
	id, inc string
	ring    string
	size    int
	client  oldClient
	stopc   chan struct{}
	done    chan struct{}

	mu         sync.Mutex
	claimed    bool
	version    int64
	owned      []int
	revoking   map[int]bool
	deadline   time.Time // reports nothing past it
	holdUntil  time.Time // nor before it
	unreadable int       // answers its client could not read (a failed heartbeat)
	lapseNext  bool      // the next heartbeat ends the lease first, in its own transaction
	lapsed     bool      // it did
	stopped    bool
}

func startOldNode(t testing.TB, e *env, id string, client oldClient) *oldNode {
	db := openPool(t, e.dsn)
	o := &oldNode{t: t, db: db, schema: e.schema, id: id, inc: "inc-" + id, ring: "r", size: 64, client: client,
		stopc: make(chan struct{}), done: make(chan struct{}), revoking: map[int]bool{}}
	go func() {
		defer close(o.done)
		tick := time.NewTicker(e.heartbeat)
		defer tick.Stop()
		for {
			o.heartbeat()
			select {
			case <-o.stopc:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(o.stop)
	return o
}

// stop ends the process: it reports nothing and sends nothing more.
func (o *oldNode) stop() {
	o.mu.Lock()
	if o.stopped {
		o.mu.Unlock()
		return
	}
	o.stopped = true
	o.mu.Unlock()
	close(o.stopc)
	<-o.done
}

func (o *oldNode) values() []int {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	if o.stopped || now.After(o.deadline) || now.Before(o.holdUntil) {
		return nil
	}
	var out []int
	for _, p := range o.owned {
		if !o.revoking[p] {
			out = append(out, p)
		}
	}
	return out
}

type oldView struct {
	Ring       string  `json:"ring"`
	Version    int64   `json:"version"`
	Status     string  `json:"status"`
	Partitions []int   `json:"partitions"`
	Epochs     []int64 `json:"epochs"`
	Revoking   []int   `json:"revoking"`
	Changed    []int   `json:"changed"`
	Owners     []int   `json:"owners"`
}

func (o *oldNode) heartbeat() {
	o.mu.Lock()
	claim, lapse := !o.claimed, o.lapseNext
	o.lapseNext = false
	released := []int{}
	for p := range o.revoking { // it stopped reporting them when it heard
		released = append(released, p)
	}
	sort.Ints(released)
	arg, _ := json.Marshal([]map[string]any{{"ring": o.ring, "size": o.size, "vnodes": leasering.DefaultVNodes,
		"version": o.version, "released": released}})
	o.mu.Unlock()

	sent := time.Now()
	tx, err := o.db.Begin()
	if err != nil {
		return
	}
	defer tx.Rollback()
	if lapse {
		if _, err := tx.Exec(`UPDATE "`+o.schema+`".nodes SET expires_at = now() - interval '1 second' WHERE node_id = $1`, o.id); err != nil {
			return
		}
	}
	var leaseMS, holdMS int64
	var status string
	var changes sql.NullString
	err = tx.QueryRow(`SELECT lease_ms, hold_ms, node_status, changes::text FROM "`+o.schema+`".renew_and_read($1, $2, 2000, '', $3::jsonb, $4, true, clock_timestamp())`,
		o.id, o.inc, string(arg), claim).Scan(&leaseMS, &holdMS, &status, &changes)
	if err != nil || tx.Commit() != nil {
		return // a failed heartbeat: the lease it may have extended does not count
	}
	recv := time.Now()
	var views []oldView
	if changes.Valid {
		if err := json.Unmarshal([]byte(changes.String), &views); err != nil {
			o.t.Errorf("%s: answer %s: %v", o.id, changes.String, err)
			return
		}
	}
	var joins []string
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lapsed = o.lapsed || lapse
	if status != "ok" && status != "rejoined" {
		o.unreadable++
		return
	}
	for _, v := range views {
		known := v.Status == "ok" || v.Status == "size_mismatch"
		if o.client.joinRings {
			known = known || v.Status == "join" || v.Status == "later" || v.Status == "view"
		}
		if !known || len(v.Epochs) != len(v.Partitions) || len(v.Changed) != len(v.Owners) {
			o.unreadable++ // its client fails the whole heartbeat
			return
		}
	}
	o.claimed = true
	o.deadline = sent.Add(time.Duration(leaseMS) * time.Millisecond)
	o.holdUntil = recv.Add(time.Duration(holdMS) * time.Millisecond)
	if status == "rejoined" && o.client.forgetOnRejoin && !slices.ContainsFunc(views, func(v oldView) bool { return v.Status == "ok" }) {
		o.version, o.owned, o.revoking = 0, nil, map[int]bool{}
	}
	for _, v := range views {
		switch v.Status {
		case "join": // nothing of the ring until a fresh view
			o.version, o.owned, o.revoking = 0, nil, map[int]bool{}
			joins = append(joins, v.Ring)
		case "ok":
			o.version, o.owned, o.revoking = v.Version, v.Partitions, map[int]bool{}
			for _, p := range v.Revoking {
				o.revoking[p] = true
			}
		}
	}
	for _, ring := range joins {
		rings, _ := json.Marshal([]map[string]any{{"ring": ring, "size": o.size, "vnodes": leasering.DefaultVNodes}})
		var answer string
		if err := o.db.QueryRow(`SELECT "`+o.schema+`".join_rings($1, $2, $3::jsonb, 1000)::text`, o.id, o.inc, string(rings)).Scan(&answer); err != nil {
			o.t.Logf("%s: join_rings: %v", o.id, err)
		}
	}
}

// reporter is anything that reports partitions: a node of this release or
// of an older one.
type reporter struct {
	name   string
	values func() []int
}

func newReporter(n *node) reporter {
	return reporter{n.id, func() []int { return n.leases["r"].Values() }}
}

func oldReporter(o *oldNode) reporter { return reporter{o.id, o.values} }

// g2Watch reads every reporter without pause and records each partition
// that two reported at the same instant (read twice a round, as checker
// does: if a reports p in both of its reads and b in a read between them,
// they reported it at once).
type g2Watch struct {
	mu         sync.Mutex
	reporters  []reporter
	violations []string
	rounds     int
	stopc      chan struct{}
	done       chan struct{}
}

func watchG2(t *testing.T) *g2Watch {
	w := &g2Watch{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stopc:
				return
			default:
			}
			w.mu.Lock()
			rs := slices.Clone(w.reporters)
			w.mu.Unlock()
			first, second := make([][]int, len(rs)), make([][]int, len(rs))
			for i, r := range rs {
				first[i] = r.values()
			}
			for i, r := range rs {
				second[i] = r.values()
			}
			w.mu.Lock()
			w.rounds++
			for a := range rs {
				for b := range rs {
					between := first[b]
					if b < a {
						between = second[b]
					}
					if a == b || len(w.violations) >= 10 {
						continue
					}
					for _, p := range intersect(intersect(first[a], second[a]), between) {
						w.violations = append(w.violations, fmt.Sprintf("G2: partition %d reported by %s and %s at once", p, rs[a].name, rs[b].name))
					}
				}
			}
			w.mu.Unlock()
			time.Sleep(100 * time.Microsecond)
		}
	}()
	t.Cleanup(func() {
		close(w.stopc)
		<-w.done
		t.Logf("G2 watch: %d rounds", w.rounds)
		for _, v := range w.violations {
			t.Error(v)
		}
	})
	return w
}

func (w *g2Watch) add(r reporter) {
	w.mu.Lock()
	w.reporters = append(w.reporters, r)
	w.mu.Unlock()
}

// waitShared waits until every partition of ring r (64) is reported by
// exactly one of rs and each reports 12 or 13, or fails.
func waitShared(t *testing.T, within time.Duration, rs ...reporter) {
	t.Helper()
	describe := func() (string, bool) {
		count := map[string]int{}
		by := make([][]string, 64)
		for _, r := range rs {
			for _, p := range r.values() {
				by[p] = append(by[p], r.name)
				count[r.name]++
			}
		}
		ok := true
		for _, b := range by {
			ok = ok && len(b) == 1
		}
		lo := 64 / len(rs)
		for _, r := range rs {
			ok = ok && (count[r.name] == lo || (64%len(rs) != 0 && count[r.name] == lo+1))
		}
		return fmt.Sprint(count), ok
	}
	if !waitFor(within, func() bool { _, ok := describe(); return ok }) {
		got, _ := describe()
		t.Fatalf("ring r not shared among %d reporters within %v: %s", len(rs), within, got)
	}
}

// TestUpgradeWithLiveNodes: nodes of each release the library upgrades run
// on ring r, driven as their client drove them; the first node of this
// release migrates the schema under them and joins with a second one.
// Nothing is reported twice throughout; the old nodes keep their member
// rows and partitions and share the ring with the new ones. Then an old
// node's lease lapses: a node of a release that joins with join_rings (5
// and later) rejoins; an older one reads answers it does not know, reports
// nothing, and the partitions it held wait until it stops. When the old
// nodes stop, the new ones take the ring.
func TestUpgradeWithLiveNodes(t *testing.T) {
	for _, old := range oldSchemas {
		t.Run(old.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, 2*time.Second, 200*time.Millisecond)
			installOld(t, e, old.file, old.version)
			w := watchG2(t)
			var olds []*oldNode
			var all []reporter
			for i := range 3 {
				o := startOldNode(t, e, fmt.Sprintf("old-%d", i), old.client)
				olds = append(olds, o)
				all = append(all, oldReporter(o))
				w.add(oldReporter(o))
			}
			waitShared(t, 20*time.Second, all...)

			for _, id := range []string{"new-1", "new-2"} {
				n := e.startNode(id, "r", 64)
				all = append(all, newReporter(n))
				w.add(newReporter(n))
			}
			if v := schemaVersionOf(t, e.admin, e.schema); v != leasering.SchemaVersion {
				t.Fatalf("schema at version %d after the first new node started, want %d", v, leasering.SchemaVersion)
			}
			if old.version < 8 {
				// The upgrade to version 8 cannot tell whether its server
				// just took over from another: it starts a grace of the
				// longest TTL, the default (10 s) for rows that never said
				// theirs.
				var grace float64
				if err := e.admin.QueryRow(`SELECT extract(epoch FROM grace_until - noticed_at) FROM "` + e.schema + `".server_identity`).Scan(&grace); err != nil {
					t.Fatal(err)
				}
				if grace != 10 {
					t.Errorf("the upgrade from version %d started a grace of %vs, want 10s", old.version, grace)
				}
			}
			waitShared(t, 20*time.Second, all...)
			for _, o := range olds {
				var claimedBy sql.NullString
				if err := e.admin.QueryRow(`SELECT claimed_by FROM "`+e.schema+`".members WHERE ring = 'r' AND node_id = $1`, o.id).Scan(&claimedBy); err != nil || claimedBy.String != o.inc {
					t.Errorf("%s's member row after the upgrade: claimed by %q (%v), want %q", o.id, claimedBy.String, err, o.inc)
				}
			}

			lapsing := olds[0]
			held := lapsing.values()
			lapsing.mu.Lock()
			lapsing.lapseNext = true
			lapsing.mu.Unlock()
			if !waitFor(10*time.Second, func() bool { lapsing.mu.Lock(); defer lapsing.mu.Unlock(); return lapsing.lapsed }) {
				t.Fatal("the lapsing node's heartbeat did not run")
			}
			n := e.startNode("new-3", "r", 64) // the ring changes
			all = append(all, newReporter(n))
			w.add(newReporter(n))
			if old.client.joinRings {
				waitShared(t, 20*time.Second, all...)
			} else {
				// Its client fails every heartbeat from now on and stops
				// reporting once its last lease ends; what it held stays
				// its in the database, and nobody reports it.
				if !waitFor(10*time.Second, func() bool {
					lapsing.mu.Lock()
					unreadable := lapsing.unreadable
					lapsing.mu.Unlock()
					return unreadable >= 3 && len(lapsing.values()) == 0
				}) {
					t.Fatalf("%s still reads its answers or reports %v after its lease lapsed", lapsing.id, lapsing.values())
				}
				for _, p := range held {
					var owner string
					if err := e.admin.QueryRow(`SELECT coalesce(owner, '') FROM "`+e.schema+`".partitions WHERE ring = 'r' AND partition = $1`, p).Scan(&owner); err != nil || owner != lapsing.id {
						t.Errorf("partition %d, held by %s before its lease lapsed, is %q's (%v)", p, lapsing.id, owner, err)
					}
				}
				lapsing.stop()
				waitShared(t, 20*time.Second, all[1:]...)
			}

			for _, o := range olds {
				o.stop()
			}
			waitShared(t, 20*time.Second, all[3:]...)
		})
	}
}

// TestSQLFilesRefuseOtherVersions: each file of sql/ refuses tables at a
// version it does not apply to, with LR007 (LR002 for tables newer than
// this release, from schema.sql and functions.sql), and changes nothing.
func TestSQLFilesRefuseOtherVersions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2*time.Second, 200*time.Millisecond)
	installOld(t, e, "testdata/schema_and_functions_v7_a49746f.sql", 7)
	fresh := must(leasering.MigrationSQL(0))
	upgrade := must(leasering.MigrationSQL(7))
	cases := []struct {
		what, setup, script, state string
	}{
		{"schema.sql at version 7", "", fresh, "LR007"},
		{"functions.sql at version 7", "", leasering.FunctionsSQL(), "LR007"},
		{"migration 6 to 7 at version 7", "", must(leasering.MigrationSQL(6)), "LR007"},
		{"migration 7 to 8 at version 8", "UPDATE S.schema_version SET version = 8", upgrade, "LR007"},
		{"schema.sql at version 12", "UPDATE S.schema_version SET version = 12", fresh, "LR002"},
		{"functions.sql at version 12", "UPDATE S.schema_version SET version = 12", leasering.FunctionsSQL(), "LR002"},
	}
	for _, c := range cases {
		tx, err := e.admin.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if c.setup != "" {
			if _, err := tx.Exec(strings.ReplaceAll(c.setup, "S.", `"`+e.schema+`".`)); err != nil {
				t.Fatal(err)
			}
		}
		_, err = tx.Exec(forSchema(c.script, e.schema))
		_ = tx.Rollback()
		if got := sqlStateOf(err); got != c.state {
			t.Errorf("%s: %v, want SQLSTATE %s", c.what, err, c.state)
		}
	}
	if v := schemaVersionOf(t, e.admin, e.schema); v != 7 {
		t.Errorf("the schema is at version %d after the refusals, want 7", v)
	}
}

// TestREADMEPsqlCommands runs the README's psql commands (Applying the
// schema yourself), each on a database of its own: on none, and on the
// schema of each version upgraded. Each yields a schema at this version
// with the catalog of a new one.
func TestREADMEPsqlCommands(t *testing.T) {
	t.Parallel()
	psql, err := exec.LookPath("psql")
	if err != nil {
		skip(t, "no psql on PATH")
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| (none yet|at version (\\d+)) \\| `psql ([^`]+)` \\|$")
	admin := openPool(t, needDB(t))
	var want []string
	for i, m := range row.FindAllStringSubmatch(string(readme), -1) {
		from, _ := strconv.Atoi(m[2])
		if (i == 0) != (from == 0) {
			t.Fatalf("README: the first command must be for a new schema: %q", m[0])
		}
		db := scratchDatabase(t, admin, "")
		dsn := dsnWith(t, testDSN, "", db)
		dbAdmin := openPool(t, dsn)
		if from > 0 {
			file := ""
			for _, old := range oldSchemas {
				if old.version == from {
					file = old.file // the last release of that version
				}
			}
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("version %d: %v", from, err)
			}
			if _, err := dbAdmin.Exec(string(src)); err != nil {
				t.Fatalf("installing %s: %v", file, err)
			}
		}
		cmd := exec.Command(psql, append([]string{"-X", "-q", "-d", dsn}, strings.Fields(m[3])...)...)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", m[0], err, out)
		}
		if v := schemaVersionOf(t, dbAdmin, "leasering"); v != leasering.SchemaVersion {
			t.Errorf("%s: version %d, want %d", m[0], v, leasering.SchemaVersion)
		}
		got := catalogOf(t, dbAdmin, "leasering")
		if from == 0 {
			want = got
		} else if !slices.Equal(got, want) {
			t.Errorf("%s: the catalog differs from a new schema's", m[0])
		}
	}
	if want == nil {
		t.Fatal("the README has no psql command")
	}
	t.Logf("%d README commands applied", len(row.FindAllString(string(readme), -1)))
}
