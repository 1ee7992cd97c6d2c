//! TLS for every shardkv connection: TLS 1.3 only, ring provider, mutual authentication
//! against the cluster CA, ALPN `shardkv/2`, and the peer's role read from its certificate
//! (see [`crate::identity`]).
//!
//! Hosts present host certificates both when they accept and when they dial another host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TransportError;
use crate::identity::PeerIdentity;

/// The ALPN protocol id; a peer speaking anything else is refused during the handshake.
/// Bumped whenever a frame's encoding changes (version 2: data and admin requests in
/// separate frames, Raft batches carrying the sender's incarnation), so an old peer is refused
/// at the handshake instead of having its frames misread.
pub const ALPN: &[u8] = b"shardkv/2";

/// Paths of the PEM files one endpoint needs.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This endpoint's certificate (host or client), signed by the CA.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| {
        TransportError::Tls(format!(
            "cannot read certificate {}: {e}; run `shardkv certs init` to create it",
            path.display()
        ))
    })?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Tls(format!("bad PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TransportError::Tls(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        TransportError::Tls(format!(
            "cannot read private key {}: {e}; run `shardkv certs init` to create it",
            path.display()
        ))
    })
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TransportError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(ca)? {
        store.add(cert).map_err(|e| {
            TransportError::Tls(format!("bad CA certificate {}: {e}", ca.display()))
        })?;
    }
    Ok(Arc::new(store))
}

/// rustls server config: requires a client certificate from the cluster CA.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TransportError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .build()
        .map_err(|e| TransportError::Tls(format!("client verifier: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TransportError::Tls(format!("{}: {e}", files.cert.display())))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// rustls client config: trusts only the cluster CA and presents our certificate.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TransportError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TransportError::Tls(format!("{}: {e}", files.cert.display())))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// The identity of the peer of an established QUIC connection.
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, TransportError> {
    let any = conn
        .peer_identity()
        .ok_or_else(|| TransportError::Identity("peer presented no certificate".into()))?;
    let chain = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TransportError::Identity("unexpected peer identity type".into()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| TransportError::Identity("empty certificate chain".into()))?;
    PeerIdentity::from_cert(leaf.as_ref())
}
