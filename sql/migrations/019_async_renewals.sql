-- leasering: upgrade from schema version 18 to 19.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 19 changes functions only. renew_and_read takes p_async, which
-- older clients do not send (it defaults to false: every commit waits for
-- its WAL on disk, as before), and answers three more columns, which older
-- clients do not read (they name the columns they read). A function's
-- result columns cannot be changed in place, so the old form goes and the
-- new one comes here, with the EXECUTE grants of the old one: application
-- roles keep calling the heartbeat (the README's GRANT statements ran
-- before this function existed). functions.sql then gives it its body;
-- CREATE OR REPLACE keeps the grants.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 18 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 18',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

UPDATE leasering.schema_version SET version = 19;

DO $$
DECLARE
    old       regprocedure := pg_catalog.to_regprocedure(
                  'leasering.renew_and_read(text, text, integer, text, jsonb, boolean, boolean, timestamptz)');
    grantees  oid[];
    grantable boolean[];
BEGIN
    IF old IS NULL THEN
        RETURN;
    END IF;
    SELECT pg_catalog.array_agg(a.grantee), pg_catalog.array_agg(a.is_grantable) INTO grantees, grantable
      FROM pg_catalog.pg_proc AS p, pg_catalog.aclexplode(p.proacl) AS a
     WHERE p.oid = old AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner;
    DROP FUNCTION leasering.renew_and_read(text, text, integer, text, jsonb, boolean, boolean, timestamptz);
    -- The body comes with functions.sql.
    CREATE FUNCTION leasering.renew_and_read(
        p_node text, p_incarnation text, p_ttl_ms integer, p_metadata text, p_rings jsonb, p_claim boolean,
        p_scan boolean, p_sent_at timestamptz, p_async boolean DEFAULT false)
    RETURNS TABLE (lease_ms bigint, hold_ms bigint, next_expiry_ms bigint, node_status text, changes jsonb,
                   changed_rings jsonb, db_time timestamptz, wal_insert bigint, wal_flush bigint, durable boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = leasering, pg_temp
    AS 'BEGIN RAISE EXCEPTION ''renew_and_read: apply functions.sql'' USING ERRCODE = ''LR007''; END';
    REVOKE ALL ON FUNCTION leasering.renew_and_read(text, text, integer, text, jsonb, boolean, boolean, timestamptz, boolean)
        FROM PUBLIC;
    FOR i IN 1 .. coalesce(pg_catalog.cardinality(grantees), 0) LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION leasering.renew_and_read(text, text, integer, text, jsonb, boolean, boolean, timestamptz, boolean) TO %s%s',
                                  CASE WHEN grantees[i] = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(grantees[i])) END,
                                  CASE WHEN grantable[i] THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END $$;
