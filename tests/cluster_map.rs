//! The live cluster map in the meta group, end to end: day 0 until the first change, changed
//! by compare-and-swap from a host certificate only, idempotent when re-run, and kept through
//! the loss of a meta host and a kill -9 of every host.

mod common;

use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::{ClusterMap, HostId, HostState};

async fn hosts_with_meta_replica(cluster: &common::Cluster) -> Vec<HostId> {
    let admin = cluster.admin();
    let mut with = Vec::new();
    for h in &cluster.cfg.hosts {
        let status = admin.host_status(h.host.id).await.expect("status");
        if status.replicas.iter().any(|r| r.shard == META_SHARD) {
            with.push(h.host.id);
        }
    }
    with
}

/// Waits until every host reports routing by the map of `epoch` (each reads it by itself).
async fn wait_every_host_on(cluster: &common::Cluster, epoch: u64) {
    let admin = cluster.admin();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let mut epochs = Vec::new();
        for h in &cluster.cfg.hosts {
            epochs.push(admin.host_status(h.host.id).await.map(|s| s.map_epoch).ok());
        }
        if epochs.iter().all(|e| *e == Some(epoch)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hosts route by epochs {epochs:?}, not {epoch}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_lives_in_the_meta_group_and_changes_only_by_host_certificates() {
    let mut cluster = common::Cluster::new(4, 3, 3);
    cluster.start_all();
    let client = cluster.client();
    let admin = cluster.admin();
    cluster.wait_ready(&client).await;

    // Day 0: the meta group on the three lowest hosts, the map as bootstrapped.
    assert_eq!(hosts_with_meta_replica(&cluster).await, vec![1, 2, 3]);
    let day0 = client.read_map().await.expect("any client reads the map");
    assert_eq!(day0.stored, None, "nothing written yet");
    assert_eq!(day0.map.epoch(), 1);
    let meta: Vec<HostId> = day0.map.voters_of(META_SHARD).collect();
    assert_eq!(meta, vec![1, 2, 3]);
    assert_eq!(
        day0.map.shards().len(),
        4,
        "three data shards and the meta group"
    );

    // Only a host certificate changes it; a re-run changes nothing.
    let refused = client
        .change_map(|m: &mut ClusterMap| m.add_host(9, "127.0.0.1:9"))
        .await;
    assert!(refused.is_err(), "a client certificate changed the map");
    let add = |m: &mut ClusterMap| m.add_host(9, "127.0.0.1:9");
    let changed = admin
        .change_map(add)
        .await
        .expect("host certificate changes it");
    assert_eq!(changed.epoch(), 2);
    let again = admin.change_map(add).await.expect("re-run");
    assert_eq!(
        again.epoch(),
        2,
        "an idempotent change is not written twice"
    );
    let read = client.read_map().await.expect("read");
    assert_eq!(read.map, changed);
    wait_every_host_on(&cluster, 2).await;
    assert_eq!(read.map.host(9).map(|h| h.state), Some(HostState::Joining));

    // A meta host lost: the other two still read and change it.
    cluster.kill9(1);
    let drain = |m: &mut ClusterMap| m.drain_host(9);
    let drained = admin
        .change_map(drain)
        .await
        .expect("change with host 1 down");
    assert_eq!(drained.epoch(), 3);

    // Every host killed: the map is what was stored.
    cluster.kill9_all();
    cluster.start_all();
    cluster.wait_ready(&client).await;
    let after = client.read_map().await.expect("read after restart");
    assert_eq!(after.map, drained);
    wait_every_host_on(&cluster, 3).await;
    assert_eq!(
        after.map.host(9).map(|h| h.state),
        Some(HostState::Draining)
    );
}
