//! With `cluster.max_value_bytes` at its 64 MiB ceiling, large values replicate: a follower
//! that missed large entries, among them a CAS carrying two values (an entry larger than one
//! value), catches up over them. The election timeout is raised because a debug build takes
//! seconds to move one large frame, and heartbeats wait behind it on the same stream.

mod common;

use std::time::{Duration, Instant};

use shardkv::client::Client;
use shardkv::config::ClusterConfig;
use shardkv_transport::wire::VALUE_BYTES_MAX_CEILING;

const MIB: usize = 1 << 20;

/// A cluster whose `cluster.max_value_bytes` is the ceiling.
fn cluster_at_value_ceiling(hosts: u64, shards: u32, replicas: u32) -> common::Cluster {
    let mut cluster = common::Cluster::new(hosts, shards, replicas);
    let text = std::fs::read_to_string(&cluster.cfg_path).expect("read the test config");
    let text = text
        .replacen(
            "[cluster]\n",
            &format!("[cluster]\nmax_value_bytes = {VALUE_BYTES_MAX_CEILING}\n"),
            1,
        )
        .replacen(
            "election_timeout = \"500ms\"",
            "election_timeout = \"10s\"",
            1,
        );
    std::fs::write(&cluster.cfg_path, text).expect("write the test config");
    cluster.cfg = ClusterConfig::load(&cluster.cfg_path).expect("the edited config is valid");
    cluster
}

/// A client that gives a large write the time a debug build needs for it.
fn patient_client(cluster: &common::Cluster) -> Client {
    let mut settings = cluster.settings("cli");
    settings.deadline = Duration::from_secs(60);
    settings.attempt_timeout = Duration::from_secs(30);
    Client::new(settings).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_over_large_values_and_a_cas_of_two() {
    let mut cluster = cluster_at_value_ceiling(3, 1, 3);
    cluster.start_all();
    let client = patient_client(&cluster);
    cluster.wait_ready(&client).await;
    let follower = *cluster.cfg.cluster.placement()[0]
        .1
        .last()
        .expect("shard 1 has replicas");
    cluster.kill9(follower);

    // While the follower is away: a large value, then a CAS whose entry carries two values.
    // (Values near the ceiling are proven to fit every frame by the unit tests of the frame
    // limits and of the peer's batching; a debug build moves a few MiB per second through a
    // host, so this test keeps to sizes it replicates in seconds.)
    let large = vec![7u8; 20 * MIB];
    client
        .put(b"large", &large)
        .await
        .expect("a large put commits");
    let (expected, new) = (vec![1u8; 6 * MIB], vec![2u8; 6 * MIB]);
    let cas = client
        .cas(b"cas", Some(&expected), Some(&new))
        .await
        .expect("a CAS of two large values is committed and applied");
    assert_eq!(cas, Err(None), "the CAS found the key absent");
    client
        .put(b"after", b"x")
        .await
        .expect("a small put commits");

    cluster.start(follower);
    // The follower applies in log order: once it has the put, it has applied the CAS.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = cluster.stale_read_on(follower, b"after").await;
        if matches!(&got, Ok(Some(v)) if v == b"x") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower {follower} never caught up: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = cluster
        .stale_read_on(follower, b"large")
        .await
        .expect("the follower answers a stale read");
    assert!(
        got.as_deref() == Some(large.as_slice()),
        "the follower holds the large value (got {:?} bytes)",
        got.map(|v| v.len())
    );
    cluster.check_alive();
}
