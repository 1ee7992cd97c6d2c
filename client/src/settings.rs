//! [`ClientSettings`]: everything a [`crate::Client`] needs to know about the cluster, and the
//! time it may spend on one operation.

use std::net::SocketAddr;
use std::time::Duration;

use shardkv_transport::wire::ReadConsistency;
use shardkv_transport::{HostId, Layout, TlsFiles};

use crate::config::ClientConfig;

/// How long an operation keeps retrying by default.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(5);
/// Shortest default per-attempt timeout, whatever the election timeout.
const ATTEMPT_TIMEOUT_MIN: Duration = Duration::from_secs(2);

/// Everything a client needs to know about the cluster.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Every host and its address.
    pub hosts: Vec<(HostId, SocketAddr)>,
    /// The layout the configuration declares. The client routes by the layout the cluster
    /// was bootstrapped with, loaded from a host, and refuses to route if this one differs.
    pub layout: Layout,
    /// CA, client certificate and key.
    pub tls: TlsFiles,
    /// Largest value the cluster accepts.
    pub value_bytes_max: usize,
    /// How long one operation may take, retries included.
    pub deadline: Duration,
    /// How long one attempt against one host may take before the client tries another
    /// (a host that died silently is noticed after this, not after the whole deadline).
    pub attempt_timeout: Duration,
    /// How reads are served.
    pub consistency: ReadConsistency,
}

impl ClientSettings {
    /// Settings from a cluster description, using client certificate `name`.
    pub fn from_config(cfg: &ClientConfig, name: &str) -> Self {
        let (cert, key) = cfg.tls.client_cert_paths(name);
        ClientSettings {
            hosts: cfg.hosts.iter().map(|h| (h.id, h.addr)).collect(),
            layout: cfg.declared_layout(),
            tls: TlsFiles {
                ca: cfg.tls.ca.clone(),
                cert,
                key,
            },
            value_bytes_max: cfg.value_bytes_max,
            deadline: DEADLINE_DEFAULT,
            attempt_timeout: (cfg.election_timeout * 2).max(ATTEMPT_TIMEOUT_MIN),
            consistency: ReadConsistency::Linearizable,
        }
    }
}
