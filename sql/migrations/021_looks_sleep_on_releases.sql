-- leasering: upgrade from schema version 20 to 21.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 21: a look waiting for a release on its way sleeps in the queue
-- of the releasing call's lock until that call commits (release_awaited,
-- in functions.sql), rather than trying the lock every 2 ms (releasing,
-- dropped here). The releasing call now holds that lock exclusively and
-- the looks ask for it shared, so one commit wakes every look waiting for
-- it. No table changes. Clients of older versions send the same requests
-- and read the same answers.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 20 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 20',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

DROP FUNCTION IF EXISTS leasering.releasing(bigint[]);

UPDATE leasering.schema_version SET version = 21;
