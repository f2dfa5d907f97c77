-- leasering: upgrade from schema version 4 to 5.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 4 ran its file under the caller's search_path, which could bind a
-- check's operators to another schema's: bind them again, to pg_catalog's.
-- (The defaults it bound, now() of three timestamp columns, go with their
-- columns in version 7.) The version record becomes readable by every role
-- (the client reads it first). Version 5 also took EXECUTE on the
-- functions away from PUBLIC, which functions.sql does.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 4 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 4',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

GRANT SELECT ON leasering.schema_version TO PUBLIC;
ALTER TABLE leasering.nodes
    DROP CONSTRAINT IF EXISTS nodes_node_id_check, ADD CONSTRAINT nodes_node_id_check CHECK (node_id <> '');
ALTER TABLE leasering.rings
    DROP CONSTRAINT IF EXISTS rings_name_check, ADD CONSTRAINT rings_name_check CHECK (name <> ''),
    DROP CONSTRAINT IF EXISTS rings_size_check, ADD CONSTRAINT rings_size_check CHECK (size BETWEEN 1 AND 65536);
ALTER TABLE leasering.members
    DROP CONSTRAINT IF EXISTS members_vnodes_check, ADD CONSTRAINT members_vnodes_check CHECK (vnodes BETWEEN 1 AND 256);

UPDATE leasering.schema_version SET version = 5;
