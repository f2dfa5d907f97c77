package leasering_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"net/http"
	"os"
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

// Work only on the partitions this node owns, in a busy loop.
func ExampleLease_Values() {
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
	ctx := context.Background()
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	for ctx.Err() == nil {
		for _, p := range orders.Values() {
			// Your own rows, filtered in SQL by the same hash:
			//   SELECT ... FROM orders WHERE leasering.partition_of(id::text, 1024) = $1
			_ = p
		}
		time.Sleep(100 * time.Millisecond)
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
	ctx := context.Background()
	if err := c.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Close() // resigns: another candidate leads on its next heartbeat

	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for range tick.C {
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
