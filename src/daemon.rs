//! `shardkv serve`: one host's daemon. Maps `cluster.toml` into the actors' plain settings,
//! opens the host's LMDB Env, starts every actor and the QUIC endpoint, and runs until SIGTERM
//! or SIGINT, or until an actor reports a fatal error (then it exits at once with
//! `EXIT_FATAL`). It is the only place that ends the process.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use shardkv_actors::fatal::{Fatal, FatalReporter};
use shardkv_actors::messages::{ClientRequest, InboundRaft, InboundSnapshot};
use shardkv_actors::peer::links::{PeerDialer, PeerLinks};
use shardkv_actors::replica::ReplicaSettings;
use shardkv_actors::router::{
    ChangeShardReplicas, GetHostStatus, MapOp, RouterActor, RouterSettings, SplitLocalShard,
    TransferAll, TransferShardLeader,
};
use shardkv_actors::schema::{map_record, meta, migrate, raft_records, Schema};
use shardkv_actors::shard::Compaction;
use shardkv_actors::snapshot::{BuildSlots, SNAPSHOT_BUILDS_MAX};
use shardkv_actors::storage::StorageActor;
use shardkv_actors::ActorError;
use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::endpoint::{host_endpoint, serve, Handler};
use shardkv_transport::wire::{MapRequest, RaftBatch, ReplicaChange, Request, Response, SplitSpec};
use shardkv_transport::{ClusterMap, HostId, PeerIdentity, ShardId, TlsFiles, TransportError};
use tracing::{error, info, warn};

use crate::balancer::Balancer;
use crate::bootstrap::{settle_layout, BootstrapError, Settled};
use crate::config::{ClusterConfig, ConfigError};
use crate::map_watch::{map_at_start, MapWatcher};
use crate::replicas::{ReplicaError, ReplicaFactory};
use crate::resp::RespError;

/// Why a host could not start or stopped abnormally.
#[derive(thiserror::Error, Debug)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] ActorError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Resp(#[from] RespError),
    #[error("runtime: {0}")]
    Runtime(String),
}

/// Exit status after a fatal error (EX_SOFTWARE): memory and disk disagree, so the host stops
/// without a hand-off; a restart recovers from the durable Raft log.
const EXIT_FATAL: i32 = 70;

/// Runs host `host` of `cfg` until a stop signal. Blocks the calling thread.
pub fn run(cfg: ClusterConfig, host: HostId) -> Result<(), DaemonError> {
    let me = cfg
        .host(host)
        .ok_or_else(|| ConfigError::UnknownHost {
            path: cfg.cluster.path.clone(),
            id: host,
            known: cfg.hosts.iter().map(|h| h.host.id).collect(),
        })?
        .clone();
    cfg.check_certs(Some(host))?;
    let schema = Schema::open(&me.data_dir, cfg.storage.map_size, &cfg.cluster.name, host)?;
    let system = System::new();
    let res = system.block_on(async move {
        let settled = settle_layout(&cfg, &me, &schema).await?;
        serve_host(cfg, me.host.id, schema, settled).await
    });
    System::current().stop();
    res
}

async fn serve_host(
    cfg: ClusterConfig,
    host: HostId,
    schema: Schema,
    settled: Settled,
) -> Result<(), DaemonError> {
    let Settled {
        layout,
        awaiting_replace,
    } = settled;
    let me = cfg
        .host(host)
        .cloned()
        .ok_or_else(|| DaemonError::Runtime("host vanished".into()))?;
    let tls = TlsFiles {
        ca: cfg.cluster.tls.ca.clone(),
        cert: me.cert.clone(),
        key: me.key.clone(),
    };
    let endpoint = host_endpoint(me.host.addr, &tls)?;
    let snap_dir = me.data_dir.join("snap");
    std::fs::create_dir_all(&snap_dir)
        .map_err(|e| DaemonError::Runtime(format!("cannot create {}: {e}", snap_dir.display())))?;
    // Snapshot files are only ever referenced from memory: what a previous run left is junk.
    let removed = shardkv_actors::snapshot::clean_at_start(&snap_dir)
        .map_err(|e| DaemonError::Runtime(e.to_string()))?;
    if removed > 0 {
        tracing::info!(removed, dir = %snap_dir.display(), "removed snapshot files of a previous run");
    }
    // A data dir of an earlier version keyed its rows by shard: re-key them before any
    // replica reads one.
    migrate::upgrade(&schema, &layout)?;
    let (fatal, mut fatals) = FatalReporter::channel();
    let storage = StorageActor::new(schema.clone(), fatal.clone())?.start();

    // The map to start from: the last one this host took if it is past day 0, so a restart
    // routes, admits Raft traffic and links peers as the cluster is now, even before the meta
    // group answers.
    let addrs: Vec<(HostId, String)> = cfg
        .hosts
        .iter()
        .map(|h| (h.host.id, h.host.addr.to_string()))
        .collect();
    let day0 = ClusterMap::day0(&layout, &addrs)
        .map_err(|e| DaemonError::Runtime(format!("the day-0 cluster map: {e}")))?;
    let map = map_at_start(day0, meta::last_map(&schema));
    // A meta replica's applied map, if newer still: the meta group may have moved off day 0,
    // and its voters must admit each other's traffic to elect a leader at all.
    let map = match map_record::applied_map(&schema)? {
        Some(applied) if applied.epoch() > map.epoch() => applied,
        _ => map,
    };

    // One outbound link per other host of cluster.toml and of the map; the map watcher adds
    // the hosts later maps bring.
    let dialer = PeerDialer::new(
        host,
        endpoint.clone(),
        snap_dir.clone(),
        schema.incarnation,
        PeerLinks::default(),
    );
    for h in &cfg.hosts {
        dialer.dial(h.host.id, h.host.addr);
    }
    dialer.follow(&map);

    let (election_ticks, heartbeat_ticks) = cfg.raft_ticks();
    // Splits this host's replicas apply: the map watcher starts each child at once.
    let (split_notices, splits_applied) = tokio::sync::mpsc::unbounded_channel();
    let factory = ReplicaFactory {
        host,
        schema: schema.clone(),
        storage: storage.clone(),
        // Every other host, not only this shard's: a replica change may add any of them.
        peers: dialer.links().clone(),
        snap_dir: snap_dir.clone(),
        // One host-wide bound on concurrent snapshot builds, shared by its replicas.
        build_slots: Arc::new(BuildSlots::new(SNAPSHOT_BUILDS_MAX)),
        settings: ReplicaSettings {
            tick: cfg.raft.tick,
            election_ticks,
            heartbeat_ticks,
            request_timeout: (cfg.cluster.election_timeout * 3).max(Duration::from_secs(3)),
            preferred_leader: None,
            value_bytes_max: u64::try_from(cfg.cluster.value_bytes_max).unwrap_or(u64::MAX),
            hibernate: cfg.raft.hibernate,
        },
        compaction: Some(Compaction {
            after: cfg.raft.snapshot_after,
            // Keep a tail of the log so a follower a little behind catches up by entries.
            keep: (cfg.raft.snapshot_after / 4).max(1),
        }),
        fatal: fatal.clone(),
        splits: split_notices,
        day0_shards: layout.shards,
    };
    // The replicas this host starts: every one its data dir holds, and those the day-0 layout
    // places here (the data shards and the meta group), bootstrapped on first start. A day-0
    // replica the data dir does not hold is bootstrapped only while the cluster is at day 0
    // as far as this host knows (a later map places replicas itself, and the watcher joins
    // them), never once it moved away (retired), and never on a data dir that replaced a lost
    // one: a voter bootstrapped empty would vote with what its predecessor forgot.
    let mut local = HashMap::new();
    if awaiting_replace {
        warn!(
            host,
            "this data dir replaced a lost one: holding no replica until `shardkv host \
             replace {host}` records it in the cluster map"
        );
    }
    let day0 = layout
        .placement
        .iter()
        .cloned()
        .chain([(META_SHARD, layout.meta_hosts())]);
    for (shard, hosts) in day0 {
        if !hosts.contains(&host) {
            continue;
        }
        let has_state = raft_records::has_state(&schema, shard)?;
        if !has_state && meta::is_retired(&schema, shard)? {
            info!(
                shard,
                "not restarting a replica that moved away from this host"
            );
            continue;
        }
        if !has_state && (awaiting_replace || map.epoch() > ClusterMap::DAY0_EPOCH) {
            continue;
        }
        // Preferred to lead: the first host of the placement, until the router tells every
        // replica the live map's choice as it starts (the same one on a round-robin placement).
        let owned = migrate::day0_owned(shard, layout.shards);
        let replica =
            factory.start_bootstrapped(shard, &hosts, owned.as_ref(), hosts.first().copied())?;
        local.insert(shard, replica);
    }
    for shard in raft_records::hosted_shards(&schema)? {
        if let std::collections::hash_map::Entry::Vacant(slot) = local.entry(shard) {
            // A replica that moved here after day 0.
            slot.insert(factory.start_joining(shard)?);
        }
    }
    let replicas = local.len();
    let hosted: BTreeSet<ShardId> = local.keys().copied().collect();
    let settings = RouterSettings {
        host,
        cluster: cfg.cluster.name.clone(),
        value_bytes_max: cfg.cluster.value_bytes_max,
        layout,
        incarnation: schema.incarnation,
        peer_incarnations: meta::peer_incarnations(&schema)?,
        map: map.clone(),
    };
    let router = RouterActor::new(settings, local, storage.clone().recipient()).start();
    let handler = Arc::new(HostHandler {
        router: router.clone(),
        snap_dir: snap_dir.clone(),
    });
    let accept = tokio::spawn(serve(
        endpoint.clone(),
        handler,
        cfg.cluster.value_bytes_max,
    ));
    MapWatcher::new(
        &cfg,
        &me,
        router.clone(),
        Rc::new(factory),
        dialer,
        hosted,
        &map,
    )
    .map_err(|e| DaemonError::Runtime(format!("cluster map watcher: {e}")))?
    .awaiting_replace(awaiting_replace)
    .spawn(splits_applied);
    Balancer::new(&cfg, &me, router.clone())
        .map_err(|e| DaemonError::Runtime(format!("balancer: {e}")))?
        .spawn();
    if let Some(addr) = me.metrics {
        serve_metrics(addr)?;
    }
    // The Redis protocol listener, if this host has a `resp` address.
    let resp_tasks =
        crate::resp::start(&cfg, &me, router.clone(), map.clone(), schema.clone()).await?;
    info!(host, addr = %me.host.addr, replicas, cluster = %cfg.cluster.name, "host serving");

    // systemd (Type=notify): the host serves now. Outside systemd this is a no-op.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let mut signals = StopSignals::install();
    tokio::select! {
        _ = signals.next() => {}
        Some(fatal) = fatals.recv() => exit_fatal(fatal),
    }
    info!(
        host,
        "stopping: handing leadership away (a second signal stops at once)"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // Hand every local leadership to an up-to-date follower so clients see no election
    // timeout, bounded in time; a second signal skips the wait.
    let handoff = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            match router.send(TransferAll).await {
                Ok(0) | Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        warn!(host, "some leaderships could not be handed off in time");
    };
    tokio::select! {
        _ = handoff => {}
        _ = signals.next() => {
            warn!(host, "second signal: stopping now");
            std::process::exit(130);
        }
        Some(fatal) = fatals.recv() => exit_fatal(fatal),
    }
    info!(host, "stopped");
    endpoint.close(0u32.into(), b"host shutting down");
    accept.abort();
    resp_tasks.iter().for_each(|t| t.abort());
    // Every acknowledged write is already durable; let in-flight commits finish briefly.
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        Some(fatal) = fatals.recv() => exit_fatal(fatal),
    }
    Ok(())
}

/// Ends the process after a fatal error, at once: no hand-off and no graceful stop, since
/// the state in memory is no longer what is on disk.
fn exit_fatal(fatal: Fatal) -> ! {
    error!(
        shard = ?fatal.shard,
        reason = %fatal.reason,
        "fatal error; exiting so a restart recovers from the durable Raft log"
    );
    std::process::exit(EXIT_FATAL);
}

/// Serves `GET /metrics` (OpenMetrics text) on `addr`, on the actix system's arbiter.
fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), DaemonError> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let registry = Arc::new(shardkv_actors::metrics::registry());
    let server = HttpServer::new(move || {
        let registry = registry.clone();
        App::new().route(
            "/metrics",
            web::get().to(move || {
                let body = shardkv_actors::metrics::encode(&registry);
                async move {
                    HttpResponse::Ok()
                        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(addr)
    .map_err(|e| DaemonError::Runtime(format!("metrics listener on {addr}: {e}")))?
    .run();
    actix_rt::spawn(server);
    info!(%addr, "metrics at http://{addr}/metrics");
    Ok(())
}

/// SIGTERM and SIGINT, as one stream.
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        if term.is_none() || int.is_none() {
            warn!("cannot install signal handlers; stop with SIGKILL");
        }
        StopSignals { term, int }
    }

    async fn next(&mut self) {
        match (&mut self.term, &mut self.int) {
            (Some(term), Some(int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
}

/// The transport's view of this host: everything goes to the router.
struct HostHandler {
    router: Addr<RouterActor>,
    snap_dir: std::path::PathBuf,
}

impl Handler for HostHandler {
    fn raft(&self, from: HostId, batch: RaftBatch) {
        self.router.do_send(InboundRaft { from, batch });
    }

    fn snapshot_path(&self, from: HostId, shard: ShardId) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        self.snap_dir
            .join(shardkv_actors::snapshot::received_file_name(
                from, shard, nanos,
            ))
    }

    fn snapshot(
        &self,
        from: HostId,
        incarnation: u64,
        shard: ShardId,
        message: Vec<u8>,
        path: std::path::PathBuf,
    ) {
        self.router.do_send(InboundSnapshot {
            from,
            incarnation,
            shard,
            message,
            path,
        });
    }

    fn request(
        &self,
        peer: PeerIdentity,
        mut req: Request,
    ) -> impl std::future::Future<Output = Response> + Send {
        if req.seq != 0 {
            req.client_id = scoped_session(&peer, req.client_id);
        }
        let fut = ClientRequest::ask(&self.router.clone().recipient(), req);
        async move {
            fut.await
                .unwrap_or_else(|| Response::Internal("router stopped before answering".into()))
        }
    }

    fn status(&self) -> impl std::future::Future<Output = Response> + Send {
        let fut = self.router.send(GetHostStatus);
        async move {
            match fut.await {
                Ok(status) => Response::Status(Box::new(status)),
                Err(e) => Response::Internal(format!("router unreachable: {e}")),
            }
        }
    }

    fn map(&self, req: MapRequest) -> impl std::future::Future<Output = Response> + Send {
        let fut = self.router.send(MapOp(req));
        async move {
            match fut.await {
                Ok(resp) => resp,
                Err(e) => Response::Internal(format!("router unreachable: {e}")),
            }
        }
    }

    fn change_replicas(
        &self,
        shard: ShardId,
        changes: Vec<ReplicaChange>,
    ) -> impl std::future::Future<Output = Response> + Send {
        let fut = self.router.send(ChangeShardReplicas { shard, changes });
        async move {
            match fut.await {
                Ok(resp) => resp,
                Err(e) => Response::Internal(format!("router unreachable: {e}")),
            }
        }
    }

    fn split_shard(
        &self,
        shard: ShardId,
        split: SplitSpec,
    ) -> impl std::future::Future<Output = Response> + Send {
        let fut = self.router.send(SplitLocalShard { shard, split });
        async move {
            match fut.await {
                Ok(resp) => resp,
                Err(e) => Response::Internal(format!("router unreachable: {e}")),
            }
        }
    }

    fn transfer_leader(
        &self,
        shard: ShardId,
        to: HostId,
    ) -> impl std::future::Future<Output = Response> + Send {
        let fut = self.router.send(TransferShardLeader { shard, to });
        async move {
            match fut.await {
                Ok(resp) => resp,
                Err(e) => Response::Internal(format!("router unreachable: {e}")),
            }
        }
    }
}

/// The session a write belongs to. A client picks its session id at random, so ids are only
/// unique among one client's sessions; scoping them by the certificate that sent the write
/// keeps another certificate holder from answering into (or suppressing writes of) a session
/// it does not own, even if it learns the id. Every host derives the same value, so a retry
/// sent to a new leader still finds its session.
pub fn scoped_session(peer: &PeerIdentity, client_id: u64) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"shardkv session\0");
    ctx.update(peer.to_string().as_bytes());
    ctx.update(b"\0");
    ctx.update(&client_id.to_be_bytes());
    let digest = ctx.finish();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    // 0 means "no session" on the wire; keep it out of the range.
    u64::from_be_bytes(id).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_scoped_by_certificate_and_stable() {
        let alice = PeerIdentity::Client("alice".into());
        let mallory = PeerIdentity::Client("mallory".into());
        let a = scoped_session(&alice, 42);
        assert_eq!(
            a,
            scoped_session(&alice, 42),
            "every host derives the same id"
        );
        assert_ne!(
            a,
            scoped_session(&mallory, 42),
            "same id, other certificate"
        );
        assert_ne!(a, scoped_session(&alice, 43));
        assert_ne!(a, scoped_session(&PeerIdentity::Host(42), 42));
        // Pinned (SHA-256 of "shardkv session\0client alice\0" + 42 as u64 BE, first 8
        // bytes): a change would split sessions across hosts running different versions.
        assert_eq!(a, 0x5432_9a0c_eeac_7940, "{a:#x}");
    }
}
