-- 0001: Kong's core entities with real columns, unique keys and foreign keys (Kong's rules:
-- routes -> services RESTRICT; plugins -> services/routes/consumers CASCADE;
-- oauth2_credentials -> consumers CASCADE).
--
-- Every table also has two bookkeeping columns so that a document round-trips unchanged:
--   missing: names of known fields that were absent from the stored document (not null: absent),
--   extra:   fields no column can hold exactly (unknown fields, non-canonical values).
-- Foreign keys are `<field>_id` columns; the document shows them as {"id": "..."}.

CREATE TABLE services (
    id                    uuid PRIMARY KEY,
    created_at            bigint,
    updated_at            bigint,
    tags                  text[],
    name                  text CONSTRAINT services_name_key UNIQUE,
    protocol              text,
    host                  text,
    port                  bigint,
    path                  text,
    retries               bigint,
    connect_timeout       bigint,
    write_timeout         bigint,
    read_timeout          bigint,
    enabled               boolean,
    client_certificate_id uuid,
    tls_verify            boolean,
    tls_verify_depth      bigint,
    ca_certificates       text[],
    missing               text[] NOT NULL DEFAULT '{}',
    extra                 jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX services_tags_idx ON services USING gin (tags);

CREATE TABLE routes (
    id                         uuid PRIMARY KEY,
    created_at                 bigint,
    updated_at                 bigint,
    tags                       text[],
    name                       text CONSTRAINT routes_name_key UNIQUE,
    protocols                  text[],
    methods                    text[],
    hosts                      text[],
    paths                      text[],
    headers                    jsonb,
    snis                       text[],
    sources                    jsonb,
    destinations               jsonb,
    https_redirect_status_code bigint,
    regex_priority             bigint,
    strip_path                 boolean,
    path_handling              text,
    preserve_host              boolean,
    request_buffering          boolean,
    response_buffering         boolean,
    service_id                 uuid CONSTRAINT routes_service_fk
                                    REFERENCES services (id) ON DELETE RESTRICT,
    missing                    text[] NOT NULL DEFAULT '{}',
    extra                      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX routes_service_id_idx ON routes (service_id);
CREATE INDEX routes_tags_idx ON routes USING gin (tags);

CREATE TABLE consumers (
    id         uuid PRIMARY KEY,
    created_at bigint,
    updated_at bigint,
    tags       text[],
    username   text CONSTRAINT consumers_username_key UNIQUE,
    custom_id  text CONSTRAINT consumers_custom_id_key UNIQUE,
    missing    text[] NOT NULL DEFAULT '{}',
    extra      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX consumers_tags_idx ON consumers USING gin (tags);

CREATE TABLE plugins (
    id            uuid PRIMARY KEY,
    created_at    bigint,
    updated_at    bigint,
    tags          text[],
    name          text,
    instance_name text CONSTRAINT plugins_instance_name_key UNIQUE,
    config        jsonb,
    protocols     text[],
    enabled       boolean,
    service_id    uuid CONSTRAINT plugins_service_fk
                       REFERENCES services (id) ON DELETE CASCADE,
    route_id      uuid CONSTRAINT plugins_route_fk
                       REFERENCES routes (id) ON DELETE CASCADE,
    consumer_id   uuid CONSTRAINT plugins_consumer_fk
                       REFERENCES consumers (id) ON DELETE CASCADE,
    missing       text[] NOT NULL DEFAULT '{}',
    extra         jsonb NOT NULL DEFAULT '{}'
);
-- One instance per plugin name and scope; a missing scope counts as a value (Kong's cache key).
CREATE UNIQUE INDEX plugins_name_route_service_consumer_key ON plugins (
    coalesce(name, ''),
    coalesce(route_id, '00000000-0000-0000-0000-000000000000'),
    coalesce(service_id, '00000000-0000-0000-0000-000000000000'),
    coalesce(consumer_id, '00000000-0000-0000-0000-000000000000')
);
CREATE INDEX plugins_service_id_idx ON plugins (service_id);
CREATE INDEX plugins_route_id_idx ON plugins (route_id);
CREATE INDEX plugins_consumer_id_idx ON plugins (consumer_id);
CREATE INDEX plugins_tags_idx ON plugins USING gin (tags);

CREATE TABLE oauth2_credentials (
    id            uuid PRIMARY KEY,
    created_at    bigint,
    updated_at    bigint,
    tags          text[],
    consumer_id   uuid CONSTRAINT oauth2_credentials_consumer_fk
                       REFERENCES consumers (id) ON DELETE CASCADE,
    name          text,
    client_id     text CONSTRAINT oauth2_credentials_client_id_key UNIQUE,
    client_secret text,
    hash_secret   boolean,
    redirect_uris text[],
    client_type   text,
    missing       text[] NOT NULL DEFAULT '{}',
    extra         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX oauth2_credentials_consumer_id_idx ON oauth2_credentials (consumer_id);
CREATE INDEX oauth2_credentials_tags_idx ON oauth2_credentials USING gin (tags);
