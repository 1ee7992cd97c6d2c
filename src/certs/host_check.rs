//! Whether a host's certificate and key on disk are still the right ones, judged the way the
//! transport will judge them at a handshake: the chain to the CA file on disk, the validity
//! window, the `host-<id>` DNS name clients verify, the address, both key usages (hosts serve
//! and dial), the `shardkv://host/<id>` identity, and a key that belongs to the certificate.
//!
//! `shardkv certs host ID` leaves files that pass alone, so re-running it (say after a crash
//! halfway through adding a host) never replaces a certificate a running host already uses.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use shardkv_transport::identity::{host_server_name, PeerIdentity};

use crate::config::HostConfig;

/// `Ok` when `host.cert` and `host.key` are a valid pair for `host` issued by the CA at `ca`;
/// otherwise what is wrong, in words for an operator.
pub(super) fn check_host_files(ca: &Path, host: &HostConfig) -> Result<(), String> {
    let id = host.host.id;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = roots(ca)?;
    let leaf = CertificateDer::from_pem_file(&host.cert)
        .map_err(|e| format!("{} is not a PEM certificate: {e}", host.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&host.key)
        .map_err(|e| format!("{} is not a PEM private key: {e}", host.key.display()))?;
    check_key_matches(&provider, &leaf, key).map_err(|e| {
        format!(
            "{} is not the key of {}: {e}",
            host.key.display(),
            host.cert.display()
        )
    })?;

    let now = UnixTime::now();
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("cannot use {} to verify: {e}", ca.display()))?;
    let names = [
        ServerName::try_from(host_server_name(id))
            .map_err(|e| format!("host {id} has no valid server name: {e}"))?,
        ServerName::from(host.host.addr.ip()),
    ];
    for name in &names {
        server
            .verify_server_cert(&leaf, &[], name, &[], now)
            .map_err(|e| {
                format!(
                    "it is not valid from {} as server {}: {e}",
                    ca.display(),
                    name.to_str()
                )
            })?;
    }
    let client = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| format!("cannot use {} to verify: {e}", ca.display()))?;
    client
        .verify_client_cert(&leaf, &[], now)
        .map_err(|e| format!("it is not valid from {} as a client: {e}", ca.display()))?;

    match PeerIdentity::from_cert(leaf.as_ref()) {
        Ok(PeerIdentity::Host(found)) if found == id => Ok(()),
        Ok(other) => Err(format!("it names {other}, not host {id}")),
        Err(e) => Err(e.to_string()),
    }
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, String> {
    let cert = CertificateDer::from_pem_file(ca)
        .map_err(|e| format!("{} is not a PEM certificate: {e}", ca.display()))?;
    let mut store = RootCertStore::empty();
    store
        .add(cert)
        .map_err(|e| format!("{} is not a usable CA certificate: {e}", ca.display()))?;
    Ok(Arc::new(store))
}

fn check_key_matches(
    provider: &CryptoProvider,
    leaf: &CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<(), rustls::Error> {
    let signing_key = provider.key_provider.load_private_key(key)?;
    // The ring provider reports the public key of every key type shardkv makes, so "cannot
    // tell" does not happen for our own files and is treated as a mismatch.
    CertifiedKey::new(vec![leaf.clone()], signing_key).keys_match()
}
