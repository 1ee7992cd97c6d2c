//! PeerActor: this host's outbound link to one other host.
//!
//! It keeps one QUIC connection and one unidirectional stream open to the peer, reconnecting
//! with exponential backoff, and sends every Raft message of every shard bound for that host in
//! batches: whatever accumulated while the previous batch was being written goes in the next
//! frames, cut by [`batch::BatchBuilder`] so that every frame fits the wire limit. The queue is
//! bounded; when it is full, or the peer is down, messages are dropped — Raft retransmits, and
//! a stale backlog would only delay recovery.
//!
//! The host's links are in one directory, [`links::PeerLinks`], that follows the live cluster
//! map: a host that becomes a member gets a link, a removed one's link is closed
//! ([`ClosePeerLink`]).

pub mod batch;
pub mod links;
pub mod queue;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use protobuf::Message as _;
use quinn::Endpoint;
use raft::eraftpb::MessageType;
use shardkv_transport::endpoint::{connect, open_raft_stream, send_raft_batch};
use shardkv_transport::snapshot_stream;
use shardkv_transport::wire::{RaftBatch, RaftEnvelope};
use shardkv_transport::HostId;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, error, info, warn};

use crate::messages::{SendRaft, SnapshotReport};
use batch::BatchBuilder;
use queue::QueuedBytes;

/// Messages queued for one peer at most (bytes are bounded by [`queue::QUEUE_BYTES_MAX`]).
const QUEUE_MESSAGES_MAX: usize = 65_536;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an idle link looks whether a test fault cut it (only in builds with the hooks).
const FAULT_POLL: Duration = Duration::from_millis(200);

/// The actor; see the module docs.
pub struct PeerActor {
    peer: HostId,
    queue: mpsc::Sender<RaftEnvelope>,
    queued: QueuedBytes,
    rx: Option<mpsc::Receiver<RaftEnvelope>>,
    endpoint: Endpoint,
    addr: SocketAddr,
    /// Where this host's snapshot files are.
    snap_dir: PathBuf,
    /// This host's data dir incarnation, stamped on every batch.
    incarnation: u64,
    /// Where the link reports that it was lost (see [`links::PeerLinks::subscribe_lost`]).
    lost: broadcast::Sender<HostId>,
}

impl PeerActor {
    /// A link to host `peer` at `addr`, dialled from `endpoint`; batches carry this host's
    /// `incarnation`; losing the link is reported to `lost`.
    pub fn new(
        peer: HostId,
        addr: SocketAddr,
        endpoint: Endpoint,
        snap_dir: PathBuf,
        incarnation: u64,
        lost: broadcast::Sender<HostId>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_MESSAGES_MAX);
        PeerActor {
            peer,
            incarnation,
            lost,
            snap_dir,
            queue: tx,
            queued: QueuedBytes::default(),
            rx: Some(rx),
            endpoint,
            addr,
        }
    }
}

impl Actor for PeerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::MAILBOX_CAPACITY);
        if let Some(rx) = self.rx.take() {
            let link = link_loop(
                Link {
                    peer: self.peer,
                    addr: self.addr,
                    endpoint: self.endpoint.clone(),
                    incarnation: self.incarnation,
                    lost: self.lost.clone(),
                },
                rx,
                self.queued.clone(),
            );
            ctx.spawn(link.into_actor(self));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        crate::metrics::metrics()
            .peer_connected
            .get_or_create(&crate::metrics::PeerLabels { peer: self.peer })
            .set(0);
    }
}

/// To a PeerActor: the host is no longer a peer (the cluster map removed it); the link ends,
/// and what is queued for it is dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClosePeerLink;

impl Handler<ClosePeerLink> for PeerActor {
    type Result = ();

    fn handle(&mut self, _: ClosePeerLink, ctx: &mut Self::Context) {
        info!(peer = self.peer, "closing the Raft link");
        ctx.stop();
    }
}

impl Handler<SendRaft> for PeerActor {
    type Result = ();

    fn handle(&mut self, msg: SendRaft, ctx: &mut Self::Context) {
        if msg.message.get_msg_type() == MessageType::MsgSnapshot {
            self.send_snapshot(msg, ctx);
            return;
        }
        let bytes = match msg.message.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                warn!(peer = self.peer, error = %e, "cannot encode Raft message");
                return;
            }
        };
        let env = RaftEnvelope {
            shard: msg.shard,
            message: bytes,
        };
        if !BatchBuilder::fits_alone(&env) {
            error!(
                peer = self.peer,
                shard = msg.shard,
                bytes = env.message.len(),
                "Raft message larger than any frame; dropped"
            );
            return;
        }
        let len = env.message.len();
        if !self.queued.admit(len) {
            debug!(
                peer = self.peer,
                "peer queue full (bytes); Raft message dropped"
            );
            return;
        }
        if self.queue.try_send(env).is_err() {
            self.queued.release(len);
            debug!(peer = self.peer, "peer queue full; Raft message dropped");
        }
    }
}

impl PeerActor {
    /// Streams a snapshot on a connection of its own (so Raft traffic is not stuck behind
    /// it) and reports the outcome to the replica, as raft-rs requires.
    fn send_snapshot(&mut self, msg: SendRaft, ctx: &mut Context<Self>) {
        let peer = self.peer;
        let meta = msg.message.get_snapshot().get_metadata();
        let path = self
            .snap_dir
            .join(crate::snapshot::file_name(msg.shard, meta.index, meta.term));
        let (endpoint, addr, shard) = (self.endpoint.clone(), self.addr, msg.shard);
        let incarnation = self.incarnation;
        let report = msg.report;
        let message = msg.message.write_to_bytes();
        ctx.spawn(
            async move {
                let message = message.map_err(|e| e.to_string())?;
                let conn = connect(&endpoint, addr, peer)
                    .await
                    .map_err(|e| e.to_string())?;
                let bytes = snapshot_stream::send(&conn, shard, incarnation, message, &path)
                    .await
                    .map_err(|e| e.to_string())?;
                conn.close(0u32.into(), b"snapshot sent");
                Ok::<u64, String>(bytes)
            }
            .into_actor(self)
            .map(move |res, _act, _ctx| {
                let ok = match res {
                    Ok(bytes) => {
                        info!(peer, shard, bytes, "snapshot sent");
                        crate::metrics::metrics()
                            .snapshots_sent
                            .get_or_create(&crate::metrics::ShardLabels { shard })
                            .inc();
                        true
                    }
                    Err(e) => {
                        warn!(peer, shard, error = %e, "snapshot not sent");
                        false
                    }
                };
                if let Some(r) = report {
                    r.do_send(SnapshotReport { to: peer, ok });
                }
            }),
        );
    }
}

/// Who a link is to, and what it needs to dial and report.
struct Link {
    peer: HostId,
    addr: SocketAddr,
    endpoint: Endpoint,
    incarnation: u64,
    lost: broadcast::Sender<HostId>,
}

impl Link {
    /// Tells the hibernating replicas; nobody listening is fine.
    fn report_lost(&self) {
        let _ = self.lost.send(self.peer);
    }
}

async fn link_loop(link: Link, mut rx: mpsc::Receiver<RaftEnvelope>, queued: QueuedBytes) {
    let peer = link.peer;
    let mut backoff = BACKOFF_MIN;
    let mut was_up = false;
    let sent = crate::metrics::metrics()
        .raft_messages_sent
        .get_or_create(&crate::metrics::PeerLabels { peer })
        .clone();
    loop {
        let up = match connect(&link.endpoint, link.addr, peer).await {
            Ok(conn) => match open_raft_stream(&conn).await {
                Ok(s) => Some((conn, s)),
                Err(e) => {
                    debug!(peer, error = %e, "cannot open Raft stream");
                    None
                }
            },
            Err(e) => {
                debug!(peer, error = %e, "cannot connect");
                None
            }
        };
        let Some((conn, mut stream)) = up else {
            if was_up {
                info!(peer, "peer down");
                was_up = false;
            }
            // Drop what queued up while the peer was unreachable: Raft resends what matters.
            while let Ok(m) = rx.try_recv() {
                queued.release(m.message.len());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        };
        info!(peer, addr = %link.addr, "peer up");
        let gauge = crate::metrics::metrics()
            .peer_connected
            .get_or_create(&crate::metrics::PeerLabels { peer })
            .clone();
        gauge.set(1);
        was_up = true;
        let up_at = std::time::Instant::now();
        // A message that did not fit the previous batch; it starts the next one.
        let mut held: Option<RaftEnvelope> = None;
        // Whether a test fault cuts this link (reported once when it starts).
        let mut was_cut = false;
        loop {
            let first = match held.take() {
                Some(m) => m,
                None => tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => {
                            queued.release(m.message.len());
                            m
                        }
                        None => return, // The actor stopped.
                    },
                    // With every shard asleep nothing is sent, so a dead or paused peer is
                    // noticed here, by QUIC's idle timeout.
                    reason = conn.closed() => {
                        info!(peer, %reason, "peer link lost; reconnecting");
                        break;
                    }
                    () = tokio::time::sleep(FAULT_POLL), if shardkv_transport::fault::ENABLED => {
                        let cut = shardkv_transport::fault::partitioned(peer);
                        if cut && !was_cut {
                            link.report_lost();
                        }
                        was_cut = cut;
                        continue;
                    }
                },
            };
            let mut builder = BatchBuilder::default();
            if let Err(m) = builder.push(first) {
                // Checked when it was queued; cannot happen.
                error!(
                    peer,
                    bytes = m.message.len(),
                    "Raft message larger than any frame"
                );
                continue;
            }
            while !builder.is_full() {
                match rx.try_recv() {
                    Ok(m) => {
                        queued.release(m.message.len());
                        if let Err(m) = builder.push(m) {
                            held = Some(m);
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let batch = RaftBatch {
                incarnation: link.incarnation,
                ..builder.take()
            };
            if shardkv_transport::fault::partitioned(peer) {
                // Test fault: this link is cut.
                if !was_cut {
                    link.report_lost();
                }
                was_cut = true;
                continue;
            }
            was_cut = false;
            let count = batch.messages.len() as u64;
            if let Err(e) = send_raft_batch(&mut stream, &batch).await {
                info!(peer, error = %e, "peer link lost; reconnecting");
                break;
            }
            sent.inc_by(count);
        }
        gauge.set(0);
        link.report_lost();
        // A link that keeps dropping right after it came up (a peer that accepts and then
        // closes) is redialled with backoff, not in a loop.
        if up_at.elapsed() >= BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}
