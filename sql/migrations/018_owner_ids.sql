-- leasering: upgrade from schema version 17 to 18.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 18 changes functions only. held_released, which every scan
-- calls while released partitions wait to be handed on, asks when each
-- owner's hold ends once per hold rather than once per partition. A ring
-- request may say owner_ids, a key older clients never send: the view's
-- routing then names the owners that changed by node id rather than by
-- index into the members (ring_view); the functions that carry it take one
-- more argument, so their old forms go.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 17 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 17',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

UPDATE leasering.schema_version SET version = 18;

DROP FUNCTION IF EXISTS leasering.ring_work(text, text, integer, text, integer, integer, bigint, integer[], timestamptz, boolean, boolean, boolean);
DROP FUNCTION IF EXISTS leasering.ring_answer(text, text, text, integer, integer, bigint, boolean, boolean, boolean);
DROP FUNCTION IF EXISTS leasering.give_view(text, text, bigint, boolean);
DROP FUNCTION IF EXISTS leasering.ring_view(text, text, bigint, boolean);
