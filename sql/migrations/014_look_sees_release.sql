-- leasering: upgrade from schema version 13 to 14.
--
-- Apply the files of this directory above the schema's version, in order,
-- then ../functions.sql, all in one transaction (see ../schema.sql).
--
-- Version 14 changes no table, only what functions do: a call that
-- releases partitions holds an advisory lock (release_key, shared) from
-- its start to its commit, and a look goes on waiting past its await_ms
-- while the owner of a partition pending to it holds it (await_release,
-- releasing, which tries it and undoes the try at once). Clients of older versions send the
-- same requests and get the same answers.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

DO $$
BEGIN
    IF (SELECT version FROM leasering.schema_version) IS DISTINCT FROM 13 THEN
        RAISE EXCEPTION 'the schema is at version %: this step upgrades version 13',
                        (SELECT version FROM leasering.schema_version)
              USING ERRCODE = 'LR007';
    END IF;
END $$;

UPDATE leasering.schema_version SET version = 14;
