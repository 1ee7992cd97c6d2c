//! TLS for every shardkv connection: TLS 1.3 only, ring provider, mutual authentication
//! against the cluster CA, ALPN `shardkv/1`, and the peer's role read from its URI SAN.
//!
//! A certificate names exactly one identity: `shardkv://host/<id>` or `shardkv://client/<name>`.
//! Hosts present host certificates both when they accept and when they dial another host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::error::TransportError;
use crate::wire::HostId;

/// The ALPN protocol id; a peer speaking anything else is refused during the handshake.
pub const ALPN: &[u8] = b"shardkv/1";

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

/// Who is on the other end of a connection, as proven by its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A shardkv host: may send Raft traffic for this id only.
    Host(HostId),
    /// A client: may send requests only.
    Client(String),
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerIdentity::Host(id) => write!(f, "host {id}"),
            PeerIdentity::Client(name) => write!(f, "client {name}"),
        }
    }
}

/// The TLS server name a host's certificate carries as a DNS SAN; clients dial with it so the
/// handshake proves they reached the host they meant.
pub fn host_server_name(id: HostId) -> String {
    format!("host-{id}")
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

/// Reads the shardkv identity from a DER certificate's URI SANs. Exactly one
/// `shardkv://` URI must be present.
pub fn identity_from_cert(der: &[u8]) -> Result<PeerIdentity, TransportError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TransportError::Identity(format!("unparsable certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TransportError::Identity(format!("bad SAN extension: {e}")))?
        .ok_or_else(|| TransportError::Identity("certificate has no SAN extension".into()))?;
    let mut found = None;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name {
            if let Some(rest) = uri.strip_prefix("shardkv://") {
                if found.is_some() {
                    return Err(TransportError::Identity(
                        "certificate names more than one shardkv identity".into(),
                    ));
                }
                found = Some(parse_identity(rest)?);
            }
        }
    }
    found.ok_or_else(|| TransportError::Identity("certificate has no shardkv:// URI SAN".into()))
}

fn parse_identity(rest: &str) -> Result<PeerIdentity, TransportError> {
    if let Some(id) = rest.strip_prefix("host/") {
        let id: HostId = id
            .parse()
            .map_err(|_| TransportError::Identity(format!("bad host id in shardkv://{rest}")))?;
        if id == 0 {
            return Err(TransportError::Identity("host id 0 is reserved".into()));
        }
        return Ok(PeerIdentity::Host(id));
    }
    if let Some(name) = rest.strip_prefix("client/") {
        if name.is_empty() {
            return Err(TransportError::Identity("empty client name".into()));
        }
        return Ok(PeerIdentity::Client(name.to_string()));
    }
    Err(TransportError::Identity(format!(
        "unknown role in shardkv://{rest}"
    )))
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
    identity_from_cert(leaf.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(rcgen::Ia5String::try_from(*u).unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identities() {
        assert_eq!(
            identity_from_cert(&cert_with_uris(&["shardkv://host/3"])).unwrap(),
            PeerIdentity::Host(3)
        );
        assert_eq!(
            identity_from_cert(&cert_with_uris(&["shardkv://client/cli"])).unwrap(),
            PeerIdentity::Client("cli".into())
        );
        assert!(identity_from_cert(&cert_with_uris(&[])).is_err());
        assert!(identity_from_cert(&cert_with_uris(&["shardkv://host/0"])).is_err());
        assert!(identity_from_cert(&cert_with_uris(&["shardkv://host/x"])).is_err());
        assert!(identity_from_cert(&cert_with_uris(&["shardkv://admin/1"])).is_err());
        assert!(
            identity_from_cert(&cert_with_uris(&["shardkv://host/1", "shardkv://client/a"]))
                .is_err()
        );
        assert_eq!(
            identity_from_cert(&cert_with_uris(&[
                "https://example.com",
                "shardkv://host/7"
            ]))
            .unwrap(),
            PeerIdentity::Host(7)
        );
    }
}
