//! TLS listeners through rustls (TLS 1.2 and 1.3 only): configured PEM files, or a self-signed
//! certificate generated at start as Kong does; on the proxy listeners, the certificate of the
//! client's server name ([`SniResolver`] over the [`SniIndex`] the config registry publishes).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
// Kong does not verify upstream certificates unless a service sets `tls_verify`; neither do we,
// so self-signed upstreams (a tutorial's `https://localhost:3000`) work as they do behind Kong.
use portcullis_stores::unverified::AnyServerCertificate as AcceptAnyServerCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SignatureScheme};

/// Why a TLS server configuration or a set of trusted CAs cannot be made. Each variant names the
/// setting it came from (`ssl_cert`, `admin_ssl_cert`, `lua_ssl_trusted_certificate`) so the configuration layer can report it as that key's problem;
/// the message is the reason alone.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read or is not PEM.
    #[error("cannot read {path}: {reason}")]
    Unreadable {
        /// The setting naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// The OS or PEM error.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error("no PEM certificate in {path}")]
    NoCertificate {
        /// The setting naming the file.
        key: &'static str,
        /// The file.
        path: String,
    },
    /// The key file holds no private key.
    #[error("no PEM private key in {path}")]
    NoPrivateKey {
        /// The setting naming the file.
        key: &'static str,
        /// The file.
        path: String,
    },
    /// The self-signed certificate could not be generated.
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    /// rustls refused the pair.
    #[error("certificate and key do not form a valid pair: {reason}")]
    Mismatch {
        /// The setting naming the files.
        key: &'static str,
        /// rustls's reason.
        reason: String,
    },
}

impl TlsError {
    /// The setting the problem belongs to.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Unreadable { key, .. }
            | Self::NoCertificate { key, .. }
            | Self::NoPrivateKey { key, .. }
            | Self::Mismatch { key, .. } => key,
            Self::Generate(_) => "ssl_cert",
        }
    }
}

/// Installs ring as the process crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_pem(
    key: &'static str,
    cert: &Path,
    pkey: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let unreadable = |path: &Path, e: &dyn std::fmt::Display| TlsError::Unreadable {
        key,
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let cert_bytes = std::fs::read(cert).map_err(|e| unreadable(cert, &e))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_bytes.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable(cert, &e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: cert.display().to_string(),
        });
    }
    let key_bytes = std::fs::read(pkey).map_err(|e| unreadable(pkey, &e))?;
    let private = rustls_pemfile::private_key(&mut key_bytes.as_slice())
        .map_err(|e| unreadable(pkey, &e))?
        .ok_or_else(|| TlsError::NoPrivateKey {
            key,
            path: pkey.display().to_string(),
        })?;
    Ok((certs, private))
}

/// The CA certificates of PEM files, as one PEM bundle (`key` names the setting in errors);
/// every file must hold at least one certificate.
///
/// # Errors
/// A file that cannot be read, is not PEM, or holds no certificate.
pub fn read_cas(key: &'static str, paths: &[&Path]) -> Result<Vec<u8>, TlsError> {
    let mut bundle = Vec::new();
    for path in paths {
        let unreadable = |reason: String| TlsError::Unreadable {
            key,
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        let certs = rustls_pemfile::certs(&mut bytes.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unreadable(e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                key,
                path: path.display().to_string(),
            });
        }
        bundle.extend_from_slice(&bytes);
        bundle.push(b'\n');
    }
    Ok(bundle)
}

/// A self-signed certificate for `localhost` and this host's name.
///
/// # Errors
/// Only if key generation fails.
pub fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Ok(h) = std::env::var("HOSTNAME") {
        names.push(h);
    }
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into());
    Ok((vec![cert], key))
}

/// Server config from files (`key` names the setting in errors) or a generated certificate.
///
/// # Errors
/// Unreadable or invalid PEM files, naming the key.
pub fn server_config(
    key: &'static str,
    files: Option<(&Path, &Path)>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (certs, private) = match files {
        Some((cert, pkey)) => read_pem(key, cert, pkey)?,
        None => self_signed()?,
    };
    let config = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_single_cert(certs, private)
    .map_err(|e| TlsError::Mismatch {
        key,
        reason: e.to_string(),
    })?;
    Ok(Arc::new(config))
}

/// Server config of the proxy's TLS listeners: the certificate of the client's server name from
/// `index` (kept current by the config registry), else the default from `ssl_cert` (files) or
/// generated.
///
/// # Errors
/// Unreadable or invalid PEM files, naming the key.
pub fn sni_server_config(
    key: &'static str,
    files: Option<(&Path, &Path)>,
    index: Arc<ArcSwap<SniIndex>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (certs, private) = match files {
        Some((cert, pkey)) => read_pem(key, cert, pkey)?,
        None => self_signed()?,
    };
    let mismatch = |reason: String| TlsError::Mismatch { key, reason };
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| mismatch(e.to_string()))?;
    let default = CertifiedKey::new(certs, signing);
    default.keys_match().map_err(|e| mismatch(e.to_string()))?;
    let config = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(SniResolver {
        index,
        default: Arc::new(default),
    }));
    Ok(Arc::new(config))
}

/// A certificate as served: its main pair and Kong's alternative pair (a key of another type,
/// for clients that cannot verify the main one's signatures).
#[derive(Clone)]
pub struct Served {
    /// The main pair.
    pub main: Arc<CertifiedKey>,
    /// The alternative pair.
    pub alt: Option<Arc<CertifiedKey>>,
}

impl Served {
    /// The main pair, unless the client can verify only the alternative one's signatures.
    fn pick(&self, schemes: &[SignatureScheme]) -> Arc<CertifiedKey> {
        match &self.alt {
            Some(alt)
                if self.main.key.choose_scheme(schemes).is_none()
                    && alt.key.choose_scheme(schemes).is_some() =>
            {
                alt.clone()
            }
            _ => self.main.clone(),
        }
    }
}

/// The certificates of the configured SNIs, by lower-case name (`example.com`, `*.example.com`,
/// `example.*`, and `*`, which replaces the default certificate). Immutable: the config
/// registry builds a new one on every change and swaps it in.
#[derive(Default)]
pub struct SniIndex {
    names: HashMap<String, Served>,
}

impl std::fmt::Debug for SniIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the keys are secrets.
        f.debug_struct("SniIndex")
            .field("names", &self.names.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SniIndex {
    /// An index over `(name, certificate)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, Served)>) -> Self {
        Self {
            names: pairs
                .into_iter()
                .map(|(n, c)| (n.to_ascii_lowercase(), c))
                .collect(),
        }
    }

    /// The certificate for a server name, in Kong's order: the exact name, the name with its
    /// first label replaced by `*` (names of three labels or more), the name with its last label
    /// replaced by `*`, then the `*` SNI.
    pub fn find(&self, server_name: &str) -> Option<&Served> {
        if self.names.is_empty() {
            return None;
        }
        let lower;
        let name = if server_name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = server_name.to_ascii_lowercase();
            lower.as_str()
        } else {
            server_name
        };
        if let Some(found) = self.names.get(name) {
            return Some(found);
        }
        let prefix = name
            .find('.')
            .map(|i| &name[i..])
            .filter(|rest| rest[1..].contains('.'));
        if let Some(found) = prefix.and_then(|rest| self.names.get(&format!("*{rest}"))) {
            return Some(found);
        }
        let suffix = name.rfind('.').map(|i| &name[..=i]);
        if let Some(found) = suffix.and_then(|head| self.names.get(&format!("{head}*"))) {
            return Some(found);
        }
        self.names.get("*")
    }
}

/// Picks the proxy listener's certificate by SNI from the current [`SniIndex`]: one atomic load
/// per handshake, no lock.
#[derive(Debug)]
pub struct SniResolver {
    index: Arc<ArcSwap<SniIndex>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = self.index.load();
        match hello.server_name().and_then(|name| index.find(name)) {
            Some(served) => Some(served.pick(hello.signature_schemes())),
            None => Some(self.default.clone()),
        }
    }
}

/// Client config for upstreams of services without `tls_verify = true`.
pub fn unverified_upstream_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))))
                .with_no_client_auth()
        })
}

/// Client config for upstreams of services with `tls_verify = true`: the web PKI roots.
pub fn verified_upstream_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map(|b| {
            b.with_root_certificates(roots.clone())
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        })
}

/// Presents one configured certificate (a service's `client_certificate`) to upstreams that ask
/// for a client certificate.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.key.choose_scheme(sigschemes).map(|_| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A service's own upstream TLS client settings (`client_certificate`, `ca_certificates` with
/// `tls_verify`), built once per change by the config registry. `id` names it for the proxy
/// workers' client caches: a new configuration gets a new id, so no connection made with the old
/// settings is reused.
pub struct UpstreamTls {
    /// Unique among all built in this process.
    pub id: u64,
    /// The client configuration.
    pub config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").field("id", &self.id).finish()
    }
}

impl UpstreamTls {
    /// Client settings presenting `client` (if any) and, when `verify`, trusting exactly `cas`
    /// (Kong's `ca_certificates`; an empty list trusts nothing), or the web PKI roots when `cas`
    /// is `None`.
    ///
    /// # Errors
    /// A CA certificate the trust store refuses (the reason names no key material).
    pub fn new(
        client: Option<Arc<CertifiedKey>>,
        cas: Option<&[CertificateDer<'static>]>,
        verify: bool,
    ) -> Result<Self, String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let builder = if verify {
            let mut roots = rustls::RootCertStore::empty();
            match cas {
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                Some(cas) => {
                    for ca in cas {
                        roots.add(ca.clone()).map_err(|e| e.to_string())?;
                    }
                }
            }
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
        };
        let config = match client {
            Some(key) => builder.with_client_cert_resolver(Arc::new(FixedClientCert(key))),
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            config: Arc::new(config),
        })
    }
}
