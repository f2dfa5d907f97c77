package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/leasering/leasering"
	"github.com/leasering/leasering/pgxnotify"
	"github.com/leasering/leasering/pqnotify"
)

// notifier is a *pqnotify.Notifier or a *pgxnotify.Notifier.
type notifier interface{ Close() error }

// notifierName names the notifier that goes with the test driver.
func notifierName() string {
	if testDriver == "pgx" {
		return "pgxnotify"
	}
	return "pqnotify"
}

// startNotifier starts the notifier that goes with the test driver
// (pqnotify with lib/pq, pgxnotify with pgx) for clients, or fails the
// test. It closes at the end of the test.
func startNotifier(t testing.TB, dsn string, clients ...*leasering.Client) notifier {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var (
		n   notifier
		err error
	)
	if testDriver == "pgx" {
		n, err = pgxnotify.Listen(ctx, dsn, clients...)
	} else {
		n, err = pqnotify.Listen(ctx, dsn, clients...)
	}
	if err != nil {
		t.Fatalf("%s.Listen: %v", notifierName(), err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("%s: Close: %v", notifierName(), err)
		}
	})
	return n
}

// TestNotifyConvergesFaster measures join and leave convergence with a
// one-second heartbeat, first polling only, then with the test driver's
// notifier waking the nodes. With the notifier a leave converges in a
// fraction of a heartbeat. It runs alone: it measures time.
func TestNotifyConvergesFaster(t *testing.T) {
	const q = 256
	for _, notify := range []bool{false, true} {
		t.Run(fmt.Sprintf("notify=%v", notify), func(t *testing.T) {
			e := newEnv(t, 5*time.Second, time.Second)
			start := func(id string) *node {
				n := e.startNode(id, "orders", q)
				if notify {
					startNotifier(t, e.dsn, n.client)
				}
				return n
			}
			for i := 0; i < 3; i++ {
				start(fmt.Sprintf("n%d", i))
			}
			e.waitConverged("orders", q, nil, 20*time.Second)
			began := time.Now()
			start("n3")
			e.waitConverged("orders", q, nil, 20*time.Second)
			join := time.Since(began)

			leaver := e.live()[0]
			began = time.Now()
			if err := leaver.client.Close(); err != nil {
				t.Fatal(err)
			}
			leaver.down.Store(true)
			e.waitConverged("orders", q, nil, 20*time.Second)
			leave := time.Since(began)
			how := "polling only"
			if notify {
				how = notifierName()
			}
			t.Logf("%s, driver %s, heartbeat 1s, drain 1s: join converged in %v, leave in %v", how, testDriver, join.Round(time.Millisecond), leave.Round(time.Millisecond))
			if notify && leave > 500*time.Millisecond {
				t.Errorf("with notifications a leave took %v, want well under the 1s heartbeat", leave)
			}
			// The joiner announces its join: the old owners hear at once,
			// drain 1s and confirm; the newcomer renews then.
			if notify && join > 1500*time.Millisecond {
				t.Errorf("with notifications a join took %v, want under the 1s drain and half a heartbeat", join)
			}
		})
	}
}

// TestNotifierReconnectWakesAll runs the test driver's notifier for two
// clients in two schemas (two channels) with a 30 s heartbeat, so that a
// heartbeat within seconds can only come from a wake. A notification wakes
// the client of its channel; when the listener's backend is terminated the
// notifier reconnects and wakes both, as it may have missed
// notifications; after that, notifications on either channel wake again.
func TestNotifierReconnectWakesAll(t *testing.T) {
	const heartbeat = 30 * time.Second
	envs := []*env{newEnv(t, time.Minute, heartbeat), newEnv(t, time.Minute, heartbeat)}
	var nodes []*node
	for i, e := range envs {
		nodes = append(nodes, e.startNode(fmt.Sprintf("n%d", i), "orders", 8))
		e.waitConverged("orders", 8, nil, 20*time.Second)
	}
	began := time.Now()
	app := "lrt_notify_" + randomSuffix()
	startNotifier(t, withParam(envs[0].dsn, "application_name", app), nodes[0].client, nodes[1].client)
	admin := envs[0].admin

	// wake runs action and waits until each of nodes has renewed since.
	wake := func(what string, action func(), nodes ...*node) {
		t.Helper()
		// Wait until no heartbeat has been sent for a while (the joins'
		// announcements may still wake the nodes), so that none is in
		// flight and each renewal counted below began after action.
		if !waitFor(10*time.Second, func() bool {
			for _, n := range nodes {
				if n.client.Stats().LastRenewAge < 300*time.Millisecond {
					return false
				}
			}
			return true
		}) {
			t.Fatalf("%s: the nodes kept renewing", what)
		}
		before := make([]int64, len(nodes))
		for i, n := range nodes {
			before[i] = n.client.Stats().Renewals
		}
		action()
		for i, n := range nodes {
			if !waitFor(5*time.Second, func() bool { return n.client.Stats().Renewals > before[i] }) {
				t.Fatalf("%s: %s was not woken within 5s (%d renewals before, %d now)", what, n.id, before[i], n.client.Stats().Renewals)
			}
		}
	}
	notify := func(n *node) func() {
		return func() {
			if _, err := admin.Exec(`SELECT pg_notify($1, 'orders')`, n.client.NotifyChannel()); err != nil {
				t.Fatal(err)
			}
		}
	}
	terminate := func() {
		var killed int
		// FILTER, not a condition in WHERE: it runs on the rows WHERE kept.
		err := admin.QueryRow(`SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
			FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&killed)
		if err != nil {
			t.Fatal(err)
		}
		if killed != 1 {
			t.Fatalf("terminated %d backends named %s, want the listener's one", killed, app)
		}
	}

	for _, n := range nodes {
		wake("notification on "+n.client.NotifyChannel(), notify(n), n)
	}
	wake("reconnect", terminate, nodes...)
	for _, n := range nodes {
		wake("notification after the reconnect on "+n.client.NotifyChannel(), notify(n), n)
	}
	// Every heartbeat counted above was a wake: the next scheduled one
	// is not due yet.
	if d := time.Since(began); d >= heartbeat {
		t.Fatalf("the test took %v, not under the %v heartbeat: renewals may have been scheduled ones", d, heartbeat)
	}
}
