//! Log compaction and snapshots: a host that was away while the log was compacted past what
//! it has catches up by a streamed snapshot, holds every row on disk afterwards, serves
//! linearizable reads as part of a quorum, and the log stays bounded under writes.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shardkv_actors::schema::{kv_key, Schema};

const SNAPSHOT_AFTER: u64 = 100;

/// Names of the files in a snapshot directory.
fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn raft_log_rows(schema: &Schema) -> u64 {
    let rtxn = schema.env.read_txn().expect("read txn");
    schema.raft_log.len(&rtxn).expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_behind_the_compacted_log_catches_up_by_snapshot() {
    let raft = format!("snapshot_after = {SNAPSHOT_AFTER}\n");
    let mut cluster = common::Cluster::with_raft(3, 1, 3, &raft);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;

    // Host 3 leaves; the others take writes far past the compaction point.
    assert!(cluster.stop(3).success());
    let mut model: HashMap<String, Option<String>> = HashMap::new();
    for i in 0..600 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        client.put(k.as_bytes(), v.as_bytes()).await.expect("put");
        model.insert(k, Some(v));
    }
    for i in (0..600).step_by(7) {
        let k = format!("k{i}");
        client.delete(k.as_bytes()).await.expect("delete");
        model.insert(k, None);
    }

    // Host 3 returns and cannot be caught up from the log any more. Leftovers of a crash in
    // its snapshot directory are cleared at start.
    let snap3 = cluster.dir.path().join("data/host-3/snap");
    let junk = [
        snap3.join("recv-1-1-123.snap"),
        snap3.join("shard-1-5-1.snap.tmp"),
    ];
    for j in &junk {
        std::fs::write(j, b"half a snapshot").expect("write junk");
    }
    cluster.start(3);
    cluster
        .wait_caught_up_within(&client, 3, Duration::from_secs(60))
        .await;
    for j in &junk {
        assert!(!j.exists(), "{} left from a previous run", j.display());
    }
    assert_eq!(
        snapshot_files(&snap3),
        Vec::<String>::new(),
        "the installed snapshot's file is gone"
    );
    // The leader keeps only its newest snapshot once the stream is reported done.
    let deadline = Instant::now() + Duration::from_secs(10);
    for h in [1, 2] {
        let dir = cluster.dir.path().join(format!("data/host-{h}/snap"));
        loop {
            let files = snapshot_files(&dir);
            if files.len() <= 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "host {h} keeps old snapshots: {files:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let log3 = std::fs::read_to_string(cluster.log_path(3)).expect("log");
    assert!(
        log3.contains("snapshot installed"),
        "host 3 caught up through a snapshot"
    );
    let sent = cluster
        .cfg
        .hosts
        .iter()
        .filter(|h| h.host.id != 3)
        .any(|h| {
            std::fs::read_to_string(cluster.log_path(h.host.id))
                .unwrap_or_default()
                .contains("snapshot sent")
        });
    assert!(sent, "a leader streamed the snapshot");
    let metrics3 =
        common::metrics::http_get(cluster.cfg.hosts[2].metrics.expect("metrics"), "/metrics");
    assert!(
        metrics3.contains("shardkv_snapshots_installed_total{shard=\"1\"} 1"),
        "the install is counted: {}",
        metrics3
            .lines()
            .filter(|l| l.contains("snapshot"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Everything is on host 3's disk, and its log is bounded.
    assert!(cluster.stop(3).success());
    {
        let dir = cluster.dir.path().join("data/host-3");
        let schema = Schema::open(&dir, 1 << 30, "test", 3).expect("open host 3's store");
        let rtxn = schema.env.read_txn().expect("read txn");
        for (k, want) in &model {
            let got = schema
                .kv
                .get(&rtxn, &kv_key(1, k.as_bytes()))
                .expect("get")
                .map(|v| v.to_vec());
            assert_eq!(
                got,
                want.as_ref().map(|v| v.as_bytes().to_vec()),
                "host 3 row {k}"
            );
        }
        drop(rtxn);
        let rows = raft_log_rows(&schema);
        assert!(
            rows <= 3 * SNAPSHOT_AFTER,
            "host 3 keeps a bounded log ({rows} entries)"
        );
    }

    // With host 1 gone, hosts 2 and 3 are the quorum: every read goes through host 3's state
    // or its confirmation.
    cluster.start(3);
    cluster
        .wait_caught_up_within(&client, 3, Duration::from_secs(60))
        .await;
    cluster.kill9(1);
    for (k, want) in &model {
        let got = client
            .get(k.as_bytes())
            .await
            .expect("linearizable read with host 3 in the quorum");
        assert_eq!(got, want.as_ref().map(|v| v.as_bytes().to_vec()), "key {k}");
    }

    // The survivors' logs stay bounded too.
    assert!(cluster.stop(2).success());
    let schema =
        Schema::open(&cluster.dir.path().join("data/host-2"), 1 << 30, "test", 2).expect("open");
    let rows = raft_log_rows(&schema);
    assert!(
        rows <= 3 * SNAPSHOT_AFTER,
        "host 2 keeps a bounded log ({rows} entries)"
    );
}
