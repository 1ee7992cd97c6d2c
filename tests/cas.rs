//! Compare-and-swap through the client and the CLI: create-if-absent, swap, failure with the
//! current value, delete-if-equal, and concurrent increments that must not lose an update.

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_semantics_and_concurrent_increments() {
    let mut cluster = common::Cluster::new(3, 2, 3);
    cluster.start_all();
    let c = cluster.client();
    cluster.wait_ready(&c).await;

    // create-if-absent
    assert_eq!(c.cas(b"k", None, Some(b"1")).await.expect("cas"), Ok(()));
    assert_eq!(
        c.cas(b"k", None, Some(b"x")).await.expect("cas"),
        Err(Some(b"1".to_vec()))
    );
    // swap, and a failed swap reports the current value
    assert_eq!(
        c.cas(b"k", Some(b"1"), Some(b"2")).await.expect("cas"),
        Ok(())
    );
    assert_eq!(
        c.cas(b"k", Some(b"1"), Some(b"3")).await.expect("cas"),
        Err(Some(b"2".to_vec()))
    );
    assert_eq!(c.get(b"k").await.expect("get"), Some(b"2".to_vec()));
    // delete-if-equal
    assert_eq!(
        c.cas(b"k", Some(b"9"), None).await.expect("cas"),
        Err(Some(b"2".to_vec()))
    );
    assert_eq!(c.cas(b"k", Some(b"2"), None).await.expect("cas"), Ok(()));
    assert_eq!(c.get(b"k").await.expect("get"), None);
    assert_eq!(c.cas(b"k", Some(b"2"), None).await.expect("cas"), Err(None));

    // Concurrent increments with CAS retries: every success is one increment, none lost.
    c.put(b"counter", b"0").await.expect("init");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let c = cluster.client();
        tasks.push(tokio::spawn(async move {
            let mut wins = 0u64;
            for _ in 0..15 {
                loop {
                    let cur = c.get(b"counter").await.expect("read counter");
                    let n: u64 = String::from_utf8(cur.clone().expect("counter exists"))
                        .expect("utf8")
                        .parse()
                        .expect("number");
                    let next = (n + 1).to_string();
                    match c
                        .cas(b"counter", cur.as_deref(), Some(next.as_bytes()))
                        .await
                        .expect("cas")
                    {
                        Ok(()) => {
                            wins += 1;
                            break;
                        }
                        Err(_) => continue,
                    }
                }
            }
            wins
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("incrementer");
    }
    assert_eq!(total, 90);
    assert_eq!(c.get(b"counter").await.expect("get"), Some(b"90".to_vec()));

    // The CLI: exit 0 on success, 1 with the current value on a mismatch.
    let run = |args: &[&str]| {
        Command::new(common::BIN)
            .arg("--config")
            .arg(&cluster.cfg_path)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run shardkv")
    };
    let out = run(&["cas", "cli-key", "--absent", "a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["cas", "cli-key", "b", "c"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("current value is a"));
    let out = run(&["cas", "cli-key", "a", "--delete"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.get(b"cli-key").await.expect("get"), None);
}
