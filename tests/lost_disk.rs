//! A host that lost its disk never answers wrongly and never overwrites the intact copy: its
//! peers refuse the Raft traffic of its new incarnation, so it never votes or counts toward a
//! quorum; once peers that know it are up it starts holding no replica, until
//! `shardkv host replace` brings it back as a voter holding the data again.

mod common;

use std::time::Duration;

use shardkv::client::{Client, ClientError};

const KEYS: usize = 60;

fn key(i: usize) -> Vec<u8> {
    format!("lost-disk-{i}").into_bytes()
}

fn wipe_data_dir(cluster: &common::Cluster, id: u64) {
    let host = cluster.cfg.host(id).expect("host in config");
    std::fs::remove_dir_all(&host.data_dir).expect("wipe the data dir");
}

fn serving_count(cluster: &common::Cluster, id: u64) -> usize {
    std::fs::read_to_string(cluster.log_path(id))
        .map(|log| log.matches("host serving").count())
        .unwrap_or(0)
}

fn wait_until_serving(cluster: &common::Cluster, id: u64, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while serving_count(cluster, id) < count {
        assert!(
            std::time::Instant::now() < deadline,
            "host {id} did not start serving"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn patient_client(cluster: &common::Cluster) -> Client {
    let mut settings = cluster.settings("cli");
    settings.deadline = Duration::from_secs(12);
    Client::new(settings).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_lost_its_disk_never_counts_toward_a_quorum() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;

    // Host 2 freezes; the writes live on hosts 1 and 3 only.
    cluster.pause(2);
    for i in 0..KEYS {
        client
            .put(&key(i), b"acked")
            .await
            .expect("acknowledged write");
    }
    drop(client);
    // Host 1 dies; host 3 dies and comes back with an empty data dir; host 2 wakes up behind.
    cluster.kill9(1);
    cluster.kill9(3);
    wipe_data_dir(&cluster, 3);
    let served = serving_count(&cluster, 3);
    cluster.start(3);
    // No peer can answer host 3's start-up probe (1 is dead, 2 frozen), so it starts, as it
    // would on a new cluster; only then does host 2 wake up.
    wait_until_serving(&cluster, 3, served + 1);
    cluster.resume(2);

    // {2: behind, 3: empty} must not form a quorum: no read is answered, least of all
    // "not found" for an acknowledged key. One read per shard, at once, each given long
    // enough for an election and for the client to pass over the dead host 1.
    let patient = patient_client(&cluster);
    let reads = (1..=3u32).map(|shard| {
        let k = (0..KEYS)
            .map(key)
            .find(|k| shardkv_transport::slot::shard_of_key(k, 3) == shard)
            .expect("a key in every shard");
        let c = patient.clone();
        async move { (shard, c.get(&k).await) }
    });
    for (shard, res) in futures::future::join_all(reads).await {
        match res {
            Err(ClientError::Timeout { .. }) => {}
            other => panic!("shard {shard} answered without a real quorum: {other:?}"),
        }
    }
    let log = std::fs::read_to_string(cluster.log_path(2)).expect("host 2 log");
    assert!(
        log.contains("another incarnation"),
        "host 2 says why it refuses host 3"
    );

    // Host 1 returns: {1, 2} hold every acknowledged write, and serve them.
    cluster.start(1);
    let client = cluster.client();
    for i in 0..KEYS {
        assert_eq!(
            client.get(&key(i)).await.expect("read with hosts 1 and 2"),
            Some(b"acked".to_vec()),
            "acknowledged key {i}"
        );
    }

    // With peers that know it up, a host with a new empty data dir starts holding nothing,
    // and says how to bring it back.
    cluster.kill9(3);
    wipe_data_dir(&cluster, 3);
    let served = serving_count(&cluster, 3);
    cluster.start(3);
    wait_until_serving(&cluster, 3, served + 1);
    let admin = cluster.admin();
    let status = admin.host_status(3).await.expect("host 3 answers");
    assert!(status.replicas.is_empty(), "{:?}", status.replicas);
    let log = std::fs::read_to_string(cluster.log_path(3)).expect("host 3 log");
    assert!(
        log.contains("shardkv host replace 3"),
        "the host names the command that replaces it: {log}"
    );
    // It never votes: without host 1, {2, new 3} is no quorum, even after a restart of 3.
    cluster.kill9(1);
    cluster.kill9(3);
    cluster.start(3);
    wait_until_serving(&cluster, 3, served + 2);
    let stuck = patient_client(&cluster);
    let k = key(0);
    assert!(
        matches!(stuck.get(&k).await, Err(ClientError::Timeout { .. })),
        "a host awaiting replacement must not make a quorum"
    );
    cluster.start(1);

    // `shardkv host replace 3`: its replicas come back, caught up, as voters.
    let out = tokio::task::block_in_place(|| cluster.cli(&["host", "replace", "3"], &[]));
    if !out.status.success() {
        cluster.dump_logs();
    }
    assert!(
        out.status.success(),
        "host replace: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let map = admin.read_map().await.expect("map").map;
    let incarnation = admin.host_status(3).await.expect("status").incarnation;
    assert_eq!(map.host(3).map(|h| h.incarnation), Some(incarnation));
    for (shard, entry) in map.shards() {
        assert_eq!(
            entry.replicas.get(&3),
            Some(&shardkv_transport::ReplicaRole::Voter),
            "shard {shard}"
        );
    }
    let again = tokio::task::block_in_place(|| cluster.cli(&["host", "replace", "3"], &[]));
    assert!(again.status.success(), "a re-run is a no-op");
    // Host 3 holds the data: with host 1 down, {2, 3} serve every acknowledged write.
    cluster.wait_caught_up(&admin, 3).await;
    cluster.kill9(1);
    let client = cluster.client();
    for i in 0..KEYS {
        assert_eq!(
            client.get(&key(i)).await.expect("read with hosts 2 and 3"),
            Some(b"acked".to_vec()),
            "acknowledged key {i}"
        );
    }
    cluster.check_alive();
}
