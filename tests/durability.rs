//! Acknowledged writes survive kill -9 of every host at once, and a restart from the same data
//! directories.

mod common;

use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_of_every_host() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;

    // Concurrent writers, so that kills land while writes are in flight.
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..150 {
                let k = format!("w{w}-k{}", i % 100);
                let v = format!("w{w}-v{i}");
                c.put(k.as_bytes(), v.as_bytes())
                    .await
                    .expect("put before the crash");
                mine.push((k, v));
            }
            for i in (0..100).step_by(10) {
                let k = format!("w{w}-k{i}");
                c.delete(k.as_bytes())
                    .await
                    .expect("delete before the crash");
                mine.push((k, String::new()));
            }
            mine
        }));
    }
    for t in tasks {
        for (k, v) in t.await.expect("writer task") {
            acked.insert(k, v);
        }
    }
    // A last burst whose acknowledgements race with the kill: only acknowledged ones count.
    let c = client.clone();
    let burst = tokio::spawn(async move {
        let mut done = Vec::new();
        for i in 0..1000 {
            let k = format!("burst-{i}");
            if c.put(k.as_bytes(), b"x").await.is_err() {
                break;
            }
            done.push(k);
        }
        done
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cluster.kill9_all();
    let burst_acked = burst.await.expect("burst task");
    drop(client);

    cluster.start_all();
    let client = cluster.client();
    for (k, v) in &acked {
        let got = client.get(k.as_bytes()).await.expect("read after restart");
        let want = (!v.is_empty()).then(|| v.as_bytes().to_vec());
        assert_eq!(got, want, "key {k} after kill -9 of every host");
    }
    for k in &burst_acked {
        let got = client.get(k.as_bytes()).await.expect("read after restart");
        assert_eq!(
            got.as_deref(),
            Some(&b"x"[..]),
            "acknowledged burst key {k} lost"
        );
    }
    eprintln!(
        "{} keys and {} burst writes survived",
        acked.len(),
        burst_acked.len()
    );
}
