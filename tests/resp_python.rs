//! redis-py's `RedisCluster` (Debian's python3-redis), a cluster client that routes by the
//! key positions `COMMAND` reports and by `CLUSTER SLOTS`, against a 3-host cluster: writes
//! and reads over every shard, INCR, MSET/MGET of a hash tag and DEL, each checked in Python
//! and then through the shardkv client.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Cluster;

/// The Python that Debian's python3-redis is installed for (`.ci/run` installs it).
const PYTHON: &str = "/usr/bin/python3";

/// Runs on one host's address; prints `ok` once every check held.
const SCRIPT: &str = r#"
import sys
from redis.cluster import RedisCluster
host, port = sys.argv[1], int(sys.argv[2])
rc = RedisCluster(host=host, port=port, cluster_error_retry_attempts=10)
for i in range(300):
    rc.set(f"py-{i}", i)
assert [int(rc.get(f"py-{i}")) for i in range(300)] == list(range(300))
assert [rc.incr("py-counter") for _ in range(5)] == [1, 2, 3, 4, 5]
rc.mset({"{py}a": "1", "{py}b": "2"})
assert rc.mget(["{py}a", "{py}b", "{py}c"]) == [b"1", b"2", None]
assert rc.delete("py-0") == 1
assert rc.get("py-0") is None
assert len(rc.get_nodes()) == 3
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_cluster_client_works_unchanged() {
    let (mut cluster, client, _) = Cluster::started_with_resp(3, 3, 3, false, false).await;

    let addr = cluster.resp_addr(2);
    let mut python = Command::new(PYTHON)
        .args(["-", &addr.ip().to_string(), &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PYTHON} runs (apt-get install python3-redis): {e}"));
    python
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(SCRIPT.as_bytes())
        .expect("the script is written");
    let out = tokio::task::spawn_blocking(move || python.wait_with_output())
        .await
        .expect("the wait runs")
        .expect("python finishes");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "redis-py: {}",
        common::output_text(&out)
    );

    // What redis-py wrote is what the shardkv client reads.
    assert_eq!(client.get(b"py-7").await.expect("get"), Some(b"7".to_vec()));
    assert_eq!(
        client.get(b"py-counter").await.expect("get"),
        Some(b"5".to_vec())
    );
    assert_eq!(client.get(b"py-0").await.expect("get"), None);
    cluster.check_alive();
}
