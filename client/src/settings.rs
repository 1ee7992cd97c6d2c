//! [`ClientSettings`]: everything a [`crate::Client`] needs to know about the cluster, and the
//! time it may spend on one operation.

use std::net::SocketAddr;
use std::time::Duration;

use shardkv_transport::wire::ReadConsistency;
use shardkv_transport::{HostId, Layout, TlsFiles};

use crate::config::ClientConfig;
use crate::ClientError;

/// How long an operation keeps retrying by default.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(5);
/// The longest deadline a client accepts ([`crate::Client::new`] refuses longer ones). Hosts
/// remember a write session for 10 minutes of log time after its last write, and a retried
/// write is answered from that memory; a retry sent after the hosts forgot it would be
/// applied a second time. A tenth of that lifetime leaves a wide margin for retries still in
/// flight at the deadline and for a leader whose clock runs fast.
pub const DEADLINE_MAX: Duration = Duration::from_secs(60);
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
    /// How long one operation may take, retries included; at most [`DEADLINE_MAX`].
    pub deadline: Duration,
    /// How long one attempt against one host may take before the client tries another
    /// (a host that died silently is noticed after this, not after the whole deadline).
    pub attempt_timeout: Duration,
    /// How reads are served.
    pub consistency: ReadConsistency,
}

impl ClientSettings {
    /// Checks what the settings promise: a deadline within [`DEADLINE_MAX`], so a retried
    /// write always finds its session on the hosts.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.deadline > DEADLINE_MAX {
            return Err(ClientError::Setup(format!(
                "a deadline of {:?} exceeds the maximum of {DEADLINE_MAX:?}: hosts forget a \
                 write session 10 minutes after its last write, and a write retried later \
                 could be applied twice; use a deadline of at most {DEADLINE_MAX:?} and retry \
                 in the application past it",
                self.deadline
            )));
        }
        Ok(())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(deadline: Duration) -> ClientSettings {
        ClientSettings {
            hosts: Vec::new(),
            layout: Layout {
                shards: 1,
                replicas: 1,
                pins: Vec::new(),
                placement: Vec::new(),
            },
            tls: TlsFiles {
                ca: "ca.pem".into(),
                cert: "c.pem".into(),
                key: "c.key".into(),
            },
            value_bytes_max: 1024,
            deadline,
            attempt_timeout: Duration::from_secs(2),
            consistency: ReadConsistency::Linearizable,
        }
    }

    #[test]
    fn deadlines_up_to_the_maximum_are_accepted() {
        for deadline in [DEADLINE_DEFAULT, DEADLINE_MAX] {
            assert!(settings(deadline).validate().is_ok(), "{deadline:?}");
        }
    }

    #[test]
    fn a_deadline_past_the_maximum_is_refused_and_says_why() {
        let err = settings(DEADLINE_MAX + Duration::from_millis(1))
            .validate()
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Setup(m) if m.contains("applied twice")),
            "{err}"
        );
    }
}
