//! `shardkv status`: the live cluster map (per host its membership state, per shard its slot
//! ranges, epoch and replicas with their role, and the moves and splits under way), every host's reachability and version, and
//! per shard (the meta group too) its leader, term, commit and applied index of each replica,
//! and lag. Exits 1 if a shard or the meta group has no quorum (no leader, or fewer than a
//! majority of its replicas answering). Without a readable map (the meta group has no
//! quorum) it falls back to the layout the hosts were bootstrapped with.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use shardkv::certs::CLI_CLIENT;
use shardkv::client::{Client, ClientSettings};
use shardkv::config::ClusterConfig;
use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::wire::{HostStatus, ReplicaInfo};
use shardkv_transport::{ClusterMap, HostId, Move, ShardId};

#[derive(Serialize)]
struct HostRow {
    host: HostId,
    addr: String,
    reachable: bool,
    version: Option<String>,
    error: Option<String>,
    /// Membership state in the live map (`joining`, `active`, `draining`, `removed`), and
    /// `None` for a `[[host]]` entry that is not a member.
    state: Option<&'static str>,
}

#[derive(Serialize)]
struct ReplicaRow {
    host: HostId,
    reachable: bool,
    term: Option<u64>,
    commit: Option<u64>,
    applied: Option<u64>,
    /// How far this replica's applied index trails the leader's commit.
    lag: Option<u64>,
    /// `voter`, `learner`, or `leaving` (a voter of the outgoing configuration only, while
    /// a replica change is joint), as the leader (else the replica itself) reports it.
    role: Option<&'static str>,
}

#[derive(Serialize)]
struct ShardRow {
    shard: ShardId,
    /// The map epoch at which this shard last changed.
    epoch: Option<u64>,
    /// Inclusive slot ranges the shard owns (none for the meta group).
    slots: Vec<(u16, u16)>,
    leader: Option<HostId>,
    term: Option<u64>,
    commit: Option<u64>,
    quorum: bool,
    replicas: Vec<ReplicaRow>,
}

/// A split under way: `shard`'s slots from `at` on go to the new shard `child`.
#[derive(Serialize)]
struct SplitRow {
    shard: ShardId,
    child: ShardId,
    at: u16,
}

#[derive(Serialize)]
struct Report {
    cluster: String,
    healthy: bool,
    /// The live map's epoch, or why it could not be read.
    map_epoch: Option<u64>,
    map_error: Option<String>,
    /// Whether a `shardkv rebalance` is still being carried out.
    rebalance_requested: bool,
    /// Replica moves under way.
    moves: Vec<Move>,
    /// Shard splits under way.
    splits: Vec<SplitRow>,
    hosts: Vec<HostRow>,
    /// The meta group, which holds the live map.
    meta: Option<ShardRow>,
    shards: Vec<ShardRow>,
}

/// Runs `shardkv status`.
pub fn run(cfg: &ClusterConfig, json: bool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (statuses, map) = rt.block_on(async {
        let mut settings = ClientSettings::from_config(&cfg.cluster, CLI_CLIENT);
        settings.attempt_timeout = Duration::from_secs(2);
        settings.deadline = Duration::from_secs(4);
        let client = Client::new(settings)?;
        let futs = cfg.hosts.iter().map(|h| {
            let c = client.clone();
            let id = h.host.id;
            async move { (id, c.host_status(id).await.map_err(|e| e.to_string())) }
        });
        let (statuses, map) = futures::join!(futures::future::join_all(futs), client.read_map());
        let map = map.map(|v| v.map).map_err(|e| e.to_string());
        Ok::<_, anyhow::Error>((statuses, map))
    })?;
    let report = build(cfg, statuses, map);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn build(
    cfg: &ClusterConfig,
    statuses: Vec<(HostId, Result<HostStatus, String>)>,
    map: Result<ClusterMap, String>,
) -> Report {
    let mut by_host: BTreeMap<HostId, BTreeMap<ShardId, ReplicaInfo>> = BTreeMap::new();
    let mut hosts = Vec::new();
    // Shards and their replicas as the live map has them; without it, as the cluster was
    // bootstrapped (any host that answers says), never as this file's host list would place
    // them.
    let groups: Vec<Group> = match &map {
        Ok(m) => m
            .shards()
            .iter()
            .map(|(id, s)| Group {
                shard: *id,
                epoch: Some(s.epoch),
                slots: s.slots.clone(),
                hosts: s.replicas.keys().copied().collect(),
            })
            .collect(),
        Err(_) => {
            let layout = statuses
                .iter()
                .find_map(|(_, res)| res.as_ref().ok().map(|s| s.layout.clone()));
            let placement = layout
                .as_ref()
                .map(|l| l.placement.clone())
                .unwrap_or_else(|| cfg.cluster.placement());
            let meta = layout.map(|l| (META_SHARD, l.meta_hosts()));
            placement
                .into_iter()
                .chain(meta)
                .map(|(shard, hosts)| Group {
                    shard,
                    epoch: None,
                    slots: Vec::new(),
                    hosts,
                })
                .collect()
        }
    };
    for (id, res) in statuses {
        let addr = cfg
            .host(id)
            .map(|h| h.host.addr.to_string())
            .unwrap_or_default();
        let state = map
            .as_ref()
            .ok()
            .and_then(|m| m.host(id))
            .map(|h| h.state.as_str());
        match res {
            Ok(s) => {
                hosts.push(HostRow {
                    host: id,
                    addr,
                    reachable: true,
                    version: Some(s.version),
                    error: None,
                    state,
                });
                by_host.insert(id, s.replicas.into_iter().map(|r| (r.shard, r)).collect());
            }
            Err(e) => hosts.push(HostRow {
                host: id,
                addr,
                reachable: false,
                version: None,
                error: Some(e),
                state,
            }),
        }
    }
    let mut meta = None;
    let mut shards = Vec::new();
    for group in groups {
        let row = shard_row(group, &by_host);
        if row.shard == META_SHARD {
            meta = Some(row);
        } else {
            shards.push(row);
        }
    }
    let (map_epoch, map_error) = match &map {
        Ok(m) => (Some(m.epoch()), None),
        Err(e) => (None, Some(e.clone())),
    };
    let (rebalance_requested, moves, splits) = match &map {
        Ok(m) => (
            m.rebalance_requested(),
            m.moves_in_flight().values().copied().collect(),
            m.splits()
                .iter()
                .map(|(shard, s)| SplitRow {
                    shard: *shard,
                    child: s.child,
                    at: s.at,
                })
                .collect(),
        ),
        Err(_) => (false, Vec::new(), Vec::new()),
    };
    Report {
        cluster: cfg.cluster.name.clone(),
        healthy: shards.iter().chain(&meta).all(|s| s.quorum),
        map_epoch,
        map_error,
        rebalance_requested,
        moves,
        splits,
        hosts,
        meta,
        shards,
    }
}

/// One Raft group as the map (or the layout) places it.
struct Group {
    shard: ShardId,
    epoch: Option<u64>,
    slots: Vec<(u16, u16)>,
    hosts: Vec<HostId>,
}

fn shard_row(group: Group, by_host: &BTreeMap<HostId, BTreeMap<ShardId, ReplicaInfo>>) -> ShardRow {
    let shard = group.shard;
    let infos: Vec<(HostId, Option<&ReplicaInfo>)> = group
        .hosts
        .iter()
        .map(|h| (*h, by_host.get(h).and_then(|m| m.get(&shard))))
        .collect();
    let leading = infos
        .iter()
        .filter_map(|(h, i)| i.filter(|i| i.is_leader).map(|i| (*h, i)))
        .max_by_key(|(_, i)| i.term);
    let leader = leading.map(|(h, _)| h);
    let leader_info = leading.map(|(_, i)| i);
    let commit = leader_info.map(|i| i.commit);
    // A quorum of the voters, as the leader counts them (learners do not vote).
    let voters: Vec<HostId> = match leader_info {
        Some(i) => i.voters.clone(),
        None => group.hosts.clone(),
    };
    let answering = infos
        .iter()
        .filter(|(h, i)| i.is_some() && voters.contains(h))
        .count();
    let quorum = leader.is_some() && answering * 2 > voters.len();
    let role_of = |h: HostId, i: Option<&ReplicaInfo>| {
        let conf = leader_info.or(i)?;
        Some(if conf.voters.contains(&h) {
            "voter"
        } else if conf.learners.contains(&h) {
            "learner"
        } else if conf.voters_outgoing.contains(&h) {
            "leaving"
        } else {
            "removed"
        })
    };
    let replicas = infos
        .iter()
        .map(|(h, i)| ReplicaRow {
            role: role_of(*h, *i),
            host: *h,
            reachable: i.is_some(),
            term: i.map(|i| i.term),
            commit: i.map(|i| i.commit),
            applied: i.map(|i| i.applied),
            lag: i.and_then(|i| commit.map(|c| c.saturating_sub(i.applied))),
        })
        .collect();
    ShardRow {
        shard,
        epoch: group.epoch,
        slots: group.slots,
        leader,
        term: leader_info.map(|i| i.term),
        commit,
        quorum,
        replicas,
    }
}

fn print(r: &Report) {
    println!(
        "cluster {}: {}",
        r.cluster,
        if r.healthy { "healthy" } else { "UNHEALTHY" }
    );
    match (r.map_epoch, &r.map_error) {
        (Some(epoch), _) => {
            let mut doing: Vec<String> = r
                .moves
                .iter()
                .map(|m| {
                    format!(
                        "moving shard {} from host {} to host {}",
                        m.shard, m.from, m.to
                    )
                })
                .collect();
            doing.extend(r.splits.iter().map(|s| {
                format!(
                    "splitting shard {} at slot {} into shard {}",
                    s.shard, s.at, s.child
                )
            }));
            if r.rebalance_requested {
                doing.insert(0, "rebalancing".into());
            }
            match doing.is_empty() {
                true => println!("cluster map: epoch {epoch}"),
                false => println!("cluster map: epoch {epoch}; {}", doing.join("; ")),
            }
        }
        (None, e) => println!(
            "cluster map: UNREADABLE ({}); showing the bootstrapped layout",
            e.as_deref().unwrap_or("")
        ),
    }
    println!("\nhosts:");
    for h in &r.hosts {
        let state = h.state.unwrap_or("not a member");
        match (&h.version, &h.error) {
            (Some(v), _) => println!(
                "  host {:<3} {:<22} {state:<9} up    version {v}",
                h.host, h.addr
            ),
            (None, e) => println!(
                "  host {:<3} {:<22} {state:<9} DOWN  {}",
                h.host,
                h.addr,
                e.as_deref().unwrap_or("")
            ),
        }
    }
    println!("\nshards:");
    println!(
        "  {:<6} {:<6} {:<12} {:<7} {:<6} {:<8} {:<7} replicas (host: applied, lag)",
        "shard", "epoch", "slots", "leader", "term", "commit", "quorum"
    );
    for s in r.meta.iter().chain(&r.shards) {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        let reps: Vec<String> = s
            .replicas
            .iter()
            .map(|x| {
                let who = match x.role {
                    Some("voter") | None => x.host.to_string(),
                    Some(role) => format!("{} ({role})", x.host),
                };
                match (x.applied, x.lag) {
                    (Some(a), Some(l)) => format!("{who}: {a}, {l}"),
                    (Some(a), None) => format!("{who}: {a}"),
                    _ => format!("{who}: down"),
                }
            })
            .collect();
        let name = if s.shard == META_SHARD {
            "meta".to_string()
        } else {
            s.shard.to_string()
        };
        let slots: Vec<String> = s.slots.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        let slots = if slots.is_empty() {
            "-".to_string()
        } else {
            slots.join(",")
        };
        println!(
            "  {:<6} {:<6} {:<12} {:<7} {:<6} {:<8} {:<7} {}",
            name,
            opt(s.epoch),
            slots,
            opt(s.leader),
            opt(s.term),
            opt(s.commit),
            if s.quorum { "ok" } else { "NO" },
            reps.join("  ")
        );
    }
}
