//! The Redis protocol (RESP) front end: a host with `[[host]] resp = "IP:port"` speaks
//! RESP2 and RESP3 on that TCP address, with Redis Cluster semantics over its shards, so
//! redis-cli, redis-benchmark and Redis Cluster clients use shardkv as they are.
//!
//! One concern per file: [`codec`] reads commands within bounds, [`command`] parses them,
//! [`command_table`] describes them to `COMMAND`,
//! [`exec`] runs them through the host's router, [`redirect`] turns
//! answers for other hosts into `-MOVED`, [`reply`] encodes the answers, [`cluster`]
//! and [`topology`] give the `CLUSTER` view and the redirections, [`connection`] pipelines
//! one connection, [`listener`] accepts, with TLS. Writes go through Raft like every
//! shardkv write and reads are linearizable unless the connection sent `READONLY`. A
//! command is proposed once: a RESP connection carries no exactly-once session, so a client
//! that retries a non-idempotent command (`INCR`) over a new connection may apply it twice.

pub mod cluster;
pub mod codec;
pub mod command;
pub mod command_table;
pub mod connection;
pub mod exec;
pub mod forward;
pub mod info;
pub mod listener;
pub mod redirect;
pub mod reply;
pub mod topology;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use shardkv_actors::router::RouterActor;
use shardkv_actors::schema::Schema;
use shardkv_client::{Client, ClientError, ClientSettings};
use shardkv_transport::{ClusterMap, TlsFiles, TransportError};
use tracing::info;

use crate::certs::CLI_CLIENT;
use crate::config::{ClusterConfig, HostConfig};
use codec::Limits;
use exec::Shared;
use forward::Forwarder;
use topology::Topology;

/// Why the RESP listener could not start.
#[derive(thiserror::Error, Debug)]
pub enum RespError {
    #[error("RESP listener on {addr}: {source}; is another process using the port?")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("RESP listener TLS: {0}")]
    Tls(#[from] TransportError),
    #[error("RESP listener's client (for the cluster view and forwarding): {0}")]
    Client(#[from] ClientError),
}

/// Starts host `me`'s RESP listener and the task that keeps its cluster view current, if
/// the host has a `resp` address; `map` is the map the host starts from. Both run until
/// the returned handles are aborted.
pub async fn start(
    cfg: &ClusterConfig,
    me: &HostConfig,
    router: Addr<RouterActor>,
    map: ClusterMap,
    store: Schema,
) -> Result<Vec<tokio::task::JoinHandle<()>>, RespError> {
    let Some(addr) = me.resp else {
        return Ok(Vec::new());
    };
    let tls = if cfg.resp.tls {
        Some(listener::tls_acceptor(&TlsFiles {
            ca: cfg.cluster.tls.ca.clone(),
            cert: me.cert.clone(),
            key: me.key.clone(),
        })?)
    } else {
        None
    };
    let resp_addrs: BTreeMap<_, _> = cfg
        .hosts
        .iter()
        .filter_map(|h| Some((h.host.id, h.resp?)))
        .collect();
    let topology = Arc::new(Topology::new(
        cfg.cluster.name.clone(),
        me.host.id,
        resp_addrs,
        cfg.resp.tls,
        map,
    ));
    // Status polls give up after one refresh period; forwarded commands wait as long as any
    // client's, so a slow commit is not retried as if it were lost.
    let client = host_client(cfg, me, Some(topology::REFRESH_EVERY))?;
    let forward = match cfg.resp.forward {
        true => Some(Forwarder::new(host_client(cfg, me, None)?)),
        false => None,
    };
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RespError::Bind { addr, source })?;
    let shared = Arc::new(Shared {
        router: router.clone().recipient(),
        topology: topology.clone(),
        forward,
        addr,
        connections: AtomicUsize::new(0),
        started: Instant::now(),
        store,
    });
    let limits = Limits::for_values(cfg.cluster.value_bytes_max);
    info!(%addr, tls = cfg.resp.tls, forward = cfg.resp.forward, "Redis protocol (RESP) listener serving");
    Ok(vec![
        tokio::spawn(listener::accept(tcp, tls, shared, limits)),
        tokio::spawn(topology.refresh(router, client)),
    ])
}

/// A shardkv client with the host's own certificate, as the map watcher has, waiting
/// `attempt_timeout` for each answer (default: the client's own).
fn host_client(
    cfg: &ClusterConfig,
    me: &HostConfig,
    attempt_timeout: Option<std::time::Duration>,
) -> Result<Client, ClientError> {
    let mut settings = ClientSettings::from_config(&cfg.cluster, CLI_CLIENT);
    settings.tls.cert = me.cert.clone();
    settings.tls.key = me.key.clone();
    if let Some(timeout) = attempt_timeout {
        settings.attempt_timeout = timeout;
    }
    Client::new(settings)
}
