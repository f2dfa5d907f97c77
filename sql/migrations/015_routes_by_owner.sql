-- leasering: upgrade from schema version 14 to 15.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 15 sends a view's routing by change of owner (granted), not by
-- any change of the row (changed): a new pending owner alone moves no
-- route. So the index that finds a view's rows is on granted. A ring
-- request may say own_only (a key older clients never send): then a
-- heartbeat answers a view only when something the node owns or waits for
-- changed since the version it holds.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 14 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 14',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

DROP FUNCTION IF EXISTS leasering.ring_work(text, text, integer, text, integer, integer, bigint, integer[], timestamptz, boolean);
DROP FUNCTION IF EXISTS leasering.ring_answer(text, text, text, integer, integer, bigint, boolean);
DROP INDEX leasering.partitions_changed;
CREATE INDEX partitions_granted ON leasering.partitions (ring, granted);

UPDATE leasering.schema_version SET version = 15;
