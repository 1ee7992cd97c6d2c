//! A request and its reply close their stream quietly: each side reads up to the other's FIN
//! instead of stopping the stream, so no STOP_SENDING (and no answering RESET_STREAM) travels
//! per request. At 64 clients those frames had cost about 0.7 extra datagrams per request on
//! each side.

mod common;

use common::Cluster;
use shardkv_transport::frame::{encode, read_frame};
use shardkv_transport::wire::{
    Op, ReadConsistency, Request, RequestFrame, Response, RESPONSE_FRAME_BYTES_MAX,
};

fn get(key: &[u8], seq: u64) -> RequestFrame {
    RequestFrame::Data(Request {
        client_id: 0,
        seq,
        op: Op::Get {
            key: key.to_vec(),
            consistency: ReadConsistency::Linearizable,
        },
    })
}

/// A one-host cluster whose one shard holds `b"value"` under the returned key, and a raw
/// client connection to it.
async fn one_host_holding_a_value() -> (Cluster, Vec<u8>, quinn::Connection) {
    let mut cluster = Cluster::new(1, 1, 1);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    let key = common::key_in_shard(1, 1);
    client.put(&key, b"value").await.expect("put");
    let conn = cluster.raw_connection("cli", 0).await;
    (cluster, key, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_replies_end_their_streams_without_stop_sending() {
    let (_cluster, key, conn) = one_host_holding_a_value().await;
    let requests = 50u64;
    for seq in 0..requests {
        let req = get(&key, seq);
        let resp = shardkv_transport::endpoint::call(&conn, &req)
            .await
            .expect("the host answers");
        assert_eq!(resp, Response::Value(Some(b"value".to_vec())));
    }
    // Let any frame the last replies caused arrive.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stats = conn.stats();
    assert!(
        stats.frame_rx.stream >= requests,
        "every reply arrived in STREAM frames: {stats:?}"
    );
    assert_eq!(
        stats.frame_tx.stop_sending, 0,
        "the client stopped reply streams: {stats:?}"
    );
    assert_eq!(
        stats.frame_rx.stop_sending, 0,
        "the host stopped request streams: {stats:?}"
    );
    assert_eq!(
        stats.frame_tx.reset_stream + stats.frame_rx.reset_stream,
        0,
        "a stream was reset: {stats:?}"
    );
}

/// Bytes after the request's frame are not kept: the host stops the stream (so quinn discards
/// them and the client is told to send no more) and still answers the frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_request_frame_stop_its_stream() {
    let (mut cluster, key, conn) = one_host_holding_a_value().await;
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let mut bytes = encode(&get(&key, 0)).expect("encode");
    bytes.extend_from_slice(&[0u8; 64]);
    send.write_all(&bytes).await.expect("write");
    let resp = read_frame::<_, Response>(&mut recv, RESPONSE_FRAME_BYTES_MAX)
        .await
        .expect("a reply frame")
        .expect("a reply before the end");
    assert_eq!(resp, Response::Value(Some(b"value".to_vec())));
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), send.stopped())
        .await
        .expect("the host stops the stream in time");
    assert!(
        matches!(stopped, Ok(Some(_))),
        "the host stopped the request stream: {stopped:?}"
    );
    assert!(conn.stats().frame_rx.stop_sending >= 1);
    cluster.kill9_all();
}
