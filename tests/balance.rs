//! Leaders spread over the hosts: each shard's leadership goes to the first host of its
//! placement once that host is up and caught up, also after it was away.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shardkv_transport::cluster_map::META_SHARD;

/// data shard -> leader, as the hosts report it (the meta group prefers host 1 as well, but
/// its hand-back is not what this test is about).
async fn leaders(cluster: &common::Cluster, client: &shardkv::Client) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for h in &cluster.cfg.hosts {
        if let Ok(s) = client.host_status(h.host.id).await {
            let data_leaders = s
                .replicas
                .iter()
                .filter(|r| r.is_leader && r.shard != META_SHARD);
            for r in data_leaders {
                out.insert(r.shard, h.host.id);
            }
        }
    }
    out
}

async fn wait_for_leaders(
    cluster: &common::Cluster,
    client: &shardkv::Client,
    want: &BTreeMap<u32, u64>,
) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let got = leaders(cluster, client).await;
        if &got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "leaders {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_is_led_by_its_preferred_host() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;

    // Placement rotates the first host: shard s prefers host s.
    let want: BTreeMap<u32, u64> = cluster
        .cfg
        .cluster
        .placement()
        .into_iter()
        .map(|(s, hosts)| (s, hosts[0]))
        .collect();
    assert_eq!(want, BTreeMap::from([(1, 1), (2, 2), (3, 3)]));
    wait_for_leaders(&cluster, &client, &want).await;

    // Writes keep working through the hand-overs, and after host 1 comes back from a stop
    // its shard returns to it.
    for i in 0..50 {
        client
            .put(format!("k{i}").as_bytes(), b"v")
            .await
            .expect("put");
    }
    assert!(cluster.stop(1).success());
    for i in 50..100 {
        client
            .put(format!("k{i}").as_bytes(), b"v")
            .await
            .expect("put with host 1 away");
    }
    cluster.start(1);
    wait_for_leaders(&cluster, &client, &want).await;
    for i in 0..100 {
        assert_eq!(
            client.get(format!("k{i}").as_bytes()).await.expect("get"),
            Some(b"v".to_vec())
        );
    }
}
