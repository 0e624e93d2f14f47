//! TLS with tokio-rustls (ring provider): server configuration from PEM, re-exported rustls so
//! hosts build client and server configs with the same version. Behind the `tls` feature.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::error::Error;

/// The crypto provider of this crate's TLS: ring.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1
/// or SEC1), advertising `http/1.1` over ALPN.
///
/// ```
/// let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
/// let config = chat_transport_ws::tls::server_config(cert.cert.pem().as_bytes(), cert.key_pair.serialize_pem().as_bytes());
/// assert!(config.is_ok());
/// assert!(chat_transport_ws::tls::server_config(b"not pem", b"").is_err());
/// ```
pub fn server_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, Error> {
    let certs = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls("no certificate in the PEM chain".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::Tls(format!("private key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration trusting exactly the PEM certificates given (a private CA, or a
/// self-signed certificate in tests), for [`connect_tls`](crate::connect_tls).
///
/// ```
/// let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
/// assert!(chat_transport_ws::tls::client_config(cert.cert.pem().as_bytes()).is_ok());
/// ```
pub fn client_config(roots_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem) {
        let cert = cert.map_err(|e| Error::Tls(format!("root certificate: {e}")))?;
        roots.add(cert).map_err(|e| Error::Tls(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls("no root certificate in the PEM".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
