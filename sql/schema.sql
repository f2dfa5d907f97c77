-- leasering: the tables, schema version 21.
--
-- A new schema gets this file and then functions.sql; a schema at an older
-- version gets the files of migrations/ above its version and then
-- functions.sql. Either way in one transaction: the Go client sends them as
-- one statement; with psql, `psql -1 -f sql/schema.sql -f sql/functions.sql`.
-- Applying this file again changes nothing.
--
-- Every object is qualified with the schema; the Go client writes its own
-- schema name, quoted, in place of the default one. While this file runs
-- the path is pg_catalog alone (the first statement below), so nothing it
-- creates (a default, a check's operators) binds to an object in a schema
-- another role can write to.
--
-- Each CHECK states an invariant of one row. The functions never write a
-- row that breaks one, not even between two statements of one step (a
-- CHECK is tested per row, as each statement writes it).
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

CREATE SCHEMA IF NOT EXISTS leasering;

-- The version of the tables; functions.sql, applied in the same
-- transaction, refuses tables of another version. Every role may read it:
-- the client checks it before anything else.
CREATE TABLE IF NOT EXISTS leasering.schema_version (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version integer NOT NULL CHECK (version > 0)
);
GRANT SELECT ON leasering.schema_version TO PUBLIC;

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) > 21 THEN
        RAISE EXCEPTION 'schema version % in the database is newer than this file (21)',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR002';
    ELSIF (SELECT version FROM leasering.schema_version) < 21 THEN
        RAISE EXCEPTION 'the schema is at version %: upgrade it with the files of sql/migrations above that version, not schema.sql',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

-- One row per live process: the lease. A heartbeat rewrites only
-- expires_at, which no index covers, so the update is HOT; fillfactor leaves
-- room on the page for it.
CREATE TABLE IF NOT EXISTS leasering.nodes (
    node_id     text PRIMARY KEY CHECK (node_id <> ''),
    incarnation text NOT NULL,         -- random per process start
    expires_at  timestamptz NOT NULL,  -- the lease; ownership is void past it
    hold_until  timestamptz NOT NULL,  -- a new incarnation reports and hands on nothing before the old one's lease end;
                                       -- '-infinity' once a hold is over on this server (none: the same)
    metadata    text NOT NULL DEFAULT '',
    ttl_ms      integer NOT NULL CHECK (ttl_ms > 0)  -- the TTL of its last heartbeat: a grace (G9) outlasts the longest
) WITH (fillfactor = 50);

-- G9: the server that keeps the leases, by its postmaster's start time. A
-- lease is a row, as durable as its commit: a promoted replica, a restored
-- copy, or the same server restarted after losing commits may lack the last
-- renewals, so there a lease may look lapsed while its node still uses it.
-- Such a server started at another time. The first takeover decision on it
-- (failover_grace, in functions.sql) records it here and starts a grace of
-- the longest TTL on its own clock: until grace_until nobody is evicted and
-- nothing is taken over.
CREATE TABLE IF NOT EXISTS leasering.server_identity (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    started_at  timestamptz NOT NULL,  -- pg_postmaster_start_time() of the server that keeps the leases
    noticed_at  timestamptz NOT NULL,  -- when it noticed the leases were not its own (its clock)
    grace_until timestamptz NOT NULL,  -- until then it evicts nobody and takes nothing over
    CONSTRAINT server_identity_grace_check CHECK (grace_until >= noticed_at)
);
-- A new schema: this server, no grace.
INSERT INTO leasering.server_identity (started_at, noticed_at, grace_until)
VALUES (pg_postmaster_start_time(), now(), now())
ON CONFLICT (id) DO NOTHING;

CREATE TABLE IF NOT EXISTS leasering.rings (
    name            text PRIMARY KEY CHECK (name <> ''),
    size            integer NOT NULL CHECK (size BETWEEN 1 AND 65536),
    version         bigint NOT NULL DEFAULT 1,  -- bumped on every change to members or partitions
    members_changed bigint NOT NULL DEFAULT 0,  -- version of the last change of members
    told_through    bigint NOT NULL DEFAULT 0,  -- G9: owners count as told of grants up to this version (rebalance)
    told_at         timestamptz,                -- the server identity's noticed_at that told_through is for
    -- Joins in a burst (settle_joins, in functions.sql): when the last batch
    -- of joins placed a member, when the burst's first did (NULL: no burst),
    -- and until when rebalance tells no live owner to give a partition up
    -- (NULL: nothing held back).
    joined_at       timestamptz,
    burst_began     timestamptz,
    settle_until    timestamptz,
    CONSTRAINT rings_version_check CHECK (version >= 1 AND members_changed BETWEEN 0 AND version),
    CONSTRAINT rings_told_check CHECK (told_through BETWEEN 0 AND version)
);

CREATE TABLE IF NOT EXISTS leasering.members (
    ring       text NOT NULL REFERENCES leasering.rings (name) ON DELETE CASCADE,
    node_id    text NOT NULL REFERENCES leasering.nodes (node_id) ON DELETE CASCADE,
    vnodes     integer NOT NULL CHECK (vnodes BETWEEN 1 AND 256),  -- also the member's weight
    positions  bigint[] NOT NULL,                                  -- its vnodes on the 32-bit circle, sorted
    changed    bigint NOT NULL DEFAULT 0,                          -- ring version that last changed the row
    seen       bigint NOT NULL DEFAULT 0,                          -- ring version of the last view the node was given
    claimed_by text,                                               -- incarnation that joined or reclaimed it; NULL: to reclaim
    -- The node's heartbeat and drain, as it joined (NULL: unknown, joined
    -- by a release before version 9): when what it gives up is due (ring_view).
    heartbeat_ms integer CHECK (heartbeat_ms > 0),
    drain_ms     integer CHECK (drain_ms >= 0),
    PRIMARY KEY (ring, node_id),
    CONSTRAINT members_positions_check
        CHECK (cardinality(positions) = vnodes AND 0 <= ALL (positions) AND 4294967296 > ALL (positions)),
    CONSTRAINT members_versions_check CHECK (changed >= 0 AND seen >= 0)
);
CREATE INDEX IF NOT EXISTS members_node_id ON leasering.members (node_id);

-- A node's join of a ring, waiting for the ring's lock (join_rings). Whoever
-- next holds the lock joins every node waiting, with one rebalance. No
-- foreign key to rings: its check would share-lock the ring's row, which
-- the join in progress holds.
CREATE TABLE IF NOT EXISTS leasering.joins (
    ring         text NOT NULL,
    node_id      text NOT NULL REFERENCES leasering.nodes (node_id) ON DELETE CASCADE,
    incarnation  text NOT NULL,
    vnodes       integer NOT NULL CHECK (vnodes BETWEEN 1 AND 256),
    heartbeat_ms integer CHECK (heartbeat_ms > 0),
    drain_ms     integer CHECK (drain_ms >= 0),
    PRIMARY KEY (ring, node_id)
);
CREATE INDEX IF NOT EXISTS joins_node_id ON leasering.joins (node_id);

-- A partition is in one of four states (see functions.sql):
--   free       owner NULL
--   owned      owner set, next_owner NULL
--   revoking   owner and next_owner set: owner has been told to stop and
--              has not confirmed yet
--   released   revoking, and released: owner confirmed while it held; the
--              partition is next_owner's at the hold's end
-- The checks below admit these four and nothing else. Only the owner may
-- act on a partition, and only while its lease lives.
CREATE TABLE IF NOT EXISTS leasering.partitions (
    ring       text NOT NULL REFERENCES leasering.rings (name) ON DELETE CASCADE,
    partition  integer NOT NULL CHECK (partition >= 0),  -- and below the ring's size
    owner      text,
    epoch      bigint NOT NULL DEFAULT 0,  -- fencing token: +1 on every change of owner
    next_owner text,
    changed    bigint NOT NULL DEFAULT 0,  -- ring version of the last change of owner or next_owner
    granted    bigint NOT NULL DEFAULT 0,  -- ring version at which owner got it
    released   boolean NOT NULL DEFAULT false,
    -- revoking: when the owner, told, will have drained it (NULL: not told
    -- yet, or its drain unknown); the pending owner looks for it then.
    release_due timestamptz,
    PRIMARY KEY (ring, partition),
    CONSTRAINT partitions_versions_check CHECK (epoch >= 0 AND granted >= 0 AND granted <= changed),
    CONSTRAINT partitions_next_owner_check CHECK (next_owner IS NULL OR (owner IS NOT NULL AND next_owner <> owner)),
    CONSTRAINT partitions_released_check CHECK (NOT released OR next_owner IS NOT NULL),
    CONSTRAINT partitions_release_due_check CHECK (release_due IS NULL OR next_owner IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS partitions_released ON leasering.partitions (ring) WHERE released;
CREATE INDEX IF NOT EXISTS partitions_owner ON leasering.partitions (ring, owner);
CREATE INDEX IF NOT EXISTS partitions_granted ON leasering.partitions (ring, granted);  -- a view's routing (ring_view)
CREATE INDEX IF NOT EXISTS partitions_next_owner ON leasering.partitions (ring, next_owner) WHERE next_owner IS NOT NULL;

INSERT INTO leasering.schema_version (version) VALUES (21) ON CONFLICT (id) DO NOTHING;
