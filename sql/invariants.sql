-- leasering: the protocol's invariants, as one query (schema version 11).
--
-- It lists the state in the schema that no run of sql/functions.sql can
-- leave at any commit, one row per violation: kind, ring, partition, node
-- (each NULL when the violation is not about one) and detail, for people.
-- A healthy schema gives no row at any moment: in the middle of joins,
-- rebalances, handoffs, takeovers, holds and evictions too. It reads the
-- tables, so run it as the schema's owner (or a role that may read them
-- and run vnode_positions); it writes nothing and locks no row.
--
-- $1 is an interval: the longest TTL of the schema's clients ('10 s'
-- unless they set one). Three kinds depend on it; a TTL shorter than a
-- client's makes them flag healthy state.
--
-- Like the client's statements, it names every table and function with
-- its schema and every operator, function and type with pg_catalog, so
-- the caller's search_path never matters.
--
-- What one snapshot cannot show, and so is not here: two clients that
-- both report a partition (the database records each node's view only as
-- the ring version it was read at, members.seen; every node whose view is
-- at least as new as a partition's last change agrees on its one owner,
-- and what an older view said is gone), and an epoch that went down or
-- stayed the same across a change of owner (compare two readings of
-- partitions for that).
--
-- The kinds, and why the protocol never leaves them:
--
--   partition_count         a ring's partitions are not as many as its size.
--   partition_out_of_range  a partition number outside 0 .. size - 1.
--       claim_vnodes creates a ring and all its partitions in one
--       transaction; nothing adds or removes partitions afterwards.
--   owner_not_member, next_owner_not_member
--       a partition's owner, or its pending owner, has no member row in
--       the ring. Every change of members (join, leave, eviction)
--       rebalances the ring in its own transaction, and a rebalance gives
--       partitions only to members.
--   next_owner_without_owner, next_owner_is_owner
--       only a rebalance sets next_owner, and only beside a live owner
--       that keeps the partition until it confirms, and only to another
--       member.
--   released_without_next_owner
--       a partition is marked released only while it has a pending owner,
--       and every change that clears next_owner clears released.
--   bad_epoch
--       an epoch below 0, or a partition with an owner at epoch 0: the
--       epoch starts at 0 and rises by one with every new owner.
--   version_ahead
--       a version stamp newer than its ring: partitions.changed or
--       rings.members_changed above rings.version, partitions.granted
--       above partitions.changed, members.changed above
--       rings.members_changed, members.seen above rings.version. Every
--       change stamps its rows with the version that bump_version then
--       gives the ring, in the same transaction.
--   wrong_positions
--       a member's vnode positions are not vnode_positions(ring, node,
--       vnodes), the only positions claim_vnodes writes.
--   unowned_with_live_member
--       a ring with partitions that have no owner while a member's lease
--       is live. A rebalance leaves a partition without owner only when
--       the ring has no live member, and a node that becomes a live member
--       again must be given them, when join_rings reclaims its member row
--       (claim_vnodes rebalances; until then the row is not claimed by the
--       node's incarnation and does not count). Schema version 6 broke
--       this one: reclaiming did not rebalance, so after a rebalance that
--       found no live member (the other member left) while a node's lease
--       had lapsed, the ring stayed without owners once it renewed.
--   lease_beyond_ttl
--       a lease, or a hold, that ends more than one TTL from now: a
--       heartbeat grants at most one TTL from its own start.
--   lease_not_evicted
--       a node whose lease ended more than two TTLs before another node's
--       lease was last granted (taken as that lease's end less one TTL,
--       which is no later). The other node's heartbeats since looked for
--       lapsed leases (a client does once the earliest other lease end it
--       knows of has passed) and evicted them; one that could not, for a
--       lock, tried again on the next. On a server in a grace (G9) the
--       lease counts until the grace's end, and on one whose grace is due
--       (server_identity names another server) not at all: the grace
--       begins at the next scan.
--   release_not_handed_on
--       a partition its owner released during a hold that ended more than
--       two TTLs before another node's lease was last granted: that node's
--       heartbeats since then handed it on. On a server in a grace (G9) the
--       hold lasts until the grace's end, and on one whose grace is due not
--       at all.
--
-- Every OPERATOR(...) binds as tightly as the next, left to right: the
-- parentheses around arithmetic are needed.
WITH clock AS MATERIALIZED (
    -- One reading of the clock, taken after the query's snapshot: every
    -- lease in the snapshot was granted before it, so none may end after
    -- horizon.
    SELECT now, ttl, now OPERATOR(pg_catalog.+) ttl AS horizon,
           coalesce((SELECT CASE WHEN s.grace_until OPERATOR(pg_catalog.>) s.noticed_at THEN s.grace_until
                                 ELSE '-infinity' END  -- no grace
                       FROM leasering.server_identity s
                      WHERE s.started_at OPERATOR(pg_catalog.=) pg_catalog.pg_postmaster_start_time()),
                    'infinity') AS grace_end  -- G9: the grace is due
      FROM (SELECT pg_catalog.clock_timestamp() AS now, $1::pg_catalog.interval AS ttl) AS t
),
-- The two most recent lease grants (granted: no later than the grant, the
-- lease's end less one TTL), so that every node has the latest of another
-- node's; whatever lapsed two TTLs before it (settled) is settled.
latest AS MATERIALIZED (
    SELECT g.node_id, g.granted, g.granted OPERATOR(pg_catalog.-) (c.ttl OPERATOR(pg_catalog.+) c.ttl) AS settled
      FROM (SELECT n.node_id, n.expires_at OPERATOR(pg_catalog.-) c.ttl AS granted
              FROM leasering.nodes n, clock c
             ORDER BY n.expires_at DESC
             LIMIT 2) AS g, clock c
),
live_members AS (
    SELECT m.ring, pg_catalog.min(m.node_id) AS first, pg_catalog.count(*) AS live
      FROM leasering.members m
      JOIN leasering.nodes n ON n.node_id OPERATOR(pg_catalog.=) m.node_id, clock c
     WHERE n.expires_at OPERATOR(pg_catalog.>) c.now
       AND m.claimed_by OPERATOR(pg_catalog.=) n.incarnation  -- a row to reclaim gets its share when join_rings reclaims it
     GROUP BY m.ring
),
violation (kind, ring, partition, node, detail) AS (
    SELECT 'partition_count'::pg_catalog.text, r.name, NULL::pg_catalog.int4, NULL::pg_catalog.text,
           pg_catalog.format('%s partitions, size %s', pg_catalog.count(p.partition), r.size)
      FROM leasering.rings r
      LEFT JOIN leasering.partitions p ON p.ring OPERATOR(pg_catalog.=) r.name
     GROUP BY r.name, r.size
    HAVING pg_catalog.count(p.partition) OPERATOR(pg_catalog.<>) r.size

    UNION ALL
    SELECT 'partition_out_of_range', p.ring, p.partition, NULL,
           pg_catalog.format('ring size %s', r.size)
      FROM leasering.partitions p
      JOIN leasering.rings r ON r.name OPERATOR(pg_catalog.=) p.ring
     WHERE p.partition OPERATOR(pg_catalog.<) 0 OR p.partition OPERATOR(pg_catalog.>=) r.size

    UNION ALL
    SELECT 'owner_not_member', p.ring, p.partition, p.owner,
           pg_catalog.format('owner %s, epoch %s; no member row', p.owner, p.epoch)
      FROM leasering.partitions p
     WHERE p.owner IS NOT NULL
       AND NOT EXISTS (SELECT FROM leasering.members m
                        WHERE m.ring OPERATOR(pg_catalog.=) p.ring AND m.node_id OPERATOR(pg_catalog.=) p.owner)

    UNION ALL
    SELECT 'next_owner_not_member', p.ring, p.partition, p.next_owner,
           pg_catalog.format('owner %s, next owner %s; no member row', p.owner, p.next_owner)
      FROM leasering.partitions p
     WHERE p.next_owner IS NOT NULL
       AND NOT EXISTS (SELECT FROM leasering.members m
                        WHERE m.ring OPERATOR(pg_catalog.=) p.ring AND m.node_id OPERATOR(pg_catalog.=) p.next_owner)

    UNION ALL
    SELECT 'next_owner_without_owner', p.ring, p.partition, p.next_owner,
           pg_catalog.format('no owner, next owner %s', p.next_owner)
      FROM leasering.partitions p
     WHERE p.next_owner IS NOT NULL AND p.owner IS NULL

    UNION ALL
    SELECT 'next_owner_is_owner', p.ring, p.partition, p.owner,
           pg_catalog.format('owner and next owner %s', p.owner)
      FROM leasering.partitions p
     WHERE p.next_owner OPERATOR(pg_catalog.=) p.owner

    UNION ALL
    SELECT 'released_without_next_owner', p.ring, p.partition, p.owner,
           pg_catalog.format('owner %s, released, no next owner', p.owner)
      FROM leasering.partitions p
     WHERE p.released AND p.next_owner IS NULL

    UNION ALL
    SELECT 'bad_epoch', p.ring, p.partition, p.owner,
           pg_catalog.format('owner %s, epoch %s', coalesce(p.owner, '(none)'), p.epoch)
      FROM leasering.partitions p
     WHERE p.epoch OPERATOR(pg_catalog.<) 0 OR (p.owner IS NOT NULL AND p.epoch OPERATOR(pg_catalog.=) 0)

    UNION ALL
    SELECT 'version_ahead', r.name, NULL, NULL,
           pg_catalog.format('rings.members_changed %s > rings.version %s', r.members_changed, r.version)
      FROM leasering.rings r
     WHERE r.members_changed OPERATOR(pg_catalog.>) r.version
    UNION ALL
    SELECT 'version_ahead', p.ring, p.partition, p.owner,
           CASE WHEN p.changed OPERATOR(pg_catalog.>) r.version
                THEN pg_catalog.format('partitions.changed %s > rings.version %s', p.changed, r.version)
                ELSE pg_catalog.format('partitions.granted %s > partitions.changed %s', p.granted, p.changed) END
      FROM leasering.partitions p
      JOIN leasering.rings r ON r.name OPERATOR(pg_catalog.=) p.ring
     WHERE p.changed OPERATOR(pg_catalog.>) r.version OR p.granted OPERATOR(pg_catalog.>) p.changed
    UNION ALL
    SELECT 'version_ahead', m.ring, NULL, m.node_id,
           CASE WHEN m.seen OPERATOR(pg_catalog.>) r.version
                THEN pg_catalog.format('members.seen %s > rings.version %s', m.seen, r.version)
                ELSE pg_catalog.format('members.changed %s > rings.members_changed %s', m.changed, r.members_changed) END
      FROM leasering.members m
      JOIN leasering.rings r ON r.name OPERATOR(pg_catalog.=) m.ring
     WHERE m.seen OPERATOR(pg_catalog.>) r.version OR m.changed OPERATOR(pg_catalog.>) r.members_changed

    UNION ALL
    SELECT 'wrong_positions', m.ring, NULL, m.node_id,
           pg_catalog.format('%s vnodes at %s', m.vnodes, m.positions)
      FROM leasering.members m
     WHERE m.positions OPERATOR(pg_catalog.<>) leasering.vnode_positions(m.ring, m.node_id, m.vnodes)

    UNION ALL
    SELECT 'unowned_with_live_member', u.ring, NULL, l.first,
           pg_catalog.format('%s partitions without owner; %s members with a live lease', u.unowned, l.live)
      FROM (SELECT p.ring, pg_catalog.count(*) AS unowned
              FROM leasering.partitions p
             WHERE p.owner IS NULL
             GROUP BY p.ring) AS u
      JOIN live_members l ON l.ring OPERATOR(pg_catalog.=) u.ring

    UNION ALL
    SELECT 'lease_beyond_ttl', NULL, NULL, n.node_id,
           pg_catalog.format('lease ends at %s, hold at %s; now %s, TTL %s', n.expires_at, n.hold_until, c.now, c.ttl)
      FROM leasering.nodes n, clock c
     WHERE n.expires_at OPERATOR(pg_catalog.>) c.horizon OR n.hold_until OPERATOR(pg_catalog.>) c.horizon

    UNION ALL
    SELECT 'lease_not_evicted', NULL, NULL, n.node_id,
           pg_catalog.format('lease ended at %s; %s''s lease was granted at %s or later; TTL %s',
                             n.expires_at, o.node_id, o.granted, c.ttl)
      FROM leasering.nodes n, clock c,
           LATERAL (SELECT l.node_id, l.granted, l.settled FROM latest l
                     WHERE l.node_id OPERATOR(pg_catalog.<>) n.node_id
                     ORDER BY l.granted DESC LIMIT 1) AS o
     WHERE pg_catalog.timestamptz_larger(n.expires_at, c.grace_end) OPERATOR(pg_catalog.<) o.settled

    UNION ALL
    SELECT 'release_not_handed_on', p.ring, p.partition, p.owner,
           pg_catalog.format('owner %s released it to %s during a hold that ended at %s; %s''s lease was granted at %s or later; TTL %s',
                             p.owner, p.next_owner, h.hold_until, o.node_id, o.granted, c.ttl)
      FROM leasering.partitions p
      JOIN leasering.nodes h ON h.node_id OPERATOR(pg_catalog.=) p.owner, clock c,
           LATERAL (SELECT l.node_id, l.granted, l.settled FROM latest l
                     WHERE l.node_id OPERATOR(pg_catalog.<>) p.owner
                     ORDER BY l.granted DESC LIMIT 1) AS o
     WHERE p.released AND h.hold_until OPERATOR(pg_catalog.>) '-infinity'  -- none: the owner never held, or its hold ended with nothing released
       AND pg_catalog.timestamptz_larger(h.hold_until, c.grace_end) OPERATOR(pg_catalog.<) o.settled
)
SELECT kind, ring, partition, node, detail
  FROM violation
 ORDER BY kind, ring, partition, node, detail
