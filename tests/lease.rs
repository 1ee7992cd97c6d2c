//! Lease reads: served by the leader without a quorum round while its lease holds, and never
//! stale when that leader has been cut off and replaced.
// Fault hooks exist only in builds with debug assertions (see transport/src/fault.rs).
#![cfg(debug_assertions)]

mod common;

use std::time::{Duration, Instant};

use shardkv_transport::wire::{FaultSpec, ReadConsistency};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_does_not_serve_stale_lease_reads() {
    let mut cluster = common::Cluster::new(3, 1, 3);
    cluster.start_all();
    let writer = cluster.client();
    cluster.wait_ready(&writer).await;

    let mut settings = cluster.settings("cli");
    settings.consistency = ReadConsistency::Lease;
    settings.deadline = Duration::from_secs(10);
    settings.attempt_timeout = Duration::from_millis(700);
    let reader = shardkv::Client::new(settings).expect("lease client");

    writer.put(b"k", b"v1").await.expect("first write");
    // The first lease read takes a ReadIndex round and starts the lease; the next ones are
    // served from it.
    for _ in 0..20 {
        assert_eq!(
            reader.get(b"k").await.expect("lease read"),
            Some(b"v1".to_vec())
        );
    }
    let old = reader.cached_leader(b"k").expect("reader knows the leader");

    // Cut the leader's Raft links (clients still reach it) and wait for another leader.
    let cut = |from: Vec<u64>| FaultSpec {
        partition_from: from,
        ..Default::default()
    };
    let others: Vec<u64> = (1..=3).filter(|h| *h != old).collect();
    let admin = cluster.admin();
    admin
        .inject_fault(old, cut(others.clone()))
        .await
        .expect("partition");
    for h in &others {
        admin
            .inject_fault(*h, cut(vec![old]))
            .await
            .expect("partition");
    }
    let mut settings = cluster.settings("cli");
    settings.deadline = Duration::from_secs(10);
    let fresh = shardkv::Client::new(settings).expect("client");
    let t0 = Instant::now();
    fresh
        .put(b"k", b"v2")
        .await
        .expect("the majority elects a new leader and takes the write");
    eprintln!(
        "new leader {:?} after {:?}",
        fresh.cached_leader(b"k"),
        t0.elapsed()
    );

    // The reader still believes in the old leader and asks it first. A lease that outlived
    // the cut would answer v1 here.
    let got = reader.get(b"k").await.expect("lease read after the cut");
    assert_eq!(
        got,
        Some(b"v2".to_vec()),
        "stale lease read from a deposed leader"
    );

    for h in 1..=3 {
        admin.inject_fault(h, cut(vec![])).await.expect("heal");
    }
    assert_eq!(
        reader.get(b"k").await.expect("read after healing"),
        Some(b"v2".to_vec())
    );
}
