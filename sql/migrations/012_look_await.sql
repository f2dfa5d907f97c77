-- leasering: upgrade from schema version 11 to 12.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 12 changes no table, only what functions do: a look may wait in
-- the database for the release it looks for (await_release); ring work
-- that missed a lock while the node's view is behind says 'later' (busy)
-- to a client that asks for it (later_if_busy); one heartbeat at a time
-- evicts lapsed nodes (scan_and_evict); rebalance rewrites only the rows
-- that can change. Clients of older versions send neither key and get the
-- answers they got.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 11 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 11',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

UPDATE leasering.schema_version SET version = 12;
