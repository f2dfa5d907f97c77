-- leasering: upgrade from schema version 16 to 17.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 17 changes functions only. Rebalance takes from a member over
-- its quota first the partitions still on their way to it (pending, not
-- yet handed on), and points them at the member that lacks them: during a
-- roll-out, a partition moves once rather than to one newcomer and then on
-- to the next. A ring request may say own_view, a key older clients never
-- send: a view without the routing (ring_view); the functions that carry
-- it take one more argument, so their old forms go.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 16 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 16',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

UPDATE leasering.schema_version SET version = 17;

DROP FUNCTION IF EXISTS leasering.ring_work(text, text, integer, text, integer, integer, bigint, integer[], timestamptz, boolean, boolean);
DROP FUNCTION IF EXISTS leasering.ring_answer(text, text, text, integer, integer, bigint, boolean, boolean);
DROP FUNCTION IF EXISTS leasering.give_view(text, text, bigint);
DROP FUNCTION IF EXISTS leasering.ring_view(text, text, bigint);
