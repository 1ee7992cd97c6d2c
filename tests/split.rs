//! Shard splits while clients work, as issue 12 asks: `shardkv shard split 1` and
//! `shardkv shard split 2` run on a 3-host, 3-shard, 3-replica cluster under a write load
//! whose acknowledgements are being lost (the transport's fault hook), so writes are retried
//! across the split. Afterwards the new shards own the upper halves of their parents' slots in
//! the map, in `status` and on every host; every acknowledged write reads back; the recorded
//! history is linearizable; and counters incremented by compare-and-swap hold exactly the
//! number of increments applied, so no retried write was applied twice. A second test retries
//! a write whose acknowledgement was lost only after its shard split, with a hand-made
//! request, and sees it answered from the session the new shard inherited.
// Fault hooks exist only in builds with debug assertions (see transport/src/fault.rs).
#![cfg(debug_assertions)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shardkv_checker::{check, Op, Outcome, Recorder};
use shardkv_transport::wire::{FaultSpec, RequestFrame, Response};
use shardkv_transport::{HostId, ShardId};

/// Clients doing get/put/delete/cas on the checked keys and puts of keys that must read back.
const CLIENTS: usize = 4;
/// Checked keys per half of each split shard (and in the shard that does not split).
const KEYS_PER_HALF: usize = 2;
/// Lost acknowledgements per host per round of the fault injector.
const DROPS_PER_ROUND: u32 = 2;
/// How often the fault injector tops every host's budget of lost acknowledgements up.
const DROP_ROUND: Duration = Duration::from_millis(250);

type Slots = common::slots::SlotRanges;

fn run_cli(cluster: &common::Cluster, args: &[&str]) -> std::process::Output {
    let out = tokio::task::block_in_place(|| cluster.cli(args, &[]));
    if !out.status.success() {
        cluster.dump_logs();
    }
    assert!(
        out.status.success(),
        "shardkv {args:?}: {}",
        common::output_text(&out)
    );
    out
}

/// One client's history on the checked keys, plus the unique keys it got acknowledged.
async fn checked_writer(
    id: usize,
    client: shardkv::Client,
    keys: Vec<Vec<u8>>,
    recorder: Recorder,
    acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = keys[rng.gen_range(0..keys.len())].clone();
        let value = format!("c{id}-{n}").into_bytes();
        let (op, outcome) = match rng.gen_range(0..100) {
            0..=29 => {
                let t = recorder.invoke(id, key.clone(), Op::Get);
                let outcome = match client.get(&key).await {
                    Ok(v) => Outcome::Read(v),
                    Err(_) => Outcome::Unknown,
                };
                (t, outcome)
            }
            30..=59 => {
                let t = recorder.invoke(id, key.clone(), Op::Put(value.clone()));
                let outcome = match client.put(&key, &value).await {
                    Ok(()) => Outcome::Written,
                    Err(_) => Outcome::Unknown,
                };
                (t, outcome)
            }
            60..=69 => {
                let t = recorder.invoke(id, key.clone(), Op::Delete);
                let outcome = match client.delete(&key).await {
                    Ok(()) => Outcome::Written,
                    Err(_) => Outcome::Unknown,
                };
                (t, outcome)
            }
            70..=84 => {
                let expected: Option<Vec<u8>> = client.get(&key).await.unwrap_or_default();
                let t = recorder.invoke(
                    id,
                    key.clone(),
                    Op::Cas {
                        expected: expected.clone(),
                        new: Some(value.clone()),
                    },
                );
                let outcome = match client.cas(&key, expected.as_deref(), Some(&value)).await {
                    Ok(Ok(())) => Outcome::CasOk,
                    Ok(Err(current)) => Outcome::CasFailed(current),
                    Err(_) => Outcome::Unknown,
                };
                (t, outcome)
            }
            _ => {
                let unique = format!("u{id}-{n}").into_bytes();
                if client.put(&unique, &value).await.is_ok() {
                    acked.lock().expect("lock").insert(unique, value);
                }
                continue;
            }
        };
        recorder.complete(op, outcome);
    }
}

/// What a counter's single writer saw: increments acknowledged, and the refusals that would
/// mean an increment was applied twice (only this writer writes the counter).
#[derive(Debug, Default)]
struct CounterRun {
    acked: u64,
    unknown: u64,
    /// The value the counter had by this writer's own count after its last increment.
    last: u64,
    refused: Vec<String>,
}

/// Increments the counter `key` by compare-and-swap from the value it wrote last, until
/// `stop`; records every increment in `recorder` as client `id`.
async fn counter(
    id: usize,
    client: shardkv::Client,
    key: Vec<u8>,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) -> CounterRun {
    let mut run = CounterRun::default();
    while !stop.load(Ordering::SeqCst) {
        let expected = (run.last > 0).then(|| run.last.to_string().into_bytes());
        let new = (run.last + 1).to_string().into_bytes();
        let op = Op::Cas {
            expected: expected.clone(),
            new: Some(new.clone()),
        };
        let t = recorder.invoke(id, key.clone(), op);
        match client.cas(&key, expected.as_deref(), Some(&new)).await {
            Ok(Ok(())) => {
                recorder.complete(t, Outcome::CasOk);
                run.acked += 1;
                run.last += 1;
            }
            Ok(Err(current)) => {
                recorder.complete(t, Outcome::CasFailed(current.clone()));
                run.refused.push(format!(
                    "cas {:?} -> {} found {:?}",
                    expected.map(|v| String::from_utf8_lossy(&v).into_owned()),
                    run.last + 1,
                    current.as_deref().map(String::from_utf8_lossy)
                ));
                run.last = parse_counter(current.as_deref());
            }
            Err(_) => {
                // Unknown outcome: learn whether it was applied from the counter itself.
                drop(t);
                run.unknown += 1;
                if let Ok(current) = client.get(&key).await {
                    run.last = parse_counter(current.as_deref());
                }
            }
        }
    }
    run
}

fn parse_counter(value: Option<&[u8]>) -> u64 {
    value
        .map(|v| {
            String::from_utf8_lossy(v)
                .parse()
                .expect("a counter holds a number")
        })
        .unwrap_or(0)
}

/// Keeps every host's budget of lost write acknowledgements topped up until `stop`, then
/// switches the fault off everywhere.
async fn lose_acknowledgements(admin: shardkv::Client, hosts: Vec<HostId>, stop: Arc<AtomicBool>) {
    let drops = |n| FaultSpec {
        drop_replies: n,
        ..FaultSpec::default()
    };
    while !stop.load(Ordering::SeqCst) {
        for &h in &hosts {
            // A host restarting or busy misses a round; the next one catches it.
            let _ = admin.inject_fault(h, drops(DROPS_PER_ROUND)).await;
        }
        tokio::time::sleep(DROP_ROUND).await;
    }
    for &h in &hosts {
        admin
            .inject_fault(h, drops(0))
            .await
            .expect("switch the fault off");
    }
}

/// The `status --json` report's slots for `shard`, waiting up to 20 s for a healthy report.
fn status_slots(cluster: &common::Cluster, shards: &[ShardId]) -> BTreeMap<ShardId, Slots> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = tokio::task::block_in_place(|| cluster.cli(&["status", "--json"], &[]));
        if out.status.success() {
            let report: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
            let rows = report["shards"].as_array().expect("a list of shards");
            return shards
                .iter()
                .map(|&s| {
                    let row = rows
                        .iter()
                        .find(|r| r["shard"].as_u64() == Some(u64::from(s)))
                        .unwrap_or_else(|| panic!("status lists shard {s}: {report}"));
                    let slots = serde_json::from_value(row["slots"].clone()).expect("slot ranges");
                    (s, slots)
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "status stays unhealthy: {}",
            common::output_text(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_split_under_load_with_lost_acknowledgements_and_every_write_applies_once() {
    let seed = common::seed();
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let settings = cluster.settings("cli");
    let ready = shardkv::Client::new(settings.clone()).expect("client");
    cluster.wait_ready(&ready).await;
    let admin = cluster.admin();
    let before = admin.read_map().await.expect("map").map;
    let old_ids: Vec<ShardId> = before.shards().keys().copied().collect();
    let halves: BTreeMap<ShardId, (Slots, Slots)> = [1, 2]
        .into_iter()
        .map(|s| {
            let slots = &before.shard(s).expect("shard").slots;
            (s, common::slots::split_halves(slots))
        })
        .collect();

    // Checked keys in both halves of both shards that split, and in the one that does not.
    let mut keys = Vec::new();
    for (s, (lower, upper)) in &halves {
        keys.extend(common::slots::keys_in_slots(
            &format!("lo{s}"),
            lower,
            KEYS_PER_HALF,
        ));
        keys.extend(common::slots::keys_in_slots(
            &format!("hi{s}"),
            upper,
            KEYS_PER_HALF,
        ));
    }
    let third = before.shard(3).expect("shard 3").slots.clone();
    keys.extend(common::slots::keys_in_slots("s3", &third, KEYS_PER_HALF));

    let recorder = Recorder::new();
    let acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for id in 0..CLIENTS {
        let client = shardkv::Client::new(settings.clone()).expect("client");
        let rng = StdRng::seed_from_u64(seed.wrapping_add(id as u64));
        writers.push(tokio::spawn(checked_writer(
            id,
            client,
            keys.clone(),
            recorder.clone(),
            acked.clone(),
            stop.clone(),
            rng,
        )));
    }
    // One counter in each half that moves to a new shard: their increments cross the split.
    let mut counters = Vec::new();
    for (i, (s, (_, upper))) in halves.iter().enumerate() {
        let key = common::slots::keys_in_slots(&format!("counter{s}"), upper, 1).remove(0);
        let client = shardkv::Client::new(settings.clone()).expect("client");
        let task = counter(
            CLIENTS + i,
            client,
            key.clone(),
            recorder.clone(),
            stop.clone(),
        );
        counters.push((key, tokio::spawn(task)));
    }
    let faults_off = Arc::new(AtomicBool::new(false));
    let hosts: Vec<HostId> = cluster.cfg.hosts.iter().map(|h| h.host.id).collect();
    let injector = tokio::spawn(lose_acknowledgements(
        cluster.admin(),
        hosts.clone(),
        faults_off.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let first = common::slots::split_child(&run_cli(&cluster, &["shard", "split", "1"]));
    let second = common::slots::split_child(&run_cli(&cluster, &["shard", "split", "2"]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    faults_off.store(true, Ordering::SeqCst);
    injector.await.expect("fault injector");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    cluster.check_alive();

    // The new shards are new, and own their parents' upper halves: in the map ...
    assert_ne!(first, second);
    assert!(
        !old_ids.contains(&first) && !old_ids.contains(&second),
        "new ids {first}, {second}; shards before: {old_ids:?}"
    );
    let children = [(1, first), (2, second)];
    let map = admin.read_map().await.expect("map").map;
    assert!(map.splits().is_empty(), "no split left recorded");
    for (parent, child) in children {
        let (lower, upper) = &halves[&parent];
        assert_eq!(&map.shard(parent).expect("parent").slots, lower);
        assert_eq!(&map.shard(child).expect("child").slots, upper);
        assert_eq!(
            map.replicas_of(child),
            before.replicas_of(parent),
            "the new shard lives on its parent's hosts"
        );
    }
    // ... in `status` ...
    let shown = status_slots(&cluster, &[1, 2, first, second]);
    for (parent, child) in children {
        let (lower, upper) = &halves[&parent];
        assert_eq!(&shown[&parent], lower, "status: {shown:?}");
        assert_eq!(&shown[&child], upper, "status: {shown:?}");
    }
    // ... and in the state machine of every replica.
    for (parent, child) in children {
        let (lower, upper) = &halves[&parent];
        let within = Duration::from_secs(20);
        common::slots::wait_replica_slots(&admin, &hosts, parent, lower, within).await;
        common::slots::wait_replica_slots(&admin, &hosts, child, upper, within).await;
    }

    let reader = shardkv::Client::new(settings).expect("client");
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 20,
        "the clients made progress: {}",
        acked.len()
    );
    common::assert_reads_back(&reader, &acked, Duration::from_secs(30)).await;

    for (key, task) in counters {
        let run = task.await.expect("counter");
        let value = parse_counter(reader.get(&key).await.expect("read counter").as_deref());
        eprintln!(
            "counter {}: {run:?}, reads {value}",
            String::from_utf8_lossy(&key)
        );
        assert!(
            run.refused.is_empty(),
            "an increment was refused, so one before it was applied twice: {:?}",
            run.refused
        );
        assert_eq!(value, run.last, "the counter holds every applied increment");
        assert!(
            value >= run.acked && value <= run.acked + run.unknown,
            "applied once each: {value} with {} acknowledged and {} unknown",
            run.acked,
            run.unknown
        );
        assert!(run.acked > 5, "the counter made progress: {run:?}");
    }
    let lost = hosts
        .iter()
        .filter(|h| {
            std::fs::read_to_string(cluster.log_path(**h))
                .is_ok_and(|l| l.contains("fault injection active"))
        })
        .count();
    assert_eq!(lost, hosts.len(), "every host lost acknowledgements");

    let history = recorder.history();
    if let Err(e) = check(&history) {
        panic!("seed {seed}: the history is not linearizable across the splits: {e}");
    }
}

/// A session's write of `key` (create-if-absent with `value`), as a client sends it.
fn create_if_absent(client_id: u64, seq: u64, key: &[u8], value: &[u8]) -> RequestFrame {
    RequestFrame::Data(shardkv_transport::wire::Request {
        client_id,
        seq,
        op: shardkv_transport::wire::Op::Cas {
            key: key.to_vec(),
            expected: None,
            new: Some(value.to_vec()),
        },
    })
}

/// Sends `req` to `host` and on to the leaders it names, until a host answers it with
/// something other than "not the leader" or "unavailable" (up to 20 s).
async fn call_leader(cluster: &common::Cluster, mut host: HostId, req: &RequestFrame) -> Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    let index = |h: HostId| {
        cluster
            .cfg
            .hosts
            .iter()
            .position(|e| e.host.id == h)
            .expect("host in config")
    };
    loop {
        let answer = match cluster.try_raw_connection("cli", index(host)).await {
            Ok(conn) => shardkv_transport::endpoint::call(&conn, req)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(Response::NotLeader {
                leader: Some(l), ..
            }) => host = l,
            Ok(Response::NotLeader { .. } | Response::Unavailable(_)) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(answer) => return answer,
        }
        assert!(Instant::now() < deadline, "no leader answered {req:?}");
    }
}

/// The host leading `shard` now, by its own status.
async fn leader_of(cluster: &common::Cluster, shard: ShardId) -> HostId {
    let admin = cluster.admin();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for h in cluster.cfg.hosts.iter().map(|h| h.host.id) {
            if let Ok(s) = admin.host_status(h).await {
                if s.replicas.iter().any(|r| r.shard == shard && r.is_leader) {
                    return h;
                }
            }
        }
        assert!(Instant::now() < deadline, "shard {shard} elects no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_only_after_its_shard_split_is_answered_from_the_inherited_session() {
    let mut cluster = common::Cluster::new(3, 1, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    let admin = cluster.admin();
    let slots = admin
        .read_map()
        .await
        .expect("map")
        .map
        .shard(1)
        .expect("shard")
        .slots
        .clone();
    let (lower, upper) = common::slots::split_halves(&slots);
    // One session's write lands in the half that moves, another's in the half that stays.
    let moving = common::slots::keys_in_slots("moving", &upper, 1).remove(0);
    let staying = common::slots::keys_in_slots("staying", &lower, 1).remove(0);
    let writes = [
        (0x5e55_0001, moving.clone()),
        (0x5e55_0002, staying.clone()),
    ];

    let leader = leader_of(&cluster, 1).await;
    let index = cluster
        .cfg
        .hosts
        .iter()
        .position(|h| h.host.id == leader)
        .expect("leader in config");
    let spec = FaultSpec {
        drop_replies: 2,
        ..FaultSpec::default()
    };
    admin.inject_fault(leader, spec).await.expect("fault hook");
    let conn = cluster.raw_connection("cli", index).await;
    for (session, key) in &writes {
        let lost =
            shardkv_transport::endpoint::call(&conn, &create_if_absent(*session, 1, key, b"first"))
                .await;
        assert!(lost.is_err(), "the acknowledgement is lost: {lost:?}");
        assert_eq!(
            client.get(key).await.expect("read"),
            Some(b"first".to_vec()),
            "the write whose acknowledgement was lost was applied"
        );
    }

    let child = common::slots::split_child(&run_cli(&cluster, &["shard", "split", "1"]));
    let hosts: Vec<HostId> = cluster.cfg.hosts.iter().map(|h| h.host.id).collect();
    let within = Duration::from_secs(20);
    common::slots::wait_replica_slots(&admin, &hosts, child, &upper, within).await;
    common::slots::wait_replica_slots(&admin, &hosts, 1, &lower, within).await;

    // Applied again, create-if-absent would fail and report "first": answered from the
    // session (copied into the new shard for the moving key), it succeeds.
    for (session, key) in &writes {
        let retried = call_leader(
            &cluster,
            leader,
            &create_if_absent(*session, 1, key, b"first"),
        )
        .await;
        assert_eq!(
            retried,
            Response::CasOk,
            "the retry of {} after the split is answered from its session",
            String::from_utf8_lossy(key)
        );
        // The session goes on in the shard that owns the key now.
        let next = RequestFrame::Data(shardkv_transport::wire::Request {
            client_id: *session,
            seq: 2,
            op: shardkv_transport::wire::Op::Cas {
                key: key.clone(),
                expected: Some(b"first".to_vec()),
                new: Some(b"second".to_vec()),
            },
        });
        assert_eq!(call_leader(&cluster, leader, &next).await, Response::CasOk);
        assert_eq!(
            client.get(key).await.expect("read"),
            Some(b"second".to_vec())
        );
    }
    let status = admin.host_status(leader).await.expect("status");
    assert!(
        status.replicas.iter().any(|r| r.shard == child),
        "host {leader} holds the new shard {child}"
    );
}
