//! Idle shards hibernate: no ticks (so no heartbeats) while nothing happens; a request wakes
//! a group, and a group whose leader's host dies elects a new leader without any request.
//! The meta group (shard 0) stays awake: every host reads the map from it each second.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::metrics::{sample, scrape, scrape_all, total};
use common::Cluster;
use shardkv_transport::HostId;

/// How long a cluster may take to fall asleep: an election timeout of quiet, plus leaders
/// settling on their preferred hosts after start.
const ASLEEP_WITHIN: Duration = Duration::from_secs(40);

/// The data shards a host's metrics page shows a replica of (the ones it has a term for).
fn shards_on(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| l.starts_with("shardkv_raft_term{"))
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .filter(|shard| shard != "0")
        .collect()
}

/// Whether every data shard's replica on every host in `hosts` is hibernating.
fn all_asleep(cluster: &Cluster, hosts: &[HostId]) -> bool {
    hosts.iter().all(|&id| {
        let body = scrape(cluster, id);
        let shards = shards_on(&body);
        !shards.is_empty()
            && shards.iter().all(|shard| {
                let label = format!("shard=\"{shard}\"");
                sample(&body, "shardkv_raft_hibernating", &[&label]) == 1.0
            })
    })
}

/// The data shards' ticks on every host.
fn data_ticks(cluster: &Cluster) -> f64 {
    let scrapes = scrape_all(cluster);
    let all = total(&scrapes, "shardkv_raft_ticks_total", &[]);
    all - total(&scrapes, "shardkv_raft_ticks_total", &["shard=\"0\""])
}

async fn wait_all_asleep(cluster: &Cluster, hosts: &[HostId]) {
    let deadline = Instant::now() + ASLEEP_WITHIN;
    while !all_asleep(cluster, hosts) {
        assert!(
            Instant::now() < deadline,
            "not every replica hibernated within {ASLEEP_WITHIN:?}: {:?}",
            hosts
                .iter()
                .map(|&id| sample(&scrape(cluster, id), "shardkv_raft_hibernating", &[]))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Shard -> the hosts in `hosts` whose replica of it says it leads.
fn leaders(cluster: &Cluster, hosts: &[HostId]) -> HashMap<String, Vec<HostId>> {
    let mut out: HashMap<String, Vec<HostId>> = HashMap::new();
    for &id in hosts {
        let body = scrape(cluster, id);
        for shard in shards_on(&body) {
            let label = format!("shard=\"{shard}\"");
            if sample(&body, "shardkv_raft_is_leader", &[&label]) == 1.0 {
                out.entry(shard).or_default().push(id);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_go_quiet_and_a_request_wakes_them() {
    let mut cluster = Cluster::new(3, 4, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    for shard in 1..=4 {
        let key = common::key_in_shard(shard, 4);
        client.put(&key, b"before").await.expect("put");
    }
    wait_all_asleep(&cluster, &[1, 2, 3]).await;

    // Asleep means still: not one tick (so no heartbeat) while nothing happens.
    let before = data_ticks(&cluster);
    assert!(before > 0.0, "the replicas ticked before they slept");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        data_ticks(&cluster),
        before,
        "a data shard ticked while asleep"
    );
    assert!(all_asleep(&cluster, &[1, 2, 3]), "something woke up");

    // A request wakes its group: writes commit and linearizable reads see them.
    for shard in 1..=4 {
        let key = common::key_in_shard(shard, 4);
        assert_eq!(
            client.get(&key).await.expect("get"),
            Some(b"before".to_vec())
        );
        client.put(&key, b"after").await.expect("put");
        assert_eq!(
            client.get(&key).await.expect("get"),
            Some(b"after".to_vec())
        );
    }
    assert!(
        data_ticks(&cluster) > before,
        "the requests woke the groups"
    );
    // And quiet again, it sleeps again.
    wait_all_asleep(&cluster, &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_group_whose_leader_dies_elects_another_without_a_request() {
    let mut cluster = Cluster::new(3, 3, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    wait_all_asleep(&cluster, &[1, 2, 3]).await;

    let led = leaders(&cluster, &[1, 2, 3]);
    let victim = *led
        .values()
        .flatten()
        .next()
        .expect("some host leads a shard");
    let orphaned: Vec<String> = led
        .iter()
        .filter(|(_, hosts)| hosts.contains(&victim))
        .map(|(shard, _)| shard.clone())
        .collect();
    cluster.kill9(victim);
    let survivors: Vec<HostId> = [1, 2, 3].into_iter().filter(|&h| h != victim).collect();

    // No request is sent: only the lost link can wake the followers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let led = leaders(&cluster, &survivors);
        if orphaned
            .iter()
            .all(|s| led.get(s).is_some_and(|h| h.len() == 1))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shards {orphaned:?} of dead host {victim} have no leader among {survivors:?}: {led:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for shard in 1..=3 {
        let key = common::key_in_shard(shard, 3);
        client.put(&key, b"v").await.expect("put after failover");
        assert_eq!(client.get(&key).await.expect("get"), Some(b"v".to_vec()));
    }
}
