//! TLS listeners through rustls (TLS 1.2 and 1.3 only): configured PEM files, or a self-signed
//! certificate generated at start as Kong does.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Why a TLS server configuration cannot be made. Each variant names the setting it came from
/// (`ssl_cert`, `admin_ssl_cert`) so the configuration layer can report it as that key's problem;
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

/// Kong does not verify upstream certificates unless a service sets `tls_verify`; neither do we,
/// so self-signed upstreams (a tutorial's `https://localhost:3000`) work as they do behind Kong.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
