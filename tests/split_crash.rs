//! kill -9 around a shard split, as issue 12 asks: every host killed right after a split
//! comes back with the new shard and the data of both halves; the parent's leader (and the
//! driver) killed while the split entry is in flight leaves the split applied on every
//! replica or on none, and a re-run of `shardkv shard split` finishes it everywhere; a driver
//! stopped after recording the split (then re-run) or after the shard applied it (then every
//! host killed, and the split left to the balancer) ends with the same split on every host.
//! A writer runs throughout and every write it got acknowledged reads back.
// The driver's stop hook exists only in builds with debug assertions.
#![cfg(debug_assertions)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardkv_transport::{HostId, ShardId};

type Slots = common::slots::SlotRanges;
type Acked = Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>;

/// How long replicas may take to agree after a restart (elections, catch-up).
const SETTLE: Duration = Duration::from_secs(30);

/// Puts unique keys until `stop`, remembering those acknowledged. Short deadlines keep it
/// writing through kills (an unacknowledged write is simply not remembered).
fn writer(
    cluster: &common::Cluster,
    stop: Arc<AtomicBool>,
) -> (Acked, tokio::task::JoinHandle<()>) {
    let mut settings = cluster.settings("cli");
    settings.deadline = Duration::from_secs(3);
    settings.attempt_timeout = Duration::from_secs(1);
    let client = shardkv::Client::new(settings).expect("client");
    let acked: Acked = Arc::default();
    let task = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let (key, value) = (format!("w{i}").into_bytes(), format!("v{i}").into_bytes());
                if client.put(&key, &value).await.is_ok() {
                    acked.lock().expect("lock").insert(key, value);
                }
                i += 1;
            }
        })
    };
    (acked, task)
}

/// Stops the writer and checks that every write it got acknowledged reads back, and that
/// some landed in each of `halves`.
async fn check_writes(
    cluster: &common::Cluster,
    stop: &AtomicBool,
    acked: &Acked,
    task: tokio::task::JoinHandle<()>,
    halves: &[&Slots],
) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    task.await.expect("writer");
    let acked = acked.lock().expect("lock").clone();
    for half in halves {
        let inside = acked
            .keys()
            .filter(|k| {
                let s = shardkv_transport::slot::slot(k);
                half.iter().any(|&(a, b)| a <= s && s <= b)
            })
            .count();
        assert!(inside > 5, "{inside} acknowledged writes in slots {half:?}");
    }
    common::assert_reads_back(&cluster.client(), &acked, SETTLE).await;
}

fn hosts(cluster: &common::Cluster) -> Vec<HostId> {
    cluster.cfg.hosts.iter().map(|h| h.host.id).collect()
}

fn split(
    cluster: &common::Cluster,
    shard: ShardId,
    stop_after: Option<&str>,
) -> std::process::Output {
    let shard = shard.to_string();
    let env: Vec<(&str, &str)> = stop_after
        .map(|s| ("SHARDKV_TEST_SPLIT_STOP_AFTER", s))
        .into_iter()
        .collect();
    tokio::task::block_in_place(|| cluster.cli(&["shard", "split", &shard], &env))
}

fn split_ok(cluster: &common::Cluster, shard: ShardId) -> ShardId {
    let out = split(cluster, shard, None);
    if !out.status.success() {
        cluster.dump_logs();
    }
    assert!(
        out.status.success(),
        "shard split {shard}: {}",
        common::output_text(&out)
    );
    common::slots::split_child(&out)
}

/// The host leading `shard` now (highest term reported).
async fn leader_of(cluster: &common::Cluster, shard: ShardId) -> HostId {
    let admin = cluster.admin();
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut best: Option<(u64, HostId)> = None;
        for h in hosts(cluster) {
            if let Ok(s) = admin.host_status(h).await {
                for r in s
                    .replicas
                    .iter()
                    .filter(|r| r.shard == shard && r.is_leader)
                {
                    if best.is_none_or(|(t, _)| r.term > t) {
                        best = Some((r.term, h));
                    }
                }
            }
        }
        if let Some((_, h)) = best {
            return h;
        }
        assert!(Instant::now() < deadline, "shard {shard} elects no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that the split of `parent` into `child` is in effect everywhere: the map lists the
/// halves and no split under way, and every host's replicas of both own them.
async fn assert_split_everywhere(
    cluster: &common::Cluster,
    parent: ShardId,
    child: ShardId,
    (lower, upper): (&Slots, &Slots),
) {
    let admin = cluster.admin();
    let map = admin.read_map().await.expect("map").map;
    assert_eq!(
        &map.shard(parent).expect("parent").slots,
        lower,
        "the map's parent"
    );
    assert_eq!(
        &map.shard(child).expect("child").slots,
        upper,
        "the map's new shard"
    );
    assert!(
        map.split_of(parent).is_none(),
        "the split record is cleared"
    );
    let all = hosts(cluster);
    common::slots::wait_replica_slots(&admin, &all, parent, lower, SETTLE).await;
    common::slots::wait_replica_slots(&admin, &all, child, upper, SETTLE).await;
}

fn halves_of(map: &shardkv_transport::ClusterMap, shard: ShardId) -> (Slots, Slots) {
    common::slots::split_halves(&map.shard(shard).expect("shard").slots)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_every_host_right_after_a_split_keeps_the_new_shard_and_both_halves() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    cluster.wait_ready(&cluster.client()).await;
    let map = cluster.admin().read_map().await.expect("map").map;
    let (lower, upper) = halves_of(&map, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, task) = writer(&cluster, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let child = split_ok(&cluster, 1);
    cluster.kill9_all();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_all();

    assert_split_everywhere(&cluster, 1, child, (&lower, &upper)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    check_writes(&cluster, &stop, &acked, task, &[&lower, &upper]).await;
    cluster.check_alive();
}

/// What each host's replicas say of `parent`'s split into `child`: the parent's slots, and
/// the child's (`None`: no replica of it).
async fn split_state(
    cluster: &common::Cluster,
    parent: ShardId,
    child: ShardId,
) -> Vec<(HostId, Option<Slots>, Option<Slots>)> {
    let admin = cluster.admin();
    let mut seen = Vec::new();
    for h in hosts(cluster) {
        let p = common::slots::replica_slots(&admin, h, parent).await;
        let c = common::slots::replica_slots(&admin, h, child).await;
        seen.push((h, p, c));
    }
    seen
}

/// How much longer every disk commit of the parent's followers takes while the split entry
/// is to stay in flight: the leader cannot commit it before it is killed.
const SLOW_FOLLOWER_COMMIT_MS: u64 = 3000;

/// Starts `shardkv shard split SHARD` in the background.
fn spawn_split(cluster: &common::Cluster, shard: ShardId) -> std::process::Child {
    std::process::Command::new(common::BIN)
        .arg("--config")
        .arg(&cluster.cfg_path)
        .args(["shard", "split", &shard.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start shard split")
}

/// Waits until the map records a split of `parent` (or already lists the new shard: the whole
/// split may fit between two looks); answers the new shard and whether the map lists it.
async fn recorded_split(
    cluster: &common::Cluster,
    before: &shardkv_transport::ClusterMap,
    parent: ShardId,
) -> (ShardId, bool) {
    let admin = cluster.admin();
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Ok(m) = admin.read_map().await {
            if let Some(s) = m.map.split_of(parent) {
                return (s.child, false);
            }
            let shards = m.map.shards();
            if let Some(new) = shards.keys().find(|s| !before.shards().contains_key(s)) {
                return (*new, true);
            }
        }
        assert!(Instant::now() < deadline, "the split is never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the three replicas of `parent` agree about its split into `child` and
/// answers whether they all applied it; fails if they go on disagreeing (applied on some
/// and not on others).
async fn all_or_nothing(
    cluster: &common::Cluster,
    parent: ShardId,
    child: ShardId,
    whole: &Slots,
    (lower, upper): (&Slots, &Slots),
) -> bool {
    let deadline = Instant::now() + SETTLE;
    loop {
        let seen = split_state(cluster, parent, child).await;
        let everywhere = |(_, p, c): &(HostId, Option<Slots>, Option<Slots>)| {
            p.as_ref() == Some(lower) && c.as_ref() == Some(upper)
        };
        let nowhere = |(_, p, c): &(HostId, Option<Slots>, Option<Slots>)| {
            p.as_ref() == Some(whole) && c.is_none()
        };
        if seen.iter().all(everywhere) {
            return true;
        }
        if seen.iter().all(nowhere) {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas of shard {parent} disagree about its split into {child}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// kill -9 of `parent`'s leader and of the driver while the split entry is in flight, then
/// the checks: all or nothing once the replicas agree, and a re-run finishes it everywhere.
/// With `slow_followers` the followers' disks are slowed first (the split already recorded),
/// so the entry is surely appended on the leader and not yet committed when it dies; without,
/// the kill comes the moment the map records the split.
async fn kill_mid_split(cluster: &mut common::Cluster, parent: ShardId, slow_followers: bool) {
    let admin = cluster.admin();
    let before = admin.read_map().await.expect("map").map;
    let whole = before.shard(parent).expect("shard").slots.clone();
    let (lower, upper) = halves_of(&before, parent);
    let leader = leader_of(cluster, parent).await;
    let followers: Vec<HostId> = hosts(cluster)
        .into_iter()
        .filter(|h| *h != leader)
        .collect();
    let slow = |ms| shardkv_transport::wire::FaultSpec {
        commit_delay_ms: ms,
        ..Default::default()
    };

    let (child, finished) = if slow_followers {
        let stopped = split(cluster, parent, Some("recorded"));
        assert_eq!(
            stopped.status.code(),
            Some(3),
            "{}",
            common::output_text(&stopped)
        );
        // Read before the disks are slowed: the slow followers are the meta group's hosts
        // too, and with two of its three disks taking 3 s a commit it may have no leader
        // (a vote waits 3 s for its fsync; the candidate has moved on to the next term).
        let recorded = recorded_split(cluster, &before, parent).await;
        for &h in &followers {
            let delay = slow(SLOW_FOLLOWER_COMMIT_MS);
            admin.inject_fault(h, delay).await.expect("slow disk");
        }
        let mut driver = spawn_split(cluster, parent);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let on_leader = admin.host_status(leader).await.expect("leader status");
        let r = on_leader
            .replicas
            .iter()
            .find(|r| r.shard == parent)
            .expect("replica");
        eprintln!(
            "shard {parent} on its leader, host {leader}, before the kill: last index {}, \
             commit {}, slots {:?}",
            r.last_index, r.commit, r.slots
        );
        driver.kill().expect("kill -9 the driver");
        driver.wait().expect("reap the driver");
        recorded
    } else {
        let mut driver = spawn_split(cluster, parent);
        let recorded = recorded_split(cluster, &before, parent).await;
        driver.kill().expect("kill -9 the driver");
        driver.wait().expect("reap the driver");
        recorded
    };
    cluster.kill9(leader);
    for &h in &followers {
        admin
            .inject_fault(h, slow(0))
            .await
            .expect("disk back to speed");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.start(leader);

    let applied = all_or_nothing(cluster, parent, child, &whole, (&lower, &upper)).await;
    eprintln!(
        "shard {parent}: after kill -9 of host {leader} and the driver (slow followers: \
         {slow_followers}), split applied everywhere: {applied}, nowhere: {}, map lists it: \
         {finished}",
        !applied
    );
    // A re-run continues the recorded split (one already finished would be split again).
    if !finished {
        let rerun = split_ok(cluster, parent);
        assert_eq!(rerun, child, "the re-run finishes the recorded split");
    }
    assert_split_everywhere(cluster, parent, child, (&lower, &upper)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_and_the_driver_mid_split_leaves_it_all_or_nothing_and_a_rerun_finishes_it(
) {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    cluster.wait_ready(&cluster.client()).await;
    let map = cluster.admin().read_map().await.expect("map").map;
    let halves1 = halves_of(&map, 1);
    let halves2 = halves_of(&map, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, task) = writer(&cluster, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    kill_mid_split(&mut cluster, 1, false).await;
    kill_mid_split(&mut cluster, 2, true).await;

    let halves = [&halves1.0, &halves1.1, &halves2.0, &halves2.1];
    check_writes(&cluster, &stop, &acked, task, &halves).await;
    cluster.check_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_stopped_after_recording_or_applying_is_finished_by_a_rerun_or_the_balancer() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    cluster.wait_ready(&cluster.client()).await;
    let admin = cluster.admin();
    let map = admin.read_map().await.expect("map").map;
    let (lower1, upper1) = halves_of(&map, 1);
    let (lower2, upper2) = halves_of(&map, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, task) = writer(&cluster, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Stopped once recorded, the shard's leader killed: the re-run finishes it.
    let stopped = split(&cluster, 1, Some("recorded"));
    assert!(
        stopped.status.code() == Some(3) && common::output_text(&stopped).contains("test hook"),
        "the split stops after recording: {}",
        common::output_text(&stopped)
    );
    let recorded = admin.read_map().await.expect("map").map;
    let child1 = recorded.split_of(1).expect("the split is recorded").child;
    assert!(
        recorded.shard(child1).is_none(),
        "not yet a shard of the map"
    );
    let leader = leader_of(&cluster, 1).await;
    cluster.kill9(leader);
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.start(leader);
    assert_eq!(
        split_ok(&cluster, 1),
        child1,
        "the re-run continues the split"
    );
    assert_split_everywhere(&cluster, 1, child1, (&lower1, &upper1)).await;

    // Stopped once applied: every replica has split, the map does not list the new shard
    // yet; every host is killed, and after the restart the meta leader's balancer finishes it.
    let stopped = split(&cluster, 2, Some("applied"));
    assert!(
        stopped.status.code() == Some(3) && common::output_text(&stopped).contains("test hook"),
        "the split stops after the shard applied it: {}",
        common::output_text(&stopped)
    );
    let child2 = admin
        .read_map()
        .await
        .expect("map")
        .map
        .split_of(2)
        .expect("the split is still recorded")
        .child;
    assert_ne!(child2, child1);
    // Every host dies before the map lists the new shard: each must bring its replica of it
    // back from its own disk.
    cluster.kill9_all();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_all();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let map = admin.read_map().await.expect("map").map;
        if map.split_of(2).is_none() && map.shard(child2).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the balancer finishes the split of shard 2: splits {:?}",
            map.splits()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_split_everywhere(&cluster, 2, child2, (&lower2, &upper2)).await;

    check_writes(
        &cluster,
        &stop,
        &acked,
        task,
        &[&lower1, &upper1, &lower2, &upper2],
    )
    .await;
    cluster.check_alive();
}
