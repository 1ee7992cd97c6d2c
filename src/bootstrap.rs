//! What this host's data dir holds of the cluster, settled before any replica starts.
//!
//! - A data dir that was bootstrapped keeps its layout: a `cluster.toml` that declares another
//!   one (shards, replicas, pins) is refused with the field and both values, and placement comes
//!   from the stored layout, so appending a `[[host]]` entry moves nothing.
//! - A new data dir first asks its peers (with this host's certificate, briefly). If one of them
//!   knows this host by another incarnation, this host's data was lost ([`LostDisk`]): it
//!   records that durably and starts holding no replica (as a member it would vote with what
//!   it forgot), waiting, across restarts, for `shardkv host replace` to record its new
//!   incarnation in the live map. If a peer has a layout, that
//!   one is adopted (a host joining late never recomputes placement from a grown host list).
//!   With no peer reachable the cluster is new, or its peers will refuse this incarnation
//!   anyway (see `shardkv_actors::incarnations`).

use std::time::Duration;

use shardkv_actors::schema::{meta, Schema};
use shardkv_transport::endpoint::{call, client_endpoint, connect};
use shardkv_transport::wire::{AdminRequest, HostStatus, RequestFrame, Response};
use shardkv_transport::{HostId, Layout, LayoutMismatch, TlsFiles};
use tracing::{error, info, warn};

use crate::config::{ClusterConfig, HostConfig};
use crate::daemon::DaemonError;

/// How long a new data dir waits for each peer's answer.
const PEER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a host refuses to start with this data dir and this `cluster.toml`.
#[derive(thiserror::Error, Debug)]
pub enum BootstrapError {
    /// The file declares another layout than the data dir (or the cluster) was bootstrapped with.
    #[error("{mismatch} (data dir {dir})")]
    Layout {
        mismatch: LayoutMismatch,
        dir: String,
    },
    /// The stored placement puts replicas on a host the file no longer lists.
    #[error("host {missing} holds replicas of shards {shards:?} but has no [[host]] entry in {path}; put its entry back (removing a host is a membership change, not an edit)")]
    HostMissing {
        missing: HostId,
        shards: Vec<u32>,
        path: String,
    },
}

/// This data dir is new, but the cluster knew this host with another one: its data was lost.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("the data dir {dir} of host {host} is new, but host {peer} knows host {host} by another incarnation ({known:#x}, this one is {mine:#x}): this host's data was lost or replaced. It holds no replica and never votes until it is replaced: run `shardkv host replace {host}` (or stop it and restore its original data dir)")]
pub struct LostDisk {
    pub host: HostId,
    pub peer: HostId,
    pub known: u64,
    pub mine: u64,
    pub dir: String,
}

/// What a data dir holds of the cluster, as [`settle_layout`] found it.
#[derive(Debug)]
pub struct Settled {
    /// The layout this host serves.
    pub layout: Layout,
    /// This data dir replaced a lost one and the live map does not list it yet: no replica
    /// may start (see `meta::is_awaiting_replace`).
    pub awaiting_replace: bool,
}

/// The layout this host serves: stored, adopted from a peer, or (day 0) declared by the file;
/// and whether this data dir replaced a lost one. Stores what it found if the data dir had
/// nothing yet.
pub async fn settle_layout(
    cfg: &ClusterConfig,
    me: &HostConfig,
    schema: &Schema,
) -> Result<Settled, DaemonError> {
    let declared = cfg.cluster.declared_layout();
    let dir = me.data_dir.display().to_string();
    let stored = meta::stored_layout(schema)?;
    let recorded = stored.is_some();
    let mut lost = None;
    let layout = match stored {
        Some(stored) => stored,
        None if meta::has_replicas(schema)? => {
            warn!("data dir bootstrapped by an older version: recording the declared layout");
            declared.clone()
        }
        None => {
            let probe = probe_peers(cfg, me, schema).await?;
            lost = probe.lost;
            match probe.layout {
                Some(adopted) => {
                    info!("adopting the layout the cluster was bootstrapped with");
                    adopted
                }
                None => declared.clone(),
            }
        }
    };
    layout
        .check_declared(&declared)
        .map_err(|mismatch| BootstrapError::Layout {
            mismatch,
            dir: dir.clone(),
        })?;
    for host in layout.replica_hosts() {
        if cfg.host(host).is_none() {
            let shards = layout
                .placement
                .iter()
                .filter(|(_, hosts)| hosts.contains(&host))
                .map(|(s, _)| *s)
                .collect();
            return Err(BootstrapError::HostMissing {
                missing: host,
                shards,
                path: cfg.cluster.path.display().to_string(),
            }
            .into());
        }
    }
    if let Some(lost) = &lost {
        error!("{lost}");
        // Before the layout: a crash in between finds the loss again at the next start.
        meta::store_awaiting_replace(schema)?;
    }
    if !recorded {
        meta::store_layout(schema, &layout)?;
    }
    Ok(Settled {
        layout,
        awaiting_replace: meta::is_awaiting_replace(schema)?,
    })
}

/// What the peers said about a new data dir.
struct Probe {
    /// The first layout a peer was bootstrapped with.
    layout: Option<Layout>,
    /// A peer knows this host by another incarnation.
    lost: Option<LostDisk>,
}

/// Asks every peer for its status.
async fn probe_peers(
    cfg: &ClusterConfig,
    me: &HostConfig,
    schema: &Schema,
) -> Result<Probe, DaemonError> {
    let tls = TlsFiles {
        ca: cfg.cluster.tls.ca.clone(),
        cert: me.cert.clone(),
        key: me.key.clone(),
    };
    let endpoint = client_endpoint(&tls)?;
    let asks = cfg
        .hosts
        .iter()
        .filter(|h| h.host.id != me.host.id)
        .map(|peer| {
            let endpoint = endpoint.clone();
            let (id, addr) = (peer.host.id, peer.host.addr);
            async move {
                let ask = async {
                    let conn = connect(&endpoint, addr, id).await.ok()?;
                    match call(&conn, &RequestFrame::Admin(AdminRequest::Status)).await {
                        Ok(Response::Status(status)) => Some(*status),
                        _ => None,
                    }
                };
                tokio::time::timeout(PEER_PROBE_TIMEOUT, ask)
                    .await
                    .ok()
                    .flatten()
            }
        });
    let answers: Vec<HostStatus> = futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect();
    endpoint.close(0u32.into(), b"probe done");
    let lost = answers.iter().find_map(|status| {
        let &(_, known) = status
            .peer_incarnations
            .iter()
            .find(|(h, _)| *h == me.host.id)?;
        (known != schema.incarnation).then(|| LostDisk {
            host: me.host.id,
            peer: status.host,
            known,
            mine: schema.incarnation,
            dir: me.data_dir.display().to_string(),
        })
    });
    Ok(Probe {
        layout: answers.into_iter().next().map(|s| s.layout),
        lost,
    })
}
