-- leasering: upgrade from schema version 8 to 9.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 9 closes the handoff gap: a revoking partition records when its
-- owner, told, will have drained it, and each member row its node's
-- heartbeat and drain, so that the pending owner can look for the
-- partition just then rather than on its next heartbeat (see ring_view).
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 8 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 8',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

-- Members that joined before: unknown until they join again.
ALTER TABLE leasering.members
    ADD COLUMN heartbeat_ms integer CHECK (heartbeat_ms > 0),
    ADD COLUMN drain_ms integer CHECK (drain_ms >= 0);

-- Partitions revoking now: not due yet as far as anyone knows.
ALTER TABLE leasering.partitions
    ADD COLUMN release_due timestamptz,
    ADD CONSTRAINT partitions_release_due_check CHECK (release_due IS NULL OR next_owner IS NOT NULL);
CREATE INDEX partitions_next_owner ON leasering.partitions (ring, next_owner) WHERE next_owner IS NOT NULL;

-- Version 8's: ring_work takes p_incoming now.
DROP FUNCTION IF EXISTS leasering.ring_work(text, text, integer, text, integer, integer, bigint, integer[]);

UPDATE leasering.schema_version SET version = 9;
