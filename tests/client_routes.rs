//! Clients route by the live cluster map, not by the configuration: a client configured with
//! hosts 1..=3 reaches a shard whose replica moved to host 4 and is led there, and the meta
//! group moves off a day-0 host while the map still reads and changes, also once that host is
//! gone and after a restart of the meta group's other hosts.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use shardkv::client::{Client, ClientSettings};
use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::{HostId, ShardId};

const SHARDS: u32 = 2;

fn replica_move(
    cluster: &common::Cluster,
    shard: ShardId,
    from: HostId,
    to: HostId,
) -> std::process::Output {
    let out = Command::new(common::BIN)
        .arg("--config")
        .arg(&cluster.cfg_path)
        .args([
            "replica",
            "move",
            &shard.to_string(),
            &from.to_string(),
            &to.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run shardkv replica move");
    if !out.status.success() {
        cluster.dump_logs();
    }
    assert!(
        out.status.success(),
        "move failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Client settings (the `cli` certificate) listing only the hosts in `hosts`.
fn settings_of(cluster: &common::Cluster, hosts: &[HostId]) -> ClientSettings {
    let mut settings = cluster.settings("cli");
    settings.hosts.retain(|(id, _)| hosts.contains(id));
    settings
}

/// Whether host `host` reports a replica of `shard`; `None` while it does not answer.
async fn holds(admin: &Client, host: HostId, shard: ShardId) -> Option<bool> {
    let status = admin.host_status(host).await.ok()?;
    Some(status.replicas.iter().any(|r| r.shard == shard))
}

/// The host whose replica of `shard` leads (of the highest term), asked of `hosts`.
async fn leader_of(admin: &Client, hosts: &[HostId], shard: ShardId) -> Option<HostId> {
    let mut best: Option<(u64, HostId)> = None;
    for &h in hosts {
        let Ok(status) = admin.host_status(h).await else {
            continue;
        };
        if let Some(r) = status
            .replicas
            .iter()
            .find(|r| r.shard == shard && r.is_leader)
        {
            if best.is_none_or(|(term, _)| r.term > term) {
                best = Some((r.term, h));
            }
        }
    }
    best.map(|(_, h)| h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_follows_a_replica_moved_and_led_on_a_host_missing_from_its_configuration() {
    const SHARD: ShardId = 1;
    let mut cluster = common::Cluster::new(4, SHARDS, 3);
    cluster.start_all();
    let admin = cluster.admin();
    cluster.wait_ready(&admin).await;
    let on = admin
        .host_status(1)
        .await
        .expect("status")
        .layout
        .hosts_of(SHARD)
        .to_vec();
    assert!(
        !on.contains(&4),
        "shard {SHARD} starts on hosts 1..=3: {on:?}"
    );

    // The client knows hosts 1..=3 only, and routes shard 1 before the move.
    let client = Client::new(settings_of(&cluster, &[1, 2, 3])).expect("client");
    let key = common::key_in_shard(SHARD, SHARDS);
    client
        .put(&key, b"before")
        .await
        .expect("write before the move");

    let from = on[0];
    tokio::task::block_in_place(|| replica_move(&cluster, SHARD, from, 4));
    let deadline = Instant::now() + Duration::from_secs(30);
    let survivors: Vec<HostId> = (1..=4).filter(|h| *h != from).collect();
    while leader_of(&admin, &[4], SHARD).await.is_none() {
        assert!(Instant::now() < deadline, "host 4 never led shard {SHARD}");
        if let Some(leader) = leader_of(&admin, &survivors, SHARD).await {
            let _ = admin.transfer_leader(leader, SHARD, 4).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(holds(&admin, 4, SHARD).await, Some(true));

    // The moved replica's old host answers NoReplicaHere, the others point at host 4, whose
    // address only the map holds.
    client
        .put(&key, b"after")
        .await
        .expect("write after the move");
    assert_eq!(
        client.get(&key).await.expect("read after the move"),
        Some(b"after".to_vec())
    );
    assert_eq!(client.cached_leader(&key), Some(4));
    // A fresh client with the same configuration finds it by the map at once.
    let fresh = Client::new(settings_of(&cluster, &[1, 2, 3])).expect("client");
    assert_eq!(
        fresh.get(&key).await.expect("a fresh client reads"),
        Some(b"after".to_vec())
    );
    assert_eq!(fresh.cached_leader(&key), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meta_group_moves_off_a_day0_host_and_the_map_reads_and_changes_without_it() {
    let mut cluster = common::Cluster::new(4, SHARDS, 3);
    cluster.start_all();
    let admin = cluster.admin();
    cluster.wait_ready(&admin).await;
    let meta_hosts = admin
        .host_status(1)
        .await
        .expect("status")
        .layout
        .meta_hosts();
    assert_eq!(meta_hosts, vec![1, 2, 3]);
    let from = meta_hosts[0];

    tokio::task::block_in_place(|| replica_move(&cluster, META_SHARD, from, 4));
    let map = admin.read_map().await.expect("map after the move").map;
    let voters: Vec<HostId> = map.voters_of(META_SHARD).collect();
    assert_eq!(voters, vec![2, 3, 4]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while holds(&admin, from, META_SHARD).await != Some(false) {
        assert!(
            Instant::now() < deadline,
            "host {from} kept its meta replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Led from host 4, which a client configured with the day-0 hosts only does not know,
    // the meta group still answers it; a change goes through.
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader_of(&admin, &[4], META_SHARD).await.is_none() {
        assert!(Instant::now() < deadline, "host 4 never led the meta group");
        if let Some(leader) = leader_of(&admin, &[2, 3], META_SHARD).await {
            let _ = admin.transfer_leader(leader, META_SHARD, 4).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = Client::new(settings_of(&cluster, &[1, 2, 3])).expect("client");
    assert_eq!(client.read_map().await.expect("map").map, map);
    let changed = admin
        .change_map(|m| match m.host(9) {
            Some(_) => Ok(()),
            None => m.add_host(9, "127.0.0.1:9"),
        })
        .await
        .expect("a map change after the move");
    assert!(changed.epoch() > map.epoch());
    let undone = admin
        .change_map(|m| m.remove_host(9))
        .await
        .expect("a second map change");

    // Without the host it moved off, the map still reads.
    cluster.stop(from);
    let read = client
        .read_map()
        .await
        .expect("map without the old meta host")
        .map;
    assert_eq!(read, undone);

    // Restart the meta group's hosts with one of them down: the two left admit each other
    // (each starts from the map its meta replica applied, not the day-0 one) and elect a
    // leader, so the map reads.
    for h in [2, 3, 4] {
        cluster.kill9(h);
    }
    cluster.start_all_of(&[2, 4]);
    let two = Client::new(settings_of(&cluster, &[2, 4])).expect("client");
    let read = two.read_map().await.expect("map after a restart").map;
    assert_eq!(read, undone);
}
