-- leasering: upgrade from schema version 10 to 11.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 11 never gives a new incarnation a lease shorter than its hold
-- (take_lease, in ../functions.sql): one with a shorter TTL than the
-- process it took the node id over from, that died during its hold, was
-- evicted and its partitions taken over while the older process could
-- still use them. The tables keep their shape; a row holding now gets the
-- lease its hold implies.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 10 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 10',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

UPDATE leasering.nodes SET expires_at = hold_until
 WHERE hold_until OPERATOR(pg_catalog.>) expires_at;

UPDATE leasering.schema_version SET version = 11;
