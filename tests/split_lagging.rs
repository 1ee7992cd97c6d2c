//! A host that was away while its shard split, and whose copy of the shard is then caught up
//! by a snapshot taken after the split: it never applies the split entry, so it holds none of
//! the new shard's state. Its replica of the new shard must start empty and be sent a
//! snapshot with the rows (the new shard's log starts past index 0 for this), never take the
//! log alone and serve a shard with no rows.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shardkv::Client;

/// Compact often, so the returning host is behind the parent's log start.
const SNAPSHOT_AFTER: u64 = 100;

/// Writes 300 keys named `{prefix}N` whose slot `keep` accepts, and deletes every ninth.
async fn write_keys(
    client: &Client,
    model: &mut BTreeMap<String, Option<String>>,
    prefix: &str,
    keep: impl Fn(u16) -> bool,
) {
    let keys: Vec<String> = (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| keep(shardkv_transport::slot::slot(k.as_bytes())))
        .take(300)
        .collect();
    for k in &keys {
        let v = format!("v-{k}");
        client.put(k.as_bytes(), v.as_bytes()).await.expect("put");
        model.insert(k.clone(), Some(v));
    }
    for k in keys.iter().step_by(9) {
        client.delete(k.as_bytes()).await.expect("delete");
        model.insert(k.clone(), None);
    }
}

/// Waits until host `host` reports a replica of `shard` that has applied past the start of
/// the new shard's log.
async fn wait_replica(client: &Client, host: u64, shard: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = client.host_status(host).await {
            if s.replicas
                .iter()
                .any(|r| r.shard == shard && r.applied > 5 && !r.slots.is_empty())
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "host {host} never held shard {shard} with its slots"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_missed_the_split_gets_the_new_shards_rows_by_snapshot() {
    let raft = format!("snapshot_after = {SNAPSHOT_AFTER}\n");
    let mut cluster = common::Cluster::with_raft(3, 1, 3, &raft);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;

    // Host 3 is away for the split and for enough writes to compact both shards' logs.
    assert!(cluster.stop(3).success());
    let mut model = BTreeMap::new();
    write_keys(&client, &mut model, "a", |_| true).await;
    let out = cluster.cli(&["shard", "split", "1"], &[]);
    assert!(
        out.status.success(),
        "split: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child: u32 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("the new shard's id is the last line");
    // Only the parent's half is written now: its log is compacted past the split, the new
    // shard's is not compacted at all (a leader could send it from its start).
    let map = client.read_map().await.expect("map").map;
    let kept = map.shard(1).expect("the parent").slots.clone();
    write_keys(&client, &mut model, "b", |s| {
        kept.iter().any(|&(first, last)| first <= s && s <= last)
    })
    .await;

    cluster.start(3);
    wait_replica(&client, 3, child).await;
    cluster
        .wait_caught_up_within(&client, 3, Duration::from_secs(60))
        .await;
    let status = client.host_status(3).await.expect("host 3 answers");
    let mut slots: Vec<_> = status
        .replicas
        .iter()
        .map(|r| (r.shard, r.slots.clone()))
        .collect();
    slots.sort();
    assert_eq!(
        slots.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![0, 1, child],
        "host 3 holds the meta group, the parent and the new shard: {slots:?}"
    );

    // Host 3 alone holds every acknowledged key of both halves.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (k, want) in &model {
        let got = loop {
            match cluster.stale_read_on(3, k.as_bytes()).await {
                Ok(v) => break v,
                Err(e) => {
                    assert!(
                        !e.contains("WrongShard") && Instant::now() < deadline,
                        "host 3 cannot serve {k}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(
            got,
            want.as_ref().map(|v| v.as_bytes().to_vec()),
            "host 3's copy of {k}"
        );
    }
    let log3 = std::fs::read_to_string(cluster.log_path(3)).expect("log");
    assert!(
        log3.lines()
            .any(|l| l.contains("snapshot installed") && l.contains(&format!("shard={child}"))),
        "host 3 took the new shard's rows by a snapshot"
    );

    // And it counts in a quorum of both shards with host 1 gone.
    cluster.kill9(1);
    for (k, want) in &model {
        let got = client
            .get(k.as_bytes())
            .await
            .expect("read with host 3 in the quorum");
        assert_eq!(got, want.as_ref().map(|v| v.as_bytes().to_vec()), "key {k}");
    }
}
