//! `shardkv status`: every host's reachability and version, and per shard its leader, term,
//! commit and applied index of each replica, and lag. Exits 1 if a shard has no quorum (no
//! leader, or fewer than a majority of its replicas answering).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use shardkv::certs::CLI_CLIENT;
use shardkv::client::{Client, ClientSettings};
use shardkv::config::ClusterConfig;
use shardkv_transport::wire::{HostStatus, ReplicaInfo};
use shardkv_transport::{HostId, ShardId};

#[derive(Serialize)]
struct HostRow {
    host: HostId,
    addr: String,
    reachable: bool,
    version: Option<String>,
    error: Option<String>,
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
    leader: Option<HostId>,
    term: Option<u64>,
    commit: Option<u64>,
    quorum: bool,
    replicas: Vec<ReplicaRow>,
}

#[derive(Serialize)]
struct Report {
    cluster: String,
    healthy: bool,
    hosts: Vec<HostRow>,
    shards: Vec<ShardRow>,
}

/// Runs `shardkv status`.
pub fn run(cfg: &ClusterConfig, json: bool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let statuses: Vec<(HostId, Result<HostStatus, String>)> = rt.block_on(async {
        let mut settings = ClientSettings::from_config(&cfg.cluster, CLI_CLIENT);
        settings.attempt_timeout = Duration::from_secs(2);
        let client = Client::new(settings)?;
        let futs = cfg.hosts.iter().map(|h| {
            let c = client.clone();
            let id = h.host.id;
            async move { (id, c.host_status(id).await.map_err(|e| e.to_string())) }
        });
        Ok::<_, anyhow::Error>(futures::future::join_all(futs).await)
    })?;
    let report = build(cfg, statuses);
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

fn build(cfg: &ClusterConfig, statuses: Vec<(HostId, Result<HostStatus, String>)>) -> Report {
    let mut by_host: BTreeMap<HostId, BTreeMap<ShardId, ReplicaInfo>> = BTreeMap::new();
    let mut hosts = Vec::new();
    // Shards and their replicas as the cluster was bootstrapped (any host that answers says),
    // not as this file's host list would place them.
    let placement = statuses
        .iter()
        .find_map(|(_, res)| res.as_ref().ok().map(|s| s.layout.placement.clone()))
        .unwrap_or_else(|| cfg.cluster.placement());
    for (id, res) in statuses {
        let addr = cfg
            .host(id)
            .map(|h| h.host.addr.to_string())
            .unwrap_or_default();
        match res {
            Ok(s) => {
                hosts.push(HostRow {
                    host: id,
                    addr,
                    reachable: true,
                    version: Some(s.version),
                    error: None,
                });
                by_host.insert(id, s.replicas.into_iter().map(|r| (r.shard, r)).collect());
            }
            Err(e) => hosts.push(HostRow {
                host: id,
                addr,
                reachable: false,
                version: None,
                error: Some(e),
            }),
        }
    }
    let mut shards = Vec::new();
    for (shard, replica_hosts) in placement {
        let infos: Vec<(HostId, Option<&ReplicaInfo>)> = replica_hosts
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
        let answering = infos.iter().filter(|(_, i)| i.is_some()).count();
        let quorum = leader.is_some() && answering * 2 > replica_hosts.len();
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
        shards.push(ShardRow {
            shard,
            leader,
            term: leader_info.map(|i| i.term),
            commit,
            quorum,
            replicas,
        });
    }
    Report {
        cluster: cfg.cluster.name.clone(),
        healthy: shards.iter().all(|s| s.quorum),
        hosts,
        shards,
    }
}

fn print(r: &Report) {
    println!(
        "cluster {}: {}",
        r.cluster,
        if r.healthy { "healthy" } else { "UNHEALTHY" }
    );
    println!("\nhosts:");
    for h in &r.hosts {
        match (&h.version, &h.error) {
            (Some(v), _) => println!("  host {:<3} {:<22} up    version {v}", h.host, h.addr),
            (None, e) => println!(
                "  host {:<3} {:<22} DOWN  {}",
                h.host,
                h.addr,
                e.as_deref().unwrap_or("")
            ),
        }
    }
    println!("\nshards:");
    println!(
        "  {:<6} {:<7} {:<6} {:<8} {:<7} replicas (host: applied, lag)",
        "shard", "leader", "term", "commit", "quorum"
    );
    for s in &r.shards {
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
        println!(
            "  {:<6} {:<7} {:<6} {:<8} {:<7} {}",
            s.shard,
            opt(s.leader),
            opt(s.term),
            opt(s.commit),
            if s.quorum { "ok" } else { "NO" },
            reps.join("  ")
        );
    }
}
