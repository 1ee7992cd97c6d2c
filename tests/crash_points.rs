//! Every host crashed at the same step of its write path (a fault hook aborts the process
//! there, which leaves the disk as kill -9 would) loses no acknowledged write: on restart each
//! replays its write-ahead log past LMDB's checkpoint, and every acknowledged write reads back.
//!
//! The steps: right after a log group is synced (before anyone hears it is durable), and
//! right after an LMDB commit (before its segments are released). All three hosts crash, so
//! no replica can repair another: what is acknowledged must come back from the disks alone.

mod common;

use std::time::{Duration, Instant};

use shardkv_transport::wire::{CrashPoint, FaultSpec};

async fn every_host_crashed_at(point: CrashPoint) {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let admin = cluster.admin();
    cluster.wait_ready(&admin).await;
    let client = cluster.client();
    let mut acked = Vec::new();
    for i in 0..60 {
        let key = format!("before-{i}");
        client
            .put(key.as_bytes(), b"v")
            .await
            .expect("put before the crash");
        acked.push(key);
    }
    let arm = FaultSpec {
        crash_at: Some(point),
        ..FaultSpec::default()
    };
    // All at once: a host armed first may crash on its own background writes before a later
    // one is armed, and take the quorum the others' requests need with it. A host whose arm
    // went unanswered must still crash: the wait below says so if it never does.
    let arms = (1..=3).map(|host| {
        let (admin, arm) = (admin.clone(), arm.clone());
        async move { (host, admin.inject_fault(host, arm).await) }
    });
    for (host, res) in futures::future::join_all(arms).await {
        if let Err(e) = res {
            eprintln!("arming host {host} went unanswered ({e:?}); it may have crashed already");
        }
    }
    // Writers race the crashes: only the writes acknowledged before them count.
    let mut writers = Vec::new();
    for w in 0..4 {
        let c = client.clone();
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..2000 {
                let key = format!("during-{w}-{i}");
                if c.put(key.as_bytes(), b"v").await.is_err() {
                    break;
                }
                mine.push(key);
            }
            mine
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut down = 0;
    while down < 3 {
        if let Some((host, status)) = cluster.reap_exited() {
            assert!(!status.success(), "host {host} exited cleanly: {status}");
            down += 1;
        }
        assert!(
            Instant::now() < deadline,
            "not every host reached {point:?} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(client);
    for w in writers {
        acked.extend(w.await.expect("writer task"));
    }

    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    for key in &acked {
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
    every_host_crashed_at(CrashPoint::LogSynced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_an_lmdb_commit_loses_no_acknowledged_write() {
    every_host_crashed_at(CrashPoint::LmdbCommitted).await;
}
