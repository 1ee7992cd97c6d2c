//! Exactly-once sessions belong to the certificate that opened them: another client that
//! sends writes under the same session id and seq (by accident or on purpose) has them
//! applied as its own, and cannot answer into or suppress the first client's writes.

mod common;

use shardkv_transport::endpoint::call;
use shardkv_transport::wire::{Op, Request, RequestFrame, Response};

fn put(client_id: u64, seq: u64, value: &[u8]) -> RequestFrame {
    RequestFrame::Data(Request {
        client_id,
        seq,
        op: Op::Put {
            key: b"k".to_vec(),
            value: value.to_vec(),
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_is_private_to_its_certificate() {
    // One host, one single-replica shard: every request reaches the leader.
    let mut cluster = common::Cluster::new(1, 1, 1);
    shardkv::certs::issue_client(&cluster.cfg, "mallory", false).expect("second client cert");
    cluster.start_all();
    let reader = cluster.client();
    cluster.wait_ready(&reader).await;

    let alice = cluster.raw_connection("cli", 0).await;
    let mallory = cluster.raw_connection("mallory", 0).await;
    let session = 0x5eed_5eed;

    let first = call(&alice, &put(session, 1, b"alice-1"))
        .await
        .expect("call");
    assert_eq!(first, Response::Ok);
    // Same id and seq from another certificate: a write of its own, applied.
    let other = call(&mallory, &put(session, 1, b"mallory-1"))
        .await
        .expect("call");
    assert_eq!(other, Response::Ok);
    assert_eq!(
        reader.get(b"k").await.expect("get"),
        Some(b"mallory-1".to_vec()),
        "the other certificate's write was applied, not taken for a retry of alice's"
    );
    // Alice's retry of seq 1 is still recognised as hers and not applied again ...
    let retry = call(&alice, &put(session, 1, b"alice-1"))
        .await
        .expect("call");
    assert_eq!(retry, Response::Ok);
    assert_eq!(
        reader.get(b"k").await.expect("get"),
        Some(b"mallory-1".to_vec()),
        "a retry is applied once"
    );
    // ... and mallory running ahead in "her" session does not supersede alice's next write.
    let ahead = call(&mallory, &put(session, 1000, b"mallory-1000"))
        .await
        .expect("call");
    assert_eq!(ahead, Response::Ok);
    let next = call(&alice, &put(session, 2, b"alice-2"))
        .await
        .expect("call");
    assert_eq!(next, Response::Ok, "alice's session is untouched");
    assert_eq!(
        reader.get(b"k").await.expect("get"),
        Some(b"alice-2".to_vec())
    );
}
