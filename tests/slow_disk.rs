//! A host whose disk turns slow (every fsync takes seconds) leaves the cluster serving: writes
//! to every shard keep being acknowledged, including the shard the slow host led, and once
//! its disk is fast again it holds every acknowledged write.
//!
//! The slow disk is the `commit_delay_ms` fault hook: host 3's storage writer sleeps before
//! each group commit. raft-rs hands committed entries to a leader's state machine only once
//! they are persisted on the leader itself, so a shard led by host 3 answers a write only
//! after host 3's fsync, longer than a client's attempt timeout. Without slow-disk leader
//! eviction host 3 keeps leading until its persist pipeline fills and its heartbeats stop,
//! and writes caught there wait out two attempts. With it host 3 hands leadership to a
//! follower an election timeout into its slow fsync and refuses to take it back while its
//! disk stays slow, so a write waits out one attempt at most.
#![cfg(debug_assertions)]

mod common;

use std::time::{Duration, Instant};

use shardkv::client::Client;
use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::wire::FaultSpec;

/// How long one fsync on the slow host takes: well over the election timeout (500 ms here)
/// and the client's attempt timeout.
const COMMIT_DELAY: Duration = Duration::from_secs(3);
/// How long the drill writes while host 3's disk is slow.
const DRILL: Duration = Duration::from_secs(10);
const SHARDS: u32 = 3;
/// Writes per shard at most, one every [`WRITE_INTERVAL`]: enough to cover the whole drill,
/// few enough that reading every one back from every host stays quick.
const WRITES_PER_SHARD_MAX: usize = 200;
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// `n` distinct keys that land in `shard`.
fn keys_in_shard(shard: u32, n: usize) -> Vec<Vec<u8>> {
    (0u64..)
        .map(|i| format!("slow-disk-{i}").into_bytes())
        .filter(|k| shardkv_transport::slot::shard_of_key(k, SHARDS) == shard)
        .take(n)
        .collect()
}

/// Writes `keys` in turn until `until`; returns the keys acknowledged and the slowest write.
/// Every write must be acknowledged within the client's deadline.
async fn write_until(
    client: Client,
    keys: Vec<Vec<u8>>,
    until: Instant,
) -> (Vec<Vec<u8>>, Duration) {
    let mut acked = Vec::new();
    let mut slowest = Duration::ZERO;
    for key in keys {
        if Instant::now() >= until {
            break;
        }
        let started = Instant::now();
        if let Err(e) = client.put(&key, &key).await {
            panic!(
                "write of {} not acknowledged within the deadline after {:?}: {e}",
                String::from_utf8_lossy(&key),
                started.elapsed()
            );
        }
        slowest = slowest.max(started.elapsed());
        acked.push(key);
        tokio::time::sleep(WRITE_INTERVAL.saturating_sub(started.elapsed())).await;
    }
    (acked, slowest)
}

/// The leader of each data shard as host 1 sees it (the meta group is left out: its
/// leadership is not spread).
async fn leaders(admin: &Client) -> Vec<(u32, Option<u64>)> {
    let status = admin.host_status(1).await.expect("host 1 status");
    status
        .replicas
        .iter()
        .filter(|r| r.shard != META_SHARD)
        .map(|r| (r.shard, r.leader))
        .collect()
}

/// Waits until each host leads one shard; returns the leaders.
async fn wait_balanced(admin: &Client) -> Vec<(u32, Option<u64>)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let led = leaders(admin).await;
        let mut hosts: Vec<u64> = led.iter().filter_map(|(_, l)| *l).collect();
        hosts.sort_unstable();
        if hosts == [1, 2, 3] {
            return led;
        }
        assert!(
            Instant::now() < deadline,
            "leadership never balanced: {led:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_a_slow_disk_leaves_every_shard_writable_and_loses_nothing() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let admin = cluster.admin();
    cluster.wait_ready(&admin).await;
    // Hand-back settles leadership on each shard's preferred host: host 3 then leads one.
    let led = wait_balanced(&admin).await;
    eprintln!("leaders by shard when host 3's disk turns slow: {led:?}");

    let slow = FaultSpec {
        commit_delay_ms: COMMIT_DELAY.as_millis() as u64,
        ..FaultSpec::default()
    };
    admin
        .inject_fault(3, slow)
        .await
        .expect("slow down host 3's disk");

    // One writer per shard, each with the default client deadline (the writes' bound).
    let mut settings = cluster.settings("cli");
    settings.deadline = shardkv::client::DEADLINE_DEFAULT;
    let attempt_timeout = settings.attempt_timeout;
    assert!(
        attempt_timeout < COMMIT_DELAY,
        "a slow fsync outlasts an attempt"
    );
    let client = Client::new(settings).expect("client");
    let until = Instant::now() + DRILL;
    let writers: Vec<_> = (1..=SHARDS)
        .map(|shard| {
            tokio::spawn(write_until(
                client.clone(),
                keys_in_shard(shard, WRITES_PER_SHARD_MAX),
                until,
            ))
        })
        .collect();
    let mut acked = Vec::new();
    for (shard, w) in (1..=SHARDS).zip(writers) {
        let (keys, slowest) = w.await.expect("writer task");
        eprintln!(
            "shard {shard}: {} writes acknowledged, slowest {slowest:?}",
            keys.len()
        );
        assert!(!keys.is_empty(), "shard {shard} acknowledged writes");
        // A bound from the client's own settings: a write caught on the slow leader at the
        // hand-over may wait out one attempt there (its state machine waits for the disk),
        // then is answered by the new leader; none waits out two. Without the hand-over a
        // leader stays until its stalled pipeline stops its heartbeats: writes took 4 s.
        assert!(
            slowest < 2 * attempt_timeout,
            "a write to shard {shard} took {slowest:?}, more than two attempts of \
             {attempt_timeout:?}: it waited for the slow disk"
        );
        acked.extend(keys);
    }
    eprintln!(
        "leaders by shard while host 3's disk is slow: {:?}",
        leaders(&admin).await
    );

    // The disk recovers: every host, host 3 included, holds every acknowledged write.
    admin
        .inject_fault(3, FaultSpec::default())
        .await
        .expect("restore host 3's disk");
    for host in 1..=3 {
        cluster.wait_caught_up(&admin, host).await;
        for key in &acked {
            assert_eq!(
                cluster.stale_read_on(host, key).await,
                Ok(Some(key.clone())),
                "host {host} holds {}",
                String::from_utf8_lossy(key)
            );
        }
    }
    cluster.check_alive();
    cluster.kill9_all();
}
