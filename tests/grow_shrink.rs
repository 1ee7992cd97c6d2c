//! The cluster grows and shrinks online, as README's "Grow and shrink the cluster" walks
//! through: a fourth host is appended while three serve, joins with `shardkv host add`,
//! `shardkv rebalance` spreads replicas and leaders onto it, then `shardkv host remove 1`
//! drains host 1 (the meta group's day-0 host included) and removes it, and it is killed.
//! Clients made before the fourth host existed work throughout: every acknowledged write reads
//! back, and the history recorded through all of it is linearizable.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shardkv_checker::{check, Op, Outcome, Recorder};
use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::{HostId, HostState};

const CLIENTS: usize = 4;
const KEYS: usize = 8;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(cluster: &common::Cluster, args: &[&str]) -> String {
    let out = tokio::task::block_in_place(|| cluster.cli(args, &[]));
    if !out.status.success() {
        cluster.dump_logs();
    }
    assert!(out.status.success(), "shardkv {args:?}: {}", text(&out));
    text(&out)
}

/// data + meta replicas per host, as the live map places them.
fn loads(map: &shardkv_transport::ClusterMap) -> BTreeMap<HostId, usize> {
    map.hosts()
        .iter()
        .filter(|(_, h)| h.state == HostState::Active)
        .map(|(id, _)| (*id, map.shards_of_host(*id).count()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_host_joins_takes_replicas_and_host_1_leaves_while_clients_work() {
    let seed = common::seed();
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    // Made from the three-host config: they learn the fourth host from the live map.
    let settings = cluster.settings("cli");
    let ready = shardkv::Client::new(settings.clone()).expect("client");
    cluster.wait_ready(&ready).await;

    let recorder = Recorder::new();
    let acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for id in 0..CLIENTS {
        let client = shardkv::Client::new(settings.clone()).expect("client");
        let (recorder, acked, stop) = (recorder.clone(), acked.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(id as u64));
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                // Half the traffic on a small key set for the checker, half on unique keys
                // that must all read back at the end.
                if rng.gen_bool(0.5) {
                    let key = format!("k{}", rng.gen_range(0..KEYS)).into_bytes();
                    if rng.gen_bool(0.5) {
                        let t = recorder.invoke(id, key.clone(), Op::Get);
                        let outcome = match client.get(&key).await {
                            Ok(v) => Outcome::Read(v),
                            Err(_) => Outcome::Unknown,
                        };
                        recorder.complete(t, outcome);
                    } else {
                        let value = format!("c{id}-{n}").into_bytes();
                        let t = recorder.invoke(id, key.clone(), Op::Put(value.clone()));
                        let outcome = match client.put(&key, &value).await {
                            Ok(()) => Outcome::Written,
                            Err(_) => Outcome::Unknown,
                        };
                        recorder.complete(t, outcome);
                    }
                } else {
                    let (key, value) = (format!("u{id}-{n}").into_bytes(), vec![b'v'; 64]);
                    if client.put(&key, &value).await.is_ok() {
                        acked.lock().expect("lock").insert(key, value);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Grow: host 4 appended and started while 1..3 keep running their old config.
    let new = cluster.append_host();
    cluster.start(new);
    run_ok(&cluster, &["host", "add", &new.to_string()]);
    run_ok(&cluster, &["rebalance"]);
    let admin = cluster.admin();
    let map = admin.read_map().await.expect("map").map;
    let grown = loads(&map);
    assert_eq!(grown.len(), 4, "{grown:?}");
    assert!(
        grown.values().all(|n| *n == 3),
        "12 replicas over 4 hosts: {grown:?}"
    );
    assert!(!map.rebalance_requested() && map.moves_in_flight().is_empty());

    // Shrink: host 1, a day-0 meta host, drains and leaves.
    run_ok(&cluster, &["host", "remove", "1"]);
    let map = admin.read_map().await.expect("map").map;
    assert_eq!(map.host(1).map(|h| h.state), Some(HostState::Removed));
    assert_eq!(map.shards_of_host(1).count(), 0);
    assert!(
        !map.replicas_of(META_SHARD).expect("meta").contains_key(&1),
        "the meta group moved off host 1"
    );
    let shrunk = loads(&map);
    assert!(
        shrunk.values().all(|n| *n == 4),
        "12 replicas over 3 hosts: {shrunk:?}"
    );
    cluster.kill9(1);
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker");
    }
    // The map still changes without host 1 (the meta group lives on 2..4 now).
    let status = cluster.cli(&["status"], &[]);
    assert!(status.status.success(), "status: {}", text(&status));

    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 100,
        "the clients made progress: {}",
        acked.len()
    );
    let reader = shardkv::Client::new(settings).expect("client");
    for (key, value) in &acked {
        assert_eq!(reader.get(key).await.expect("read").as_ref(), Some(value));
    }
    let history = recorder.history();
    if let Err(e) = check(&history) {
        panic!("seed {seed}: the history is not linearizable: {e}");
    }
}
