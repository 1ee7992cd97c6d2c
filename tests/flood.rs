//! A client certificate cannot exhaust a host: a client that floods it with streams and
//! oversized frames gets errors, another client keeps being served, and the host's memory
//! stays within a bound set by the transport's per-identity limits.

mod common;

use std::time::Duration;

use shardkv_transport::frame::read_frame;
use shardkv_transport::wire::{Response, VALUE_BYTES_MAX_DEFAULT};

const MIB: usize = 1 << 20;
/// Streams the flooder opens, each announcing a legal 1 MiB request and sending all of it
/// but its last byte, so a host that admits it must hold the buffer.
const HELD_STREAMS: usize = 400;
/// Streams announcing a frame far over the request limit.
const OVERSIZED_STREAMS: usize = 50;
/// Growth of the host's resident memory the flood may cause: the per-identity byte budget
/// plus connection windows and allocator slack, well below what the flood sends.
const RSS_GROWTH_BYTES_MAX: u64 = 256 << 20;

/// The most resident memory process `pid` has used so far, in bytes (VmHWM): the flood's
/// peak, whenever it came.
fn peak_rss_bytes(pid: u32) -> u64 {
    common::proc_status_bytes(pid, "VmHWM")
}

/// What became of one flooding stream.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The host answered with an error (and stopped reading).
    Refused,
    /// The host answered that the frame is over its request limit, from its length alone.
    TooLarge,
    /// No answer within the wait: the host is holding the request.
    Held,
    /// Something else (a bug in the host, or a reply to a request that was never complete).
    Other(String),
}

/// Opens a stream, announces `announced` bytes, sends `sent` of them, and waits for a reply.
async fn flood_stream(conn: quinn::Connection, announced: usize, sent: usize) -> Outcome {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return Outcome::Other(format!("open: {e}")),
    };
    let mut frame = u32::try_from(announced)
        .expect("announced fits u32")
        .to_be_bytes()
        .to_vec();
    frame.resize(4 + sent, 0x55);
    // A stopped stream makes the write fail: the host refused it, the reply tells why.
    let _ = send.write_all(&frame).await;
    match tokio::time::timeout(
        Duration::from_secs(10),
        read_frame::<_, Response>(&mut recv, MIB),
    )
    .await
    {
        Err(_) => Outcome::Held,
        Ok(Ok(Some(Response::Unavailable(_) | Response::Invalid(_)))) => Outcome::Refused,
        Ok(Ok(Some(Response::TooLarge { .. }))) => Outcome::TooLarge,
        Ok(other) => Outcome::Other(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_gets_errors_while_another_is_served_and_memory_stays_bounded() {
    let mut cluster = common::Cluster::new(1, 1, 1);
    shardkv::certs::issue_client(&cluster.cfg, "flood", false).expect("flooder's certificate");
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    let pid = cluster.pid(1);
    let rss_before = peak_rss_bytes(pid);

    let conn = cluster.raw_connection("flood", 0).await;
    let legal = VALUE_BYTES_MAX_DEFAULT;
    let mut streams = Vec::new();
    for _ in 0..HELD_STREAMS {
        streams.push(tokio::spawn(flood_stream(conn.clone(), legal, legal - 1)));
    }
    for _ in 0..OVERSIZED_STREAMS {
        streams.push(tokio::spawn(flood_stream(conn.clone(), 60 * MIB, 64 << 10)));
    }

    // While the flood is on (the host has started refusing it), the other client is served.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !streams.iter().any(|s| s.is_finished()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the host answered no flooding stream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..20u32 {
        let key = format!("during-flood-{i}").into_bytes();
        client
            .put(&key, &i.to_be_bytes())
            .await
            .expect("put during the flood");
        assert_eq!(
            client.get(&key).await.expect("get during the flood"),
            Some(i.to_be_bytes().to_vec())
        );
    }

    let mut outcomes = Vec::new();
    for s in streams {
        outcomes.push(s.await.expect("flood task"));
    }
    let rss_peak = peak_rss_bytes(pid);
    let refused = outcomes.iter().filter(|o| **o == Outcome::Refused).count();
    let held = outcomes.iter().filter(|o| **o == Outcome::Held).count();
    let other: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Other(_)))
        .collect();
    assert!(other.is_empty(), "unexpected outcomes: {other:?}");
    assert!(
        outcomes[HELD_STREAMS..]
            .iter()
            .all(|o| *o == Outcome::TooLarge),
        "every oversized frame is refused from its length, as too large"
    );
    assert!(
        refused >= HELD_STREAMS / 2,
        "most of the flood is refused ({refused} refused, {held} held)"
    );
    let growth = rss_peak.saturating_sub(rss_before);
    assert!(
        growth < RSS_GROWTH_BYTES_MAX,
        "host memory grew by {} MiB during the flood",
        growth >> 20
    );
    client
        .put(b"after-flood", b"ok")
        .await
        .expect("served after the flood");
    drop(conn);
    cluster.check_alive();
}
