//! TLS for the TCP transport (feature `tls`): the server's certificate and key
//! ([`TlsConfig`]) and the client's trusted roots ([`client_config_from_ca_pem`]), loaded from
//! PEM with rustls and its `ring` provider. The framing inside TLS is the same as on plain TCP.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::Error;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::TlsConfig(format!("{}: {e}", path.display())))
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::TlsConfig(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::TlsConfig("no certificate in the PEM".into()));
    }
    Ok(certs)
}

/// The server's TLS settings: a certificate chain and its private key.
///
/// ```no_run
/// # async fn run(engine: chat_core::Engine) -> Result<(), chat_transport_tcp::Error> {
/// use chat_transport_tcp::{TcpServer, TlsConfig};
/// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// TcpServer::bind("0.0.0.0:7443", engine).await?.with_tls(tls).run().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1) from files.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<TlsConfig, Error> {
        Self::from_pem(&read(cert.as_ref())?, &read(key.as_ref())?)
    }

    /// Like [`from_pem_files`](Self::from_pem_files), from PEM text in memory.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsConfig, Error> {
        let certs = certificates(cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| Error::TlsConfig(format!("no usable private key in the PEM: {e}")))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Ok(Self::from_server_config(Arc::new(config)))
    }

    /// Uses a rustls server configuration built by the host (client certificates, ALPN...).
    pub fn from_server_config(config: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig { config }
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

/// A client configuration trusting exactly the CA certificates (or self-signed server
/// certificates) in `ca_pem`; for [`connect_tls`](crate::connect_tls).
pub fn client_config_from_ca_pem(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem)? {
        roots.add(cert)?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Like [`client_config_from_ca_pem`], from a PEM file.
pub fn client_config_from_ca_file(path: impl AsRef<Path>) -> Result<Arc<ClientConfig>, Error> {
    client_config_from_ca_pem(&read(path.as_ref())?)
}
