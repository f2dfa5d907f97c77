-- leasering: upgrade from schema version 9 to 10.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 10 keeps a new incarnation's hold through a change of server
-- (G9): hold_until is a time of the clock of the server that set it, so on
-- another server a hold lasts until the end of that server's grace as well
-- (hold_end, in ../functions.sql). A hold over on its server is written
-- '-infinity', so that a steady heartbeat never asks about the server. The
-- tables keep their shape: a row's hold as version 9 wrote it (its take's
-- time, or an older incarnation's lease end) is cleared by the node's
-- first heartbeat after its end, on this server.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 9 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 9',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

UPDATE leasering.schema_version SET version = 10;
