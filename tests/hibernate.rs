//! Idle shards hibernate: no ticks (so no heartbeats) while nothing happens; a request wakes
//! a group, and a group whose leader's host dies elects a new leader without any request.
//! The meta group (shard 0) stays awake: every host reads the map from it each second.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::metrics::{sample, scrape, scrape_all, total};
use common::Cluster;
use shardkv_transport::wire::{Op, ReadConsistency, Request, RequestFrame, Response};
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

/// Every data shard's term on every host: it must not move while groups sleep and wake
/// (an election on waking would be a leader deposed for nothing).
fn terms(cluster: &Cluster) -> Vec<(HostId, String, f64)> {
    let mut out = Vec::new();
    for (id, body) in scrape_all(cluster) {
        for shard in shards_on(&body) {
            let label = format!("shard=\"{shard}\"");
            out.push((id, shard, sample(&body, "shardkv_raft_term", &[&label])));
        }
    }
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out
}

/// A linearizable get sent to the host at the other end of `conn`, whether it leads or not.
async fn linearizable_get(conn: &quinn::Connection, key: &[u8]) -> Response {
    let req = RequestFrame::Data(Request {
        client_id: 0,
        seq: 0,
        op: Op::Get {
            key: key.to_vec(),
            consistency: ReadConsistency::Linearizable,
        },
    });
    shardkv_transport::endpoint::call(conn, &req)
        .await
        .expect("the host answers")
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

    let terms_asleep = terms(&cluster);

    // Asleep means still: not one tick (so no heartbeat) while nothing happens.
    let before = data_ticks(&cluster);
    assert!(before > 0.0, "the replicas ticked before they slept");
    tokio::time::sleep(Duration::from_secs(5)).await;
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
    // Woken, a replica ticks: its first tick is one tick after the wake-up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while data_ticks(&cluster) == before {
        assert!(
            Instant::now() < deadline,
            "the requests did not wake the groups"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Linearizable reads at the followers only wake them (their leader may be gone), and
    // they wake their leader, so no follower's election timer runs out on a leader that
    // sleeps: no election follows.
    wait_all_asleep(&cluster, &[1, 2, 3]).await;
    let led = leaders(&cluster, &[1, 2, 3]);
    for host in [1, 2, 3] {
        let conn = cluster
            .try_raw_connection("cli", usize::try_from(host - 1).expect("index"))
            .await
            .expect("a connection to the host");
        for shard in 1..=4 {
            if led
                .get(&shard.to_string())
                .is_some_and(|l| l.contains(&host))
            {
                continue;
            }
            let key = common::key_in_shard(shard, 4);
            match linearizable_get(&conn, &key).await {
                Response::NotLeader { .. } => {}
                other => panic!("host {host} does not lead shard {shard}: {other:?}"),
            }
        }
    }
    // Past every follower's longest election timeout (twice the base), then quiet again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // And quiet again, it sleeps again, in the same terms.
    wait_all_asleep(&cluster, &[1, 2, 3]).await;
    assert_eq!(
        terms(&cluster),
        terms_asleep,
        "an election while sleeping and waking"
    );
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
