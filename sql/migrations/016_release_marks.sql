-- leasering: upgrade from schema version 15 to 16.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 16 changes functions only. A release marks its partitions
-- released and hands every released partition of the ring on at once only
-- if the ring's lock is free; otherwise the pending owner's next heartbeat
-- or look hands them on (confirm_releases). holds() is false for a
-- released partition, and a view no longer lists one as its owner's.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 15 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 15',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

UPDATE leasering.schema_version SET version = 16;
