-- leasering: upgrade from schema version 7 to 8.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 8 adds G9 (see ../schema.sql): each node's row keeps the TTL of
-- its last heartbeat, and server_identity records the server that keeps the
-- leases, and each ring the version up to which its owners count as told
-- of their partitions when a server identity changes. take_lease takes the
-- TTL too.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 7 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 7',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

-- A row's TTL is not known until its node's next heartbeat writes it: until
-- then, the default TTL, or the lease's rest if longer, so that a grace
-- that starts before that heartbeat still outlasts the lease.
ALTER TABLE leasering.nodes ADD COLUMN ttl_ms integer;
UPDATE leasering.nodes
   SET ttl_ms = greatest(10000, ceil(extract(epoch FROM expires_at - now()) * 1000))::integer;
ALTER TABLE leasering.nodes
    ALTER COLUMN ttl_ms SET NOT NULL,
    ADD CONSTRAINT nodes_ttl_ms_check CHECK (ttl_ms > 0);

-- An upgrade may run on a server that just took over from another (a
-- promoted replica, a restored copy) whose last renewals it lacks, and it
-- cannot tell: it starts a grace of the longest TTL, as failover_grace
-- does on a server it does not know. Takeovers wait one TTL after the
-- upgrade; nothing else does.
CREATE TABLE leasering.server_identity (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    started_at  timestamptz NOT NULL,
    noticed_at  timestamptz NOT NULL,
    grace_until timestamptz NOT NULL,
    CONSTRAINT server_identity_grace_check CHECK (grace_until >= noticed_at)
);
INSERT INTO leasering.server_identity (started_at, noticed_at, grace_until)
SELECT pg_postmaster_start_time(), now(), now() + coalesce(max(ttl_ms), 0) * interval '1 millisecond'
  FROM leasering.nodes;

-- Rings made before: on this server, at no version yet.
ALTER TABLE leasering.rings
    ADD COLUMN told_through bigint NOT NULL DEFAULT 0,
    ADD COLUMN told_at timestamptz,
    ADD CONSTRAINT rings_told_check CHECK (told_through BETWEEN 0 AND version);
UPDATE leasering.rings SET told_at = (SELECT noticed_at FROM leasering.server_identity);

-- Version 7's (the releases before it had none).
DROP FUNCTION IF EXISTS leasering.take_lease(text, text, text, boolean, timestamptz);

UPDATE leasering.schema_version SET version = 8;
