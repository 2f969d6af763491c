-- 0004: the credentials of the key-auth plugin and the group memberships of the acl plugin, both
-- owned by a consumer (Kong's rules: deleted with it, CASCADE).
--
-- keyauth_credentials keeps only the lower-case hex SHA-256 digest of each API key: the key itself
-- is shown once, in the answer to the write that set it, and never stored.
-- acls allows one row per consumer and group (Kong's cache key).

CREATE TABLE keyauth_credentials (
    id          uuid PRIMARY KEY,
    created_at  bigint,
    tags        text[],
    consumer_id uuid CONSTRAINT keyauth_credentials_consumer_fk
                     REFERENCES consumers (id) ON DELETE CASCADE,
    key_hash    text CONSTRAINT keyauth_credentials_key_hash_key UNIQUE,
    missing     text[] NOT NULL DEFAULT '{}',
    extra       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX keyauth_credentials_consumer_id_idx ON keyauth_credentials (consumer_id);
CREATE INDEX keyauth_credentials_tags_idx ON keyauth_credentials USING gin (tags);

CREATE TABLE acls (
    id          uuid PRIMARY KEY,
    created_at  bigint,
    tags        text[],
    consumer_id uuid CONSTRAINT acls_consumer_fk
                     REFERENCES consumers (id) ON DELETE CASCADE,
    group_name  text,
    missing     text[] NOT NULL DEFAULT '{}',
    extra       jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT acls_consumer_group_key UNIQUE (consumer_id, group_name)
);
CREATE INDEX acls_tags_idx ON acls USING gin (tags);

CREATE TRIGGER keyauth_credentials_notify AFTER INSERT OR UPDATE OR DELETE ON keyauth_credentials
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
CREATE TRIGGER acls_notify AFTER INSERT OR UPDATE OR DELETE ON acls
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
