-- leasering: upgrade from schema version 12 to 13.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 13 changes no table, only what functions do: a release may be
-- sent ahead of its drain's end, with release_after_ms, and the heartbeat
-- then commits no earlier than that long after it began (ring_work and
-- late_heartbeat wait, wait_until). Clients of older versions do not send
-- the key and get the answers they got. ring_work takes the time to wait
-- for: the old one goes.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 12 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 12',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

DROP FUNCTION IF EXISTS leasering.ring_work(text, text, integer, text, integer, integer, bigint, integer[], boolean);

UPDATE leasering.schema_version SET version = 13;
