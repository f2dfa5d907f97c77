package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/leasering/leasering/pqnotify"
)

// TestNotifyConvergesFaster measures join and leave convergence with a
// one-second heartbeat, first polling only, then with pqnotify waking the
// nodes. With the notifier a leave converges in a fraction of a heartbeat.
// It runs alone: it measures time.
func TestNotifyConvergesFaster(t *testing.T) {
	const q = 256
	for _, notify := range []bool{false, true} {
		t.Run(fmt.Sprintf("notify=%v", notify), func(t *testing.T) {
			e := newEnv(t, 5*time.Second, time.Second)
			start := func(id string) *node {
				n := e.startNode(id, "orders", q)
				if notify {
					nt, err := pqnotify.Listen(context.Background(), e.dsn, n.client)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { _ = nt.Close() })
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
			t.Logf("heartbeat 1s, drain 1s: join converged in %v, leave in %v", join.Round(time.Millisecond), leave.Round(time.Millisecond))
			if notify && leave > 500*time.Millisecond {
				t.Errorf("with notifications a leave took %v, want well under the 1s heartbeat", leave)
			}
		})
	}
}
