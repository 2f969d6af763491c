-- 0005: load balancing. Upstreams (a service whose host is an upstream's name is balanced over
-- its targets) and their targets, with Kong's rules: upstream names are unique; a target belongs
-- to one upstream (deleted with it, ON DELETE CASCADE) and each address appears once per upstream
-- (Kong's cache key). Targets keep Kong's millisecond timestamps (double precision seconds).
-- Both tables announce their changes on the config channel, like the tables of 0003.

CREATE TABLE upstreams (
    id                        uuid PRIMARY KEY,
    created_at                bigint,
    updated_at                bigint,
    tags                      text[],
    name                      text CONSTRAINT upstreams_name_key UNIQUE,
    algorithm                 text,
    hash_on                   text,
    hash_fallback             text,
    hash_on_header            text,
    hash_fallback_header      text,
    hash_on_cookie            text,
    hash_on_cookie_path       text,
    hash_on_query_arg         text,
    hash_fallback_query_arg   text,
    hash_on_uri_capture       text,
    hash_fallback_uri_capture text,
    slots                     bigint,
    healthchecks              jsonb,
    host_header               text,
    client_certificate_id     uuid,
    use_srv_name              boolean,
    missing                   text[] NOT NULL DEFAULT '{}',
    extra                     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX upstreams_tags_idx ON upstreams USING gin (tags);

CREATE TABLE targets (
    id          uuid PRIMARY KEY,
    created_at  double precision,
    updated_at  double precision,
    tags        text[],
    upstream_id uuid CONSTRAINT targets_upstream_fk
                     REFERENCES upstreams (id) ON DELETE CASCADE,
    target      text,
    weight      bigint,
    missing     text[] NOT NULL DEFAULT '{}',
    extra       jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT targets_upstream_target_key UNIQUE (upstream_id, target)
);
CREATE INDEX targets_tags_idx ON targets USING gin (tags);

CREATE TRIGGER upstreams_notify AFTER INSERT OR UPDATE OR DELETE ON upstreams
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
CREATE TRIGGER targets_notify AFTER INSERT OR UPDATE OR DELETE ON targets
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
