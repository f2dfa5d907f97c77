package leasering_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"time"

	"github.com/leasering/leasering"
	_ "github.com/lib/pq"
)

func ExamplePartitionOf() {
	// The same number as SELECT leasering.partition_of('order-42', 1024).
	fmt.Println(leasering.PartitionOf("order-42", 1024))
	fmt.Println(leasering.PartitionOf("", 7))
	// Output:
	// 175
	// 4
}

// Bad options are refused by NewClient, before any I/O, with an error that
// names the value and what is allowed.
func ExampleNewClient() {
	db, err := sql.Open("postgres", os.Getenv("DATABASE_URL")) // connects on first use only
	if err != nil {
		log.Fatal(err)
	}
	_, err = leasering.NewClient(db, leasering.WithTTL(50*time.Millisecond))
	fmt.Println(errors.Is(err, leasering.ErrInvalidArgument))
	fmt.Println(err)
	_, err = leasering.NewClient(db, leasering.WithSchema("Orders"))
	fmt.Println(err)
	// Output:
	// true
	// leasering: invalid argument: TTL 50ms is below the minimum 100ms
	// leasering: invalid argument: schema name "Orders": want lower-case letters, digits and '_', not starting with a digit, 1 to 53 characters
}

// A Lease maps keys to partitions at once; it reports partitions only once
// the client has started and the database has given it some.
func ExampleLease_PartitionOf() {
	db, err := sql.Open("postgres", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	c, err := leasering.NewClient(db)
	if err != nil {
		log.Fatal(err)
	}
	orders, err := c.Lease("orders", 1024) // no I/O
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(orders.PartitionOf("order-42"), orders.OwnsKey("order-42"), len(orders.Values()))
	// Output:
	// 175 false 0
}

// Keys SQL text cannot hold have a partition in Go only.
func ExampleValidSQLKey() {
	fmt.Println(leasering.ValidSQLKey("order-42"))
	fmt.Println(leasering.ValidSQLKey("order\x0042"))
	fmt.Println(leasering.ValidSQLKey("\xff"))
	// Output:
	// true
	// false
	// false
}

// A probe endpoint: 503 with the reason until the client holds a lease.
func ExampleHealthHandler() {
	db, err := sql.Open("postgres", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	c, err := leasering.NewClient(db)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux() // your server's
	mux.Handle("/healthz", leasering.HealthHandler(c))

	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	fmt.Print(rec.Code, " ", rec.Body.String())
	// Output:
	// 503 leasering: client not started
}

// Work only on the partitions this node owns: a pass over them, then a
// wait for a change of assignment, the next pass or the end, so the loop
// costs nothing while Values is empty. This one runs for a minute; a
// service would take its context from signal.NotifyContext.
func ExampleLease_Values() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := sql.Open("postgres", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	c, err := leasering.NewClient(db, leasering.WithNodeID(os.Getenv("POD_NAME")))
	if err != nil {
		log.Fatal(err)
	}
	orders, err := c.Lease("orders", 1024)
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Start(ctx); err != nil { // retries until ctx ends if no database answers
		log.Fatal(err)
	}
	defer c.Close()
	changes := orders.Changes()
	for {
		for _, p := range orders.Values() {
			// Your own rows, filtered in SQL by the same hash:
			//   SELECT ... FROM orders WHERE leasering.partition_of(id::text, 1024) = $1
			_ = p
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-changes:
			if !ok {
				log.Printf("lease ended: %v", orders.Err())
				return
			}
		case <-time.After(time.Second):
		}
	}
}

// Fence a write with the partition's epoch: after the partition moves on,
// the UPDATE changes nothing, even from a node that has not noticed yet.
func ExampleLease_Epoch() {
	var db *sql.DB              // your pool
	var orders *leasering.Lease // from Client.Lease
	id := "42"
	p := orders.PartitionOf(id)
	epoch, ok := orders.Epoch(p)
	if !ok {
		return // not ours
	}
	res, err := db.Exec(`UPDATE orders SET state = 'shipped'
		WHERE id = $1 AND leasering.holds('orders', $2, $3)`, id, p, epoch)
	if err != nil {
		log.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		log.Printf("partition %d moved on; the write was refused", p)
	}
}

// Send a request to the node that owns its key, with fallbacks.
func ExampleLease_Successors() {
	var orders *leasering.Lease // from Client.Lease, on nodes started WithMetadata(address)
	for _, m := range orders.Successors("customer-7", 3) {
		resp, err := http.Get("http://" + m.Metadata + "/customers/7")
		if err == nil {
			resp.Body.Close()
			break
		}
	}
}

// Hold a key while working on it; the context ends if the partition moves.
func ExampleLease_Lock() {
	var orders *leasering.Lease // from Client.Lease
	ctx, err := orders.Lock(context.Background(), "order-42")
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Unlock("order-42")
	select {
	case <-ctx.Done():
		log.Printf("stopped: %v", context.Cause(ctx)) // leasering.ErrRevoked, ErrLeaseLost, ErrClosed
	case <-time.After(time.Second): // the work
	}
}

// React to assignments and revocations.
func ExampleLease_Changes() {
	var orders *leasering.Lease // from Client.Lease
	for ch := range orders.Changes() {
		for _, p := range ch.Assigned {
			log.Printf("start consumer for partition %d", p)
		}
		for _, p := range ch.Revoked {
			log.Printf("stop consumer for partition %d", p)
		}
	}
	log.Print("lease ended: stop every consumer")
}

// A program that needs one ring.
func ExampleWithRing() {
	db, err := sql.Open("postgres", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	err = leasering.WithRing(context.Background(), db, "jobs", 64, func(ctx context.Context, jobs *leasering.Lease) error {
		if err := jobs.Wait(ctx); err != nil {
			return err
		}
		log.Printf("running jobs of partitions %v", jobs.Values())
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}

// A scheduler that runs its job only while leader, and fences the job's
// writes with the term, so a deposed leader's late write changes nothing.
func ExampleClient_Leader() {
	db, err := sql.Open("postgres", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	c, err := leasering.NewClient(db)
	if err != nil {
		log.Fatal(err)
	}
	sched, err := c.Leader("scheduler")
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt) // until Ctrl-C
	defer stop()
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Close() // resigns: another candidate leads on its next heartbeat

	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		term := sched.Term()
		if !sched.IsLeader() {
			continue
		}
		_, err := db.ExecContext(ctx, `UPDATE jobs SET last_run = now()
			WHERE name = 'nightly' AND leasering.holds('scheduler', 0, $1)`, term)
		if err != nil {
			log.Print(err)
		}
	}
}

// Leadership events, like a Redis elector's promoted/demoted/errored channels.
func ExampleLeader_Events() {
	var sched *leasering.Leader // from Client.Leader
	for ev := range sched.Events() {
		switch ev.Kind {
		case leasering.Promoted:
			log.Printf("leading, term %d", ev.Term)
		case leasering.Demoted:
			log.Printf("stopped leading term %d", ev.Term)
		case leasering.Errored:
			log.Printf("leadership lost: %v", ev.Err)
		}
	}
}
