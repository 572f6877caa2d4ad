//! The TLS configuration: the only way into checkoutd.
//!
//! Invariants (DESIGN.md invariant 1):
//! - TLS 1.3 and TLS 1.2 only; TLS 1.2 only with ECDHE key exchange and an
//!   AEAD cipher (AES-GCM or ChaCha20-Poly1305). rustls implements no CBC
//!   suite and no RSA key exchange, and the suite list below is explicit so
//!   that a future rustls default cannot widen it.
//! - Client certificates are optional at the handshake (health checks and
//!   the public opt-out page need none) but a presented one must chain to the
//!   client CA, or the handshake fails.
//! - ALPN offers h2 and http/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, ring as ring_provider};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} file {path} holds no certificate")]
    Empty { what: &'static str, path: PathBuf },
    #[error("the client CA file {path} holds no usable CA certificate")]
    BadClientCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the client-certificate verifier failed")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the server certificate and key do not form a valid TLS identity")]
    Identity(#[source] rustls::Error),
}

/// The crypto provider checkoutd uses everywhere: ring, with an explicit
/// allow-list of cipher suites.
pub fn provider() -> CryptoProvider {
    use ring_provider::cipher_suite as cs;
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..ring_provider::default_provider()
    }
}

/// Where the server's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_ca: PathBuf,
}

impl TlsFiles {
    /// The development layout of a certs directory (`server.pem`,
    /// `server-key.pem`, `ca.pem`), with an optional separate client CA.
    pub fn in_dir(certs_dir: &Path, client_ca: Option<&Path>) -> Self {
        TlsFiles {
            server_cert: certs_dir.join(crate::pki::SERVER_CERT_FILE),
            server_key: certs_dir.join(crate::pki::SERVER_KEY_FILE),
            client_ca: client_ca
                .map(Path::to_owned)
                .unwrap_or_else(|| certs_dir.join(crate::pki::CA_FILE)),
        }
    }
}

/// Builds the server configuration from PEM files.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(&files.server_cert, "server certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.server_key).map_err(|source| TlsError::Read {
        what: "server private key",
        path: files.server_key.clone(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.client_ca, "client CA")? {
        roots.add(ca).map_err(|source| TlsError::BadClientCa {
            path: files.client_ca.clone(),
            source,
        })?;
    }
    let provider = Arc::new(provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Identity)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::Identity)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our suite order (strongest first, `provider`), not the client's: a
    // client that prefers a weaker suite still gets the strongest we share.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The protocol name for logs, e.g. `TLSv1.3`.
pub fn version_name(version: Option<rustls::ProtocolVersion>) -> &'static str {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::SupportedCipherSuite;

    #[test]
    fn only_ecdhe_aead_suites_are_offered() {
        for suite in provider().cipher_suites {
            let name = format!("{:?}", suite.suite());
            match suite {
                SupportedCipherSuite::Tls13(_) => {}
                SupportedCipherSuite::Tls12(_) => {
                    assert!(name.contains("ECDHE"), "{name}");
                    assert!(name.contains("GCM") || name.contains("CHACHA20"), "{name}");
                    assert!(!name.contains("CBC"), "{name}");
                }
            }
        }
    }
}
