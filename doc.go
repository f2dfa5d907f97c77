// Package leasering shares out the partitions of named consistent-hashing
// rings among many processes, with PostgreSQL as the only coordinator.
//
// Each process is a node. It holds one lease in the database, a row that
// its heartbeat renews, and joins rings with Client.Lease. A ring has a
// fixed number of partitions; every live member owns a share in proportion
// to its vnodes, exactly (floor or ceil), and Lease.Values tells the node
// which partitions are its own right now:
//
//	c, err := leasering.NewClient(db, leasering.WithNodeID("pod-a"))
//	lease, err := c.Lease("orders", 1024)
//	err = c.Start(ctx)
//	defer c.Close()
//	changes := lease.Changes() // closed when the lease ends
//	for {
//		for _, p := range lease.Values() { work(p) }
//		select { // wait for a change, the next pass, or the end
//		case <-ctx.Done():
//			return ctx.Err()
//		case _, ok := <-changes:
//			if !ok {
//				return lease.Err()
//			}
//		case <-time.After(time.Second):
//		}
//	}
//
// # Protocol
//
// Every decision is made by PL/pgSQL functions (sql/functions.sql) with the
// database clock, inside one transaction per call, so node clocks never
// matter. The heartbeat, renew_and_read, extends the node's lease, evicts
// nodes whose lease has lapsed, confirms partitions the node has released,
// tells it which rings to join (it joins them, and reads big views, in
// statements of its own, so no heartbeat creates or joins a ring; the
// heartbeat whose turn it is to evict, one at a time, evicts every lapsed
// node and rebalances their rings: for one of 100 members of a ring of
// 65,536, 0.1-0.2 s), and
// answers only for rings whose version moved since the node last looked. In steady state it is one round
// trip that writes one row (a HOT update), whatever the number of rings,
// and, while the lease on disk has half a TTL left (always, at the
// default heartbeat), its commit does not wait for the disk: the node counts its lease
// only from renewals known to be on disk, so one lost in a crash of the
// server takes nothing the node counted on. Every other change commits
// durably, whatever the session's synchronous_commit.
// Its answer includes when the earliest other lease ends; the node renews
// just after it, and only then scans the leases for lapsed ones, so the scan
// that grows with the number of nodes runs about once per lease, not per
// heartbeat, and a crashed node is taken over at once.
//
// When membership changes, rebalance assigns partitions with sticky,
// bounded-load consistent hashing: quotas are exact, only the excess of
// members over quota moves (first what is still on its way to such a
// member, so that it moves once), and a moving partition goes to the first
// member under quota clockwise from it on the vnode ring. Joins that come
// in a burst (a batch within a heartbeat of the one before, as in a
// roll-out, on a ring of at most 4,096 partitions) settle first: until a
// heartbeat after the last (at most 60 from the first), no live owner is
// told to give a partition up, and then the owners, which renew just
// after, are told at once; so a partition moves once, unless the batches
// come more than a heartbeat apart.
//
// A partition moving from a live node A to B is handed over release before
// acquire: the database marks it, A stops reporting it as soon as its
// heartbeat hears so, A confirms the release as a drain period ends (sent
// about a round trip ahead, it commits no earlier than the end), and only
// then does B own it, with its epoch (fencing token) one higher (if
// another call holds the ring's lock as A's release commits, B's next
// heartbeat hands it on; meanwhile nobody reports it). B's
// views say when the release is due, and B renews just after
// it, a heartbeat the database may hold a few milliseconds until the
// release commits, so in a join or a heal the partition goes unreported for the drain
// and a few milliseconds, not up to a heartbeat more (Stats.HandoffLooks
// counts those early heartbeats; README.md says where that bound does not
// hold: roll-outs of 100 nodes or more on a database of two cores). A
// partition A has not been told of yet moves to B at once: the database
// records the version of the last view each node was given. A dead node's
// partitions go to their new owners once its lease has lapsed in database
// time.
//
// The node that changed a ring then announces it with pg_notify; the optional
// package pqnotify (lib/pq) or pgxnotify (pgx), each a module of its own,
// listens and wakes the heartbeat at once, so changes converge in
// milliseconds. Polling remains the correctness path.
//
// # Self-fencing
//
// The client remembers the monotonic time at which it sent its last
// successful heartbeat plus the lease time the database granted, counted
// only once that renewal is known to be on the database's disk (a steady
// renewal may commit before its WAL is flushed: ondisk.go). Shortly
// before that deadline passes without a renewal, every Lease reports
// nothing, so a node cut off from the database stops working on its
// partitions before anyone else may take them. Each read checks the
// deadline against the monotonic clock itself, so it holds even while the
// scheduler holds the heartbeat goroutine up. It keeps trying, and resumes
// (or rejoins) when the database answers again; a rejoined node reports a
// ring's partitions only once a fresh view of it has come.
//
// A node that cannot hear its answers in time must not keep its lease alive
// unused. After a heartbeat times out the client only probes (extends
// nothing) until an answer comes back in time, and the database extends no
// lease for a heartbeat that reaches it more than a quarter of a lease after
// it was sent, which it judges on its own clock from the client's estimate
// (the database time of the answer, among those of the last one or two
// TTLs, that reads it latest, plus the local time elapsed since). The
// lease it grants counts from that estimate, as the client counts it, not
// from the heartbeat's arrival.
//
// # Keys, routing and fencing
//
// PartitionOf maps a key to a partition with PostgreSQL's own text hash, so
// the SQL function partition_of gives the same answer and users filter
// their rows by it. The heartbeat after a ring changes also brings the
// routing changes (the member ids and the details of new members only, and
// the owners of partitions that moved), from which Owner and Successors
// answer without a query; while the ring keeps changing, a node takes them
// at most every four heartbeats (every members/250 on a ring of more than
// 1,000 members), and the views in between carry only what it owns and
// waits for. A lease whose routing is never read (Members, Owner, OwnerOf,
// Successors) asks only for what it owns: its routing stays as its first
// view gave it until the first read, which wakes the client so that the
// next heartbeat brings the changes.
// Every change of owner raises the partition's epoch; the SQL function
// holds checks it inside the user's transaction and locks the partition's
// row until that transaction ends, so a guarded write never lands after a
// takeover. Lock holds a key within the process; its context ends when
// the partition is revoked, and the handoff waits for Unlock (up to
// WithMaxDrain).
//
// # Node ids
//
// A process restarted with the same WithNodeID takes its own partitions back
// without a rebalance; their epochs rise, and the old process, if it still
// runs, gets ErrFenced on its next heartbeat and stops for good. The new one
// reports nothing until the old one's lease would have ended, so the two
// never report a partition at the same time. Partitions it must hand on
// meanwhile are only marked released; it sends the release again as that
// hold ends, and the database hands them on then. Two replicas must never
// be given the same id on purpose.
//
// # Guarantees
//
// Each is tested; the README's Safety section names the tests and states
// the limits.
//
//   - G1: at any database instant a partition has at most one owner.
//   - G2: a node reports a partition (Values, Owns, a held Lock) only while
//     the database says it owns it.
//   - G3: while a node is healthy, every partition has an owner in the
//     database within TTL + heartbeat of any failure (after a failover or
//     a restart of the database, of the end of its grace: G9).
//   - G4: each node owns floor or ceil of its weighted share.
//   - G5: a join or leave moves the fewest partitions that restore G4.
//   - G6: every change of owner raises the partition's epoch, the fencing
//     token that holds checks.
//   - G7: no decision uses a node's wall clock.
//   - G8: the database is the source of truth: a restart loses no lease,
//     and a node that reconnects resumes or rejoins by itself.
//   - G9: a database that is not the server that kept the leases (a
//     promoted replica that lost the last renewals, a restored copy, the
//     same server restarted: its start time differs) evicts nobody and
//     takes nothing over until one TTL of its own clock after it noticed.
//
// # Where it runs
//
// Nothing resolves through the caller's search_path; application roles
// need only USAGE on the schema and EXECUTE on its functions; any default
// isolation level works (the client falls back to explicit READ COMMITTED
// transactions); the database must be UTF8 or SQL_ASCII. Start retries
// only errors a retry can cure, judged by SQLSTATE, and returns the rest at
// once wrapped in ErrPermanent with the driver's error.
//
// # Timing
//
// G3 is a promise about the database: within TTL + heartbeat of a failure
// every partition has a live owner there. A node learns of a partition it
// was given on its next heartbeat; the survivors renew just after a lease
// ends, so after a crash the new owners usually hear at once, and pqnotify
// wakes them for every other change. With a Debug logger the client logs
// every heartbeat (state, round trip, time waited for a pooled
// connection, releases carried, views applied, rings left for later and
// whether a busy lock left them, lease left, scan, next event).
//
// # Reading the code
//
// One heartbeat, from the timer to the SQL and back, in these files in
// this order:
//
//   - leasering.go: the Client, the states of a node, NewClient, Lease,
//     Start and Close.
//   - start.go: Start's part: the schema, the first heartbeat (which takes
//     the node id over), the wait until every lease has its view.
//   - loop.go: the heartbeat loop: it wakes on the clock, launches a
//     heartbeat when the schedule says so, takes the answer, publishes.
//   - schedule.go: when the next heartbeat goes and what it asks for; a
//     pure function of what the loop recorded. clock.go: the clock it reads.
//     ondisk.go: which renewals may commit without waiting for the disk,
//     and the lease counted only from those known to be on disk.
//   - protocol.go: one heartbeat on the wire: renew_and_read's arguments
//     and answer (the SQL is sql/functions.sql, embedded by migrate.go).
//   - answer.go: what an answer does: a failure, a probe, the fencing, the
//     rings that changed.
//   - lease.go: a ring's lease: the snapshot Values reads, the view it
//     comes from. drain.go: when a revoked partition may be handed on,
//     and when to look for one handed to this node.
//   - sidecalls.go: join_rings and read_views, which the loop runs beside
//     the heartbeats.
//
// Then, by concern: locks.go (Lock), changes.go (Changes), leader.go
// (Leader), routing.go (Owner, Successors), partition.go (PartitionOf),
// errors.go and pooler.go (errors, by SQLSTATE), options.go, stats.go,
// dbiface.go (DB), migrate.go (the schema).
package leasering
