//! After the leader of a shard is killed, writes to that shard succeed again within the
//! election timeout plus a margin, and readers never see a wrong value.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardkv::client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_after_the_leader_is_killed() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;

    let key = b"failover-key".to_vec();
    client.put(&key, b"v0").await.expect("first write");
    let leader = client
        .cached_leader(&key)
        .expect("the client learned the leader");

    // A reader checks that every value it sees is one that was written, in order.
    let stop = Arc::new(AtomicBool::new(false));
    let last_acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let c = cluster.client();
        let key = key.clone();
        let stop = stop.clone();
        let last_acked = last_acked.clone();
        tokio::spawn(async move {
            let mut seen = 0u64;
            let mut reads = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let floor = last_acked.load(Ordering::SeqCst);
                if let Ok(Some(v)) = c.get(&key).await {
                    let s = String::from_utf8(v).expect("utf8 value");
                    let n: u64 = s.trim_start_matches('v').parse().expect("a written value");
                    assert!(n >= seen, "read went back in time: {n} after {seen}");
                    assert!(
                        n >= floor,
                        "stale read: {n} but v{floor} was acknowledged before the read began"
                    );
                    seen = n;
                    reads += 1;
                }
            }
            reads
        })
    };

    let mut n = 1u64;
    for _ in 0..20 {
        client
            .put(&key, format!("v{n}").as_bytes())
            .await
            .expect("write before the kill");
        last_acked.store(n, Ordering::SeqCst);
        n += 1;
    }
    cluster.kill9(leader);

    // The election timeout is 500 ms; allow it plus a generous margin for a loaded CI box.
    let mut settings = cluster.settings("cli");
    settings.deadline = Duration::from_millis(500) + Duration::from_secs(5);
    let impatient = Client::new(settings).expect("client");
    impatient
        .put(&key, format!("v{n}").as_bytes())
        .await
        .expect("a write succeeds within the election timeout plus margin");
    last_acked.store(n, Ordering::SeqCst);
    n += 1;
    let new_leader = impatient.cached_leader(&key).expect("new leader known");
    assert_ne!(new_leader, leader, "a surviving host leads now");
    for _ in 0..20 {
        client
            .put(&key, format!("v{n}").as_bytes())
            .await
            .expect("write after failover");
        last_acked.store(n, Ordering::SeqCst);
        n += 1;
    }
    assert_eq!(
        client.get(&key).await.expect("read"),
        Some(format!("v{}", n - 1).into_bytes())
    );

    // The killed host comes back and catches up.
    cluster.start(leader);
    stop.store(true, Ordering::SeqCst);
    let reads = reader.await.expect("reader saw only valid values");
    assert!(reads > 0, "the reader read something");
}
