//! The vocabulary every actor of a host shares: each message type and its reply.
//!
//! Actors reach each other through `Recipient<M>` of these messages, handed to them when the
//! daemon starts the host, so each can be read and tested with stand-ins. One actor holds
//! another's address instead: `ShardActor` keeps an `Addr<StorageActor>` (it sends it several
//! of these messages). Code shared as plain modules rather than messages: the Raft storage
//! (`raft_storage`, used by the replica and shard actors) and snapshot files (`snapshot`).
//! Replies that complete later than the handler (a write waits for its commit) travel in a
//! `oneshot` sender inside the message.

use actix::prelude::*;
use raft::eraftpb::{ConfState, Entry, Message as RaftMessage};
use shardkv_transport::wire::{RaftBatch, Request, Response};
use shardkv_transport::{HostId, ShardId};
use tokio::sync::oneshot;

use crate::error::ActorError;
use crate::schema::TableId;

/// One write to LMDB. Serializable: the write-ahead log ([`crate::wal`]) stores them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum WriteOp {
    /// Insert or overwrite `key` with `value`.
    Put(TableId, Vec<u8>, Vec<u8>),
    /// Remove `key` if present.
    Delete(TableId, Vec<u8>),
    /// Remove every key in `[from, to)`.
    DeleteRange(TableId, Vec<u8>, Vec<u8>),
    /// Write the rows of a (verified) snapshot file of a shard, streaming it from disk.
    LoadSnapshot(ShardId, std::path::PathBuf),
}

/// Writes that must become durable together, in order.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

/// To the StorageActor: make `batch` durable, in the write-ahead log and in LMDB (see
/// [`crate::storage`]). Resolves once both hold it: LMDB readers see it from then on.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct Persist(pub WriteBatch);

/// To the StorageActor: make a replica's Raft writes (entries, hard state) durable. Resolves
/// once the write-ahead log has synced them, with a [`Visible`] that resolves once LMDB holds
/// them too.
#[derive(Message)]
#[rtype(result = "Result<Visible, ActorError>")]
pub struct PersistLog(pub WriteBatch);

/// Resolves once LMDB holds a batch already durable in the write-ahead log: until then, LMDB
/// readers do not see it.
pub struct Visible(pub oneshot::Receiver<Result<(), ActorError>>);

impl Visible {
    /// Waits until LMDB holds the batch (or storage failed).
    pub async fn wait(self) -> Result<(), ActorError> {
        self.0.await.unwrap_or(Err(ActorError::StorageGone))
    }
}

/// To the StorageActor: like [`Persist`], for writes nobody is waiting on and that can be
/// redone after a crash (applying committed entries, compacting the log). Logged with no
/// sync of their own, and taken into LMDB in a commit shared with others within
/// [`crate::storage::LMDB_GROUP_DELAY`]. Resolves once LMDB holds them.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct PersistLazy(pub WriteBatch);

/// To the RouterActor or a ReplicaActor: a client request and where its reply goes.
///
/// Sent with [`ClientRequest::ask`], a `do_send`, which queues it at once whatever the mailbox
/// holds, so requests reach the actor in the order they were sent: the order a RESP
/// connection's pipelined writes keep in the log. (A `send` that finds a mailbox full is
/// delivered when its future is next polled, possibly after a later one; its future holds
/// the message meanwhile, so waiting bounded no memory either.) What is in flight is bounded
/// where requests enter the host: admission per client identity for QUIC; for RESP, commands
/// per connection and connections per listener.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientRequest {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

impl ClientRequest {
    /// Queues `request` at `to` now; resolves to its reply, or `None` if the actor stopped
    /// before answering.
    pub fn ask(
        to: &Recipient<ClientRequest>,
        request: Request,
    ) -> impl std::future::Future<Output = Option<Response>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        to.do_send(ClientRequest { request, reply });
        async move { rx.await.ok() }
    }
}

/// To the RouterActor: Raft messages from host `from`, whose identity the transport proved.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InboundRaft {
    pub from: HostId,
    pub batch: RaftBatch,
}

/// To a ReplicaActor: one Raft message of its group, already checked to come from its sender.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StepRaft(pub RaftMessage);

/// To a PeerActor: deliver this Raft message of `shard` to the peer host (best effort: Raft
/// retransmits what is lost).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendRaft {
    pub shard: shardkv_transport::ShardId,
    pub message: RaftMessage,
    /// For `MsgSnapshot`: where to report whether the snapshot reached the peer.
    pub report: Option<Recipient<SnapshotReport>>,
}

/// To a ReplicaActor: how sending a snapshot to `to` ended (raft-rs must be told).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotReport {
    pub to: HostId,
    pub ok: bool,
}

/// To the RouterActor: a snapshot from host `from` arrived in `path` for the `MsgSnapshot`
/// (protobuf) in `message`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InboundSnapshot {
    pub from: HostId,
    /// The sender's data dir incarnation (see [`crate::incarnations`]).
    pub incarnation: u64,
    pub shard: shardkv_transport::ShardId,
    pub message: Vec<u8>,
    pub path: std::path::PathBuf,
}

/// To a ReplicaActor: step this `MsgSnapshot`, whose data is in the file at `path`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StepSnapshot {
    pub message: RaftMessage,
    pub path: std::path::PathBuf,
}

/// To a ShardActor: replace the shard's state by the snapshot file at `path` (at `index`,
/// `term`), together with `raft_ops` (conf state, hard state) in one transaction. Resolves
/// once durable.
#[derive(Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct InstallSnapshot {
    pub index: u64,
    pub term: u64,
    pub path: std::path::PathBuf,
    pub raft_ops: Vec<WriteOp>,
}

/// To a ShardActor: entries committed by Raft, in log order, to apply. `conf_state`: the
/// shard's Raft configuration after the last of them, when one of them changed it; it is
/// stored in the same transaction as the applied index, so a restart or a snapshot starts
/// from the configuration as of the index it starts from.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyEntries {
    pub entries: Vec<Entry>,
    pub conf_state: Option<ConfState>,
}

/// To a ShardActor: answer `reply` when the entry at (`index`, `term`) is applied; if another
/// term's entry lands at that index, the proposal was lost and the waiter is told so.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AwaitApply {
    pub index: u64,
    pub term: u64,
    pub reply: oneshot::Sender<Response>,
}

/// To a ShardActor: read `keys` once everything up to `index` is applied (0: now).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadAt {
    pub index: u64,
    pub keys: ReadKeys,
    pub reply: oneshot::Sender<Response>,
}

/// What a read reads: one key (answered `Response::Value`), or several of one slot read at
/// one applied state (answered `Response::Values`: Redis' `MGET`, which is atomic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadKeys {
    One(Vec<u8>),
    Many(Vec<Vec<u8>>),
}

/// To a ShardActor: this replica lost leadership; fail every waiting write with `reply`
/// (clients retry against the new leader; sessions keep retries exactly-once).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FailWaiters(pub Response);

/// To a ReplicaActor: report its Raft status.
#[derive(Message)]
#[rtype(result = "shardkv_transport::wire::ReplicaInfo")]
pub struct GetStatus;

/// To a ReplicaActor: change the shard's replicas (see
/// [`shardkv_transport::wire::AdminRequest::ChangeReplicas`]); resolves once committed and in
/// effect here.
#[derive(Message)]
#[rtype(result = "Response")]
pub struct ChangeReplicas {
    pub changes: Vec<shardkv_transport::wire::ReplicaChange>,
}

/// To a ReplicaActor: propose the split of its shard (see
/// [`shardkv_transport::wire::AdminRequest::SplitShard`]); resolves once applied here.
#[derive(Message)]
#[rtype(result = "Response")]
pub struct ProposeSplit(pub shardkv_transport::wire::SplitSpec);

/// To a ReplicaActor: if leader, hand leadership to another voter (before a graceful stop).
/// Answers whether it was the leader when asked.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct TransferLeadership;

#[cfg(test)]
mod tests {
    use super::*;
    use shardkv_transport::wire::Op;

    /// Records the order client requests arrive in; its mailbox holds one message.
    struct Recorder {
        seen: Vec<u64>,
    }

    impl Actor for Recorder {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Self::Context) {
            ctx.set_mailbox_capacity(1);
        }
    }

    impl Handler<ClientRequest> for Recorder {
        type Result = ();
        fn handle(&mut self, msg: ClientRequest, _: &mut Self::Context) {
            self.seen.push(msg.request.seq);
            let seen = self.seen.iter().map(u64::to_string).collect::<Vec<_>>();
            let _ = msg.reply.send(Response::Invalid(seen.join(",")));
        }
    }

    #[actix_rt::test]
    async fn requests_arrive_in_the_order_they_were_asked_past_a_full_mailbox() {
        let to = Recorder { seen: Vec::new() }.start().recipient();
        let asked: Vec<_> = (1..=50)
            .map(|seq| {
                let op = Op::Delete { key: vec![1] };
                let request = Request {
                    client_id: 1,
                    seq,
                    op,
                };
                ClientRequest::ask(&to, request)
            })
            .collect();
        // Awaited last to first: a request held back by a full mailbox would be delivered
        // when its future is polled, so out of order.
        let mut last = None;
        for answer in asked.into_iter().rev() {
            last = last.or(answer.await);
        }
        let order: Vec<String> = (1..=50).map(|s: u64| s.to_string()).collect();
        assert_eq!(last, Some(Response::Invalid(order.join(","))));
    }
}
