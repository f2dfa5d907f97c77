-- leasering: the protocol, schema version 21.
--
-- The functions. The tables they work on are in schema.sql: a new schema
-- gets schema.sql, a schema at an older version the files of migrations/
-- above its version, and then this file, in one transaction (the Go client
-- sends them as one statement; with psql, `psql -1 -f` with every file).
-- Applying this file again changes nothing. Read it top down: this page,
-- the heartbeat (renew_and_read) and its phases, the other entry points,
-- then the helpers.
--
-- Every object is qualified with the schema and every function pins its
-- search_path to it (SET search_path = leasering, pg_temp; partition_of and
-- set_lock_wait instead write every name with its schema, to be inlined),
-- so the caller's search_path never matters; the Go client writes its own schema name, quoted, in place of
-- the default one. While this file runs the path is pg_catalog alone (the
-- first statement below). Every time is the database's: now() (the start of
-- the transaction, conservative for expiry) or clock_timestamp() where a
-- duration is handed back to a client. A SQL function with a SET clause
-- is never inlined, and PostgreSQL (15 to 17) plans its body again on every
-- call: that made ring_view 3 times dearer (0.46 ms against 0.15 ms for a
-- view of a ring of 64 with 5 members). So every function here is plpgsql,
-- or SQL without SET (inlined), except holds and evict_expired, called once
-- a statement.
--
-- STATES OF A NODE: its row in nodes, as one incarnation of the id sees it.
--
--   absent    no row.
--   live      expires_at > now() and not holding: it owns what the
--             partitions say it owns, and its heartbeats extend the lease.
--   holding   live, hold_end(hold_until) > now(): a new incarnation took
--             the id over, and the older one may use the id's partitions
--             until its lease would have ended (hold_until), or, if this
--             server is not the one that set the hold, until the end of
--             its grace (G9: a clock step between the two servers moves
--             hold_until, a time of the old server's clock). The new one
--             reports nothing until then (the hold_ms of its heartbeats),
--             its releases are only marked, and its leave hands nothing
--             on. Its first heartbeat after the hold's end on this server
--             writes hold_until = '-infinity' (no hold: a steady heartbeat
--             never asks about the server), once what it released during
--             the hold has been handed on.
--   lapsed    expires_at <= now(), not yet evicted: what it owns is void.
--   fenced    the row names another incarnation: this one must stop.
--
--   absent  -> live     its first heartbeat (take_lease)
--   live    -> live     a heartbeat (renew_and_read)
--   live    -> lapsed   time: no heartbeat extended the lease in time
--   lapsed  -> live     a heartbeat of the same incarnation ('rejoined', take_lease)
--   live    -> holding  a heartbeat of another incarnation with p_claim
--                       (take_lease): it holds until the older lease's end,
--                       with a lease that lasts at least as long, and the
--                       older incarnation is fenced from then on
--   lapsed  -> live     the same, when the older lease has ended already
--   holding -> live     time: hold_end(hold_until) passes
--   lapsed  -> absent   eviction, by the scanning heartbeat whose turn it is (scan_and_evict)
--   live    -> absent   leave of every ring (holding -> lapsed at its hold's end)
--
-- A member row of a live node is claimed (claimed_by is the node's
-- incarnation) or to reclaim (anything else: after a rejoin or takeover).
-- For a ring to reclaim the heartbeat answers 'join' and reports nothing;
-- join_rings reclaims it (claim_vnodes: epochs + 1, so that the fencing
-- tokens handed out before die).
--
-- A GRACE (G9) suspends the takeovers above: on a server other than the
-- one server_identity records (a promoted replica, a restored copy, a
-- restart), the first decision that a lease's end would settle starts one
-- (failover_grace) of the longest TTL on the nodes' rows. Until its end no
-- node goes lapsed -> absent, rebalance counts every member live and told
-- of its partitions, and a new incarnation holds at least that long. After
-- it, each ring's first rebalance under the new identity records the
-- ring's version (told_through): owners count as told of what they held
-- then, since the new server may lack their last readings of a view.
--
-- STATES OF A PARTITION: its row in partitions (schema.sql's checks admit
-- these four and nothing else).
--
--   free      owner NULL
--   owned     owner set, next_owner NULL
--   revoking  owner and next_owner set: the owner has been told to stop
--   released  revoking, and released: the owner confirmed, and the
--             ring's lock was busy, or the owner holds
--
--   free     -> owned     rebalance: to a member under quota, epoch + 1
--   owned    -> owned     rebalance, straight to another member when the
--                         owner is dead or was never told it has it (granted
--                         after its last view), epoch + 1; claim_vnodes, on
--                         a reclaim: the same owner, epoch + 1
--   owned    -> revoking  rebalance, when a live owner that was told must
--                         give it up, and no burst of joins is settling
--                         (settle_joins); else the first heartbeat after
--                         the burst settles (settled)
--   revoking -> released  the owner confirms (confirm_releases)
--   released -> owned     hand_on_released, under the ring's lock:
--                         next_owner's, epoch + 1; by the confirming call
--                         itself if the lock is free (so revoking -> owned
--                         in one commit), else by the pending owner's next
--                         heartbeat or look (ring_work), or the next
--                         scanning heartbeat; for an owner that holds,
--                         once the hold is over, by the scanning heartbeat
--                         whose turn it is to evict
--   revoking -> owned     rebalance calls the move off
--   revoking, released -> owned   rebalance, when the owner is dead, epoch + 1
--   any      -> free      rebalance, when the ring has no live member
--   Rebalance may also point revoking and released at another next_owner.
--
-- THE HANDOFF TIMELINE. A revoking partition has no reporter from the
-- moment its owner hears (its view lists it as revoking) until its pending
-- owner hears it is its own. The owner drains it for its drain, then
-- confirms: it sends the release a little ahead, with release_after_ms, the
-- time its drain has left as it sends; the heartbeat marks the partitions
-- released and hands them on (or, if the ring's lock is busy, leaves that
-- to the pending owner's next heartbeat: confirm_releases), makes its
-- answer, and then waits (ring_work) until that long after
-- the statement began, which is never before the drain's end, so the
-- change commits at the drain's end rather than a round trip after it.
-- The pending owner's views list when what it waits for is due
-- (incoming, see ring_view): release_due, set when the owner is told
-- (give_view: the owner's drain on from then), or before that an estimate
-- (the owner's next heartbeat plus its drain, from its lease row and the
-- heartbeat and drain its member row recorded at its join). The pending
-- owner renews just after that time (a look, which may wait here for the
-- release to commit: await_ms, and past it while the owner's releasing call
-- holds release_key's lock; await_release) and, while it waits, asks
-- again with each heartbeat (a ring request with incoming: ring_work
-- answers the dues alone when nothing else changed).
--
-- LOCK ORDER. Every transaction takes its row locks in this order, so no
-- two wait for each other:
--
--   0. the migration's advisory lock (migrations only; then table locks)
--   1. nodes rows: the caller's own first (the heartbeat's UPDATE and
--      take_lease, FOR NO KEY UPDATE, which do not wait for the FOR KEY
--      SHARE of join_rings and read_views; leave FOR UPDATE), then, by an
--      evictor, lapsed nodes' rows. One heartbeat evicts at a time: it
--      holds an advisory lock that one other heartbeat may wait for,
--      holding nothing but its own row and the waiter's advisory lock,
--      which the others only try (scan_and_evict)
--   2. joins rows: a node's own, by its join_rings (record_join), which
--      then waits for the ring; any other only FOR UPDATE SKIP LOCKED, by
--      join_waiting under the ring's lock
--   3. rings rows, FOR UPDATE, in name order: every change to a ring's
--      members or partitions holds its ring's row
--   4. members rows: a node's own, by a transaction that holds its node's
--      row or evicts it; any other only with SKIP LOCKED (FOR SHARE, or
--      FOR UPDATE by join_waiting, which holds that node's row)
--   5. partitions rows, under their ring's lock; holds() share-locks one in
--      a user's transaction
--
-- The exceptions, each safe because the late lock is never waited for or
-- its wait gives up on its own:
--   - confirm_releases, when a try of its ring's lock (NOWAIT) fails,
--     marks its node's partitions rows released without it, skipping
--     those another transaction holds;
--   - a call that releases partitions takes release_key's advisory lock,
--     exclusively, at any step, waiting up to 250 ms (a quarter of its
--     TTL at most) and going on without it if it does not come
--     (hold_release_key): a look asks for it
--     shared, holding no other lock, and lets it go at once
--     (release_awaited), so a look's wait closes no cycle;
--   - rebalance, under a ring's lock, share-locks nodes and other nodes'
--     member rows with SKIP LOCKED: it never waits for them; join_waiting
--     likewise locks the nodes, joins rows and member rows of the joins it
--     makes;
--   - an evictor that evicted nothing waits (FOR NO KEY UPDATE) for a
--     node row a rejoin, a rebalance or a leave holds, only while
--     it holds no ring, and undoes that wait if it then evicts nothing; it
--     does not wait for the KEY SHARE of join_rings or read_views;
--   - leave deletes its member rows before it takes its rings: nobody who
--     holds a ring waits for a member row (4);
--   - a heartbeat goes through rings in name order once per phase (evict
--     and hand on, then ring work), so its ring work may wait for a name
--     before one it took while evicting. That wait is a subtransaction's,
--     bounded by set_lock_wait, and undone when it gives up: it can end a
--     cycle, never keep one.
--   - give_view, which holds its node's member row, sets release_due on
--     the partitions it tells the node to give up without their ring's
--     lock, and only on rows it gets without waiting (SKIP LOCKED): a row
--     under a user's holds() or a concurrent change keeps its due an
--     estimate. A rebalance or confirmation of that ring may then wait
--     for those rows until the heartbeat commits; it holds rings up to
--     this one in name order, and the heartbeat waits only for rings after
--     it, so a cycle needs a transaction that took a later ring while
--     evicting (the exception above), and that wait's bound ends it.
--     (Taking the ring's lock here, even
--     without waiting, left the due an estimate whenever another owner
--     was confirming in the same ring: the new owner then looked a
--     heartbeat late.)
--   - failover_grace writes server_identity's one row at any of these
--     steps, once per server (the first decision on a new one), and never
--     waits for it (NOWAIT: who finds it busy goes by a grace that starts
--     then); rebalance then writes its ring's told_through, under the
--     ring's lock.
-- Every wait of a heartbeat is bounded by set_lock_wait (the lock-wait
-- rule); every change to a ring follows next_version (the stamp contract).
--
-- Privileges: the role that applies this file owns the schema. Application
-- roles need USAGE on the schema and EXECUTE on its functions, nothing on
-- its tables: the entry points (renew_and_read, join_rings, read_views,
-- leave, holds) are SECURITY DEFINER with a pinned search_path, so they act
-- as the owner. The other functions are the owner's alone, except
-- partition_of.
--
-- Errors raised on purpose carry SQLSTATEs of class LR, which the Go
-- client maps to its sentinel errors:
--   LR001 the ring exists with another size
--   LR002 the schema in the database is newer than this file
--   LR003 the schema is already at this version (the Go migration guard)
--   LR004 the node id is being started by two processes at once
--   LR005 the transaction is not READ COMMITTED
--   LR006 the server encoding is neither UTF8 nor SQL_ASCII
--   LR007 the tables are at another version than the file applied expects
--   LR008 (never leaves scan_and_evict) a wait for a lapsed row another
--         transaction held evicted nothing: undo it, so that its row locks go
--   LR009 (never leaves release_awaited) lets a release lock go at once
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

-- partition_of hashes a key's bytes in the server encoding, Go its UTF-8
-- bytes: they agree only where the two are the same.
DO $$
BEGIN
    IF pg_catalog.current_setting('server_encoding') NOT IN ('UTF8', 'SQL_ASCII') THEN
        RAISE EXCEPTION 'database encoding is %; leasering needs UTF8 (or SQL_ASCII)',
                        pg_catalog.current_setting('server_encoding')
              USING ERRCODE = 'LR006',
                    HINT = 'partition_of must hash the same bytes as Go''s PartitionOf: use a database created with ENCODING ''UTF8''.';
    END IF;
END $$;

DO $$
BEGIN
    IF pg_catalog.to_regclass('leasering.schema_version') IS NULL THEN
        RAISE EXCEPTION 'the schema has no tables: apply sql/schema.sql first'
              USING ERRCODE = 'LR007';
    ELSIF (SELECT version FROM leasering.schema_version) > 21 THEN
        RAISE EXCEPTION 'schema version % in the database is newer than this file (21)',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR002';
    ELSIF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 21 THEN
        RAISE EXCEPTION 'the tables are at version %, not 21: apply the files of sql/migrations above that version first',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

-- ---------------------------------------------------------------------
-- The heartbeat
-- ---------------------------------------------------------------------

-- renew_and_read: the heartbeat, one round trip for all of a node's rings.
--
-- p_rings is a JSON array of {ring, size, vnodes, version, released,
-- release_after_ms, incoming, await_ms, await_release_ms, later_if_busy,
-- own_only, own_view, owner_ids, settle_wake}:
-- version is the ring version the node last saw (0: none yet), released lists partitions it
-- was told to give up and has stopped using or will have by
-- release_after_ms (0 to 1,000) after the call, incoming says it waits for partitions handed to
-- it, await_ms, on a look, how long the call may wait for such a ring to
-- move before it renews, and await_release_ms how long in all while the
-- release it waits for is on its way (see the handoff timeline above, and
-- await_release), and later_if_busy that the client backs off from
-- 'later' answers that say busy (ring_work; a client before version 12
-- gets NULL instead, as it did). own_only (version 15): answer a view only
-- if something the node owns or waits for changed (ring_answer). own_view
-- (version 17): a view, if one is answered, leaves the routing out (the
-- members and the owners that changed; see ring_view) and says own_view:
-- the client's routing stays at the version of its last whole view, which
-- it sends as version when it next wants the routing. owner_ids (version
-- 18): a view's routing names each changed partition's owner by node id
-- (owner_ids) rather than by index into the members (owners; see
-- ring_view). settle_wake (version 20): while a burst of joins settles
-- (settle_joins) in a ring where the node owns partitions, answer status
-- 'settling' with settles_ms, how long it has left: the client renews just
-- after, and that heartbeat tells it what to give up (settled).
--
-- For each ring whose version moved it answers the node's view; for a ring
-- the node is not a member of (or with other vnodes, or to reclaim), status
-- 'join': the client joins it with join_rings, a statement of its own; for
-- a ring whose view is big, status 'view': the client reads it with
-- read_views. No heartbeat does a ring's heavy work. Ring work (releases,
-- views) after the first ring stops once the call has run a tenth of a TTL
-- (at most 100 ms): the rest answer 'later' and go with the next heartbeat,
-- which the client sends at once.
--
-- Steady state: one HOT update of the node's row (its lease end, and the
-- TTL, which a grace of G9 outlasts: see failover_grace) and one ring
-- version read per ring; changes is NULL.
--
-- p_async (version 19): the client may take this renewal's commit without
-- its WAL on disk. Only a renewal that wrote nothing but the node's lease
-- end (status 'ok', no claim, no hold, no eviction, no ring answered or
-- worked on) then commits with synchronous_commit off: a crash may lose
-- it, and only the node's own lease end goes back, to what its last
-- commit on disk said. Every other call commits durably, with
-- synchronous_commit at least 'local' whatever the session says, since
-- others act on what it writes (commit_durably). The answer says whether
-- the lease it gives is on disk as it arrives (durable: a renewal that
-- committed durably; not an async one, nor a late one, which may write
-- nothing and so wait for no flush), and where the WAL stood: wal_insert,
-- its insert position after the renewal's write, below which lies every
-- commit that ended before this call began; and wal_flush, the position
-- below which it is on disk as the call answers. The client counts its
-- lease from the last renewal known to be on disk (ondisk.go), so a
-- renewal lost in a crash never lets it report past the lease end the
-- database kept. Without the wait for the flush, 16 clients renewing at
-- once made twice the renewals a second (BENCHMARKS.md).
--
-- With p_scan the call also scans the nodes for
-- the earliest other lease end or hold end (next_expiry_ms; NULL without
-- p_scan or without another node): the client asks for it only once the
-- last one it was told of has passed, that is about once per lease rather
-- than every heartbeat, because the scan is the one cost that grows with
-- the number of nodes.
--
-- A heartbeat that extends nothing only says how long the lease has left
-- ('ok', or 'lapsed' when there is none): a node that cannot hear its
-- answers in time must let its lease lapse so that others take its
-- partitions, rather than keep them, unused, alive. That is a probe
-- (p_ttl_ms = 0), which a client sends after a heartbeat went unanswered
-- (it may have extended the lease unbeknown to the client), and any
-- heartbeat that arrives late: p_sent_at is when the client sent it, on
-- this database's clock as the client estimates it from its answers (the
-- estimate errs late by an answer's trip back: the client keeps the answer
-- of the last one or two TTLs that errs least). A heartbeat older
-- than a quarter of a lease extends nothing: its answer, about as slow to
-- come back, could reach the client after it gave up (at half a lease).
-- A lease counts from when its heartbeat was sent (p_sent_at, at most
-- now()), as the client counts it, not from its arrival: counted from the
-- arrival, a heartbeat delayed on the way from a node that failed just
-- after sending it kept that node's partitions in the database that much
-- longer than the client could use them, past TTL + heartbeat of the
-- failure (G3).
--
-- node_status is 'ok', 'rejoined' (the lease had lapsed or the row was gone:
-- the node starts afresh, keeping what it still owns under new epochs) or
-- 'fenced' (another incarnation took the node id over: this one must stop).
-- With p_claim (a process starting) the node id is taken over from any older
-- incarnation, which holds it (hold_ms: report nothing for this long).
--
-- next_expiry_ms is NULL, not 0, when there is no other node: 0 would say
-- "another lease ends now", and a lone node would renew 20 times a
-- heartbeat.
--
-- The transaction must be READ COMMITTED: each statement sees what
-- committed before it began, and a row lock waited for gives the row as it
-- is now. Under another level the steps would fail with serialization
-- errors: the call refuses, and the Go client runs its calls in explicit
-- READ COMMITTED transactions from then on.
--
-- Phases: late_heartbeat (a probe or a late heartbeat), the renewal itself
-- or take_lease (absent, lapsed or another incarnation's), settle_hold
-- (after a takeover of the id), scan_and_evict
-- (p_scan), then ring_work for each ring that needs work; one statement
-- finds those, so a steady heartbeat costs the same for a thousand rings as
-- for one (a ring that changes after it ran is answered by the next
-- heartbeat). The steady heartbeat calls no phase and checks the isolation
-- level inline: each call of a function with its own search_path costs
-- microseconds.
CREATE OR REPLACE FUNCTION leasering.renew_and_read(
    p_node text, p_incarnation text, p_ttl_ms integer, p_metadata text, p_rings jsonb, p_claim boolean,
    p_scan boolean, p_sent_at timestamptz, p_async boolean DEFAULT false)
RETURNS TABLE (lease_ms bigint, hold_ms bigint, next_expiry_ms bigint, node_status text, changes jsonb,
               changed_rings jsonb, db_time timestamptz, wal_insert bigint, wal_flush bigint, durable boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = leasering, pg_temp
AS $$
DECLARE
    ttl         interval := p_ttl_ms * interval '1 millisecond';
    lease_from  timestamptz := least(now(), coalesce(p_sent_at, now()));  -- a granted lease counts from here
    ring_budget timestamptz;  -- no ring work starts after this but the first (set after a look's wait)
    me          nodes;
    st          text := CASE WHEN p_claim THEN 'ok' ELSE 'rejoined' END;  -- unless renewed
    next_event  timestamptz;  -- the earliest other lease or hold end (p_scan)
    hold        timestamptz;  -- this node's hold's end (hold_end)
    worked      integer := 0;  -- rings whose releases or view this call took on
    r           record;
    answer      jsonb;
    outs        jsonb[] := '{}';  -- array_append grows it in place; jsonb || would copy it each time
    waited      integer;  -- a look's wait for a release, in milliseconds (await_release)
    wal_from    bigint;   -- the WAL's insert position after the renewal's write (p_async)
    async       boolean;  -- this commit does not wait for its WAL to reach disk
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'leasering runs in READ COMMITTED transactions, not %', current_setting('transaction_isolation')
              USING ERRCODE = 'LR005';
    END IF;
    PERFORM set_lock_wait(p_ttl_ms, 20);
    IF p_ttl_ms = 0 OR clock_timestamp() - p_sent_at > ttl / 4 THEN
        -- Extending nothing, it may write nothing, and a commit that wrote
        -- nothing waits for no flush: the lease it reads is on disk only
        -- once a later answer says so (durable false).
        PERFORM commit_durably();
        RETURN QUERY SELECT l.*,  -- NULL on a standby, where a probe still reads the lease
                            CASE WHEN NOT pg_is_in_recovery() THEN (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint END,
                            CASE WHEN NOT pg_is_in_recovery() THEN (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint END, false
                       FROM late_heartbeat(p_node, p_incarnation, p_ttl_ms, p_rings,
                                           clock_timestamp() + least(p_ttl_ms / 10, 100) * interval '1 millisecond') AS l;
        RETURN;
    END IF;
    IF p_rings @? '$[*].await_ms' THEN  -- a look: only while it holds nothing
        waited := await_release(p_node, p_incarnation, p_ttl_ms, p_rings, coalesce(p_sent_at, now()) + ttl / 8);
    END IF;
    ring_budget := clock_timestamp() + least(p_ttl_ms / 10, 100) * interval '1 millisecond';
    -- greatest: a stale attempt (sent earlier, landing after a newer one)
    -- never shortens the lease the newer one granted. ttl_ms: for G9.
    UPDATE nodes SET expires_at = greatest(expires_at, lease_from + ttl), ttl_ms = p_ttl_ms
     WHERE node_id = p_node AND incarnation = p_incarnation AND expires_at > now()
    RETURNING * INTO me;
    -- Read here, not first: on a standby the write above fails first, as
    -- it always did (25006), where this read would fail with another code.
    wal_from := pg_current_wal_insert_lsn() - '0/0'::pg_lsn;
    IF FOUND THEN
        st := 'ok';
    ELSE
        me := take_lease(p_node, p_incarnation, p_metadata, p_claim, lease_from + ttl, p_ttl_ms);
        IF me.incarnation <> p_incarnation THEN
            PERFORM commit_durably();
            RETURN QUERY SELECT 0::bigint, 0::bigint, NULL::bigint, 'fenced'::text, jsonb_build_object('incarnation', me.incarnation), NULL::jsonb, clock_timestamp(),
                                NULL::bigint, NULL::bigint, false;
            RETURN;
        END IF;
    END IF;
    hold := me.hold_until;
    IF hold > '-infinity' THEN  -- only after a takeover of the id
        hold := settle_hold(p_node, hold);
    END IF;
    IF p_scan THEN
        next_event := scan_and_evict(p_node, p_ttl_ms);
    END IF;
    -- The rings that need work, in name order, found by one statement; and,
    -- during a burst of joins, those where the node may hear when it
    -- settles (settle_until, with settle_wake), which need none otherwise.
    FOR r IN
        SELECT *
          FROM (SELECT x.ring, x.size, x.vnodes, coalesce(x.version, 0) AS known, coalesce(x.released, '{}') AS released,
                       coalesce(x.release_after_ms, 0) AS release_after_ms,
                       coalesce(x.incoming, false) AS incoming, x.await_ms, coalesce(x.later_if_busy, false) AS later_if_busy,
                       coalesce(x.own_only, false) AS own_only, coalesce(x.own_view, false) AS own_view,
                       coalesce(x.owner_ids, false) AS owner_ids,
                       g.size AS cur_size, CASE WHEN x.settle_wake THEN g.settle_until END AS settle_until,
                       -- every term non-NULL: the client leaves out what is empty
                       (g.name IS NULL OR g.size <> x.size OR g.version <> coalesce(x.version, 0)
                        OR coalesce(cardinality(x.released), 0) > 0 OR coalesce(x.incoming, false)
                        OR coalesce(x.await_ms, 0) > 0
                        OR coalesce(g.settle_until <= now(), false)) AS work  -- settled: rebalance (ring_work)
                  FROM jsonb_to_recordset(p_rings) AS x (ring text, size integer, vnodes integer, version bigint, released integer[],
                                                         release_after_ms integer, incoming boolean, await_ms integer,
                                                         later_if_busy boolean, own_only boolean, own_view boolean,
                                                         owner_ids boolean, settle_wake boolean)
                  LEFT JOIN rings g ON g.name = x.ring) AS w
         WHERE w.work OR w.settle_until IS NOT NULL
         ORDER BY w.ring
    LOOP
        PERFORM release_at(r.release_after_ms);  -- refuses a wait out of bounds before anything is done
        IF NOT r.work THEN
            answer := NULL;
        ELSIF r.cur_size IS NULL THEN
            answer := jsonb_build_object('ring', r.ring, 'status', 'join');
        ELSIF r.cur_size <> r.size AND p_claim THEN  -- a starting process: refuse the whole call, write nothing
            RAISE EXCEPTION 'ring % has size %, not %', r.ring, r.cur_size, r.size USING ERRCODE = 'LR001';
        ELSIF r.cur_size <> r.size THEN
            answer := jsonb_build_object('ring', r.ring, 'status', 'size_mismatch', 'size', r.cur_size);
        ELSIF worked > 0 AND clock_timestamp() > ring_budget THEN
            answer := jsonb_build_object('ring', r.ring, 'status', 'later');  -- with the next heartbeat
        ELSE
            worked := worked + 1;
            answer := ring_work(p_node, p_incarnation, p_ttl_ms, r.ring, r.size, r.vnodes, r.known, r.released,
                                release_at(r.release_after_ms), r.incoming, r.own_only, r.own_view, r.owner_ids);
            IF (answer ->> 'busy')::boolean AND NOT r.later_if_busy THEN
                answer := NULL;  -- a client before version 12: it would ask again at once, without backing off
            END IF;
        END IF;
        IF r.await_ms > 0 THEN  -- the wait is not round-trip time: the client leaves it out of its measures
            answer := coalesce(answer, jsonb_build_object('ring', r.ring, 'status', 'incoming') || incoming_dues(r.ring, p_node))
                      || jsonb_build_object('waited_ms', waited);
        END IF;
        IF answer IS NOT NULL THEN
            outs := array_append(outs, answer);
        END IF;
        -- A burst of joins settles (settle_joins) and this node owns
        -- partitions there: it renews just after, to be told at once what
        -- to give up (settled). The others hear with their next heartbeat.
        -- Read again after the ring's work: if the rebalance has not been
        -- made yet (its lock was busy), the node renews again a twentieth
        -- of a heartbeat later.
        IF r.settle_until IS NOT NULL THEN
            r.settle_until := (SELECT settle_until FROM rings WHERE name = r.ring);
            IF r.settle_until IS NOT NULL AND EXISTS (SELECT 1 FROM partitions WHERE ring = r.ring AND owner = p_node) THEN
                outs := array_append(outs, jsonb_build_object('ring', r.ring, 'status', 'settling', 'settles_ms',
                                                              greatest(ceil(extract(epoch FROM r.settle_until - clock_timestamp()) * 1000), 0)));
            END IF;
        END IF;
    END LOOP;
    async := p_async AND st = 'ok' AND NOT p_claim AND me.hold_until = '-infinity' AND worked = 0 AND cardinality(outs) = 0
             AND coalesce(current_setting('ring_lease.changed_rings', true), '') = ''
             AND coalesce(current_setting('ring_lease.evicting', true), '') = '';
    IF async THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    ELSE
        PERFORM commit_durably();
    END IF;
    RETURN QUERY SELECT
        floor(extract(epoch FROM me.expires_at - clock_timestamp()) * 1000)::bigint,
        CASE WHEN hold > clock_timestamp() THEN ceil(extract(epoch FROM hold - clock_timestamp()) * 1000) ELSE 0 END::bigint,
        CASE WHEN next_event IS NOT NULL  -- greatest would make NULL 0
             THEN greatest(ceil(extract(epoch FROM next_event - clock_timestamp()) * 1000), 0)::bigint END,
        st, CASE WHEN cardinality(outs) > 0 THEN to_jsonb(outs) END,
        nullif(current_setting('ring_lease.changed_rings', true), '')::jsonb, clock_timestamp(),
        wal_from, (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint, NOT async;
END
$$;

-- commit_durably: the transaction's commit waits for its WAL on disk,
-- whatever the session's synchronous_commit (a role or database set to
-- 'off' would let a crash lose a change of owner that nodes acted on); a
-- stricter setting ('remote_apply', say) stays as it is. Inlined, as
-- set_lock_wait is.
CREATE OR REPLACE FUNCTION leasering.commit_durably()
RETURNS text
LANGUAGE sql VOLATILE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('synchronous_commit') OPERATOR(pg_catalog.=) 'off'
                THEN pg_catalog.set_config('synchronous_commit', 'local', true) END
$$;

-- late_heartbeat: the phase of a probe or a late heartbeat, which extends
-- nothing: renew_and_read's answer, with how long the lease has left
-- ('ok'), or 'lapsed' when there is no live lease. A late heartbeat still
-- confirms releases: the node stopped using them before it sent them, and
-- they have no owner until this is done, and one sent ahead waits for its
-- drain's end as in ring_work. Each ring's confirmation is a
-- subtransaction; after the first, none starts past p_budget.
CREATE OR REPLACE FUNCTION leasering.late_heartbeat(p_node text, p_incarnation text, p_ttl_ms integer, p_rings jsonb,
                                                    p_budget timestamptz)
RETURNS TABLE (lease_ms bigint, hold_ms bigint, next_expiry_ms bigint, node_status text, changes jsonb,
               changed_rings jsonb, db_time timestamptz)
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    lease_end  timestamptz;
    worked     integer := 0;
    release_at timestamptz;  -- the latest drain's end of what it confirmed (release_after_ms)
    r          record;
BEGIN
    SELECT expires_at INTO lease_end
      FROM nodes WHERE node_id = p_node AND incarnation = p_incarnation AND expires_at > now();
    IF lease_end IS NULL THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, NULL::bigint, 'lapsed'::text, NULL::jsonb, NULL::jsonb, clock_timestamp();
        RETURN;
    END IF;
    FOR r IN
        SELECT x.ring, x.released, release_at(coalesce(x.release_after_ms, 0)) AS at
          FROM jsonb_to_recordset(p_rings) AS x (ring text, released integer[], release_after_ms integer)
         WHERE cardinality(x.released) > 0
         ORDER BY x.ring
    LOOP
        EXIT WHEN worked > 0 AND clock_timestamp() > p_budget;  -- the rest with the next
        worked := worked + 1;
        BEGIN
            PERFORM hold_release_key(r.ring, p_node, p_ttl_ms);  -- as in ring_work
            PERFORM wait_until(r.at - release_work(cardinality(r.released)));
            PERFORM confirm_releases(p_node, r.ring, r.released, p_ttl_ms);
            release_at := greatest(release_at, r.at);
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            NULL;
        END;
    END LOOP;
    PERFORM wait_until(release_at);  -- released ahead: commit no earlier than the drain's end
    RETURN QUERY SELECT floor(extract(epoch FROM lease_end - clock_timestamp()) * 1000)::bigint, 0::bigint, NULL::bigint,
                        'ok'::text, NULL::jsonb, NULL::jsonb, clock_timestamp();
END
$$;

-- take_lease: the phase of a heartbeat that renewed nothing: the node is
-- absent, lapsed, or its row names another incarnation. Returns the node's
-- row as it is now; one that names another incarnation means this one is
-- fenced (it did not claim), and nothing was written.
--
-- absent: the row is made, live at once. Otherwise (own lapsed lease, or
-- a claim on an older incarnation's id) the row is taken over: the
-- partitions stay (static membership: nothing moves) and every member row
-- is left to reclaim, so that join_rings raises the epochs ring by ring
-- (the heartbeat answers 'join' until then and reports nothing of the
-- ring): for a node that owns 65,536 partitions that is most of a second,
-- which a heartbeat must never spend. A new incarnation holds until the
-- older one's lease would have ended, and never before the end of a grace
-- (G9): on a server that lacks the older one's last renewals, its lease
-- may be longer than its row says.
CREATE OR REPLACE FUNCTION leasering.take_lease(p_node text, p_incarnation text, p_metadata text, p_claim boolean,
                                                p_expires_at timestamptz, p_ttl_ms integer)
RETURNS leasering.nodes
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    me   nodes;
    hold timestamptz;  -- the hold_until to write
BEGIN
    -- NO KEY UPDATE: it waits for an evictor (FOR UPDATE), a rebalance
    -- deciding whether this node is dead (FOR SHARE: the rejoin must not
    -- interleave with it), a scanner's wait and another heartbeat of the
    -- id, but not for the KEY SHARE of a join_rings or read_views, which
    -- may run for seconds: a lapsed node's rejoin, whose lock wait is
    -- 20 ms, failed over and over behind them. (Its member rows below may
    -- still be held by its own read_views.) A takeover by a new
    -- incarnation no longer waits for the old one's join_rings either:
    -- a join made for the old one is reclaimed (claim_vnodes) by the new.
    SELECT * INTO me FROM nodes WHERE node_id = p_node FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        INSERT INTO nodes (node_id, incarnation, expires_at, hold_until, metadata, ttl_ms)
        VALUES (p_node, p_incarnation, p_expires_at, '-infinity', p_metadata, p_ttl_ms)
        ON CONFLICT (node_id) DO NOTHING
        RETURNING * INTO me;
        IF NOT FOUND THEN  -- a racing start of the same id won; settle it on the next call
            RAISE EXCEPTION 'node % is being started by two processes at once', p_node
                  USING ERRCODE = 'LR004';
        END IF;
        RETURN me;
    END IF;
    IF me.incarnation <> p_incarnation AND NOT p_claim THEN
        RETURN me;  -- fenced
    END IF;
    IF me.metadata IS DISTINCT FROM p_metadata THEN
        -- The node's details go out again on every ring it is in: lock
        -- those rings first, in name order, then stamp and bump.
        PERFORM 1 FROM rings WHERE name IN (SELECT ring FROM members WHERE node_id = p_node) ORDER BY name FOR UPDATE;
        UPDATE members SET changed = next_version(ring) WHERE node_id = p_node;
        PERFORM bump_version(ring, true) FROM members WHERE node_id = p_node ORDER BY ring;
    END IF;
    hold := CASE WHEN me.incarnation = p_incarnation THEN me.hold_until  -- a rejoin keeps a hold in force
                 ELSE greatest(now(), me.expires_at, hold_end(me.hold_until), failover_grace()) END;
    UPDATE nodes
       SET incarnation = p_incarnation,
           hold_until = hold,
           -- Never a lease shorter than the hold: a new incarnation with a
           -- shorter TTL that died during the hold would otherwise be
           -- evicted, and its partitions taken over, while the older one
           -- may still use them.
           expires_at = greatest(p_expires_at, hold),
           metadata = p_metadata,
           ttl_ms = p_ttl_ms
     WHERE node_id = p_node
    RETURNING * INTO me;
    UPDATE members SET claimed_by = NULL WHERE node_id = p_node;
    RETURN me;
END
$$;

-- settle_hold: the phase of a heartbeat of a node with a hold recorded
-- (hold_until > '-infinity', only after a takeover of its id). Returns the
-- hold's end on this server (hold_end); once that has passed, forgets the
-- hold (hold_until = '-infinity', so that no later heartbeat asks about the
-- server), as soon as nothing released during it is left to hand on.
CREATE OR REPLACE FUNCTION leasering.settle_hold(p_node text, p_hold_until timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    hold timestamptz := hold_end(p_hold_until);
BEGIN
    IF hold <= now() THEN
        UPDATE nodes SET hold_until = '-infinity'
         WHERE node_id = p_node
           AND NOT EXISTS (SELECT 1 FROM partitions WHERE owner = p_node AND released);
    END IF;
    RETURN hold;
END
$$;

-- scan_and_evict: the phase of a heartbeat with p_scan. Returns the
-- earliest end of another node's lease or hold (NULL: no other node).
--
-- Crash detection: the first heartbeat to scan after a lease lapses evicts
-- every lapsed node and rebalances their rings (one heartbeat at a time;
-- one more waits for it, and the others scanning meanwhile go on). The earliest other lease end goes back
-- to the client, which renews (and scans) right after it, so survivors
-- take over a crashed node's partitions at once rather than a heartbeat
-- later. Leases only move later while their nodes live, so a client that
-- skips the scan until then misses no lapse: every client's last answer is
-- at or before the true earliest end. Hold ends count too (they never
-- move): whoever scans first after one hands on what the holder released
-- meanwhile.
--
-- G9: on a server in its grace (failover_grace) nobody is evicted, and a
-- lease that lapsed ends with the grace: the heartbeat whose turn it is to
-- evict comes back then, not at once; the others, told an end already
-- past, look again less often each time (schedule.go).
CREATE OR REPLACE FUNCTION leasering.scan_and_evict(p_node text, p_ttl_ms integer)
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    next_expiry timestamptz;  -- the earliest other lease end
    next_event  timestamptz;  -- that, or the end of another node's hold, if earlier
    hold_over   boolean;      -- released partitions await handing on: the ring's lock was busy, or a hold is over
    grace_end   timestamptz := '-infinity';  -- G9: the end of this server's grace
    dead_rings  text[] := '{}';
    dead_ring   text;
    evicting    boolean;
BEGIN
    SELECT min(expires_at), min(least(expires_at, CASE WHEN hold_until > '-infinity' AND hold_end(hold_until) > now()
                                                       THEN hold_end(hold_until) END))
      INTO next_expiry, next_event
      FROM nodes WHERE node_id <> p_node;
    hold_over := EXISTS (SELECT 1 FROM held_released() AS h WHERE h.over);
    -- One heartbeat at a time evicts (it holds an advisory lock keyed on
    -- this schema until its transaction ends), and one more waits for it,
    -- so that its node reads the outcome now, or evicts if that one gave
    -- up; the others go on and look again soon (the client backs off while
    -- the lease it was told of stays lapsed). One eviction takes every
    -- lapsed node and rebalances each of their rings once. With a hundred
    -- nodes, every heartbeat that found a lapsed lease evicted one of them
    -- and waited a quarter of its TTL for the ring's lock, held by a batch
    -- of joins, and the eviction was undone; heartbeats averaged 190 ms,
    -- more leases lapsed, and the lapsed nodes' rejoins, which wait 20 ms
    -- for their own rows, never got through
    -- (TestOneHeartbeatEvictsAtATime).
    evicting := next_expiry <= now() OR hold_over;
    IF evicting THEN
        evicting := pg_try_advisory_xact_lock(hashtextextended(current_schema() || ' eviction', 0));
        IF NOT evicting AND pg_try_advisory_xact_lock(hashtextextended(current_schema() || ' eviction wait', 0)) THEN
            PERFORM set_lock_wait(p_ttl_ms, 1000);
            BEGIN
                PERFORM pg_advisory_xact_lock(hashtextextended(current_schema() || ' eviction', 0));
                evicting := true;
            EXCEPTION WHEN lock_not_available THEN
                PERFORM set_lock_wait(p_ttl_ms, 20);
            END;
        END IF;
    END IF;
    IF evicting THEN
        PERFORM set_config('ring_lease.evicting', 'on', true);  -- this commit waits for the disk (renew_and_read)
        -- A client that runs its calls in explicit transactions (see
        -- renew_and_read) and stalls before its COMMIT would keep the
        -- eviction's turn, and so every eviction in the schema, for as long
        -- as its session lived: the server ends such a session after half
        -- a TTL (TestStalledEvictorGivesUpItsTurn).
        PERFORM set_config('idle_in_transaction_session_timeout', greatest(p_ttl_ms / 2, 1)::text, true);
        -- A takeover is worth waiting for (the dead node's partitions have
        -- no owner until it is done), and it is rare.
        PERFORM set_lock_wait(p_ttl_ms, 1000);
        IF next_expiry <= now() THEN
            grace_end := failover_grace();
        END IF;
        BEGIN
            IF now() >= grace_end THEN
                dead_rings := evict_expired(p_node);
            END IF;
            IF cardinality(dead_rings) = 0 AND now() >= grace_end
               AND EXISTS (SELECT 1 FROM nodes WHERE expires_at <= now() AND node_id <> p_node) THEN
                -- Another transaction holds them (they were skipped as
                -- locked): a rejoin (take_lease), a rebalance deciding
                -- who is dead (FOR SHARE) or a leave. Wait for it, so
                -- that this heartbeat reads the outcome and its node takes
                -- over now rather than a heartbeat later; if the node did
                -- not come back, evict it here. Only while holding no ring
                -- lock: that transaction may be waiting for a ring. FOR NO
                -- KEY UPDATE waits for those, but it does not wait for the KEY
                -- SHARE of a join_rings or read_views, which may run for
                -- seconds (a batch's rebalance of 65,536 partitions):
                -- every scanning heartbeat waited out its lock wait on
                -- those. A row such a statement holds cannot be evicted
                -- either; if nothing was, the wait is undone (LR008), so
                -- that this heartbeat keeps no lock on rows it could not
                -- evict: their nodes' rejoins wait for those locks.
                BEGIN
                    PERFORM 1 FROM nodes WHERE expires_at <= now() AND node_id <> p_node FOR NO KEY UPDATE;
                    dead_rings := evict_expired(p_node);
                    IF cardinality(dead_rings) = 0 THEN
                        RAISE EXCEPTION 'nothing evicted' USING ERRCODE = 'LR008';
                    END IF;
                EXCEPTION WHEN SQLSTATE 'LR008' THEN
                    NULL;
                END;
            END IF;
            -- The dead's rings and those with partitions released during a
            -- hold that is now over, in name order.
            FOR dead_ring IN
                SELECT x FROM unnest(dead_rings) AS x
                UNION
                SELECT h.ring FROM held_released() AS h WHERE h.over
                ORDER BY 1
            LOOP
                PERFORM 1 FROM rings WHERE name = dead_ring FOR UPDATE;
                IF dead_ring = ANY (dead_rings) THEN
                    PERFORM rebalance(dead_ring);
                    PERFORM bump_version(dead_ring, true);
                END IF;
                PERFORM hand_on_released(dead_ring);
            END LOOP;
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            NULL;  -- all undone; the dead stay expired and the next heartbeat evicts them
        END;
        PERFORM set_lock_wait(p_ttl_ms, 20);
        SELECT min(least(greatest(expires_at, grace_end), CASE WHEN hold_until > '-infinity' AND hold_end(hold_until) > now()
                                                               THEN hold_end(hold_until) END))
          INTO next_event
          FROM nodes WHERE node_id <> p_node;
    END IF;
    RETURN next_event;
END
$$;

-- ring_work: the phase of one ring of a heartbeat whose version moved,
-- that carries releases, or that waits for incoming partitions (p_incoming).
-- Confirms the releases, then answers the node's view, 'join' (not a
-- member with these vnodes, or a member row to reclaim: join_rings does
-- it, in a statement of its own), 'view' (a big view: read_views reads
-- it, in a statement of its own),
-- 'incoming' (nothing changed, or with p_own_only nothing of the node's:
-- only when the partitions it waits for are due), 'later' with busy (a
-- lock was busy and the node's view is behind: the client asks again
-- soon, backing off while it stays busy), or NULL (nothing more changed,
-- nothing of the node's with p_own_only, or a lock was busy and the
-- view is current). A subtransaction: if a user
-- transaction holds one of the ring's partitions through holds() longer
-- than the lock wait, the ring's change waits for a later heartbeat and
-- the lease is still renewed. Answered NULL after a member row's lock
-- wait, a view behind waited for the next regular heartbeat (CI: a
-- crashed node's partitions reported 20-29 ms past G3's bound, while a
-- batch of joins held the member rows).
--
-- Releases sent ahead of their drain's end (THE HANDOFF TIMELINE) wait,
-- holding no lock, until the writes as estimated (release_work) would end
-- at p_release_at; then they are written and the answer made, and the call
-- waits for p_release_at, so the change commits at the drain's end rather
-- than the time of its writes and of the view after it (TestRollout: a
-- release of 3,686 rows and its view took 146 ms), and holds the ring's
-- lock for the writes and little more (written at once, a hundred nodes
-- whose drains end within a second would each hold it for the whole of
-- their lead). The answer says how long it waited (waited_ms), and its
-- dues are read again after the last wait.
CREATE OR REPLACE FUNCTION leasering.ring_work(p_node text, p_incarnation text, p_ttl_ms integer, p_ring text,
                                               p_size integer, p_vnodes integer, p_known bigint, p_released integer[],
                                               p_release_at timestamptz, p_incoming boolean, p_own_only boolean,
                                               p_own_view boolean, p_owner_ids boolean)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    answer jsonb;
    waited integer := 0;
BEGIN
    IF EXISTS (SELECT 1 FROM rings WHERE name = p_ring AND settle_until <= now()) THEN
        PERFORM settled(p_ring);
    END IF;
    -- Released to this node, and not handed on yet (the ring's lock was
    -- busy when their owner confirmed: confirm_releases): it waits for
    -- them, so it takes the lock and hands on every released partition.
    -- If the lock stays busy (a batch of joins, which hands them on before
    -- it rebalances), the heartbeat goes on without: undone with it, its
    -- view of what it was given meanwhile came late (TestChaos, G3).
    IF EXISTS (SELECT 1 FROM partitions WHERE ring = p_ring AND next_owner = p_node AND released) THEN
        BEGIN
            PERFORM 1 FROM rings WHERE name = p_ring FOR UPDATE;
            PERFORM hand_on_released(p_ring);
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            NULL;  -- the next look or the lock's next holder hands them on
        END;
    END IF;
    IF cardinality(p_released) > 0 THEN
        PERFORM hold_release_key(p_ring, p_node, p_ttl_ms);  -- seen by await_release
        waited := wait_until(p_release_at - release_work(cardinality(p_released)));
        PERFORM confirm_releases(p_node, p_ring, p_released, p_ttl_ms);
    END IF;
    -- The view is built here, in the call, after the releases (under the
    -- ring's lock if confirm_releases got it). Read apart with read_views
    -- instead (tried for version 15: a release of the 2,000-node roll-out
    -- waited 40 ms for the lock rather than 122), a node that was given
    -- partitions in the same heartbeat heard of them a side call later, and
    -- TestChaos failed G3 in 4 runs of 7 (by 10-284 ms). Releases only
    -- marked (the lock was busy) move no version, and the view that drops
    -- them from what the node owns comes all the same.
    -- A view that waits too long for a lock (its member row, which a
    -- rebalance share-locks while it runs) is left for the next heartbeat,
    -- and the releases stay: undone with it, a node's release of 3,925
    -- partitions went again and again for 11 s while batches of joins
    -- rebalanced (TestRollout -rollout.pool=2).
    BEGIN
        IF cardinality(p_released) > 0 AND (SELECT version FROM rings WHERE name = p_ring) = p_known THEN
            answer := give_view(p_node, p_ring, p_known, p_own_view, p_owner_ids);
        ELSE
            answer := ring_answer(p_node, p_incarnation, p_ring, p_size, p_vnodes, p_known, p_incoming,
                                  p_own_only AND cardinality(p_released) = 0, p_own_view, p_owner_ids);
        END IF;
    EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
        answer := CASE WHEN (SELECT version FROM rings WHERE name = p_ring) IS DISTINCT FROM p_known
                       THEN jsonb_build_object('ring', p_ring, 'status', 'later', 'busy', true) END;
    END;
    IF cardinality(p_released) > 0 AND p_release_at > clock_timestamp() THEN
        waited := waited + wait_until(p_release_at);
        IF answer ? 'incoming' THEN
            answer := answer || incoming_dues(p_ring, p_node);
        END IF;
    END IF;
    IF waited > 0 THEN
        answer := answer || jsonb_build_object('waited_ms', waited);
    END IF;
    RETURN answer;
EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
    IF (SELECT version FROM rings WHERE name = p_ring) IS DISTINCT FROM p_known THEN
        RETURN jsonb_build_object('ring', p_ring, 'status', 'later', 'busy', true);
    END IF;
    RETURN NULL;
END
$$;

-- ring_answer: ring_work's answer once the releases are confirmed.
CREATE OR REPLACE FUNCTION leasering.ring_answer(p_node text, p_incarnation text, p_ring text, p_size integer,
                                                 p_vnodes integer, p_known bigint, p_incoming boolean, p_own_only boolean,
                                                 p_own_view boolean, p_owner_ids boolean)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
BEGIN
    IF (SELECT version FROM rings WHERE name = p_ring) = p_known THEN
        IF p_incoming THEN  -- nothing changed: only when what it waits for is due
            RETURN jsonb_build_object('ring', p_ring, 'status', 'incoming') || incoming_dues(p_ring, p_node);
        END IF;
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM members WHERE ring = p_ring AND node_id = p_node AND vnodes = p_vnodes
                                           AND claimed_by = p_incarnation) THEN
        RETURN jsonb_build_object('ring', p_ring, 'status', 'join');
    END IF;
    -- Own changes only (p_own_only): the client read a view lately and
    -- its routing can wait while the ring keeps changing. Nothing this
    -- node owns or waits for changed since p_known (a partition taken
    -- from it without its release was one it was never told of: see
    -- rebalance), so it gets no view and keeps its version. In a roll-out
    -- every version move sent every member a view on its next heartbeat:
    -- members times heartbeats, which at 2,000 nodes took both cores.
    IF p_own_only
       AND NOT EXISTS (SELECT 1 FROM partitions WHERE ring = p_ring AND owner = p_node AND changed > p_known)
       AND NOT EXISTS (SELECT 1 FROM partitions WHERE ring = p_ring AND next_owner = p_node AND changed > p_known) THEN
        IF p_incoming THEN
            RETURN jsonb_build_object('ring', p_ring, 'status', 'incoming') || incoming_dues(p_ring, p_node);
        END IF;
        RETURN NULL;
    END IF;
    -- Big: in a ring of more than 4,096 partitions, seen for the first
    -- time, or more than 4,096 partitions changed (routing, which an own
    -- view leaves out), or more than 4,096 owned (what a node owns always
    -- comes whole).
    IF p_size > 4096
       AND (p_known = 0
            OR NOT p_own_view AND (SELECT count(*) FROM (SELECT 1 FROM partitions
                                       WHERE ring = p_ring AND granted > p_known LIMIT 4097) AS c) > 4096
            OR (SELECT count(*) FROM (SELECT 1 FROM partitions
                                       WHERE ring = p_ring AND owner = p_node LIMIT 4097) AS c) > 4096) THEN
        RETURN jsonb_build_object('ring', p_ring, 'status', 'view');
    END IF;
    RETURN give_view(p_node, p_ring, p_known, p_own_view, p_owner_ids);
END
$$;

-- await_release: a look's wait (THE HANDOFF TIMELINE), before the
-- heartbeat takes any lock: until a ring of p_rings with await_ms moves
-- from the version the node sent (the owner's release landed, or anything
-- else changed), its await_ms ends, or p_until; not at all for node
-- p_node (incarnation p_incarnation, TTL p_ttl_ms) with less than half a
-- lease left. Past await_ms it goes on waiting, until await_release_ms
-- or p_until, while an owner of a partition pending to the node is in the
-- call that releases it (that call holds release_key's lock from before
-- its writes, and commits at its drain's end): the due the node was told
-- counts from when the owner was told in the database, and the owner
-- stops, and so drains, from when its answer reaches it, which for the
-- view of a rebalance of a whole ring came 90-190 ms later (TestRollout),
-- so the look gave up a few milliseconds before the commit and the next
-- came a poll later. Returns
-- the milliseconds waited. Without the wait a look that came a few
-- milliseconds before the owner's release looked again a poll later (CI:
-- a heal's gap of 594 ms against a bound of 581); with it the node hears
-- of the release within a sleep of its commit.
CREATE OR REPLACE FUNCTION leasering.await_release(p_node text, p_incarnation text, p_ttl_ms integer, p_rings jsonb,
                                                   p_until timestamptz)
RETURNS integer
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    began    timestamptz := clock_timestamp();
    ends     timestamptz;
    on_way   timestamptz;  -- the end of the wait while a release is on its way (await_release_ms)
    keys     bigint[];     -- release_key of each owner of a partition pending to the node in an awaited ring
BEGIN
    -- Only with half a lease left: the renewal after the wait counts the
    -- lease as live from the call's start (now()), and a lease that ended
    -- meanwhile may have been taken for dead.
    IF NOT EXISTS (SELECT 1 FROM nodes WHERE node_id = p_node AND incarnation = p_incarnation
                                         AND expires_at > began + p_ttl_ms * interval '0.5 millisecond') THEN
        RETURN 0;
    END IF;
    SELECT least(p_until, began + max(x.await_ms) * interval '1 millisecond'),
           CASE WHEN max(x.await_release_ms) IS NOT NULL  -- least would skip a NULL: p_until
                THEN least(p_until, began + max(x.await_release_ms) * interval '1 millisecond') END
      INTO ends, on_way
      FROM jsonb_to_recordset(p_rings) AS x (await_ms integer, await_release_ms integer)
     WHERE x.await_ms > 0
    HAVING count(*) > 0;  -- none: ends stays NULL, no wait (least would skip a NULL)
    IF on_way > ends THEN  -- a client before version 14 does not say it: no wait past await_ms
        SELECT array_agg(DISTINCT release_key(p.ring, p.owner)) INTO keys
          FROM jsonb_to_recordset(p_rings) AS x (ring text, await_ms integer)
          JOIN partitions p ON p.ring = x.ring AND p.next_owner = p_node
         WHERE x.await_ms > 0;
    END IF;
    -- Each statement of this VOLATILE function reads what committed before it.
    WHILE (clock_timestamp() < ends OR clock_timestamp() < on_way)
          AND NOT EXISTS (SELECT 1 FROM jsonb_to_recordset(p_rings) AS x (ring text, version bigint, await_ms integer)
                            JOIN rings g ON g.name = x.ring
                           WHERE x.await_ms > 0 AND g.version <> coalesce(x.version, 0))
          AND NOT EXISTS (SELECT 1 FROM jsonb_to_recordset(p_rings) AS x (ring text, await_ms integer)
                            JOIN partitions p ON p.ring = x.ring AND p.next_owner = p_node AND p.released
                           WHERE x.await_ms > 0) LOOP
        -- A release on its way is waited for on its lock, asleep until it
        -- commits; only one not begun yet is polled for. (Polled every
        -- 2 ms, the looks of one 100-node roll-out tried the lock 1,619
        -- times; they now make one wait each.)
        IF NOT release_awaited(keys, on_way) THEN
            EXIT WHEN clock_timestamp() >= ends;
            PERFORM pg_sleep(0.002);
        END IF;
    END LOOP;
    RETURN floor(extract(epoch FROM clock_timestamp() - began) * 1000);  -- never more than waited
END
$$;

-- ---------------------------------------------------------------------
-- The other entry points
-- ---------------------------------------------------------------------

-- join_rings: node p_node joins (or rejoins) the rings of p_rings, a JSON
-- array of {ring, size, vnodes, heartbeat_ms, drain_ms}, in statements of
-- its own rather than in a heartbeat: creating a ring of 65,536 partitions
-- and the rebalance of a join each take up to a second there, which a
-- heartbeat must never spend (its lease is counted from its start). The
-- node's lease must be live and its incarnation current.
--
-- Joins are batched. The client calls twice. With p_budget_ms = 0 the call
-- records the node's joins (record_join: it creates a ring on first use)
-- and takes no ring's lock; its commit makes them visible. The second call
-- takes each ring's lock in name order, waiting at most a second (a user
-- transaction may hold a partition through holds()), and joins every node
-- recorded as waiting for that ring with one rebalance (join_waiting), or
-- finds its own join done by another's. So N nodes starting at once
-- rebalance a few times, not N times, and hold their pooled connections a
-- few milliseconds each rather than queueing on the ring's lock. Once
-- p_budget_ms has passed after the first ring, the rest are left for the
-- next call. A client of a release before schema version 11 calls only
-- the second way, which records its joins first.
--
-- Returns, for each ring it got to, {ring, status, size}: 'ok' (joined),
-- 'size_mismatch', 'waiting' (recorded: another call makes the batch, or
-- the next one), or 'busy' (its lock did not come in time: a user
-- transaction may hold it); a ring it did not get to is not listed, and
-- 'not_live' alone when the lease is not there.
CREATE OR REPLACE FUNCTION leasering.join_rings(p_node text, p_incarnation text, p_rings jsonb, p_budget_ms integer)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = leasering, pg_temp
AS $$
DECLARE
    started timestamptz := clock_timestamp();
    r       record;
    st      text;
    lead    boolean;  -- this call makes the ring's batch
    outs    jsonb[] := '{}';  -- see renew_and_read
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN  -- see renew_and_read
        RAISE EXCEPTION 'leasering runs in READ COMMITTED transactions, not %', current_setting('transaction_isolation')
              USING ERRCODE = 'LR005';
    END IF;
    -- Every wait bounded from the first: the caller holds a pooled
    -- connection meanwhile, which the heartbeats of its pool may need.
    PERFORM set_lock_wait(NULL, 1000);
    PERFORM commit_durably();
    -- KEY SHARE: the lease stays (no eviction deletes the row meanwhile),
    -- and the node's heartbeats, which update a non-key column, never wait.
    -- An evictor holding the row (it found the lease lapsed) makes the
    -- call list no ring: the next one tries again.
    BEGIN
        PERFORM 1 FROM nodes WHERE node_id = p_node AND incarnation = p_incarnation AND expires_at > now() FOR KEY SHARE;
    EXCEPTION WHEN lock_not_available THEN
        RETURN '[]'::jsonb;
    END;
    IF NOT FOUND THEN
        RETURN '"not_live"';
    END IF;
    FOR r IN
        SELECT x.ring, x.size, x.vnodes, x.heartbeat_ms, x.drain_ms
          FROM jsonb_to_recordset(p_rings) AS x (ring text, size integer, vnodes integer, heartbeat_ms integer, drain_ms integer)
         ORDER BY x.ring
    LOOP
        EXIT WHEN p_budget_ms > 0 AND cardinality(outs) > 0 AND clock_timestamp() - started > p_budget_ms * interval '1 millisecond';
        BEGIN
            IF p_budget_ms = 0 OR NOT EXISTS (SELECT 1 FROM joins WHERE ring = r.ring AND node_id = p_node AND incarnation = p_incarnation) THEN
                st := record_join(p_node, p_incarnation, r.ring, r.size, r.vnodes, r.heartbeat_ms, r.drain_ms);
            ELSE
                st := 'waiting';
            END IF;
            -- One call at a time per ring leads: it holds an advisory lock
            -- keyed on this schema (current_schema(), the pinned
            -- search_path's first) and the ring, waits for the ring's lock
            -- and makes the batch. The others answer
            -- 'waiting' at once, not holding their connections, and the
            -- client calls again soon, most likely to find its join made.
            IF st = 'waiting' AND p_budget_ms > 0 THEN
                lead := pg_try_advisory_xact_lock(hashtextextended(current_schema() || ' join_rings ' || r.ring, 0));
                IF NOT joined(p_node, p_incarnation, r.ring, r.vnodes) AND lead THEN
                    PERFORM 1 FROM rings WHERE name = r.ring FOR UPDATE;
                    PERFORM join_waiting(r.ring);
                END IF;
                IF joined(p_node, p_incarnation, r.ring, r.vnodes) THEN
                    st := 'ok';
                END IF;
            END IF;
            outs := array_append(outs, jsonb_build_object('ring', r.ring, 'status', st,
                                                          'size', (SELECT size FROM rings WHERE name = r.ring)));
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            outs := array_append(outs, jsonb_build_object('ring', r.ring, 'status', 'busy'));  -- the next call
        END;
    END LOOP;
    RETURN to_jsonb(outs);
END
$$;

-- read_views: the views of the rings of p_rings, a JSON array of {ring,
-- version} (version: the one the node holds, 0 for none), for node p_node,
-- in a statement of its own. A heartbeat answers 'view' for a ring whose
-- view is big (see ring_work): building and sending one of 65,536
-- partitions takes most of a second, which a heartbeat must never spend.
-- Each view is given as a heartbeat gives it (give_view). Returns the
-- views; 'not_live' alone when the lease is not there.
CREATE OR REPLACE FUNCTION leasering.read_views(p_node text, p_incarnation text, p_rings jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = leasering, pg_temp
AS $$
DECLARE
    r    record;
    view jsonb;
    outs jsonb[] := '{}';  -- see renew_and_read
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN  -- see renew_and_read
        RAISE EXCEPTION 'leasering runs in READ COMMITTED transactions, not %', current_setting('transaction_isolation')
              USING ERRCODE = 'LR005';
    END IF;
    PERFORM set_lock_wait(NULL, 1000);  -- from the first wait: see join_rings
    PERFORM commit_durably();
    BEGIN
        PERFORM 1 FROM nodes WHERE node_id = p_node AND incarnation = p_incarnation AND expires_at > now() FOR KEY SHARE;
    EXCEPTION WHEN lock_not_available THEN
        RETURN '[]'::jsonb;
    END;
    IF NOT FOUND THEN
        RETURN '"not_live"';
    END IF;
    FOR r IN
        SELECT x.ring, coalesce(x.version, 0) AS known, coalesce(x.owner_ids, false) AS owner_ids
          FROM jsonb_to_recordset(p_rings) AS x (ring text, version bigint, owner_ids boolean)
         ORDER BY x.ring
    LOOP
        BEGIN
            view := give_view(p_node, r.ring, r.known, false, r.owner_ids);  -- NULL: not a member; the next heartbeat says to join
            IF view IS NOT NULL THEN
                outs := array_append(outs, jsonb_build_object('known', r.known, 'view', view));
            END IF;
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            NULL;  -- the next heartbeat says 'view' again
        END;
    END LOOP;
    RETURN to_jsonb(outs);
END
$$;

-- leave: graceful exit. Without p_ring the node leaves every ring and its
-- lease row goes; with p_ring it leaves that ring only. Its partitions go to
-- their new owners at once (it has stopped using them before calling),
-- except while the node holds: an older incarnation of the id may use them
-- until the hold's end (hold_end), so the lease then ends there instead,
-- and the eviction that follows hands them on (a ring is left as it is).
CREATE OR REPLACE FUNCTION leasering.leave(p_node text, p_incarnation text, p_ring text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = leasering, pg_temp
AS $$
DECLARE
    rs text[];
    r  text;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN  -- see renew_and_read
        RAISE EXCEPTION 'leasering runs in READ COMMITTED transactions, not %', current_setting('transaction_isolation')
              USING ERRCODE = 'LR005';
    END IF;
    PERFORM commit_durably();
    PERFORM 1 FROM nodes WHERE node_id = p_node AND incarnation = p_incarnation FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- already gone, or the id belongs to a newer incarnation
    END IF;
    IF EXISTS (SELECT 1 FROM nodes WHERE node_id = p_node AND hold_end(hold_until) > now()) THEN
        IF p_ring IS NULL THEN
            UPDATE nodes SET expires_at = hold_end(hold_until) WHERE node_id = p_node;
        END IF;
        RETURN;
    END IF;
    SELECT coalesce(array_agg(ring ORDER BY ring), '{}') INTO rs
      FROM members WHERE node_id = p_node AND (p_ring IS NULL OR ring = p_ring);
    IF p_ring IS NULL THEN
        DELETE FROM nodes WHERE node_id = p_node;
    ELSE
        DELETE FROM members WHERE node_id = p_node AND ring = p_ring;
    END IF;
    FOREACH r IN ARRAY rs LOOP
        PERFORM 1 FROM rings WHERE name = r FOR UPDATE;
        PERFORM hand_on_released(r);  -- see join_waiting
        PERFORM rebalance(r);
        PERFORM bump_version(r, true);
    END LOOP;
END
$$;

-- holds: fencing inside users' own transactions. True only while p_epoch
-- is the partition's current epoch and its owner's lease is live, by the
-- clock at the moment of the call. It also takes a share lock on the
-- partition's row until the caller's transaction ends, so no change of owner
-- can commit before the caller's writes do: a write guarded by holds() is
-- never made after the partition is lost.
CREATE OR REPLACE FUNCTION leasering.holds(p_ring text, p_partition integer, p_epoch bigint)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = leasering, pg_temp
AS $$
    SELECT coalesce((SELECT true
                       FROM partitions p
                       JOIN nodes n ON n.node_id = p.owner
                      WHERE p.ring = p_ring AND p.partition = p_partition AND p.epoch = p_epoch
                        AND NOT p.released  -- its owner gave it up: see confirm_releases
                        AND n.expires_at > clock_timestamp()
                        FOR SHARE OF p), false)
$$;

-- partition_of: the partition of a ring of p_size partitions that p_key
-- falls in, bit for bit the same as Go's PartitionOf: the high 32 bits of
-- PostgreSQL's own 64-bit text hash (over the key's bytes, hence "C"),
-- scaled to the size. IMMUTABLE and inlinable, so it can index a column or
-- filter a table:
--   WHERE leasering.partition_of(id::text, 1024) = ANY($1)
-- Inlining needs a body without a SET clause, so the body is parsed with the
-- caller's search_path: every operator, function and collation in it is
-- written with its schema, so none resolves to another schema's.
-- p_size must be 1..65536. The value is part of the on-disk contract and
-- will never change.
CREATE OR REPLACE FUNCTION leasering.partition_of(p_key text, p_size integer)
RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT pg_catalog.int4(
        ((pg_catalog.hashtextextended(p_key COLLATE pg_catalog."C", 0)
            OPERATOR(pg_catalog.>>) 32
            OPERATOR(pg_catalog.&) 4294967295)
         OPERATOR(pg_catalog.*) p_size)
        OPERATOR(pg_catalog.>>) 32)
$$;

-- ---------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------

-- set_lock_wait: THE LOCK-WAIT RULE. For the rest of the transaction a row
-- lock is waited for at most a quarter of the caller's lease (p_ttl_ms), at
-- least 10 ms and at most p_cap_ms; p_cap_ms alone when no lease is at
-- stake (p_ttl_ms NULL). A heartbeat that cannot finish in time is worth
-- less than one that skips a ring's change (the next heartbeat does it),
-- and with many nodes on one pool, heartbeats queued behind a ring's lock
-- would hold every connection. The caps:
--     20 ms  a heartbeat's own work
--    250 ms  a releasing call's release lock (hold_release_key), which a
--            look's try holds for an instant; without it, the call goes on
--     0 ms  confirming releases (schema version 16: the rows another
--            holds are skipped, and the ring's lock only tried; see
--            confirm_releases)
--   1000 ms  evicting the dead and handing on (their partitions have no
--            owner until then; rare), and join_rings and read_views,
--            statements of their own
-- A lock wait that gives up fails its statement with lock_not_available:
-- the callers catch it where a ring's work can wait for the next call.
-- Inlined (a SQL body without a SET clause, every name in it written with
-- its schema), so the heartbeat pays nothing for the call.
CREATE OR REPLACE FUNCTION leasering.set_lock_wait(p_ttl_ms integer, p_cap_ms integer)
RETURNS text
LANGUAGE sql VOLATILE
AS $$
    SELECT pg_catalog.set_config('lock_timeout',
               (CASE WHEN p_ttl_ms IS NULL THEN p_cap_ms
                     ELSE LEAST(GREATEST(p_ttl_ms OPERATOR(pg_catalog./) 4, 10), p_cap_ms) END)::pg_catalog.text
               OPERATOR(pg_catalog.||) 'ms',
               true)
$$;

-- next_version: the version the next bump_version of ring p_ring sets.
--
-- THE STAMP CONTRACT. A step that changes a ring holds the ring's row lock
-- (rings, FOR UPDATE) to the end of its transaction. It stamps every row
-- it changes with next_version: partitions.changed for a new owner or
-- next_owner, and granted for a new owner; members.changed for a member's
-- new details. Then it calls bump_version once, if it changed anything.
-- A view for a node that knows version k (ring_view) then routes by
-- exactly the rows granted, and members changed, above k; own_only
-- (ring_answer) looks for the node's rows changed above k; and no node
-- misses a change: the stamp and the version it announces commit
-- together.
CREATE OR REPLACE FUNCTION leasering.next_version(p_ring text)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = leasering, pg_temp
AS $$
BEGIN
    RETURN (SELECT version + 1 FROM rings WHERE name = p_ring);
END
$$;

-- bump_version: record a change of ring p_ring (see next_version); with
-- p_members, a change of its members. Returns the new version. The ring is
-- also noted in the transaction's setting ring_lease.changed_rings, which
-- renew_and_read hands back so that the client can announce the change
-- with NOTIFY after the commit: a NOTIFY inside this transaction would take
-- PostgreSQL's cluster-wide notification lock at commit, and a heartbeat
-- must never wait on that.
CREATE OR REPLACE FUNCTION leasering.bump_version(p_ring text, p_members boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    v bigint;
BEGIN
    UPDATE rings
       SET version = version + 1,
           members_changed = CASE WHEN p_members THEN version + 1 ELSE members_changed END
     WHERE name = p_ring
    RETURNING version INTO v;
    PERFORM set_config('ring_lease.changed_rings',
                       (coalesce(nullif(current_setting('ring_lease.changed_rings', true), ''), '[]')::jsonb
                        || to_jsonb(p_ring))::text,
                       true);
    RETURN v;
END
$$;

-- give_view: node p_node's view of ring p_ring for a node that knows
-- version p_known (ring_view), recorded as given: the member row is locked
-- before the view is read and its seen set to the view's version, so that
-- a rebalance meanwhile waits, and never takes a partition straight from a
-- node that this view gives it (see rebalance). The partitions it tells the
-- node to give up for the first time get their release_due. NULL when the
-- node is not a member.
CREATE OR REPLACE FUNCTION leasering.give_view(p_node text, p_ring text, p_known bigint, p_own_view boolean DEFAULT false,
                                               p_owner_ids boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    view  jsonb;
    drain integer;
BEGIN
    PERFORM 1 FROM members WHERE ring = p_ring AND node_id = p_node FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    view := ring_view(p_ring, p_node, p_known, p_own_view, p_owner_ids);
    UPDATE members SET seen = (view ->> 'version')::bigint WHERE ring = p_ring AND node_id = p_node
    RETURNING drain_ms INTO drain;
    IF jsonb_array_length(view -> 'revoking') > 0 AND drain IS NOT NULL THEN
        -- Told now, of these: due once it has drained (the pending owner
        -- looks then). Rows another transaction holds are skipped, not
        -- waited for (see the lock order's exceptions): a row a user's
        -- holds() share-locks keeps no view from its node; that
        -- partition's due stays the estimate.
        -- The view's revoking are the node's pending rows that changed by
        -- the view's version: every change of owner or next_owner stamps
        -- changed with a new version under the ring's lock, so a row changed
        -- after the view has a later one. (Matched against the view's list
        -- instead, the planner, guessing 100 entries, compared every pending
        -- row with every listed one: 62,000 x 62,000 in a roll-out on a ring
        -- of 65,536, TestBigRevokingViewStaysLinear.)
        UPDATE partitions SET release_due = clock_timestamp() + drain * interval '1 millisecond'
         WHERE (ring, partition) IN (
               SELECT ring, partition FROM partitions
                WHERE ring = p_ring AND owner = p_node AND next_owner IS NOT NULL AND release_due IS NULL
                  AND changed <= (view ->> 'version')::bigint
                  FOR NO KEY UPDATE SKIP LOCKED);
    END IF;
    RETURN view;
END
$$;

-- incoming_dues: when the partitions of ring p_ring pending to node p_node
-- are due: {incoming: a sorted JSON array of distinct delays in
-- milliseconds from now (negative: overdue), incoming_unknown: how many
-- have none}. Due is release_due once the owner was told, before that the
-- owner's next heartbeat (its lease's start plus its heartbeat) plus its
-- drain; unknown for an owner that joined without saying them. See the
-- handoff timeline at the top.
CREATE OR REPLACE FUNCTION leasering.incoming_dues(p_ring text, p_node text)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = leasering, pg_temp
AS $$
BEGIN
    RETURN (SELECT jsonb_build_object(
                       'incoming', coalesce(jsonb_agg(DISTINCT d.ms ORDER BY d.ms) FILTER (WHERE d.ms IS NOT NULL), '[]'),
                       'incoming_unknown', count(*) FILTER (WHERE d.ms IS NULL))
              FROM (SELECT ceil(extract(epoch FROM
                               coalesce(p.release_due,
                                        o.expires_at - o.ttl_ms * interval '1 millisecond'
                                        + (om.heartbeat_ms + om.drain_ms) * interval '1 millisecond')
                               - clock_timestamp()) * 1000)::bigint AS ms
                      FROM partitions p
                      LEFT JOIN nodes o ON o.node_id = p.owner
                      LEFT JOIN members om ON om.ring = p.ring AND om.node_id = p.owner
                     WHERE p.ring = p_ring AND p.next_owner = p_node) AS d);
END
$$;

-- ring_view: the node's view of one ring, for a node that last saw version
-- p_known (0: never). What it owns, with epochs, and which of those it must
-- give up (listed in both) always come whole. For routing come only the
-- changes: if the members changed, their ids in node_id order and the
-- details of those that joined or changed since p_known (the node keeps
-- the others'), and the partitions whose owner changed (granted above
-- p_known), each with its owner as an index into the members (-1: none).
-- A new pending owner alone changes no route: sent by changed, every
-- member read each partition of a roll-out twice, the rebalance's mark
-- and the release. Sending every member's
-- details on every change would cost each heartbeat O(members) and a
-- roll-out O(members²). And incoming: when the partitions pending to the
-- node are due (incoming_dues). An own view (p_own_view, schema version 17)
-- leaves the routing out: a look's answer is on the handoff's path, and
-- each newcomer of a roll-out read every partition's new owner in it (a
-- ring of 4,096: 4 ms in the database and as long to decode, for each of
-- the newcomers that waited for the same release), while what it waits
-- for is its own partitions; the routing comes with its next whole view.
-- With p_owner_ids (schema version 18) the owners that changed come as
-- node ids (owner_ids, NULL: none) rather than indexes into the members:
-- an index is the member's rank among all of them, and ranking every
-- member for each view took most of the time of a whole view (2,000
-- members: 3.0 ms for 328 owners that changed, 0.4 ms by id), while the
-- node has the member list to look the ids up in.
CREATE OR REPLACE FUNCTION leasering.ring_view(p_ring text, p_node text, p_known bigint, p_own_view boolean DEFAULT false,
                                               p_owner_ids boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = leasering, pg_temp
AS $$
BEGIN
    RETURN (SELECT jsonb_build_object(
               'ring', r.name,
               'version', r.version,
               'status', 'ok',
               'partitions', coalesce(to_jsonb(mine.partitions), '[]'),
               'epochs', coalesce(to_jsonb(mine.epochs), '[]'),
               'revoking', coalesce(to_jsonb(mine.revoking), '[]'),
               'member_ids', CASE WHEN r.members_changed > p_known AND NOT p_own_view THEN
                   coalesce((SELECT jsonb_agg(m.node_id ORDER BY m.node_id) FROM members m WHERE m.ring = r.name), '[]') END,
               'members', CASE WHEN r.members_changed > p_known AND NOT p_own_view THEN
                   coalesce((SELECT jsonb_agg(jsonb_build_object('id', m.node_id, 'metadata', n.metadata,
                                                                 'vnodes', m.vnodes, 'positions', m.positions)
                                              ORDER BY m.node_id)
                               FROM members m JOIN nodes n ON n.node_id = m.node_id
                              WHERE m.ring = r.name AND (p_known = 0 OR m.changed > p_known)), '[]') END,
               'changed', to_jsonb(coalesce(routing.changed, by_id.changed)),
               'owners', to_jsonb(routing.owners),
               'owner_ids', to_jsonb(by_id.owner_ids),
               'own_view', p_own_view) || incoming_dues(r.name, p_node)
      FROM rings r,
           LATERAL (SELECT array_agg(p.partition ORDER BY p.partition) AS partitions,
                           array_agg(p.epoch ORDER BY p.partition) AS epochs,
                           array_agg(p.partition ORDER BY p.partition) FILTER (WHERE p.next_owner IS NOT NULL) AS revoking
                      FROM partitions p WHERE p.ring = r.name AND p.owner = p_node AND NOT p.released) AS mine,
           LATERAL (SELECT array_agg(p.partition ORDER BY p.partition) AS changed,
                           array_agg(coalesce(mi.idx, -1) ORDER BY p.partition) AS owners
                      FROM partitions p
                      LEFT JOIN (SELECT node_id, row_number() OVER (ORDER BY node_id) - 1 AS idx
                                   FROM members WHERE ring = r.name) AS mi ON mi.node_id = p.owner
                     WHERE p.ring = r.name AND p.granted > p_known AND NOT p_own_view AND NOT p_owner_ids) AS routing,
           LATERAL (SELECT array_agg(p.partition ORDER BY p.partition) AS changed,
                           array_agg(p.owner ORDER BY p.partition) AS owner_ids
                      FROM partitions p
                     WHERE p.ring = r.name AND p.granted > p_known AND NOT p_own_view AND p_owner_ids) AS by_id
     WHERE r.name = p_ring);
END
$$;

-- record_join: node p_node's join of ring p_ring waits for the ring's lock
-- (the first call of join_rings, and the second's for a join not recorded
-- yet). Creates the ring on first use. Returns 'size_mismatch' (the ring
-- has another size: nothing written), 'ok' (already joined with these
-- vnodes, heartbeat and drain: nothing to do) or 'waiting'. Takes no
-- ring's lock: the row in joins is the node's own (see LOCK ORDER).
CREATE OR REPLACE FUNCTION leasering.record_join(p_node text, p_incarnation text, p_ring text, p_size integer, p_vnodes integer,
                                                 p_heartbeat_ms integer, p_drain_ms integer)
RETURNS text
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    cur_size integer;
BEGIN
    SELECT size INTO cur_size FROM rings WHERE name = p_ring;
    IF NOT FOUND THEN
        INSERT INTO rings (name, size, told_at) VALUES (p_ring, p_size, (SELECT noticed_at FROM server_identity))
        ON CONFLICT (name) DO NOTHING;
        IF FOUND THEN
            INSERT INTO partitions (ring, partition)
            SELECT p_ring, g FROM generate_series(0, p_size - 1) AS g;
        END IF;
        SELECT size INTO cur_size FROM rings WHERE name = p_ring;
    END IF;
    IF cur_size <> p_size THEN
        RETURN 'size_mismatch';
    END IF;
    IF joined(p_node, p_incarnation, p_ring, p_vnodes)
       AND EXISTS (SELECT 1 FROM members WHERE ring = p_ring AND node_id = p_node
                      AND (heartbeat_ms, drain_ms) IS NOT DISTINCT FROM (p_heartbeat_ms, p_drain_ms)) THEN
        RETURN 'ok';
    END IF;
    INSERT INTO joins AS j (ring, node_id, incarnation, vnodes, heartbeat_ms, drain_ms)
    VALUES (p_ring, p_node, p_incarnation, p_vnodes, p_heartbeat_ms, p_drain_ms)
    ON CONFLICT (ring, node_id) DO UPDATE
       SET incarnation = excluded.incarnation, vnodes = excluded.vnodes,
           heartbeat_ms = excluded.heartbeat_ms, drain_ms = excluded.drain_ms
     WHERE (j.incarnation, j.vnodes, j.heartbeat_ms, j.drain_ms)
           IS DISTINCT FROM (excluded.incarnation, excluded.vnodes, excluded.heartbeat_ms, excluded.drain_ms);
    RETURN 'waiting';
END
$$;

-- joined: incarnation p_incarnation of node p_node is a member of ring
-- p_ring with p_vnodes vnodes, claimed.
CREATE OR REPLACE FUNCTION leasering.joined(p_node text, p_incarnation text, p_ring text, p_vnodes integer)
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT 1 FROM leasering.members m
                    WHERE m.ring OPERATOR(pg_catalog.=) p_ring AND m.node_id OPERATOR(pg_catalog.=) p_node
                      AND m.claimed_by OPERATOR(pg_catalog.=) p_incarnation AND m.vnodes OPERATOR(pg_catalog.=) p_vnodes)
$$;

-- join_waiting: joins every node recorded as waiting for ring p_ring
-- (record_join) whose lease is live and whose incarnation recorded it, then
-- rebalances once. The caller holds the ring's row lock. Rows and nodes
-- another transaction holds are skipped, never waited for: a join being
-- recorded again, or a node being evicted; their own calls join them (a
-- node taken over meanwhile may be joined for its old incarnation: the
-- new one reclaims the member row). The rows it joined are deleted; a row of an older incarnation
-- is overwritten by the newer one's record, and an evicted node's goes with
-- its node row.
CREATE OR REPLACE FUNCTION leasering.join_waiting(p_ring text)
RETURNS void
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    j       record;
    st      text;
    placed  boolean := false;  -- a member row was made or changed
    changed boolean := false;  -- anything to rebalance
    done    text[] := '{}';
BEGIN
    FOR j IN
        SELECT w.node_id, w.incarnation, w.vnodes, w.heartbeat_ms, w.drain_ms, g.size
          FROM joins w
          JOIN nodes n ON n.node_id = w.node_id
          JOIN rings g ON g.name = w.ring
         WHERE w.ring = p_ring AND n.incarnation = w.incarnation AND n.expires_at > now()
         ORDER BY w.node_id
           FOR UPDATE OF w SKIP LOCKED
           FOR KEY SHARE OF n SKIP LOCKED
    LOOP
        PERFORM 1 FROM members WHERE ring = p_ring AND node_id = j.node_id FOR UPDATE SKIP LOCKED;
        IF NOT FOUND AND EXISTS (SELECT 1 FROM members WHERE ring = p_ring AND node_id = j.node_id) THEN
            CONTINUE;  -- its member row is busy (a view being read): its own call joins it
        END IF;
        st := claim_vnodes(j.node_id, j.incarnation, p_ring, j.size, j.vnodes);
        placed := placed OR st = 'placed';
        changed := changed OR st IN ('placed', 'reclaimed');
        UPDATE members m SET heartbeat_ms = j.heartbeat_ms, drain_ms = j.drain_ms
         WHERE m.ring = p_ring AND m.node_id = j.node_id
           AND (m.heartbeat_ms, m.drain_ms) IS DISTINCT FROM (j.heartbeat_ms, j.drain_ms);
        done := array_append(done, j.node_id);
    END LOOP;
    DELETE FROM joins WHERE ring = p_ring AND node_id = ANY (done);
    IF changed THEN
        -- Under the ring's lock anyway: hand on what was released while it
        -- was busy (confirm_releases). Batches of joins held it back to back
        -- during a roll-out, and the pending owners' own tries for it gave up.
        IF placed THEN
            PERFORM settle_joins(p_ring);
        END IF;
        PERFORM hand_on_released(p_ring);
        PERFORM rebalance(p_ring);
        PERFORM bump_version(p_ring, placed);
    END IF;
END
$$;

-- settle_joins: a batch of joins placed members in ring p_ring
-- (join_waiting, which holds the ring's lock and rebalances next). If the
-- batch before came within a heartbeat (the longest its members joined
-- with), the joins come in a burst, as in a roll-out: until a heartbeat
-- after the last batch (settle_until) rebalance tells no live owner to
-- give a partition up, and the first heartbeat of a member after that
-- rebalances (settled); the owners renew just after it, so each is told
-- then. (Half a heartbeat was too short: in a roll-out of 500 nodes on one
-- pool of 20 some batches came more than that apart, and 778 partitions
-- moved twice.) Otherwise each batch would move a share of
-- the ring to its newcomers, and the next batches would move much of it
-- again, from the newcomers to later ones: A to B, then B to C
-- (TestRollout: 36-982 partitions moved twice in roll-outs of 100 nodes,
-- on version 19). Free partitions, a dead owner's, those given to a node
-- that has not heard of them yet, and those on their way still go at
-- once, as the quotas say. A join after a quiet heartbeat rebalances at
-- once, as before; members joined by a release before version 9, whose
-- heartbeat the ring does not know, never hold anything back. Nor does a
-- ring of more than 4,096 partitions: the rebalance after the burst runs
-- in a heartbeat (settled), and on a ring of 65,536 a rebalance takes
-- 0.27-0.61 s (BENCHMARKS.md, Big rings), which a heartbeat must never
-- spend. And a burst holds its moves back for at most 60 (max_settle_beats)
-- heartbeats from its first batch (burst_began): joins that never stop
-- (nodes that crash and come back under new ids faster than a heartbeat)
-- must not keep the ring from ever balancing; past that, each batch
-- rebalances at once until a quiet heartbeat.
CREATE OR REPLACE FUNCTION leasering.settle_joins(p_ring text)
RETURNS void
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    max_settle_beats constant integer := 60;
    hb interval := (SELECT max(heartbeat_ms) * interval '1 millisecond' FROM members WHERE ring = p_ring);
BEGIN
    UPDATE rings
       SET burst_began = CASE WHEN joined_at > now() - hb THEN coalesce(burst_began, joined_at) END,
           settle_until = CASE WHEN joined_at > now() - hb AND size <= 4096
                                    AND coalesce(burst_began, joined_at) > now() - max_settle_beats * hb
                               THEN now() + hb END,
           joined_at = now()
     WHERE name = p_ring;
END
$$;

-- settled: the burst of joins of ring p_ring has settled (settle_joins):
-- rebalance, telling owners what to give up. Called by ring_work for the
-- first heartbeat of a member after settle_until. The owners renew just
-- after it (renew_and_read's settles_ms), so that each is told then
-- rather than up to a heartbeat later. The ring's lock is only tried
-- (NOWAIT): every member's heartbeat comes here until the rebalance
-- commits, and waiting, they queued on the ring's row behind each other
-- and behind batches of joins (TestChaos: a node's heartbeats held there
-- heard of a partition 109 ms past G3's bound). An owner that finds the
-- lock busy hears again that the burst settles (now), and renews again a
-- twentieth of a heartbeat later.
CREATE OR REPLACE FUNCTION leasering.settled(p_ring text)
RETURNS void
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM rings WHERE name = p_ring AND settle_until <= now() FOR UPDATE NOWAIT;
    IF FOUND THEN
        UPDATE rings SET settle_until = NULL WHERE name = p_ring;
        PERFORM hand_on_released(p_ring);
        IF rebalance(p_ring) > 0 THEN
            PERFORM bump_version(p_ring);
        END IF;
    END IF;
EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
    NULL;  -- the next heartbeat
END
$$;

-- claim_vnodes: incarnation p_incarnation of node p_node joins (or
-- rejoins) a ring. The caller holds the ring's row lock and rebalances
-- after it (join_waiting, once for all the joins it makes). The node's
-- lease row must exist. Refuses a size other than the ring's, places the
-- vnodes. A member row left by an older incarnation, or by this one
-- before its lease lapsed, is reclaimed: the epochs of the partitions the
-- node owns there rise, so the fencing tokens handed out before die, and
-- the ring must be rebalanced. That moves nothing in a balanced ring, but
-- a rebalance may have run while the lease had lapsed and the node counted
-- as dead: it may have left the ring without owners (no other live
-- member) or given the node's share to others, and nothing else would
-- give it back until the members change (found by the invariant check,
-- unowned_with_live_member). Returns 'placed' (a member row made or its
-- vnodes changed: stamped with next_version), 'reclaimed', 'ok' (nothing
-- changed) or 'size_mismatch' (nothing written).
CREATE OR REPLACE FUNCTION leasering.claim_vnodes(p_node text, p_incarnation text, p_ring text, p_size integer, p_vnodes integer)
RETURNS text
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    m  members;
    st text := 'ok';
BEGIN
    IF (SELECT size FROM rings WHERE name = p_ring) <> p_size THEN
        RETURN 'size_mismatch';
    END IF;
    SELECT * INTO m FROM members WHERE ring = p_ring AND node_id = p_node FOR UPDATE;
    IF FOUND AND m.claimed_by IS DISTINCT FROM p_incarnation THEN
        UPDATE partitions SET epoch = epoch + 1 WHERE ring = p_ring AND owner = p_node;
        UPDATE members SET claimed_by = p_incarnation WHERE ring = p_ring AND node_id = p_node;
        st := 'reclaimed';
    END IF;
    INSERT INTO members AS mm (ring, node_id, vnodes, positions, changed, claimed_by)
    VALUES (p_ring, p_node, p_vnodes, vnode_positions(p_ring, p_node, p_vnodes), next_version(p_ring), p_incarnation)
    ON CONFLICT (ring, node_id) DO UPDATE
       SET vnodes = excluded.vnodes, positions = excluded.positions, changed = excluded.changed
     WHERE mm.vnodes <> excluded.vnodes;
    IF FOUND THEN
        st := 'placed';
    END IF;
    RETURN st;
END
$$;

-- confirm_releases: node p_node has stopped using p_released of ring
-- p_ring, which it was told to give up. If it gets the ring's lock at
-- once, their pending owners take them over (epoch + 1) in one write of
-- each row, and every other released partition of the ring is handed on
-- too (hand_on_released); without the lock it marks them released, with
-- the row locks of its own partitions only. If another call
-- holds that lock, the pending owner's next heartbeat or look hands them
-- on (ring_work), or the next scanning heartbeat does. Before schema
-- version 16 a release waited for the ring's lock (at most 100 ms) and
-- was undone when it did not come: with 100 processes each on a pool of
-- its own starting at once on a server of two cores, releases queued
-- there behind 15-20 others, most gave up, and some partitions went
-- unreported for 10-25 s, past the TTL (TestRollout, BENCHMARKS.md).
-- The mark takes its partitions' rows, not the ring's, and skips those
-- another transaction holds (a rebalance that retargets them, a user's
-- holds()): they stay revoking in the node's view, and its next heartbeat
-- releases them again: a rebalance holds them for hundreds of
-- milliseconds under load (300 ms on average in TestRollout
-- -rollout.pool=2), and a wait that gave up would undo the heartbeat's
-- ring work. The ring's lock is only tried (NOWAIT), never waited for
-- (see the lock order's exceptions). A pending owner that died is left for its eviction to
-- retarget. While the node holds (hold_end is ahead) the process speaks
-- only for itself, and an older incarnation of the node id may still be
-- using the partitions: they stay released until the hold is over.
CREATE OR REPLACE FUNCTION leasering.confirm_releases(p_node text, p_ring text, p_released integer[], p_ttl_ms integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    marked  boolean;
    holding boolean := EXISTS (SELECT 1 FROM nodes WHERE node_id = p_node AND hold_end(hold_until) > now());
    ringed  boolean := false;  -- this transaction holds the ring's lock
    handed  boolean := false;
    stamp   bigint;
BEGIN
    IF NOT holding THEN
        BEGIN
            PERFORM 1 FROM rings WHERE name = p_ring FOR UPDATE NOWAIT;
            ringed := true;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- marked only: the pending owners' next heartbeats hand them on
        END;
    END IF;
    -- With the ring's lock, what goes to a live member changes owner at
    -- once: one write of each row, where a mark and then the hand-on wrote
    -- it twice, and the newcomers wait for this commit (a roll-out's first
    -- node releases 3,686 partitions of 4,096 in one call: TestRollout).
    -- Whatever that leaves is marked, as without the lock.
    IF ringed THEN
        stamp := next_version(p_ring);
        UPDATE partitions p
           SET owner = p.next_owner, next_owner = NULL, epoch = p.epoch + 1, released = false, release_due = NULL,
               changed = stamp, granted = stamp
         WHERE (ring, partition) IN (
               SELECT q.ring, q.partition
                 FROM unnest(p_released) AS r (part)
                 JOIN partitions q ON q.ring = p_ring AND q.partition = r.part
                WHERE q.owner = p_node AND q.next_owner IS NOT NULL AND NOT q.released
                  AND EXISTS (SELECT 1 FROM members m JOIN nodes n ON n.node_id = m.node_id
                               WHERE m.ring = p_ring AND m.node_id = q.next_owner AND n.expires_at > now())
                  FOR NO KEY UPDATE OF q SKIP LOCKED);
        handed := FOUND;
        IF handed THEN
            PERFORM bump_version(p_ring);
        END IF;
    END IF;
    UPDATE partitions SET released = true
     WHERE (ring, partition) IN (
           SELECT p.ring, p.partition
             FROM unnest(p_released) AS r (part)  -- partition = ANY (p_released) compared each of the owner's rows
             JOIN partitions p ON p.ring = p_ring AND p.partition = r.part  -- with every listed one: 40 ms for
                                                                           -- 1,024 of 4,096 (TestRollout)
            WHERE p.owner = p_node AND p.next_owner IS NOT NULL AND NOT p.released
              FOR NO KEY UPDATE OF p SKIP LOCKED);
    marked := FOUND;
    IF holding OR NOT ringed THEN
        RETURN;
    END IF;
    -- Released now, or marked before (during a hold now over, whose
    -- holder confirms again): hand on every released partition of the ring.
    IF handed OR marked OR EXISTS (SELECT 1 FROM partitions WHERE ring = p_ring AND owner = p_node AND released) THEN
        PERFORM hand_on_released(p_ring);
    END IF;
END
$$;

-- wait_until: sleeps until p_at (NULL or past: not at all); returns the
-- milliseconds it slept, rounded down. A release sent ahead of its drain's
-- end (THE HANDOFF TIMELINE) waits here before its writes, as long as they
-- are estimated to take, and after them, so that it commits at the
-- drain's end; never more than the second that release_at admits.
CREATE OR REPLACE FUNCTION leasering.wait_until(p_at timestamptz)
RETURNS integer
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    began timestamptz := clock_timestamp();
BEGIN
    WHILE clock_timestamp() < p_at LOOP  -- pg_sleep may end up to a millisecond early
        PERFORM pg_sleep(greatest(extract(epoch FROM p_at - clock_timestamp()), 0.001));
    END LOOP;
    RETURN floor(extract(epoch FROM clock_timestamp() - began) * 1000);
END
$$;

-- release_at: when a release sent with release_after_ms = p_after_ms may
-- commit: that long after the statement began, which is after the client
-- sent it, so never before the drain's end on the client's clock. Refuses
-- (22023) a wait under 0 or over a second: the call would hold a pooled
-- connection, and the ring's lock, that long.
CREATE OR REPLACE FUNCTION leasering.release_at(p_after_ms integer)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = leasering, pg_temp
AS $$
BEGIN
    IF p_after_ms NOT BETWEEN 0 AND 1000 THEN
        RAISE EXCEPTION 'release_after_ms must be between 0 and 1000, not %', p_after_ms USING ERRCODE = '22023';
    END IF;
    RETURN statement_timestamp() + p_after_ms * interval '1 millisecond';
END
$$;

-- release_work: how long the release of p_count partitions and the view
-- after it take, as ring_work estimates it to start them that long before
-- their drain's end: 2 ms and 40 µs a partition (the release of 3,686 and
-- the view after it took 150 ms beside ten nodes' looks and their checker
-- on two cores; 1,024 take 11 ms on an idle server). Too short, and the
-- change commits that much after the end; too long, and the ring's lock is
-- held that much longer.
CREATE OR REPLACE FUNCTION leasering.release_work(p_count integer)
RETURNS interval
LANGUAGE sql IMMUTABLE
AS $$ SELECT (2 + p_count / 25.0) * interval '1 millisecond' $$;

-- release_key: the advisory lock a call that releases partitions of ring
-- p_ring owned by node p_node holds, exclusively, from before its writes
-- to its commit (ring_work, late_heartbeat), so that a look waiting for them sees
-- the release on its way and wakes at its commit (await_release,
-- release_awaited). Keys of two pairs that collide only make a look wait
-- longer, never past its bound, and the second releasing call wait for the
-- first up to its lock_timeout.
CREATE OR REPLACE FUNCTION leasering.release_key(p_ring text, p_node text)
RETURNS bigint
LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.hashtextextended(pg_catalog.current_schema() || ' release ' || p_ring || ' ' || p_node, 0) $$;

-- hold_release_key: a call that releases partitions of ring p_ring owned
-- by node p_node (TTL p_ttl_ms) takes release_key's lock, exclusively,
-- until its commit, for the looks waiting for those partitions
-- (release_awaited). Each look waiting for a release not yet begun tries
-- that lock, shared, every poll, and holds it for the moment of the try:
-- on a starved CPU, for longer than the heartbeat's lock_timeout of
-- 20 ms. Waited for under that timeout, the lock failed the whole
-- release, undone and sent again a heartbeat later (TestRollout, 100
-- nodes: an owner's release of 4,055 partitions came back without its
-- view and went again a second later). So the call waits for it up to
-- 250 ms (a quarter of its TTL at most: set_lock_wait's bound) and, if
-- it does not come, goes on without it: the looks then do not see the
-- release on its way, and one past its await_ms hears of it with the
-- node's next look.
CREATE OR REPLACE FUNCTION leasering.hold_release_key(p_ring text, p_node text, p_ttl_ms integer)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    was text := current_setting('lock_timeout');
BEGIN
    BEGIN
        PERFORM set_lock_wait(p_ttl_ms, 250);
        PERFORM pg_advisory_xact_lock(release_key(p_ring, p_node));
        PERFORM set_config('lock_timeout', was, true);
        RETURN true;  -- the subtransaction ends well: its lock is the call's
    EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
        RETURN false;  -- its lock_timeout went with it
    END;
END
$$;

-- release_awaited: whether a call held the release lock (release_key) of
-- one of p_keys; if so, it waits, up to p_until (10 ms at a time when
-- there are several keys), for that call to end (its commit lets the lock
-- go), asleep in the lock's queue rather than polling. The releasing
-- call holds the lock exclusively and the looks ask for it shared, so
-- that its commit wakes every look waiting at once:
-- asked for exclusively, the 89 looks of a 100-node roll-out that waited
-- for one release were granted it one after another, the last 125 ms
-- after the commit. Each look's lock is taken in a subtransaction rolled
-- back at once, so it is never kept; a later releasing call of the same
-- owner and ring waits for the looks queued before it only until the
-- call before it commits, and a look holds no other lock (await_release
-- runs before the heartbeat takes any), so its wait closes no cycle.
CREATE OR REPLACE FUNCTION leasering.release_awaited(p_keys bigint[], p_until timestamptz)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    k     bigint;
    held  boolean := false;
    wakes timestamptz;  -- the end of this wait
BEGIN
    FOREACH k IN ARRAY coalesce(p_keys, '{}') LOOP
        EXIT WHEN clock_timestamp() >= p_until;
        BEGIN
            IF NOT pg_try_advisory_xact_lock_shared(k) THEN
                held := true;
                -- Asleep on one owner's call, a look would not see another's
                -- commit: with several owners awaited, it wakes every 10 ms
                -- to look (the caller's loop) and sleeps again.
                wakes := CASE WHEN cardinality(p_keys) > 1 THEN least(p_until, clock_timestamp() + interval '10 milliseconds')
                              ELSE p_until END;
                PERFORM set_config('lock_timeout',
                                   greatest(ceil(extract(epoch FROM wakes - clock_timestamp()) * 1000), 1)::text || 'ms', true);
                PERFORM pg_advisory_xact_lock_shared(k);  -- granted when the releasing call ends
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'LR009';
        EXCEPTION WHEN SQLSTATE 'LR009' OR lock_not_available OR deadlock_detected THEN
            NULL;  -- the lock, if taken, and the lock_timeout went with the subtransaction
        END;
        IF held THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$$;

-- hand_on_released: partitions of ring p_ring that their owner released
-- go to their pending owners, epoch + 1 (see confirm_releases); those of
-- an owner that holds, once the hold is over (the older incarnation's
-- lease has ended then). The caller holds the ring's row lock.
CREATE OR REPLACE FUNCTION leasering.hand_on_released(p_ring text)
RETURNS void
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    stamp bigint := next_version(p_ring);
BEGIN
    UPDATE partitions p
       SET owner = p.next_owner, next_owner = NULL, epoch = p.epoch + 1, released = false, release_due = NULL,
           changed = stamp, granted = stamp
     WHERE p.ring = p_ring AND p.released
       AND EXISTS (SELECT 1 FROM nodes o WHERE o.node_id = p.owner AND hold_end(o.hold_until) <= now())
       AND EXISTS (SELECT 1 FROM members m JOIN nodes n ON n.node_id = m.node_id
                    WHERE m.ring = p_ring AND m.node_id = p.next_owner AND n.expires_at > now());
    IF FOUND THEN
        PERFORM bump_version(p_ring);
    END IF;
END
$$;

-- failover_grace (G9): the end of this server's grace, in the past when
-- there is none. The first call on another server than the one recorded in
-- server_identity (a promoted replica, a restored copy, the same server
-- restarted: its postmaster started at another time; or the row is gone)
-- records this one and starts a grace of the longest TTL on the nodes'
-- rows, on its own clock from now: every lease counts as live until then.
-- A node renewed on the old server, at the latest, just before this one
-- took over, so by then every lease the old server granted has ended,
-- however many renewals this one lacks and whatever the old server's clock
-- said. Called only where a lease's end decides a takeover (rebalance,
-- scan_and_evict, take_lease over another incarnation), never by a steady
-- heartbeat.
CREATE OR REPLACE FUNCTION leasering.failover_grace()
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    s       server_identity;
    known   boolean;      -- the row exists
    longest timestamptz;  -- a grace that starts now
BEGIN
    SELECT * INTO s FROM server_identity;
    known := FOUND;
    IF known AND s.started_at = pg_postmaster_start_time() THEN
        RETURN s.grace_until;  -- the steady case: a read, no lock
    END IF;
    SELECT now() + coalesce(max(ttl_ms), 0) * interval '1 millisecond' INTO longest FROM nodes;
    -- Record it without waiting: the caller may hold rings, and a heartbeat
    -- must not spend its lease on this row. Whoever finds the row busy (it
    -- is being recorded) goes by a grace that starts now, which ends no
    -- earlier than the one being recorded.
    BEGIN
        IF NOT known THEN
            INSERT INTO server_identity (started_at, noticed_at, grace_until)
            VALUES (pg_postmaster_start_time(), now(), longest)
            ON CONFLICT (id) DO NOTHING;
            RETURN longest;
        END IF;
        SELECT * INTO s FROM server_identity FOR UPDATE NOWAIT;
        IF s.started_at = pg_postmaster_start_time() THEN
            RETURN s.grace_until;  -- recorded meanwhile
        END IF;
        UPDATE server_identity SET started_at = pg_postmaster_start_time(), noticed_at = now(), grace_until = longest;
    EXCEPTION WHEN lock_not_available THEN
        NULL;
    END;
    RETURN longest;
END
$$;

-- hold_end (G9): when a hold recorded as ending at p_hold_until ends on
-- this server. hold_until is a time of the clock of the server that set
-- it; on another one (a promoted replica, a restored copy), whose clock
-- may be ahead, the hold lasts at least until the end of that server's
-- grace, which outlasts every lease the first server granted. '-infinity'
-- (no hold) is not asked about: a steady heartbeat never reads the
-- server's identity.
CREATE OR REPLACE FUNCTION leasering.hold_end(p_hold_until timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
BEGIN
    IF p_hold_until = '-infinity' THEN
        RETURN p_hold_until;
    END IF;
    RETURN greatest(p_hold_until, failover_grace());
END
$$;

-- held_released: the rings with partitions released and not handed on
-- yet (during a hold, or while the ring's lock was busy: confirm_releases),
-- and whether their owner's hold is over on this server (an owner with no
-- hold, or whose hold was forgotten, '-infinity', counts as over: a late
-- heartbeat's release may commit after settle_hold looked). Every scan asks. Asked as
-- EXISTS (...), PostgreSQL planned a scan of every partition, which wants
-- one row fast and, with no statistics yet on a new ring, expects many
-- released: 70 ms a call on a ring of 65,536, the most frequent point
-- where heartbeats were cancelled with 100 nodes on it at TTL 1 s. Asked
-- whole, it reads the partial index partitions_released: under 1 ms.
-- hold_end is asked once per ring and hold, not per partition: with 2,000
-- nodes rolling out, scans called this 300 times a second while a thousand
-- or two released rows waited, at 5.7 ms a call, most of it in hold_end
-- (TestHeldReleasedAsksEachHoldOnce).
CREATE OR REPLACE FUNCTION leasering.held_released()
RETURNS TABLE (ring text, over boolean)
LANGUAGE plpgsql  -- not STABLE: hold_end may record a new server (failover_grace)
SET search_path = leasering, pg_temp
AS $$
BEGIN
    RETURN QUERY
        SELECT DISTINCT h.ring, hold_end(h.hold_until) <= now()
          FROM (SELECT DISTINCT p.ring, o.hold_until
                  FROM partitions p
                  JOIN nodes o ON o.node_id = p.owner
                 WHERE p.released) AS h;
END
$$;

-- evict_expired: remove every node whose lease has lapsed in database time
-- (their member rows go with them) and return the rings they were in, for
-- the caller to rebalance in name order. Nodes whose row another
-- transaction holds (a rejoin, a leave, a rebalance deciding who is dead)
-- are skipped, never waited for.
CREATE OR REPLACE FUNCTION leasering.evict_expired(p_except text)
RETURNS text[]
LANGUAGE sql
SET search_path = leasering, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM nodes
         WHERE node_id IN (SELECT node_id FROM nodes
                            WHERE expires_at <= now() AND node_id <> p_except
                              FOR UPDATE SKIP LOCKED)
        RETURNING node_id)
    SELECT coalesce(array_agg(DISTINCT m.ring ORDER BY m.ring), '{}')
      FROM members m JOIN gone ON gone.node_id = m.node_id
$$;

-- rebalance: sticky, bounded-load consistent hashing for one ring. The
-- caller holds the ring's row lock and calls bump_version(p_ring, true)
-- after it. Returns the number of partitions whose owner or pending owner
-- changed.
--
-- 1. Live members are the ring's members whose node lease has not expired,
--    or whose node's row another transaction holds (it may be renewing).
-- 2. Each partition's holder is its pending owner if live, else its owner if
--    live, else nobody (free).
-- 3. Quotas: size split in proportion to vnodes, floor for all; the remainder
--    goes to members whose share has a fraction, those holding most above
--    their floor first, so that as little as possible moves.
-- 4. Candidates are the free partitions and every partition of a member over
--    quota. Each looks clockwise for the first vnode of a member under quota.
--    Free ones go first, then those still on their way to a member over
--    quota (sent elsewhere, they move once, not to that member and then on:
--    a roll-out's joins keep coming while its handoffs drain), then the
--    nearest; a member over quota gives up only
--    its excess, a member under quota takes only what it lacks, and a
--    candidate whose first choice is full walks on to the next.
-- 5. Apply: a partition whose owner is gone goes straight to its holder with
--    epoch + 1, and so does one whose owner has not been told it has it
--    (granted after the last view the owner was given: it cannot be using
--    it); one whose live owner must give it up gets next_owner and is
--    handed over when the owner confirms (confirm_releases), unless a
--    burst of joins is settling (settle_joins): then it stays as it is,
--    and the rebalance after the burst (settled) moves it once. A heartbeat
--    locks its node's member row before it reads a view and records the
--    view's version there (give_view), and rebalance share-locks the
--    members before it reads seen, so a partition is never moved this way
--    from an owner whose view, read concurrently, gives it to them.
--    Rebalance never waits for a member's row (its leave or eviction may be
--    waiting for this ring): a member whose row is busy counts as told.
--    Only rows that can change are looked at (look): a partition whose
--    owner is live, with no pending owner, that step 4 left alone keeps its
--    row either way. On a ring of 65,536 an eviction's rebalance then
--    writes what moves, not every row (TestRebalanceMatchesItsReference
--    checks it against the version that rewrote every row).
CREATE OR REPLACE FUNCTION leasering.rebalance(p_ring text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    q          integer;
    ids        text[];     -- live members, in node_id order; a member is its index here
    weights    integer[];
    holder     integer[];  -- per partition p at [p + 1]: holding member, 0 for none
    pending    boolean[];  -- per partition p at [p + 1]: its holder is its next owner, not yet given it
    have       integer[];
    quota      integer[];
    v_pos      bigint[];   -- vnodes of members under quota, clockwise
    v_mem      integer[];
    v_len      integer;
    total_need integer;
    c          record;
    vi         integer;
    changed    integer;
    look       integer[];  -- partitions whose row may change: owner not live, a next owner, or moved below
    stamp      bigint := next_version(p_ring);
    steady     text[];     -- members whose row we share-locked: their seen is final
    steady_seen bigint[];  -- and that seen
    dead       text[];     -- nodes whose lease has lapsed, their rows locked by us
    in_grace   boolean;    -- G9: see failover_grace
    told       bigint;     -- G9: every owner counts as told of what it was granted up to this version
    settling   boolean;    -- a burst of joins settles: no live, told owner is told to give anything up (settle_joins)
BEGIN
    SELECT size, coalesce(settle_until > now(), false) INTO q, settling FROM rings WHERE name = p_ring;
    -- A node whose lease has lapsed is dead only if we can lock its row. One
    -- locked by another transaction may be renewing it this instant (and
    -- reading a view that still gives it its partitions), or be evicted by
    -- someone who rebalances after us: it counts as live.
    -- G9: in a grace nobody is dead, and every owner counts as told of its
    -- partitions (seen, written by heartbeats, may be older here than the
    -- views the owners read): nothing is taken over, only handed over.
    in_grace := now() < failover_grace();
    -- G9, after the grace too: a member's seen may be older here than the
    -- view it read on the server before, and its heartbeats, at the ring's
    -- version already, would never correct it. The first rebalance of a
    -- ring under a new server identity records the ring's version: every
    -- owner counts as told of what it was granted up to it.
    UPDATE rings r SET told_through = r.version, told_at = s.noticed_at
      FROM server_identity s
     WHERE r.name = p_ring AND r.told_at IS DISTINCT FROM s.noticed_at;
    SELECT told_through INTO told FROM rings WHERE name = p_ring;
    SELECT coalesce(array_agg(d.node_id), '{}') INTO dead
      FROM (SELECT node_id FROM nodes WHERE expires_at <= now() AND NOT in_grace FOR SHARE SKIP LOCKED) AS d;
    -- Step 5 reads each live member's seen, so share-lock those rows (a view
    -- being read finishes first) and read seen with the lock. Never wait for
    -- one: a leave or an eviction that deleted it waits for this ring, and a
    -- busy member simply counts as told, which only means a handoff.
    SELECT coalesce(array_agg(s.node_id), '{}'), coalesce(array_agg(s.seen), '{}') INTO steady, steady_seen
      FROM (SELECT m.node_id, m.seen FROM members m JOIN nodes n ON n.node_id = m.node_id
             WHERE m.ring = p_ring AND n.node_id <> ALL (dead)
               FOR SHARE OF m SKIP LOCKED) AS s;
    SELECT coalesce(array_agg(m.node_id ORDER BY m.node_id), '{}'),
           coalesce(array_agg(m.vnodes ORDER BY m.node_id), '{}')
      INTO ids, weights
      FROM members m
      JOIN nodes n ON n.node_id = m.node_id
     WHERE m.ring = p_ring AND n.node_id <> ALL (dead);

    SELECT array_agg(coalesce(nx.ord, ow.ord, 0)::integer ORDER BY p.partition),
           array_agg(nx.ord IS NOT NULL ORDER BY p.partition),
           coalesce(array_agg(p.partition) FILTER (WHERE ow.ord IS NULL OR p.next_owner IS NOT NULL), '{}')
      INTO holder, pending, look
      FROM partitions p
      LEFT JOIN unnest(ids) WITH ORDINALITY AS ow (id, ord) ON ow.id = p.owner
      LEFT JOIN unnest(ids) WITH ORDINALITY AS nx (id, ord) ON nx.id = p.next_owner
     WHERE p.ring = p_ring;

    IF cardinality(ids) > 0 THEN
        SELECT array_agg(coalesce(h.n, 0)::integer ORDER BY u.ord)
          INTO have
          FROM generate_series(1, cardinality(ids)) AS u (ord)
          LEFT JOIN (SELECT x AS ord, count(*) AS n FROM unnest(holder) AS x WHERE x > 0 GROUP BY x) AS h
            ON h.ord = u.ord;

        SELECT array_agg(base + CASE WHEN frac > 0 AND rn <= q - total_base THEN 1 ELSE 0 END ORDER BY ord)
          INTO quota
          FROM (SELECT ord, base, frac,
                       sum(base) OVER () AS total_base,
                       row_number() OVER (ORDER BY frac > 0 DESC, h - base DESC, frac DESC, ord) AS rn
                  FROM (SELECT u.ord, u.h,
                               (q::bigint * u.w) / t.total AS base,
                               (q::bigint * u.w) % t.total AS frac
                          FROM unnest(weights, have) WITH ORDINALITY AS u (w, h, ord),
                               (SELECT sum(w) AS total FROM unnest(weights) AS w) AS t) AS s) AS s2;

        SELECT coalesce(sum(greatest(quota[i] - have[i], 0)), 0)
          INTO total_need
          FROM generate_subscripts(ids, 1) AS i;

        SELECT array_agg(pos ORDER BY pos, ord), array_agg(ord ORDER BY pos, ord)
          INTO v_pos, v_mem
          FROM (SELECT u.ord::integer AS ord, unnest(m.positions) AS pos
                  FROM unnest(ids) WITH ORDINALITY AS u (id, ord)
                  JOIN members m ON m.ring = p_ring AND m.node_id = u.id
                 WHERE have[u.ord] < quota[u.ord]) AS v;
        v_len := coalesce(cardinality(v_pos), 0);

        IF total_need > 0 THEN
            FOR c IN
                SELECT cand.part, cand.h, (width_bucket(cand.pos - 1, v_pos) % v_len) + 1 AS vi
                  FROM (SELECT (x.ord - 1)::integer AS part, x.h, x.pend,
                               (x.ord - 1) * 4294967296 / q AS pos
                          FROM unnest(holder, pending) WITH ORDINALITY AS x (h, pend, ord)
                         WHERE x.h = 0 OR have[x.h] > quota[x.h]) AS cand
                 ORDER BY cand.h = 0 DESC,
                          cand.pend DESC,  -- moved once: still on its way to a member over quota, it goes elsewhere instead
                          (v_pos[(width_bucket(cand.pos - 1, v_pos) % v_len) + 1] - cand.pos + 4294967296) % 4294967296,
                          cand.part
            LOOP
                EXIT WHEN total_need = 0;
                CONTINUE WHEN c.h > 0 AND have[c.h] <= quota[c.h];
                vi := c.vi;
                WHILE have[v_mem[vi]] >= quota[v_mem[vi]] LOOP
                    vi := vi % v_len + 1;
                END LOOP;
                have[v_mem[vi]] := have[v_mem[vi]] + 1;
                IF c.h > 0 THEN
                    have[c.h] := have[c.h] - 1;
                END IF;
                holder[c.part + 1] := v_mem[vi];
                look := look || c.part;
                total_need := total_need - 1;
            END LOOP;
        END IF;
    END IF;

    UPDATE partitions p
       SET owner = t.new_owner,
           next_owner = t.new_next,
           changed = stamp,
           granted = CASE WHEN t.new_owner IS DISTINCT FROM p.owner THEN stamp ELSE p.granted END,
           released = p.released AND t.new_owner IS NOT DISTINCT FROM p.owner AND t.new_next IS NOT NULL,
           release_due = CASE WHEN t.new_owner IS NOT DISTINCT FROM p.owner AND t.new_next IS NOT NULL
                              THEN p.release_due END,
           epoch = CASE WHEN t.new_owner IS DISTINCT FROM p.owner AND t.new_owner IS NOT NULL
                        THEN p.epoch + 1 ELSE p.epoch END
      FROM (SELECT x.part,
                   CASE WHEN x.keep THEN x.owner ELSE ids[x.h] END AS new_owner,
                   CASE WHEN x.keep AND ids[x.h] <> x.owner AND NOT (settling AND x.next_owner IS NULL)
                        THEN ids[x.h] END AS new_next
              FROM (SELECT pp.partition AS part, pp.owner, pp.next_owner, holder[pp.partition + 1] AS h,
                           ol.id IS NOT NULL  -- the owner is live
                           AND (in_grace OR st.id IS NULL OR pp.granted <= greatest(st.seen, told)) AS keep  -- busy counts as told
                      FROM (SELECT DISTINCT l FROM unnest(look) AS l) AS lk
                      JOIN partitions pp ON pp.ring = p_ring AND pp.partition = lk.l
                      LEFT JOIN unnest(ids) AS ol (id) ON ol.id = pp.owner
                      LEFT JOIN unnest(steady, steady_seen) AS st (id, seen) ON st.id = pp.owner) AS x) AS t
     WHERE p.ring = p_ring AND p.partition = t.part
       AND (p.owner, p.next_owner) IS DISTINCT FROM (t.new_owner, t.new_next);
    GET DIAGNOSTICS changed = ROW_COUNT;
    RETURN changed;
END
$$;

-- vnode_positions: ring geometry. The circle is [0, 2^32). Partition p of
-- Q starts at p * 2^32 / Q; a member's vnode i sits at the first 32 bits
-- of md5(ring, node, i). Equal positions are ordered by member, which
-- resolves collisions deterministically.
CREATE OR REPLACE FUNCTION leasering.vnode_positions(p_ring text, p_node text, p_vnodes integer)
RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = leasering, pg_temp
AS $$
BEGIN
    RETURN (SELECT array_agg(pos ORDER BY pos)
              FROM (SELECT ('x' || left(md5(p_ring || E'\n' || p_node || E'\n' || i), 8))::bit(32)::bigint AS pos
                      FROM generate_series(0, p_vnodes - 1) AS i) AS v);
END
$$;

-- For operators: rings, members, what each owns and how long its lease has.
CREATE OR REPLACE VIEW leasering.ring_members AS
SELECT m.ring,
       r.size,
       r.version,
       m.node_id,
       m.vnodes,
       n.metadata,
       (SELECT count(*) FROM leasering.partitions p WHERE p.ring = m.ring AND p.owner = m.node_id) AS owned,
       (SELECT count(*) FROM leasering.partitions p WHERE p.ring = m.ring AND p.next_owner = m.node_id) AS incoming,
       greatest(n.expires_at - now(), interval '0') AS lease_left,
       (SELECT max(p.epoch) FROM leasering.partitions p WHERE p.ring = m.ring AND p.owner = m.node_id) AS max_epoch
  FROM leasering.members m
  JOIN leasering.rings r ON r.name = m.ring
  JOIN leasering.nodes n ON n.node_id = m.node_id;

-- Only the owner runs the helpers; application roles get EXECUTE on the
-- entry points from the owner (see the README's GRANT statements).
-- partition_of touches no table and stays open to every role.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA leasering FROM PUBLIC;
GRANT EXECUTE ON FUNCTION leasering.partition_of(text, integer) TO PUBLIC;
