//! Kong's `certificates`, `snis` and `ca_certificates`: their admin schemas, the PEM checks Kong
//! makes at write time (a certificate parses, a key parses and matches its certificate, a CA
//! certificate is one unexpired CA), and the parsed forms the registry hands the TLS listeners
//! (a [`Certificate`] per row, [`Sni`] names) and the upstream clients ([`CaCertificate`]).
//!
//! Private keys live in documents as the client wrote them (the admin API shows them, as Kong's
//! does, so that decK can dump and sync them); the parsed forms never print them: their `Debug`
//! shows the id alone.

use std::sync::{Arc, LazyLock};

use portcullis_stores::model::entities as defs;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::SignatureAlgorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::Decode;

use super::{base_fields, EndpointLookup, EntityKind};
use crate::schema::{Field, FieldType, Schema};

/// Kong's text for a pair of which only one half is set.
const ALT_PAIR: &str = "all or none of these fields must be set: 'cert_alt', 'key_alt'";

/// The crypto provider that loads keys: the process's, else ring (the gateway's own).
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The certificates of a PEM text, leaf first.
///
/// # Errors
/// The reason, without the text (it may be a key pasted in the wrong field).
pub fn parse_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| "cannot read PEM".to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    for der in &certs {
        x509_cert::Certificate::from_der(der.as_ref())
            .map_err(|_| "not an X.509 certificate".to_string())?;
    }
    Ok(certs)
}

/// The private key of a PEM text, loaded by the crypto provider (so that every key accepted
/// can sign a handshake).
///
/// # Errors
/// The reason, never the key material.
pub fn parse_key(pem: &str) -> Result<Arc<dyn rustls::sign::SigningKey>, String> {
    let der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|_| "cannot read PEM".to_string())?
        .ok_or_else(|| "no PEM private key found".to_string())?;
    provider()
        .key_provider
        .load_private_key(der)
        .map_err(|_| "unsupported key type or size".to_string())
}

/// A certificate chain and its key as a handshake presents them.
///
/// # Errors
/// Either half unreadable, or a key that does not belong to the certificate.
pub fn certified_key(cert: &str, key: &str) -> Result<CertifiedKey, String> {
    let chain = parse_certificates(cert)?;
    let key = parse_key(key)?;
    let pair = CertifiedKey::new(chain, key);
    pair.keys_match().map_err(|_| "mismatch".to_string())?;
    Ok(pair)
}

fn check_certificate(v: &Value) -> Result<(), String> {
    parse_certificates(v.as_str().unwrap_or_default())
        .map(drop)
        .map_err(|e| format!("invalid certificate: {e}"))
}

fn check_key(v: &Value) -> Result<(), String> {
    parse_key(v.as_str().unwrap_or_default())
        .map(drop)
        .map_err(|e| format!("invalid key: {e}"))
}

/// Kong's `wildcard_host`: a host name, optionally with one `*` as its first or last character;
/// no IP address, no port.
///
/// # Errors
/// Kong's error text.
pub fn check_wildcard_host(v: &Value) -> Result<(), String> {
    let host = v.as_str().unwrap_or_default();
    let mut name = host.to_string();
    if let Some(idx) = host.find('*') {
        if idx != 0 && idx != host.len() - 1 {
            return Err("wildcard must be leftmost or rightmost character".into());
        }
        if host.matches('*').count() > 1 {
            return Err("only one wildcard must be specified".into());
        }
        name = host.replace('*', "wildcard");
    }
    if name.parse::<std::net::IpAddr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.split_once(']'))
            .is_some()
    {
        return Err("must not be an IP".into());
    }
    if let Some((h, port)) = name.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            if h.parse::<std::net::Ipv4Addr>().is_ok() {
                return Err("must not be an IP".into());
            }
            return Err("must not have a port".into());
        }
        return Err(format!("invalid value: {name}"));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!("invalid value: {name}"))
    }
}

fn text<'a>(doc: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    doc.get(field).and_then(Value::as_str)
}

/// The algorithm of a certificate's key, when the pair is valid.
fn pair_algorithm(cert: &str, key: &str) -> Result<SignatureAlgorithm, ()> {
    certified_key(cert, key)
        .map(|k| k.key.algorithm())
        .map_err(drop)
}

fn certificate_checks(doc: &Map<String, Value>) -> Vec<String> {
    let mut errs = Vec::new();
    let (cert_alt, key_alt) = (text(doc, "cert_alt"), text(doc, "key_alt"));
    if cert_alt.is_some() != key_alt.is_some() {
        errs.push(ALT_PAIR.into());
        return errs;
    }
    let main = match (text(doc, "cert"), text(doc, "key")) {
        (Some(c), Some(k)) => pair_algorithm(c, k),
        _ => Err(()),
    };
    if main.is_err() {
        errs.push("certificate does not match key".into());
    }
    if let (Some(c), Some(k)) = (cert_alt, key_alt) {
        let alt = pair_algorithm(c, k);
        match (main, alt) {
            (_, Err(())) => errs.push("alternative certificate does not match key".into()),
            (Ok(a), Ok(b)) if a == b => errs.push(
                "certificate and alternative certificate need to have different type (e.g. RSA \
                 and ECDSA), the provided certificates were both of the same type"
                    .into(),
            ),
            _ => {}
        }
    }
    errs
}

/// Kong's checks of a CA certificate: one certificate, not expired, a CA.
fn ca_certificate_checks(doc: &Map<String, Value>) -> Vec<String> {
    let Some(pem) = text(doc, "cert") else {
        return Vec::new();
    };
    if pem.matches("-----BEGIN CERTIFICATE-----").count() > 1 {
        return vec!["please submit only one certificate at a time".into()];
    }
    let Some(cert) = parse_certificates(pem)
        .ok()
        .and_then(|c| c.into_iter().next())
        .and_then(|der| x509_cert::Certificate::from_der(der.as_ref()).ok())
    else {
        return Vec::new();
    };
    let tbs = &cert.tbs_certificate;
    let not_after = tbs.validity.not_after.to_system_time();
    if not_after < std::time::SystemTime::now() {
        return vec!["certificate expired, \"Not After\" time is in the past".into()];
    }
    let is_ca = tbs.extensions.iter().flatten().any(|ext| {
        ext.extn_id == x509_cert::ext::pkix::BasicConstraints::OID
            && x509_cert::ext::pkix::BasicConstraints::from_der(ext.extn_value.as_bytes())
                .is_ok_and(|b| b.ca)
    });
    if !is_ca {
        return vec![
            "certificate does not appear to be a CA because it is missing the \"CA\" basic \
             constraint"
                .into(),
        ];
    }
    Vec::new()
}

/// The lower-case hex SHA-256 of a PEM certificate's DER form (Kong's `cert_digest`), `None`
/// when it does not parse.
pub fn cert_digest(pem: &str) -> Option<String> {
    let der = parse_certificates(pem).ok()?.into_iter().next()?;
    let digest = Sha256::digest(der.as_ref());
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// Certificates schema (`snis` is Kong's transient field: the names become `snis` rows).
pub static CERTIFICATE_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut fields = base_fields();
    fields.extend([
        Field::new("cert", FieldType::String)
            .required()
            .check(check_certificate),
        Field::new("key", FieldType::String)
            .required()
            .check(check_key),
        Field::new("cert_alt", FieldType::String).check(check_certificate),
        Field::new("key_alt", FieldType::String).check(check_key),
        Field::new("snis", FieldType::Array(Box::new(FieldType::String)))
            .check(check_wildcard_host),
    ]);
    Schema {
        name: "certificates",
        fields,
        entity_checks: vec![certificate_checks],
    }
});

/// SNIs schema.
pub static SNI_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut fields = base_fields();
    fields.extend([
        Field::new("name", FieldType::String)
            .required()
            .check(check_wildcard_host)
            .pattern("[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){1,3}"),
        Field::new("certificate", FieldType::Foreign("certificates")).required(),
    ]);
    Schema {
        name: "snis",
        fields,
        entity_checks: Vec::new(),
    }
});

/// CA certificates schema (`cert_digest` is computed from `cert` on every write).
pub static CA_CERTIFICATE_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut fields = base_fields();
    fields.extend([
        Field::new("cert", FieldType::String)
            .required()
            .check(check_certificate),
        Field::new("cert_digest", FieldType::String),
    ]);
    Schema {
        name: "ca_certificates",
        fields,
        entity_checks: vec![ca_certificate_checks],
    }
});

/// Certificates as an admin entity: addressed by id or by one of their SNI names (the admin
/// API's certificates module resolves names).
pub static CERTIFICATES: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::CERTIFICATES,
    schema: &CERTIFICATE_SCHEMA,
    endpoint_key: "id",
    endpoint_lookup: EndpointLookup::UnderParent,
});

/// SNIs as an admin entity, addressed by id or name.
pub static SNIS: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::SNIS,
    schema: &SNI_SCHEMA,
    endpoint_key: "name",
    endpoint_lookup: EndpointLookup::Plain,
});

/// CA certificates as an admin entity, addressed by id only (Kong gives them no endpoint key).
pub static CA_CERTIFICATES: LazyLock<EntityKind> = LazyLock::new(|| EntityKind {
    def: &defs::CA_CERTIFICATES,
    schema: &CA_CERTIFICATE_SCHEMA,
    endpoint_key: "id",
    endpoint_lookup: EndpointLookup::UnderParent,
});

/// Sets `cert_digest` from `cert` (Kong's on-write transformation).
pub fn set_cert_digest(doc: &mut Map<String, Value>) {
    let digest = text(doc, "cert").and_then(cert_digest);
    doc.insert(
        "cert_digest".into(),
        digest.map_or(Value::Null, Value::String),
    );
}

/// A stored certificate ready for handshakes: its main pair and the alternative one (Kong's
/// `cert_alt`, a key of the other type, e.g. ECDSA beside RSA).
#[derive(Clone)]
pub struct Certificate {
    /// Row id.
    pub id: Uuid,
    /// The main pair.
    pub key: Arc<CertifiedKey>,
    /// The alternative pair, if any.
    pub alt: Option<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("Certificate").field("id", &self.id).finish()
    }
}

impl Certificate {
    /// Parses a stored document.
    ///
    /// # Errors
    /// A document whose PEM does not parse or pair (the reason never quotes it).
    pub fn from_doc(doc: &Map<String, Value>) -> Result<Self, String> {
        let id = doc
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or("certificate without id")?;
        let pair = |c: &str, k: &str| certified_key(c, k).map(Arc::new);
        let key = pair(
            text(doc, "cert").unwrap_or_default(),
            text(doc, "key").unwrap_or_default(),
        )
        .map_err(|e| format!("certificate {id}: {e}"))?;
        let alt = match (text(doc, "cert_alt"), text(doc, "key_alt")) {
            (Some(c), Some(k)) => Some(pair(c, k).map_err(|e| format!("certificate {id}: {e}"))?),
            _ => None,
        };
        Ok(Self { id, key, alt })
    }
}

/// A server name and the certificate served for it.
#[derive(Debug, Clone)]
pub struct Sni {
    /// Row id.
    pub id: Uuid,
    /// The name (`example.com`, `*.example.com`, `example.*`, or `*`), lower case.
    pub name: String,
    /// The certificate.
    pub certificate: Uuid,
}

impl Sni {
    /// Parses a stored document.
    ///
    /// # Errors
    /// A document that does not satisfy the schema.
    pub fn from_doc(doc: &Map<String, Value>) -> Result<Self, String> {
        let id = doc
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or("sni without id")?;
        let name = text(doc, "name").ok_or("sni without name")?;
        let certificate = portcullis_stores::memory::foreign_id(doc, "certificate")
            .ok_or("sni without certificate")?;
        Ok(Self {
            id,
            name: name.to_ascii_lowercase(),
            certificate,
        })
    }
}

/// A trusted CA certificate, as upstream verification loads it.
#[derive(Debug, Clone)]
pub struct CaCertificate {
    /// Row id.
    pub id: Uuid,
    /// DER form.
    pub der: CertificateDer<'static>,
}

impl CaCertificate {
    /// Parses a stored document.
    ///
    /// # Errors
    /// A document whose certificate does not parse.
    pub fn from_doc(doc: &Map<String, Value>) -> Result<Self, String> {
        let id = doc
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or("ca certificate without id")?;
        let der = parse_certificates(text(doc, "cert").unwrap_or_default())?
            .into_iter()
            .next()
            .ok_or("ca certificate without certificate")?;
        Ok(Self { id, der })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wildcard_hosts_as_kong() {
        for ok in ["example.com", "*.example.com", "example.*", "*", "a_b.test"] {
            assert_eq!(check_wildcard_host(&json!(ok)), Ok(()), "{ok}");
        }
        let err = |h: &str| check_wildcard_host(&json!(h)).unwrap_err();
        assert_eq!(err("*.wildcard.*"), "only one wildcard must be specified");
        assert_eq!(
            err("a.*.com"),
            "wildcard must be leftmost or rightmost character"
        );
        assert_eq!(err("127.0.0.1"), "must not be an IP");
        assert_eq!(err("example.com:80"), "must not have a port");
    }
}
