//! A write whose acknowledgement is lost is retried by the client and applied exactly once.
// Fault hooks exist only in builds with debug assertions (see transport/src/fault.rs).
#![cfg(debug_assertions)]

mod common;

use shardkv_transport::wire::FaultSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_whose_reply_was_lost_is_applied_once() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;

    // Learn the leader of the key's shard, then make it swallow its next write reply.
    client.put(b"once", b"seed").await.expect("warm-up write");
    client.delete(b"once").await.expect("clear");
    let leader = client.cached_leader(b"once").expect("leader known");
    let spec = FaultSpec {
        drop_replies: 1,
        ..FaultSpec::default()
    };
    cluster
        .admin()
        .inject_fault(leader, spec)
        .await
        .expect("fault hook (test builds only)");

    // Create-if-absent: applied twice, the second application would fail and report the
    // value the first one wrote. Applied once, the retry answers the first reply: success.
    let outcome = client
        .cas(b"once", None, Some(b"first"))
        .await
        .expect("the client retries past the lost reply");
    assert_eq!(
        outcome,
        Ok(()),
        "the retry was answered from the session, not re-applied"
    );
    assert_eq!(
        client.get(b"once").await.expect("read"),
        Some(b"first".to_vec())
    );

    // The fault was consumed: the next write is acknowledged normally.
    assert_eq!(
        client
            .cas(b"once", Some(b"first"), Some(b"second"))
            .await
            .expect("cas"),
        Ok(())
    );
    let log = std::fs::read_to_string(cluster.log_path(leader)).expect("leader log");
    assert!(
        log.contains("fault injection active"),
        "the fault really was switched on"
    );
}
