//! Who a certificate says its holder is: the `shardkv://host/<id>` and `shardkv://client/<name>`
//! URI SANs, and the DNS name a host's certificate carries.
//!
//! Certificates are made by `shardkv certs` and checked by the transport on every connection;
//! both go through this module, so the names written and the names accepted cannot drift apart.

use x509_parser::extensions::GeneralName;

use crate::error::TransportError;
use crate::wire::HostId;

/// Scheme and authority every shardkv identity URI starts with.
const URI_PREFIX: &str = "shardkv://";

/// Who is on the other end of a connection, as proven by its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// A shardkv host: may send Raft traffic for this id only, and admin fault hooks.
    Host(HostId),
    /// A client: may send requests and status queries only.
    Client(String),
}

impl PeerIdentity {
    /// The URI SAN that marks a certificate as this identity (what [`PeerIdentity::from_uri`]
    /// reads back).
    pub fn uri(&self) -> String {
        match self {
            PeerIdentity::Host(id) => format!("{URI_PREFIX}host/{id}"),
            PeerIdentity::Client(name) => format!("{URI_PREFIX}client/{name}"),
        }
    }

    /// Parses a `shardkv://` URI; `Ok(None)` for a URI of another scheme (certificates may
    /// carry other URIs), an error for a `shardkv://` URI that names no valid identity.
    pub fn from_uri(uri: &str) -> Result<Option<Self>, TransportError> {
        let Some(rest) = uri.strip_prefix(URI_PREFIX) else {
            return Ok(None);
        };
        if let Some(id) = rest.strip_prefix("host/") {
            let id: HostId = id
                .parse()
                .map_err(|_| TransportError::Identity(format!("bad host id in {uri}")))?;
            if id == 0 {
                return Err(TransportError::Identity("host id 0 is reserved".into()));
            }
            return Ok(Some(PeerIdentity::Host(id)));
        }
        if let Some(name) = rest.strip_prefix("client/") {
            if name.is_empty() {
                return Err(TransportError::Identity("empty client name".into()));
            }
            return Ok(Some(PeerIdentity::Client(name.to_string())));
        }
        Err(TransportError::Identity(format!("unknown role in {uri}")))
    }

    /// Reads the identity from a DER certificate's URI SANs. Exactly one `shardkv://` URI must
    /// be present.
    pub fn from_cert(der: &[u8]) -> Result<Self, TransportError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TransportError::Identity(format!("unparsable certificate: {e}")))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| TransportError::Identity(format!("bad SAN extension: {e}")))?
            .ok_or_else(|| TransportError::Identity("certificate has no SAN extension".into()))?;
        let mut found = None;
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(identity) = Self::from_uri(uri)? {
                    if found.is_some() {
                        return Err(TransportError::Identity(
                            "certificate names more than one shardkv identity".into(),
                        ));
                    }
                    found = Some(identity);
                }
            }
        }
        found
            .ok_or_else(|| TransportError::Identity("certificate has no shardkv:// URI SAN".into()))
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerIdentity::Host(id) => write!(f, "host {id}"),
            PeerIdentity::Client(name) => write!(f, "client {name}"),
        }
    }
}

/// The TLS server name a host's certificate carries as a DNS SAN. Clients dial the address
/// but verify this name, so the handshake proves they reached the host they meant and
/// certificates stay valid when addresses are reassigned.
pub fn host_server_name(id: HostId) -> String {
    format!("host-{id}")
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
            PeerIdentity::from_cert(&cert_with_uris(&["shardkv://host/3"])).unwrap(),
            PeerIdentity::Host(3)
        );
        assert_eq!(
            PeerIdentity::from_cert(&cert_with_uris(&["shardkv://client/cli"])).unwrap(),
            PeerIdentity::Client("cli".into())
        );
        assert!(PeerIdentity::from_cert(&cert_with_uris(&[])).is_err());
        assert!(PeerIdentity::from_cert(&cert_with_uris(&["shardkv://host/0"])).is_err());
        assert!(PeerIdentity::from_cert(&cert_with_uris(&["shardkv://host/x"])).is_err());
        assert!(PeerIdentity::from_cert(&cert_with_uris(&["shardkv://admin/1"])).is_err());
        assert!(PeerIdentity::from_cert(&cert_with_uris(&[
            "shardkv://host/1",
            "shardkv://client/a"
        ]))
        .is_err());
        assert_eq!(
            PeerIdentity::from_cert(&cert_with_uris(&[
                "https://example.com",
                "shardkv://host/7"
            ]))
            .unwrap(),
            PeerIdentity::Host(7)
        );
    }

    #[test]
    fn a_built_uri_parses_back_to_the_same_identity() {
        for identity in [
            PeerIdentity::Host(12),
            PeerIdentity::Client("bench-1".into()),
        ] {
            assert_eq!(
                PeerIdentity::from_uri(&identity.uri()).unwrap(),
                Some(identity)
            );
        }
        assert_eq!(PeerIdentity::Host(2).uri(), "shardkv://host/2");
        assert_eq!(
            PeerIdentity::Client("cli".into()).uri(),
            "shardkv://client/cli"
        );
    }

    #[test]
    fn uris_of_other_schemes_are_not_identities() {
        assert_eq!(PeerIdentity::from_uri("https://host/1").unwrap(), None);
    }
}
