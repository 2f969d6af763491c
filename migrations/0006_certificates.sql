-- 0006: TLS per host. Certificates (served by SNI on the proxy's TLS listeners, presented to
-- upstreams as client certificates), the server names they are served for, and the CA
-- certificates services verify their upstreams with, with Kong's rules: an SNI name is unique and
-- goes with its certificate (ON DELETE CASCADE); a CA certificate is stored once (its SHA-256
-- digest is unique); a service's client certificate cannot be deleted while the service uses it.
-- All three tables announce their changes on the config channel, like the tables of 0003.

CREATE TABLE certificates (
    id         uuid PRIMARY KEY,
    created_at bigint,
    updated_at bigint,
    tags       text[],
    cert       text,
    key        text,
    cert_alt   text,
    key_alt    text,
    missing    text[] NOT NULL DEFAULT '{}',
    extra      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX certificates_tags_idx ON certificates USING gin (tags);

CREATE TABLE snis (
    id             uuid PRIMARY KEY,
    created_at     bigint,
    updated_at     bigint,
    tags           text[],
    name           text CONSTRAINT snis_name_key UNIQUE,
    certificate_id uuid CONSTRAINT snis_certificate_fk
                        REFERENCES certificates (id) ON DELETE CASCADE,
    missing        text[] NOT NULL DEFAULT '{}',
    extra          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX snis_tags_idx ON snis USING gin (tags);
CREATE INDEX snis_certificate_idx ON snis (certificate_id);

CREATE TABLE ca_certificates (
    id          uuid PRIMARY KEY,
    created_at  bigint,
    updated_at  bigint,
    tags        text[],
    cert        text,
    cert_digest text CONSTRAINT ca_certificates_cert_digest_key UNIQUE,
    missing     text[] NOT NULL DEFAULT '{}',
    extra       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX ca_certificates_tags_idx ON ca_certificates USING gin (tags);

-- Services written before this migration may name a client certificate no table held then;
-- NOT VALID keeps those rows while every new write is checked.
ALTER TABLE services ADD CONSTRAINT services_client_certificate_fk
    FOREIGN KEY (client_certificate_id) REFERENCES certificates (id) NOT VALID;

CREATE TRIGGER certificates_notify AFTER INSERT OR UPDATE OR DELETE ON certificates
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
CREATE TRIGGER snis_notify AFTER INSERT OR UPDATE OR DELETE ON snis
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
CREATE TRIGGER ca_certificates_notify AFTER INSERT OR UPDATE OR DELETE ON ca_certificates
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_config();
