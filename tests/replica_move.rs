//! `shardkv replica move` end to end: a replica moves to a host that held none while a client
//! keeps writing; every acknowledged write reads back, the new host holds the data, the old
//! one deletes its copy and does not bring it back after a kill -9, and a re-run is a no-op.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardkv_transport::{HostId, ReplicaRole, ShardId};

const SHARDS: u32 = 2;
const SHARD: ShardId = 1;

fn replica_move(cluster: &common::Cluster, from: HostId, to: HostId) -> std::process::Output {
    Command::new(common::BIN)
        .arg("--config")
        .arg(&cluster.cfg_path)
        .args([
            "replica",
            "move",
            &SHARD.to_string(),
            &from.to_string(),
            &to.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run shardkv replica move")
}

async fn holds(cluster: &common::Cluster, host: HostId) -> Option<bool> {
    let status = cluster.admin().host_status(host).await.ok()?;
    Some(status.replicas.iter().any(|r| r.shard == SHARD))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moves_while_writes_go_on_and_the_old_copy_is_deleted() {
    let mut cluster = common::Cluster::new(4, SHARDS, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    let placement = cluster.admin().host_status(1).await.expect("status").layout;
    let on: Vec<HostId> = placement.hosts_of(SHARD).to_vec();
    let from = on[0];
    let to = (1..=4)
        .find(|h| !on.contains(h))
        .expect("a host without the shard");
    assert_eq!(holds(&cluster, to).await, Some(false));

    // A writer on both shards for the whole move.
    let acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{i}").into_bytes();
                let value = format!("v{i}").into_bytes();
                if client.put(&key, &value).await.is_ok() {
                    acked.lock().expect("lock").insert(key, value);
                }
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let out = tokio::task::block_in_place(|| replica_move(&cluster, from, to));
    if !out.status.success() {
        cluster.dump_logs();
    }
    assert!(
        out.status.success(),
        "move failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");

    // The map and the hosts agree: `to` is a voter, `from` holds nothing.
    let map = client.read_map().await.expect("map").map;
    let roles = map.replicas_of(SHARD).expect("shard");
    assert_eq!(roles.get(&to), Some(&ReplicaRole::Voter), "{roles:?}");
    assert!(!roles.contains_key(&from), "{roles:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while holds(&cluster, from).await != Some(false) {
        assert!(Instant::now() < deadline, "host {from} kept its copy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every replica's own configuration agrees: `to` votes, `from` is gone (a newcomer that
    // rebuilt its configuration from the log instead of a snapshot would disagree).
    let deadline = Instant::now() + Duration::from_secs(10);
    for h in (1..=4).filter(|h| *h != from) {
        loop {
            let status = cluster.admin().host_status(h).await.expect("status");
            let conf = status.replicas.iter().find(|r| r.shard == SHARD).map(|r| {
                (
                    r.voters.clone(),
                    r.voters_outgoing.clone(),
                    r.learners.clone(),
                )
            });
            let want: Vec<HostId> = {
                let mut v: Vec<HostId> = on.iter().copied().filter(|x| *x != from).collect();
                v.push(to);
                v.sort_unstable();
                v
            };
            match conf {
                None => break, // not a replica host
                Some(c) if c == (want.clone(), vec![], vec![]) => break,
                Some(c) => assert!(Instant::now() < deadline, "host {h} reports {c:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let again = tokio::task::block_in_place(|| replica_move(&cluster, from, to));
    assert!(again.status.success(), "a re-run is a no-op");

    // Every acknowledged write reads back, and the new host holds the moved shard's.
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 20,
        "the writer made progress: {}",
        acked.len()
    );
    cluster.wait_caught_up(&cluster.admin(), to).await;
    for (key, value) in &acked {
        assert_eq!(client.get(key).await.expect("read").as_ref(), Some(value));
        let shard = map
            .shard_of_slot(shardkv_transport::slot::slot(key))
            .expect("owned");
        if shard == SHARD {
            let local = cluster.stale_read_on(to, key).await.expect("host answers");
            assert_eq!(local.as_ref(), Some(value), "host {to}");
        }
    }

    // The old host, killed and restarted, does not bring its copy back.
    cluster.kill9(from);
    cluster.start(from);
    cluster.wait_ready(&client).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(holds(&cluster, from).await, Some(false));
}
