//! Every host crashed at the same step of its write path (a fault hook aborts the process
//! there, which leaves the disk as kill -9 would) loses no acknowledged write: on restart each
//! replays its write-ahead log past LMDB's checkpoint, and every acknowledged write reads back.
//!
//! The steps: right after a log group is synced (before anyone hears it is durable), and
//! right after an LMDB commit (before its segments are released). All three hosts crash, so
//! no replica can repair another: what is acknowledged must come back from the disks alone.
//! A third step is a replica's snapshot load, synced and not yet heard of.
//!
//! For the log-sync crash, LMDB is held first (a fault hook) on every host while writes go
//! on, so the writes acknowledged since are in the logs only (until the applied batches
//! waiting for LMDB reach their bound and the shards stop applying): without the replay
//! they are gone. Unheld, LMDB trails the log by at most its group delay, and hosts that crash a
//! second apart have each caught up on what the others lost.
// Fault hooks exist only in builds with debug assertions (see transport/src/fault.rs).
#![cfg(debug_assertions)]

mod common;

use std::time::{Duration, Instant};

use shardkv_actors::schema::{kv_key, Schema};
use shardkv_transport::wire::{CrashPoint, FaultSpec};
use shardkv_transport::HostId;

/// Sets `spec` on every host at once: a host armed first may crash on its own background
/// writes before a later one is armed, and take the quorum the others' requests need with
/// it. Answers each host's outcome: an armed crash may come before the answer.
async fn arm_all(
    admin: &shardkv::client::Client,
    spec: FaultSpec,
) -> Vec<(HostId, Result<(), shardkv::client::ClientError>)> {
    let arms = (1..=3).map(|host| {
        let (admin, spec) = (admin.clone(), spec.clone());
        async move { (host, admin.inject_fault(host, spec).await) }
    });
    futures::future::join_all(arms).await
}

/// Reaps the hosts that exit until `crashed` holds `until` of them or `deadline` passes; each
/// must have aborted at `point` (its log says so), not exited for any other reason.
async fn reap_crashes(
    cluster: &mut common::Cluster,
    point: CrashPoint,
    crashed: &mut Vec<HostId>,
    until: usize,
    deadline: Instant,
) {
    while crashed.len() < until && Instant::now() < deadline {
        if let Some((host, status)) = cluster.reap_exited() {
            assert!(!status.success(), "host {host} exited cleanly: {status}");
            let log = std::fs::read_to_string(cluster.log_path(host)).unwrap_or_default();
            assert!(
                log.contains(&format!("crashing at {point:?}")),
                "host {host} exited ({status}) without reaching {point:?}"
            );
            crashed.push(host);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn every_host_crashed_at(point: CrashPoint, hold_lmdb: bool) {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let admin = cluster.admin();
    cluster.wait_ready(&admin).await;
    let client = cluster.client();
    // Writers run before, during and after the arming; only the writes acknowledged before
    // the crashes count.
    let mut writers = Vec::new();
    for w in 0..4 {
        let c = client.clone();
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..5000 {
                let key = format!("w{w}-{i}");
                if c.put(key.as_bytes(), b"v").await.is_err() {
                    break;
                }
                mine.push((key, Instant::now()));
            }
            mine
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut held_since = None;
    if hold_lmdb {
        let hold = FaultSpec {
            hold_lmdb: true,
            ..FaultSpec::default()
        };
        for (host, res) in arm_all(&admin, hold).await {
            res.unwrap_or_else(|e| panic!("holding LMDB on host {host}: {e:?}"));
        }
        held_since = Some(Instant::now());
        tokio::time::sleep(Duration::from_millis(1000)).await;
        cluster.check_alive();
    }
    let crash = FaultSpec {
        hold_lmdb,
        crash_at: Some(point),
        ..FaultSpec::default()
    };
    for (host, res) in arm_all(&admin, crash).await {
        if let Err(e) = res {
            eprintln!("arming host {host} went unanswered ({e:?}); it may have crashed already");
        }
    }
    // A majority crashed at the point means nothing more can be committed. The last host may
    // then have nothing left to write (no leader sends it entries, and a pre-vote persists
    // nothing), so it may never reach the point: it is killed -9 instead, which leaves its
    // disk the same way, and no replica is left to repair another.
    let mut crashed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    reap_crashes(&mut cluster, point, &mut crashed, 2, deadline).await;
    assert!(
        crashed.len() >= 2,
        "no majority of hosts reached {point:?} within 30 s"
    );
    let grace = Instant::now() + Duration::from_secs(3);
    reap_crashes(&mut cluster, point, &mut crashed, 3, grace).await;
    if crashed.len() < 3 {
        eprintln!("the last host had nothing to write after the others crashed: kill -9");
        cluster.kill9_all();
    }
    drop(client);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer task"));
    }

    if let Some(since) = held_since {
        // Acknowledged after every host answered that LMDB is held: in the logs only.
        let in_log_only = acked.iter().filter(|(_, at)| *at > since).count();
        eprintln!("{in_log_only} writes were acknowledged while LMDB was held");
        assert!(
            in_log_only >= 10,
            "only {in_log_only} writes were acknowledged while LMDB was held: too few to test the replay"
        );
    }

    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    for (key, _) in &acked {
        let got = client
            .get(key.as_bytes())
            .await
            .expect("read after restart");
        assert_eq!(
            got.as_deref(),
            Some(&b"v"[..]),
            "acknowledged {key} lost at {point:?}"
        );
    }
    eprintln!(
        "{} acknowledged writes survived a crash at {point:?}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_log_sync_loses_no_acknowledged_write() {
    every_host_crashed_at(CrashPoint::LogSynced, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_an_lmdb_commit_loses_no_acknowledged_write() {
    every_host_crashed_at(CrashPoint::LmdbCommitted, false).await;
}

/// Raft's compaction point in the snapshot test: small, so that the writes below compact the
/// log far past what the cut-off host has.
const SNAPSHOT_AFTER: u64 = 100;

/// A replica that catches up by snapshot and crashes right after the load is committed and
/// synced (before it has heard) comes back with the snapshot's rows, its log and Raft state
/// consistent with them (a recovery that replayed older log records over the load would
/// regress them), then catches up and serves as part of a quorum. The abort keeps the page
/// cache, so this checks the order of the steps, not the sync itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_snapshot_load_keeps_the_snapshot() {
    let raft = format!("snapshot_after = {SNAPSHOT_AFTER}\n");
    let mut cluster = common::Cluster::with_raft(3, 1, 3, &raft);
    cluster.start_all();
    let admin = cluster.admin();
    cluster.wait_ready(&admin).await;
    let client = cluster.client();

    // Host 3 is cut off while the others take writes far past the compaction point; the
    // same call that heals the cut arms the crash, so no install can come first.
    let cut = FaultSpec {
        partition_from: vec![1, 2],
        ..FaultSpec::default()
    };
    admin.inject_fault(3, cut).await.expect("cut host 3 off");
    let writes: u64 = 600;
    for i in 0..writes {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        client.put(k.as_bytes(), v.as_bytes()).await.expect("put");
    }
    let crash = FaultSpec {
        crash_at: Some(CrashPoint::SnapshotLoaded),
        ..FaultSpec::default()
    };
    admin
        .inject_fault(3, crash)
        .await
        .expect("heal host 3 and arm the crash");
    let mut crashed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    reap_crashes(
        &mut cluster,
        CrashPoint::SnapshotLoaded,
        &mut crashed,
        1,
        deadline,
    )
    .await;
    assert_eq!(
        crashed,
        [3],
        "host 3 crashed at the snapshot load within 60 s"
    );

    // What a restart finds, read from a copy (opening the store recovers it): the snapshot's
    // rows. The writes were sequential and the snapshot is a prefix of the log, so its rows
    // are the first ones, each with its value, and at most two compaction intervals short.
    {
        let copy = tempfile::tempdir().expect("temp dir");
        let dir = copy.path().join("host-3");
        let cp = std::process::Command::new("cp")
            .arg("-a")
            .arg(cluster.dir.path().join("data/host-3"))
            .arg(&dir)
            .status()
            .expect("cp");
        assert!(cp.success(), "copy host 3's data dir");
        let schema = Schema::open(&dir, 1 << 30, "test", 3).expect("open host 3's store");
        let rtxn = schema.env.read_txn().expect("read txn");
        let present: Vec<bool> = (0..writes)
            .map(|i| {
                let key = kv_key(1, format!("k{i}").as_bytes());
                let got = schema.kv.get(&rtxn, &key).expect("get");
                if let Some(v) = got {
                    assert_eq!(v, format!("v{i}").as_bytes(), "host 3 row k{i}");
                }
                got.is_some()
            })
            .collect();
        let rows = present.iter().filter(|p| **p).count() as u64;
        assert!(
            present.iter().skip(rows as usize).all(|p| !p),
            "host 3's rows after the crash are not a prefix of the writes"
        );
        assert!(
            rows + 2 * SNAPSHOT_AFTER >= writes,
            "host 3 holds {rows} of the {writes} rows after the crash: the load was lost"
        );
        eprintln!("host 3 held {rows} rows from the snapshot after its crash");
    }

    // It rejoins, catches up, and with host 1 gone is half of every quorum.
    cluster.start(3);
    cluster
        .wait_caught_up_within(&client, 3, Duration::from_secs(60))
        .await;
    cluster.kill9(1);
    for i in 0..writes {
        let k = format!("k{i}");
        let got = client
            .get(k.as_bytes())
            .await
            .expect("linearizable read with host 3 in the quorum");
        assert_eq!(got, Some(format!("v{i}").into_bytes()), "key {k}");
    }
}
