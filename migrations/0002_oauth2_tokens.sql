-- 0002: issued tokens, authorization codes and the tombstones that detect replays.
-- Secrets are stored only as SHA-256 digests (bytea, 32 bytes); the clear value is returned to
-- the client once, at issue. Times are unix seconds. Tokens reference credentials and services
-- without a database foreign key: the token store may live elsewhere (Redis), so the gateway
-- cascades through TokenStore::delete_owned_by.

CREATE TABLE oauth2_tokens (
    id                   uuid PRIMARY KEY,
    credential_id        uuid NOT NULL,
    service_id           uuid,
    access_token_hash    bytea NOT NULL CONSTRAINT oauth2_tokens_access_token_hash_key UNIQUE
                               CHECK (octet_length(access_token_hash) = 32),
    refresh_token_hash   bytea CONSTRAINT oauth2_tokens_refresh_token_hash_key UNIQUE
                               CHECK (octet_length(refresh_token_hash) = 32),
    token_type           text NOT NULL,
    expires_in           bigint NOT NULL,
    authenticated_userid text,
    scope                text,
    created_at           bigint NOT NULL,
    expires_at           bigint,
    family_id            uuid NOT NULL,
    code_id              uuid
);
CREATE INDEX oauth2_tokens_expires_at_idx ON oauth2_tokens (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX oauth2_tokens_family_id_idx ON oauth2_tokens (family_id);
CREATE INDEX oauth2_tokens_code_id_idx ON oauth2_tokens (code_id) WHERE code_id IS NOT NULL;
CREATE INDEX oauth2_tokens_credential_id_idx ON oauth2_tokens (credential_id);
CREATE INDEX oauth2_tokens_service_id_idx ON oauth2_tokens (service_id)
    WHERE service_id IS NOT NULL;

CREATE TABLE oauth2_authorization_codes (
    id                   uuid PRIMARY KEY,
    code_hash            bytea NOT NULL CONSTRAINT oauth2_authorization_codes_code_hash_key UNIQUE
                               CHECK (octet_length(code_hash) = 32),
    credential_id        uuid NOT NULL,
    service_id           uuid,
    plugin_id            uuid,
    authenticated_userid text,
    scope                text,
    challenge            text,
    challenge_method     text,
    redirect_uri         text,
    created_at           bigint NOT NULL,
    expires_at           bigint NOT NULL
);
CREATE INDEX oauth2_authorization_codes_expires_at_idx ON oauth2_authorization_codes (expires_at);
CREATE INDEX oauth2_authorization_codes_credential_id_idx
    ON oauth2_authorization_codes (credential_id);
CREATE INDEX oauth2_authorization_codes_service_id_idx ON oauth2_authorization_codes (service_id)
    WHERE service_id IS NOT NULL;

-- A redeemed code, remembered so that a replay revokes what was issued from it.
CREATE TABLE oauth2_used_codes (
    code_hash bytea PRIMARY KEY,
    code_id   uuid NOT NULL,
    used_at   bigint NOT NULL
);
CREATE INDEX oauth2_used_codes_used_at_idx ON oauth2_used_codes (used_at);

-- A refresh token rotated away, remembered so that its reuse revokes the family.
CREATE TABLE oauth2_rotated_refresh_tokens (
    refresh_token_hash bytea PRIMARY KEY,
    family_id          uuid NOT NULL,
    rotated_at         bigint NOT NULL
);
CREATE INDEX oauth2_rotated_refresh_tokens_rotated_at_idx
    ON oauth2_rotated_refresh_tokens (rotated_at);
