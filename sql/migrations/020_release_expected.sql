-- leasering: upgrade from schema version 19 to 20.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 20 changes no table, only what a function does: past its
-- await_ms a look goes on waiting, within its await_release_ms, while the
-- next call of an owner of a partition pending to it is to release it
-- (release_expected: the owner is live, the partition due, and the owner
-- not told yet or not renewed since it was told), as it did while the
-- owner's releasing call holds its lock. Clients of older versions send
-- the same requests and get the same answers.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 19 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 19',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

UPDATE leasering.schema_version SET version = 20;
