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
//! on, so the writes acknowledged since are in the logs only: without the replay they are
//! gone. Unheld, LMDB trails the log by at most its group delay, and hosts that crash a
//! second apart have each caught up on what the others lost.

mod common;

use std::time::{Duration, Instant};

use shardkv_actors::schema::{kv_key, Schema};
use shardkv_transport::wire::{CrashPoint, FaultSpec};

/// Sets `spec` on every host at once: a host armed first may crash on its own background
/// writes before a later one is armed, and take the quorum the others' requests need with
/// it. A host whose arm went unanswered must still crash: the caller's wait says so if it
/// never does.
async fn arm_all(admin: &shardkv::client::Client, spec: FaultSpec) {
    let arms = (1..=3).map(|host| {
        let (admin, spec) = (admin.clone(), spec.clone());
        async move { (host, admin.inject_fault(host, spec).await) }
    });
    for (host, res) in futures::future::join_all(arms).await {
        if let Err(e) = res {
            eprintln!("arming host {host} went unanswered ({e:?}); it may have crashed already");
        }
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
        arm_all(&admin, hold).await;
        held_since = Some(Instant::now());
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let crash = FaultSpec {
        hold_lmdb,
        crash_at: Some(point),
        ..FaultSpec::default()
    };
    arm_all(&admin, crash).await;
    // A majority crashed at the point means nothing more can be committed. The last host may
    // then have nothing left to write (no leader sends it entries, and a pre-vote persists
    // nothing), so it may never reach the point: it is killed -9 instead, which leaves its
    // disk the same way, and no replica is left to repair another.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut crashed = 0;
    while crashed < 2 {
        if let Some((host, status)) = cluster.reap_exited() {
            assert!(!status.success(), "host {host} exited cleanly: {status}");
            crashed += 1;
        }
        assert!(
            Instant::now() < deadline,
            "no majority of hosts reached {point:?} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grace = Instant::now() + Duration::from_secs(3);
    while crashed < 3 && Instant::now() < grace {
        if let Some((host, status)) = cluster.reap_exited() {
            assert!(!status.success(), "host {host} exited cleanly: {status}");
            crashed += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if crashed < 3 {
        eprintln!("the last host had nothing to write after the others crashed: kill -9");
        cluster.kill9_all();
    }
    drop(client);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer task"));
    }

    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    if let Some(since) = held_since {
        let in_log_only = acked.iter().filter(|(_, at)| *at > since).count();
        eprintln!("{in_log_only} writes were acknowledged while LMDB was held");
        assert!(
            in_log_only >= 10,
            "only {in_log_only} writes were acknowledged while LMDB was held: too few to test the replay"
        );
    }
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

/// A replica that catches up by snapshot and crashes right after the load is synced (before
/// it has heard) comes back with the snapshot's rows on its disk, then catches up and serves
/// as part of a quorum. Without a durable load it would come back empty: it was cut off
/// before any of the writes.
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
    let writes = 600;
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
    let status = cluster.wait_exit(3, Duration::from_secs(60));
    assert!(!status.success(), "host 3 exited cleanly: {status}");
    let log3 = std::fs::read_to_string(cluster.log_path(3)).expect("host 3's log");
    assert!(
        log3.contains("crashing at SnapshotLoaded"),
        "host 3 crashed at the snapshot load"
    );

    // What a restart would find: the snapshot's rows, each with the value written.
    {
        let dir = cluster.dir.path().join("data/host-3");
        let schema = Schema::open(&dir, 1 << 30, "test", 3).expect("open host 3's store");
        let rtxn = schema.env.read_txn().expect("read txn");
        let mut rows = 0;
        for i in 0..writes {
            let key = kv_key(1, format!("k{i}").as_bytes());
            if let Some(v) = schema.kv.get(&rtxn, &key).expect("get") {
                assert_eq!(v, format!("v{i}").as_bytes(), "host 3 row k{i}");
                rows += 1;
            }
        }
        assert!(
            rows >= SNAPSHOT_AFTER,
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
