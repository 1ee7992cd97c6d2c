//! The metrics listener serves Prometheus text, and its counters move with the traffic.

mod common;

use common::metrics::{sample, scrape_all, total};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_counters_move_with_traffic() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;

    let before = scrape_all(&cluster);
    for i in 0..50 {
        let k = format!("m-{i}");
        client.put(k.as_bytes(), b"v").await.expect("put");
        assert_eq!(
            client.get(k.as_bytes()).await.expect("get"),
            Some(b"v".to_vec())
        );
    }
    assert_eq!(client.get(b"never-written").await.expect("get"), None);
    let after = scrape_all(&cluster);

    let puts = |s| {
        total(
            s,
            "shardkv_client_requests_total",
            &["kind=\"put\"", "result=\"ok\""],
        )
    };
    assert!(puts(&after) - puts(&before) >= 50.0, "put counter moved");
    let gets = |s| {
        total(
            s,
            "shardkv_client_requests_total",
            &["kind=\"get\"", "result=\"ok\""],
        )
    };
    assert!(gets(&after) - gets(&before) >= 50.0, "get counter moved");
    let absent = |s| {
        total(
            s,
            "shardkv_client_requests_total",
            &["kind=\"get\"", "result=\"not_found\""],
        )
    };
    assert!(absent(&after) - absent(&before) >= 1.0, "not_found counted");
    let proposals = |s| total(s, "shardkv_raft_proposals_total", &[]);
    assert!(
        proposals(&after) - proposals(&before) >= 50.0,
        "proposals counted"
    );
    // Every host applies every entry of the shards it holds (3 replicas of each).
    let applied = |s| total(s, "shardkv_raft_applied_entries_total", &[]);
    assert!(
        applied(&after) - applied(&before) >= 150.0,
        "applies counted on every replica"
    );
    let commits = |s| total(s, "shardkv_storage_commits_total", &[]);
    assert!(
        commits(&after) > commits(&before),
        "storage commits counted"
    );
    assert!(total(&after, "shardkv_storage_commit_seconds_count", &[]) > 0.0);
    assert!(
        total(
            &after,
            "shardkv_client_request_seconds_count",
            &["kind=\"put\""]
        ) >= 50.0,
        "latency histogram filled"
    );
    // Electing the three leaders took at least three campaigns.
    assert!(
        total(&after, "shardkv_raft_elections_total", &[]) >= 3.0,
        "elections counted"
    );
    // One leader per shard and one for the meta group across the cluster, and every host
    // sees both peers connected.
    assert_eq!(total(&after, "shardkv_raft_is_leader", &[]), 4.0);
    for (host, body) in &after {
        assert_eq!(
            sample(body, "shardkv_peer_connected", &[]),
            2.0,
            "host {host} peers up"
        );
    }
}
