-- leasering: upgrade from schema version 5 to 6.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- From version 5 a member row names the incarnation that joined or
-- reclaimed it (claimed_by), and the 4-argument claim_vnodes is gone. The
-- first release of version 5 had neither change, so this step makes both
-- whatever version 5 it finds. Member rows written before claimed_by
-- belong to the incarnation their node runs now: the nodes of the older
-- release keep their rings.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 5 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 5',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                    WHERE attrelid = 'leasering.members'::pg_catalog.regclass AND attname = 'claimed_by'
                      AND NOT attisdropped) THEN
        ALTER TABLE leasering.members ADD COLUMN claimed_by text;
        UPDATE leasering.members m SET claimed_by = n.incarnation FROM leasering.nodes n WHERE n.node_id = m.node_id;
    END IF;
END $$;

DROP FUNCTION IF EXISTS leasering.claim_vnodes(text, text, integer, integer);

UPDATE leasering.schema_version SET version = 6;
