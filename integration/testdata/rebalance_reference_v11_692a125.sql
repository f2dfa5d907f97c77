-- The rebalance of schema version 11 as it was at 692a125, before it looked
-- only at the partitions that can change: TestRebalanceMatchesItsReference
-- installs it as rebalance_reference, next to the schema's own, and checks
-- that both leave the same rows on random states.
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
--    Free ones go first, then the nearest; a member over quota gives up only
--    its excess, a member under quota takes only what it lacks, and a
--    candidate whose first choice is full walks on to the next.
-- 5. Apply: a partition whose owner is gone goes straight to its holder with
--    epoch + 1, and so does one whose owner has not been told it has it
--    (granted after the last view the owner was given: it cannot be using
--    it); one whose live owner must give it up gets next_owner and is
--    handed over when the owner confirms (confirm_releases). A heartbeat
--    locks its node's member row before it reads a view and records the
--    view's version there (give_view), and rebalance share-locks the
--    members before it reads seen, so a partition is never moved this way
--    from an owner whose view, read concurrently, gives it to them.
--    Rebalance never waits for a member's row (its leave or eviction may be
--    waiting for this ring): a member whose row is busy counts as told.
CREATE OR REPLACE FUNCTION leasering.rebalance_reference(p_ring text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = leasering, pg_temp
AS $$
DECLARE
    q          integer;
    ids        text[];     -- live members, in node_id order; a member is its index here
    weights    integer[];
    holder     integer[];  -- per partition p at [p + 1]: holding member, 0 for none
    owner_live boolean[];  -- per partition: is the recorded owner a live member
    have       integer[];
    quota      integer[];
    v_pos      bigint[];   -- vnodes of members under quota, clockwise
    v_mem      integer[];
    v_len      integer;
    total_need integer;
    c          record;
    vi         integer;
    changed    integer;
    stamp      bigint := next_version(p_ring);
    steady     text[];     -- members whose row we share-locked: their seen is final
    steady_seen bigint[];  -- and that seen
    dead       text[];     -- nodes whose lease has lapsed, their rows locked by us
    in_grace   boolean;    -- G9: see failover_grace
    told       bigint;     -- G9: every owner counts as told of what it was granted up to this version
BEGIN
    SELECT size INTO q FROM rings WHERE name = p_ring;
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
           array_agg(ow.ord IS NOT NULL ORDER BY p.partition)
      INTO holder, owner_live
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
                  FROM (SELECT (x.ord - 1)::integer AS part, x.h,
                               (x.ord - 1) * 4294967296 / q AS pos
                          FROM unnest(holder) WITH ORDINALITY AS x (h, ord)
                         WHERE x.h = 0 OR have[x.h] > quota[x.h]) AS cand
                 ORDER BY cand.h = 0 DESC,
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
      FROM (SELECT (x.ord - 1)::integer AS part,
                   CASE WHEN x.keep THEN x.owner ELSE ids[x.h] END AS new_owner,
                   CASE WHEN x.keep AND ids[x.h] <> x.owner THEN ids[x.h] END AS new_next
              FROM (SELECT u.h, u.ord, pp.owner,
                           u.live AND (in_grace OR st.id IS NULL OR pp.granted <= greatest(st.seen, told)) AS keep  -- busy counts as told
                      FROM unnest(holder, owner_live) WITH ORDINALITY AS u (h, live, ord)
                      JOIN partitions pp ON pp.ring = p_ring AND pp.partition = u.ord - 1
                      LEFT JOIN unnest(steady, steady_seen) AS st (id, seen) ON st.id = pp.owner) AS x) AS t
     WHERE p.ring = p_ring AND p.partition = t.part
       AND (p.owner, p.next_owner) IS DISTINCT FROM (t.new_owner, t.new_next);
    GET DIAGNOSTICS changed = ROW_COUNT;
    RETURN changed;
END
$$;
