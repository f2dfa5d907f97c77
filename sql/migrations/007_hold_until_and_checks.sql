-- leasering: upgrade from schema version 6 to 7.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 7 names a new incarnation's hold hold_until (it was report_from),
-- drops the columns nothing read (nodes.joined_at, rings.created_at,
-- schema_version.applied_at) and the function the first release of
-- version 5 left behind, and states the invariants of each row as CHECKs
-- (see ../schema.sql).
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 6 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 6',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

ALTER TABLE leasering.nodes RENAME COLUMN report_from TO hold_until;
ALTER TABLE leasering.nodes DROP COLUMN joined_at;
ALTER TABLE leasering.rings DROP COLUMN created_at;
ALTER TABLE leasering.schema_version DROP COLUMN applied_at;
DROP FUNCTION IF EXISTS leasering.require_read_committed();

-- Version 3 could leave released set on a partition with no pending owner;
-- the upgrade to version 4 cleared those, and no later version writes one.
-- Cleared again here, so that the check below holds whatever the history.
UPDATE leasering.partitions SET released = false WHERE released AND next_owner IS NULL;

ALTER TABLE leasering.schema_version
    ADD CONSTRAINT schema_version_version_check CHECK (version > 0);
ALTER TABLE leasering.rings
    ADD CONSTRAINT rings_version_check CHECK (version >= 1 AND members_changed BETWEEN 0 AND version);
ALTER TABLE leasering.members
    ADD CONSTRAINT members_positions_check
        CHECK (cardinality(positions) = vnodes AND 0 <= ALL (positions) AND 4294967296 > ALL (positions)),
    ADD CONSTRAINT members_versions_check CHECK (changed >= 0 AND seen >= 0);
ALTER TABLE leasering.partitions
    ADD CONSTRAINT partitions_partition_check CHECK (partition >= 0),
    ADD CONSTRAINT partitions_versions_check CHECK (epoch >= 0 AND granted >= 0 AND granted <= changed),
    ADD CONSTRAINT partitions_next_owner_check CHECK (next_owner IS NULL OR (owner IS NOT NULL AND next_owner <> owner)),
    ADD CONSTRAINT partitions_released_check CHECK (NOT released OR next_owner IS NOT NULL);

UPDATE leasering.schema_version SET version = 7;
