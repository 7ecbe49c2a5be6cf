//! TLS for the listeners: the rustls acceptor (ALPN h2 and http/1.1) and a certificate
//! that can be swapped while serving. Handshakes after a reload get the new certificate;
//! connections already open keep theirs, so a reload never drops a transfer.

use std::fmt;
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {what}; expected PEM")]
    Pem { path: String, what: String },
    #[error("{cert} and {key} do not form a usable pair: {source}")]
    Pair {
        cert: String,
        key: String,
        source: tokio_rustls::rustls::Error,
    },
}

/// The acceptor and the handle that reloads its certificate.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    cert: Arc<SwappableCert>,
}

impl Tls {
    /// Loads the certificate and key (blocking file reads: call at startup or in
    /// `spawn_blocking`).
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let key = read_pair(files, &provider)?;
        let cert = Arc::new(SwappableCert {
            current: RwLock::new(Arc::new(key)),
            files: files.clone(),
            provider: provider.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Pair {
                cert: files.cert.display().to_string(),
                key: files.key.display().to_string(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert,
        })
    }

    /// Re-reads the files; on failure the current certificate stays in use.
    pub async fn reload(&self) -> Result<(), TlsError> {
        let cert = self.cert.clone();
        let loaded = tokio::task::spawn_blocking(move || read_pair(&cert.files, &cert.provider))
            .await
            .map_err(|e| TlsError::Read {
                path: self.cert.files.cert.display().to_string(),
                source: std::io::Error::other(e),
            })??;
        *self.cert.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        Ok(())
    }
}

/// The certificate every new handshake gets; replaced whole on reload.
struct SwappableCert {
    current: RwLock<Arc<CertifiedKey>>,
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for SwappableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwappableCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn read_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(&files.cert)?, read(&files.key)?);
    let pem_error = |path: &std::path::Path, what: String| TlsError::Pem {
        path: path.display().to_string(),
        what,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(&files.cert, "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(&files.key, format!("no usable private key ({e})")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Pair {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        source,
    })
}
