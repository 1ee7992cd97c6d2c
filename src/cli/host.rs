//! `shardkv host add ID`, `shardkv host remove ID` and `shardkv host replace ID`: hosts
//! joining, leaving and coming back from a lost disk.
//!
//! `add` and `remove` are changes of the map (idempotent, so a re-run after a crash goes on where it
//! stopped); the replicas themselves are moved by the balancer on the host leading the meta
//! group (see `shardkv::balancer`), which `remove` waits for.

use std::process::ExitCode;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shardkv::client::Client;
use shardkv::config::ClusterConfig;
use shardkv_transport::{ClusterMap, HostId, HostState};

use super::progress::wait_for_moves;
use super::replica::admin_client;
use super::runtime;

/// Runs `shardkv host add ID`: a running host, listed in cluster.toml but not in the map,
/// becomes an active member (holding nothing until `shardkv rebalance` moves replicas on).
pub fn run_add(cfg: &ClusterConfig, id: HostId) -> anyhow::Result<ExitCode> {
    let path = cfg.cluster.path.display();
    let Some(entry) = cfg.host(id) else {
        bail!(
            "host {id} is not in {path}: append its [[host]] entry, copy the file to every \
             machine, issue its certificate (`shardkv certs host {id}`), start it, then re-run"
        );
    };
    let addr = entry.host.addr.to_string();
    runtime()?.block_on(async {
        let admin = admin_client(cfg)?;
        let map = admin.read_map().await?.map;
        match map.host(id).map(|h| h.state) {
            Some(HostState::Active) => {
                println!("host {id} is already a member");
                return Ok(ExitCode::SUCCESS);
            }
            Some(HostState::Removed) => bail!(
                "host {id} was removed and its id is never reused: give the new machine \
                 another id in {path}"
            ),
            Some(HostState::Draining) => bail!(
                "host {id} is being removed (`shardkv host remove {id}` is under way); it \
                 cannot be added back"
            ),
            Some(HostState::Joining) | None => {}
        }
        let status = admin.host_status(id).await.with_context(|| {
            format!(
                "host {id} at {addr} does not answer: start it first (`shardkv serve --host \
                 {id}` with the same {path})"
            )
        })?;
        if status.cluster != cfg.cluster.name {
            bail!(
                "host {id} at {addr} serves cluster {:?}, not {:?}",
                status.cluster,
                cfg.cluster.name
            );
        }
        let incarnation = status.incarnation;
        let map = admin
            .change_map(|m: &mut ClusterMap| {
                m.add_host(id, &addr)?;
                m.activate_host(id, incarnation)
            })
            .await
            .context("adding the host to the cluster map")?;
        wait_until_known(&admin, &map).await;
        println!("host {id} is a member; `shardkv rebalance` moves replicas onto it");
        Ok(ExitCode::SUCCESS)
    })
}

/// How long `host add` waits for the members to take the map that lists the new host.
const KNOWN_WITHIN: Duration = Duration::from_secs(15);

/// Waits until every member host routes by `map` or a later one: a member links to a new
/// host only once it has read the map listing it, and a replica move onto the new host is
/// refused by a shard leader that has not. A member that does not answer is reported and not
/// waited for (it reads the map when it is back).
async fn wait_until_known(admin: &Client, map: &ClusterMap) {
    let deadline = Instant::now() + KNOWN_WITHIN;
    let members: Vec<HostId> = map
        .hosts()
        .iter()
        .filter(|(_, h)| h.state != HostState::Removed)
        .map(|(id, _)| *id)
        .collect();
    for host in members {
        loop {
            match admin.host_status(host).await {
                Ok(s) if s.map_epoch >= map.epoch() => break,
                _ if Instant::now() > deadline => {
                    eprintln!(
                        "host {host} has not taken the new cluster map yet (is it up?); it will \
                         when it reads the map"
                    );
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Runs `shardkv host remove ID`: drains the host (the balancer moves its replicas, and with
/// them its leaderships, to the other active hosts), waits until it holds nothing, then
/// removes it from the map for good.
pub fn run_remove(cfg: &ClusterConfig, id: HostId) -> anyhow::Result<ExitCode> {
    let replicas = cfg.cluster.replicas;
    runtime()?.block_on(async {
        let admin = admin_client(cfg)?;
        let map = admin.read_map().await?.map;
        let Some(host) = map.host(id) else {
            bail!("host {id} is not a member of the cluster");
        };
        if host.state == HostState::Removed {
            println!("host {id} is already removed");
            return Ok(ExitCode::SUCCESS);
        }
        let others = map
            .hosts()
            .iter()
            .filter(|(h, e)| **h != id && e.state == HostState::Active)
            .count();
        let held = map.shards_of_host(id).count();
        // Each shard it votes in needs as many other active hosts as it has voters (a learner
        // it holds belongs to a move that rolls back).
        let needed = map
            .shards_of_host(id)
            .filter(|s| map.voters_of(*s).any(|v| v == id))
            .map(|s| map.voters_of(s).count())
            .max()
            .unwrap_or(0);
        if held > 0 && others < needed {
            bail!(
                "removing host {id} would leave {others} active hosts for shards of {needed} \
                 replicas ({replicas} per data shard), so its {held} replicas have nowhere to \
                 go: add a host first (`shardkv host add`)"
            );
        }
        admin
            .change_map(|m: &mut ClusterMap| m.drain_host(id))
            .await
            .context("marking the host draining in the cluster map")?;
        let drained = |m: &ClusterMap| {
            m.shards_of_host(id).next().is_none()
                && !m.moves_in_flight().values().any(|mv| mv.from == id)
        };
        wait_for_moves(&admin, &format!("draining host {id}"), drained, |m| {
            m.shards_of_host(id).count()
        })
        .await?;
        admin
            .change_map(|m: &mut ClusterMap| m.remove_host(id))
            .await
            .context("removing the host from the cluster map")?;
        // The entry stays: the day-0 layout every data dir stored names it.
        println!(
            "host {id} is removed and holds no replicas: stop it whenever you like; keep its \
             [[host]] entry in {} (its id is never reused)",
            cfg.cluster.path.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `shardkv host replace ID`: a host whose data dir was lost, running on a new one,
/// gets its replicas back (see `shardkv::replace`).
pub fn run_replace(cfg: &ClusterConfig, id: HostId) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let admin = admin_client(cfg)?;
        let say = |step: &str| println!("host {id}: {step}");
        shardkv::replace::replace_host(&admin, id, &say)
            .await
            .with_context(|| format!("replacing host {id}; re-run to continue"))?;
        Ok(ExitCode::SUCCESS)
    })
}
