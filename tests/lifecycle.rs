//! Life cycle of a host: `status` reports health, SIGTERM hands leadership away and exits 0,
//! and a data directory of another cluster or a corrupt LMDB file is refused, not replaced.

mod common;

use std::process::Command;
use std::time::Duration;

fn status_json(cluster: &common::Cluster) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(common::BIN)
        .arg("--config")
        .arg(&cluster.cfg_path)
        .args(["status", "--json"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run shardkv status");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status prints JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_health_and_sigterm_hands_leadership_away() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;

    let (code, json) = status_json(&cluster);
    assert_eq!(code, Some(0), "healthy cluster exits 0: {json}");
    assert_eq!(json["healthy"], true);
    let shards = json["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3);
    for s in shards {
        assert_eq!(s["quorum"], true, "{s}");
        assert!(s["leader"].is_u64(), "every shard has a leader: {s}");
        assert_eq!(s["epoch"], 1, "{s}");
        assert!(!s["slots"].as_array().expect("slots").is_empty(), "{s}");
        for r in s["replicas"].as_array().expect("replicas") {
            assert_eq!(r["role"], "voter", "{s}");
        }
    }
    // The live map: day 0, every host a member, the meta group with a quorum.
    assert_eq!(json["map_epoch"], 1, "{json}");
    assert_eq!(json["meta"]["quorum"], true, "{json}");
    for h in json["hosts"].as_array().expect("hosts") {
        assert_eq!(h["state"], "active", "{h}");
    }

    // Stop a host that leads at least one shard, gracefully.
    let leader = shards[0]["leader"].as_u64().expect("leader id");
    let status = cluster.stop(leader); // one SIGTERM (a second one means "stop now")
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    let log = std::fs::read_to_string(cluster.log_path(leader)).expect("log");
    assert!(
        log.contains("transferring leadership"),
        "the host handed leadership away"
    );

    // The other hosts lead everything, and writes go through at once.
    let mut settings = cluster.settings("cli");
    settings.deadline = Duration::from_secs(3);
    let quick = shardkv::Client::new(settings).expect("client");
    for shard in 1..=3 {
        let key = common::key_in_shard(shard, 3);
        quick
            .put(&key, b"after")
            .await
            .expect("write after a graceful stop");
        assert_ne!(quick.cached_leader(&key), Some(leader));
    }
    let (code, json) = status_json(&cluster);
    assert_eq!(code, Some(0), "two of three replicas are a quorum: {json}");
    assert_eq!(json["hosts"][(leader - 1) as usize]["reachable"], false);

    // Without a majority, status says so and exits 1.
    let other = if leader == 1 { 2 } else { 1 };
    cluster.kill9(other);
    let (code, json) = status_json(&cluster);
    assert_eq!(code, Some(1), "no quorum exits 1: {json}");
    assert_eq!(json["healthy"], false);
}

/// Runs `shardkv serve --host 1` for `cfg` and returns (success, stderr); a host that keeps
/// running for 15 s is killed and reported as started.
fn serve_once(cfg: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(common::BIN)
        .arg("--config")
        .arg(cfg)
        .args(["serve", "--host", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run serve");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status.success(), err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (true, "host kept running".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_cluster_or_corrupt_lmdb_is_refused() {
    let mut a = common::Cluster::new(1, 1, 1);
    a.start(1);
    let client = a.client();
    a.wait_ready(&client).await;
    drop(client);
    assert!(a.stop(1).success(), "graceful stop");

    // Host 1 of cluster "test" made its data dir; point another cluster's host at it.
    let data_a = a.dir.path().join("data/host-1");
    let b = common::Cluster::new(1, 1, 1);
    let text = std::fs::read_to_string(&b.cfg_path)
        .expect("config")
        .replace("name = \"test\"", "name = \"other\"")
        .replace(
            "data_dir = \"data/host-1\"",
            &format!("data_dir = {:?}", data_a.display().to_string()),
        );
    std::fs::write(&b.cfg_path, text).expect("write config");
    let (ok, err) = serve_once(&b.cfg_path);
    assert!(!ok, "a foreign data dir must be refused: {err}");
    assert!(
        err.contains("belongs to") && err.contains("test"),
        "stderr: {err}"
    );

    // A corrupt LMDB file is reported and left alone.
    let mdb = data_a.join("data.mdb");
    let garbage = vec![0xAB_u8; 64 * 1024];
    std::fs::write(&mdb, &garbage).expect("corrupt the file");
    let (ok, err) = serve_once(&a.cfg_path);
    assert!(!ok, "a corrupt store must not start: {err}");
    assert!(err.contains("not an LMDB file"), "stderr: {err}");
    assert_eq!(
        std::fs::read(&mdb).expect("still there"),
        garbage,
        "the file was not replaced"
    );
}
