-- 0003: cross-node invalidation. Every change to a token row or to the configuration is announced
-- with pg_notify, which Postgres delivers only when (and if) the transaction commits: a revocation
-- reaches every listening node even when the node that made it dies right after its commit.
--
-- Channels are per schema, so gateways (and tests) in different schemas of one database do not
-- hear each other: portcullis_tokens_<schema> carries the hex SHA-256 digest of an access token
-- whose row was deleted or changed; portcullis_config_<schema> carries '<table>:<id>'.
-- The trigger functions pin their search_path, so a session with another search_path (psql, a
-- maintenance job) can still write these tables.

CREATE OR REPLACE FUNCTION portcullis_channel(kind text, schema_name text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
        SELECT 'portcullis_' || kind || '_' ||
               CASE WHEN length(schema_name) <= 40 THEN schema_name ELSE md5(schema_name) END
    $$;

CREATE OR REPLACE FUNCTION portcullis_notify_token() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT
    AS $$
    DECLARE
        channel text := portcullis_channel('tokens', TG_TABLE_SCHEMA);
    BEGIN
        PERFORM pg_notify(channel, encode(OLD.access_token_hash, 'hex'));
        -- A renewed access token may sit in another node's short negative cache.
        IF TG_OP = 'UPDATE' AND NEW.access_token_hash <> OLD.access_token_hash THEN
            PERFORM pg_notify(channel, encode(NEW.access_token_hash, 'hex'));
        END IF;
        RETURN NULL;
    END
    $$;

CREATE TRIGGER oauth2_tokens_notify
    AFTER UPDATE OR DELETE ON oauth2_tokens
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_token();

CREATE OR REPLACE FUNCTION portcullis_notify_config() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT
    AS $$
    DECLARE
        row_id uuid;
    BEGIN
        IF TG_OP = 'DELETE' THEN
            row_id := OLD.id;
        ELSE
            row_id := NEW.id;
        END IF;
        PERFORM pg_notify(portcullis_channel('config', TG_TABLE_SCHEMA),
                          TG_TABLE_NAME || ':' || row_id);
        -- An update that changes the id (never done by the gateway) also retires the old one.
        IF TG_OP = 'UPDATE' AND NEW.id <> OLD.id THEN
            PERFORM pg_notify(portcullis_channel('config', TG_TABLE_SCHEMA),
                              TG_TABLE_NAME || ':' || OLD.id);
        END IF;
        RETURN NULL;
    END
    $$;

CREATE TRIGGER services_notify AFTER INSERT OR UPDATE OR DELETE ON services
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
CREATE TRIGGER routes_notify AFTER INSERT OR UPDATE OR DELETE ON routes
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
CREATE TRIGGER consumers_notify AFTER INSERT OR UPDATE OR DELETE ON consumers
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
CREATE TRIGGER plugins_notify AFTER INSERT OR UPDATE OR DELETE ON plugins
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
CREATE TRIGGER oauth2_credentials_notify AFTER INSERT OR UPDATE OR DELETE ON oauth2_credentials
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
