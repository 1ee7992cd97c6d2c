//! Mutual TLS is enforced: a client whose certificate comes from another CA is refused with a
//! clear error, and a client certificate cannot send Raft traffic.

mod common;

use std::time::Duration;

use shardkv::client::{Client, ClientError};
use shardkv_transport::endpoint::{open_raft_stream, send_raft_batch, CLOSE_FORBIDDEN};
use shardkv_transport::wire::{RaftBatch, RaftEnvelope};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_from_another_ca_is_refused() {
    let mut cluster = common::Cluster::new(3, 1, 3);
    cluster.start_all();
    let good = cluster.client();
    cluster.wait_ready(&good).await;

    // Another cluster's CA and its client certificate.
    let other = common::Cluster::new(1, 1, 1);
    let (cert, key) = other.cfg.cluster.tls.client_cert_paths("cli");
    let mut settings = cluster.settings("cli");
    settings.tls.cert = cert;
    settings.tls.key = key;
    settings.deadline = Duration::from_secs(5);
    let intruder = Client::new(settings).expect("client setup");
    let err = intruder
        .put(b"k", b"v")
        .await
        .expect_err("foreign client must be refused");
    assert!(
        matches!(err, ClientError::Refused(_)),
        "expected a refusal, got: {err}"
    );
    let text = err.to_string();
    eprintln!("refusal as the user sees it: {text}");
    assert!(
        text.contains("CA"),
        "the error tells the user what to check: {text}"
    );

    // The refusal changed nothing for legitimate clients.
    good.put(b"k", b"fine").await.expect("legit write");
    assert_eq!(
        good.get(b"k").await.expect("legit read"),
        Some(b"fine".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_cannot_send_raft_messages() {
    let mut cluster = common::Cluster::new(3, 1, 3);
    cluster.start_all();
    let good = cluster.client();
    cluster.wait_ready(&good).await;

    let host = &cluster.cfg.hosts[0];
    let conn = cluster.raw_connection("cli", 0).await;
    // A forged vote request claiming to come from host 2 with a huge term.
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgRequestVote);
    m.from = 2;
    m.to = host.host.id;
    m.term = 1_000_000;
    let bytes = protobuf::Message::write_to_bytes(&m).expect("encode");
    let mut stream = open_raft_stream(&conn).await.expect("stream opens locally");
    let batch = RaftBatch {
        incarnation: 1,
        messages: vec![RaftEnvelope {
            shard: 1,
            message: bytes,
        }],
    };
    // The write may or may not complete before the host closes the connection.
    let _ = send_raft_batch(&mut stream, &batch).await;
    let _ = stream.finish();
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the host closes the connection");
    match reason {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(a.error_code, quinn::VarInt::from_u32(CLOSE_FORBIDDEN));
            let why = String::from_utf8_lossy(&a.reason);
            assert!(why.contains("host certificate"), "reason: {why}");
        }
        other => panic!("expected an application close, got {other}"),
    }
    // The forged vote had no effect: the cluster still serves without a term storm.
    good.put(b"after", b"ok")
        .await
        .expect("cluster still serves");
}

// Fault hooks exist only in builds with debug assertions (see transport/src/fault.rs).
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_cannot_switch_on_fault_hooks() {
    let mut cluster = common::Cluster::new(1, 1, 1);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;

    let spec = shardkv_transport::wire::FaultSpec {
        drop_replies: 1,
        ..Default::default()
    };
    let refused = client.inject_fault(1, spec).await;
    assert!(
        matches!(&refused, Err(shardkv::ClientError::Invalid(why)) if why.contains("host certificate")),
        "{refused:?}"
    );
    // Nothing was switched on: the next write is acknowledged.
    client.put(b"k", b"v").await.expect("write acknowledged");
    let log = std::fs::read_to_string(cluster.log_path(1)).expect("host log");
    assert!(
        !log.contains("fault injection active"),
        "the hook stayed off"
    );
}
