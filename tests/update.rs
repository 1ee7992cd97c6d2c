//! Atomic updates through the client against real hosts: counters that lose no increment under
//! concurrency, a failing change that leaves every key of its update as it was, conditional
//! sets with the previous value back, multi-key writes and reads of one slot, and the limits.

mod common;

use shardkv_client::{Change, ClientError, Condition, KeyUpdate};

fn change(key: &str, change: Change) -> KeyUpdate {
    KeyUpdate {
        key: key.as_bytes().to_vec(),
        change,
        condition: Condition::Always,
        return_previous: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_atomic_and_counters_lose_nothing() {
    let mut cluster = common::Cluster::new(3, 2, 3);
    cluster.start_all();
    let c = cluster.client();
    cluster.wait_ready(&c).await;

    // Concurrent increments from independent clients: each sees a distinct new value, so the
    // state machine did every addition once and in some order.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let c = cluster.client();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..20 {
                let outcomes = c
                    .update(vec![change("counter", Change::IncrBy(1))])
                    .await
                    .expect("incr");
                seen.push(outcomes[0].number);
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.expect("incrementer"));
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=120).collect::<Vec<i64>>());
    assert_eq!(c.get(b"counter").await.expect("get"), Some(b"120".to_vec()));

    // A change that fails fails its whole update: the set before it does not happen.
    c.put(b"{acct}name", b"alice").await.expect("put");
    let err = c
        .update(vec![
            change("{acct}balance", Change::Set(b"10".to_vec())),
            change("{acct}name", Change::IncrBy(5)),
        ])
        .await
        .expect_err("incr of a word");
    assert!(
        matches!(&err, ClientError::Invalid(why) if why.contains("not an integer")),
        "{err}"
    );
    assert_eq!(c.get(b"{acct}balance").await.expect("get"), None);
    assert_eq!(
        c.get(b"{acct}name").await.expect("get"),
        Some(b"alice".to_vec())
    );

    // Several keys of one slot in one update, then a conditional set with the old value back.
    let outcomes = c
        .update(vec![
            change("{acct}balance", Change::Set(b"10".to_vec())),
            change("{acct}name", Change::Append(b" smith".to_vec())),
        ])
        .await
        .expect("mset");
    assert_eq!(outcomes[1].number, "alice smith".len() as i64);
    let mut nx = change("{acct}balance", Change::Set(b"99".to_vec()));
    nx.condition = Condition::IfAbsent;
    nx.return_previous = true;
    let outcomes = c.update(vec![nx]).await.expect("set nx");
    assert!(!outcomes[0].applied);
    assert_eq!(outcomes[0].previous, Some(b"10".to_vec()));
    let mut getdel = change("{acct}name", Change::Delete);
    getdel.return_previous = true;
    let outcomes = c.update(vec![getdel]).await.expect("getdel");
    assert!(outcomes[0].applied);
    assert_eq!(outcomes[0].previous, Some(b"alice smith".to_vec()));
    assert_eq!(c.get(b"{acct}name").await.expect("get"), None);
    assert_eq!(
        c.get(b"{acct}balance").await.expect("get"),
        Some(b"10".to_vec())
    );
    // A multi-key read of one slot answers in the keys' order.
    let keys = [&b"{acct}balance"[..], b"{acct}name", b"{acct}balance"];
    let values = c
        .get_many(keys.iter().map(|k| k.to_vec()).collect())
        .await
        .expect("get_many");
    assert_eq!(values, [Some(b"10".to_vec()), None, Some(b"10".to_vec())]);

    // Keys of two slots are refused before anything is sent.
    let err = c
        .update(vec![
            change("a", Change::Delete),
            change("b", Change::Delete),
        ])
        .await
        .expect_err("two slots");
    assert!(
        matches!(&err, ClientError::Invalid(why) if why.contains("one slot")),
        "{err}"
    );
}
