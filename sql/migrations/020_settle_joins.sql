-- leasering: upgrade from schema version 19 to 20.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 20: joins that come in a burst settle before anything moves
-- (settle_joins, in functions.sql). A ring records when its last batch of
-- joins placed a member, when the burst's first did, and until when its
-- rebalances tell no live owner to give a partition up; all start NULL (no
-- join seen, nothing held back), so the first batch after the upgrade
-- rebalances at once, as before. Clients of older versions send the same
-- requests and read the same answers (they do not say settle_wake, so
-- they never get 'settling'); during a burst they hear what to give up
-- with their regular heartbeat after it settles.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 19 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 19',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

ALTER TABLE leasering.rings
    ADD COLUMN IF NOT EXISTS joined_at timestamptz,
    ADD COLUMN IF NOT EXISTS burst_began timestamptz,
    ADD COLUMN IF NOT EXISTS settle_until timestamptz;

UPDATE leasering.schema_version SET version = 20;
