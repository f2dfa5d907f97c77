-- leasering: upgrade from schema version 10 to 11.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 11 never gives a new incarnation a lease shorter than its hold
-- (take_lease, in ../functions.sql): one with a shorter TTL than the
-- process it took the node id over from, that died during its hold, was
-- evicted and its partitions taken over while the older process could
-- still use them; a row holding now gets the lease its hold implies. And
-- it batches joins: a node records its join of a ring in joins, and
-- whoever next holds the ring's lock joins every node waiting with one
-- rebalance (join_rings). Clients of older releases call join_rings as
-- before, and their joins are batched with the others.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 10 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 10',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

UPDATE leasering.nodes SET expires_at = hold_until
 WHERE hold_until OPERATOR(pg_catalog.>) expires_at;

CREATE TABLE leasering.joins (
    ring         text NOT NULL,
    node_id      text NOT NULL REFERENCES leasering.nodes (node_id) ON DELETE CASCADE,
    incarnation  text NOT NULL,
    vnodes       integer NOT NULL CHECK (vnodes BETWEEN 1 AND 256),
    heartbeat_ms integer CHECK (heartbeat_ms > 0),
    drain_ms     integer CHECK (drain_ms >= 0),
    PRIMARY KEY (ring, node_id)
);
CREATE INDEX joins_node_id ON leasering.joins (node_id);

UPDATE leasering.schema_version SET version = 11;
