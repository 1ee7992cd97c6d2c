//! RouterActor: the front door of a host. Maps each client request key -> slot -> shard and
//! hands it to the local replica of that shard, or tells the client where to go; delivers
//! inbound Raft messages to the right replica after checking who sent them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use protobuf::Message as _;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use shardkv_transport::slot::slot;
use shardkv_transport::wire::{check_limits, HostStatus, Op, Request, Response};
use shardkv_transport::{ClusterMap, HostId, Layout, ShardId};
use tracing::{debug, error, info, warn};

use crate::incarnations::{PeerIncarnations, Verdict};
use crate::messages::{
    ChangeReplicas, ClientRequest, GetStatus, InboundRaft, InboundSnapshot, Persist, ProposeSplit,
    StepRaft, StepSnapshot, TransferLeadership, WriteBatch,
};
use crate::metrics::metrics;
use crate::replica::stop::StopReplica;
use crate::replica::transfer::{SetPreferredLeader, TransferLeaderTo};
use crate::schema::meta;
use crate::shard::PublishedSlots;

/// A local replica as the router sees it: the mailboxes of its ReplicaActor, and how to stop
/// it and its ShardActor when the host stops hosting the shard.
pub struct LocalReplica {
    pub requests: Recipient<ClientRequest>,
    pub raft: Recipient<StepRaft>,
    pub status: Recipient<GetStatus>,
    pub transfer: Recipient<TransferLeadership>,
    pub transfer_to: Recipient<TransferLeaderTo>,
    pub preferred: Recipient<SetPreferredLeader>,
    pub snapshots: Recipient<StepSnapshot>,
    pub changes: Recipient<ChangeReplicas>,
    pub split: Recipient<ProposeSplit>,
    /// The slots its state machine owns durably (see [`RouterActor::local_owner`]).
    pub slots: PublishedSlots,
    /// Stops the ReplicaActor.
    pub stop: Recipient<StopReplica>,
    /// Stops the shard's ShardActor (its state machine).
    pub stop_shard: Recipient<StopReplica>,
}

/// What a router is told about its host and cluster when it starts.
pub struct RouterSettings {
    pub host: HostId,
    pub cluster: String,
    pub value_bytes_max: usize,
    /// The layout this host was bootstrapped with (shards and their replica hosts).
    pub layout: Layout,
    /// This host's data dir incarnation.
    pub incarnation: u64,
    /// The incarnations recorded for peers, from disk.
    pub peer_incarnations: Vec<(HostId, u64)>,
    /// The live cluster map as last known (the day-0 map until the host learns a later one,
    /// see [`SetMap`]): keys route by it, and Raft traffic is taken only from its replicas.
    pub map: ClusterMap,
}

/// The actor; see the module docs.
pub struct RouterActor {
    settings: RouterSettings,
    local: HashMap<ShardId, LocalReplica>,
    peers: PeerIncarnations,
    /// Where peer incarnations are recorded.
    storage: Recipient<Persist>,
    /// When a refused peer was last logged (see [`REFUSAL_LOG_EVERY`]).
    refusals_logged: HashMap<HostId, Instant>,
}

/// How often a peer whose incarnation is refused is logged (the metric counts every batch).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

impl RouterActor {
    /// A router for `settings.host`, delivering to its `local` replicas.
    pub fn new(
        settings: RouterSettings,
        local: HashMap<ShardId, LocalReplica>,
        storage: Recipient<Persist>,
    ) -> Self {
        RouterActor {
            peers: PeerIncarnations::new(settings.peer_incarnations.iter().copied()),
            settings,
            local,
            storage,
            refusals_logged: HashMap::new(),
        }
    }

    /// The hosts holding replicas of `shard` in the map (learners included), for a client
    /// sent to the wrong host.
    fn hosts_of(&self, shard: ShardId) -> Vec<HostId> {
        self.settings
            .map
            .replicas_of(shard)
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The replica of `shard` on this host, or the answer that sends the caller to the
    /// map's replicas of it.
    fn local_replica(&self, shard: ShardId) -> Result<&LocalReplica, Response> {
        self.local
            .get(&shard)
            .ok_or_else(|| Response::NoReplicaHere {
                shard,
                hosts: self.hosts_of(shard),
            })
    }

    /// Whether a batch from `from`, stamped `incarnation`, may be delivered (see
    /// [`crate::incarnations`]); starts recording a first incarnation.
    fn admit(&mut self, from: HostId, incarnation: u64, ctx: &mut Context<Self>) -> bool {
        match self.peers.judge(from, incarnation) {
            Verdict::Accept => true,
            Verdict::Recording => false,
            Verdict::Refuse { known } => {
                metrics().raft_batches_refused.inc();
                // A refused host keeps sending many batches a second: say it once a minute.
                let now = Instant::now();
                let said = self.refusals_logged.get(&from);
                if said.is_some_and(|at| now.duration_since(*at) < REFUSAL_LOG_EVERY) {
                    return false;
                }
                self.refusals_logged.insert(from, now);
                error!(
                    from,
                    incarnation,
                    known,
                    "Raft traffic from another incarnation of this host dropped: its data dir is not \
                     the one this cluster knew (a lost or replaced disk); it must be replaced as a \
                     new member, never rejoin as itself"
                );
                false
            }
            Verdict::Record => {
                info!(from, incarnation, "recording a peer's incarnation");
                let batch = WriteBatch {
                    ops: vec![meta::peer_incarnation_op(from, incarnation)],
                };
                let persist = self.storage.send(Persist(batch));
                ctx.spawn(persist.into_actor(self).map(move |res, act, _| {
                    let ok = matches!(res, Ok(Ok(())));
                    if !ok {
                        warn!(from, "could not record a peer's incarnation; will retry");
                    }
                    act.peers.recorded(from, ok.then_some(incarnation));
                }));
                false
            }
        }
    }
}

impl Actor for RouterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::MAILBOX_CAPACITY);
        self.push_listed_incarnations();
        self.push_preferred_leaders();
    }
}

impl Handler<ClientRequest> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: ClientRequest, _: &mut Self::Context) {
        let answer = self.route(msg.request);
        actix::spawn(async move {
            let _ = msg.reply.send(answer.await);
        });
    }
}

impl RouterActor {
    /// Checks `request` and queues it at the local replica of its key's shard now, so
    /// requests reach each replica in the order they reached the router; resolves to the
    /// answer.
    fn route(&mut self, request: Request) -> ResponseFuture<Response> {
        if let Err(resp) = check_limits(&request.op, self.settings.value_bytes_max) {
            record(kind_of(&request.op), &resp, std::time::Instant::now());
            return Box::pin(async move { resp });
        }
        let slot = slot(request.op.key());
        let Some(by_map) = self.settings.map.shard_of_slot(slot) else {
            let resp = Response::Internal("the cluster map owns no shard for this key".into());
            return Box::pin(async move { resp });
        };
        let shard = self.local_owner(by_map, slot);
        let replica = match self.local_replica(shard) {
            Ok(r) => r,
            Err(resp) => return Box::pin(async move { resp }),
        };
        let kind = kind_of(&request.op);
        let started = std::time::Instant::now();
        let fut = ClientRequest::ask(&replica.requests, request);
        Box::pin(async move {
            let resp = fut
                .await
                .unwrap_or_else(|| stopped(shard, &"it stopped before answering"));
            record(kind, &resp, started);
            resp
        })
    }
}

impl Handler<InboundRaft> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: InboundRaft, ctx: &mut Self::Context) {
        let mut valid = Vec::with_capacity(msg.batch.messages.len());
        for env in msg.batch.messages {
            let m = match RaftMessage::parse_from_bytes(&env.message) {
                Ok(m) => m,
                Err(e) => {
                    warn!(from = msg.from, error = %e, "undecodable Raft message dropped");
                    continue;
                }
            };
            // A host may speak only for itself, only to us, only in groups it is a member of,
            // and only with the message types replicas exchange. Followers never forward
            // proposals or reads (they answer NotLeader), and snapshots arrive on a stream of
            // their own (`InboundSnapshot`), so anything else would be a host trying to inject
            // data or crash raft-rs.
            let member = self.is_member(env.shard, msg.from);
            if !member || !peer_message_allowed(m.get_msg_type()) {
                warn!(
                    from = msg.from,
                    shard = env.shard,
                    kind = ?m.get_msg_type(),
                    "Raft message from a non-member or of a forbidden type dropped"
                );
                continue;
            }
            if m.from != msg.from || m.to != self.settings.host {
                warn!(
                    from = msg.from,
                    claimed_from = m.from,
                    to = m.to,
                    "Raft message with a forged or misdirected address dropped"
                );
                continue;
            }
            valid.push((env.shard, m));
        }
        // Only a batch that carried a well-formed message of a member may make its incarnation
        // the one on record: garbage (or a peer speaking another protocol) must not.
        if valid.is_empty() || !self.admit(msg.from, msg.batch.incarnation, ctx) {
            return;
        }
        for (shard, m) in valid {
            match self.local.get(&shard) {
                Some(r) => r.raft.do_send(StepRaft(m)),
                None => debug!(
                    shard,
                    from = msg.from,
                    "Raft message for a shard not hosted here"
                ),
            }
        }
    }
}

/// The answer when a local replica is stopped (its host is going down on a fatal error):
/// another replica of the shard can serve, so the client must try elsewhere, not give up.
pub(super) fn stopped(shard: ShardId, e: &dyn std::fmt::Display) -> Response {
    Response::Unavailable(format!(
        "replica of shard {shard} on this host is stopped ({e}); retry on another"
    ))
}

/// Resolves to what a local replica of `shard` answers to `request`.
pub(super) fn answer_from(
    shard: ShardId,
    request: impl std::future::Future<Output = Result<Response, MailboxError>> + 'static,
) -> ResponseFuture<Response> {
    Box::pin(async move { request.await.unwrap_or_else(|e| stopped(shard, &e)) })
}

fn kind_of(op: &Op) -> &'static str {
    match op {
        Op::Get { .. } => "get",
        Op::Put { .. } => "put",
        Op::Delete { .. } => "delete",
        Op::Cas { .. } => "cas",
        Op::Update(_) => "update",
        Op::GetMany { .. } => "get_many",
    }
}

fn result_of(resp: &Response) -> &'static str {
    match resp {
        Response::Value(Some(_))
        | Response::Ok
        | Response::CasOk
        | Response::Updated(_)
        | Response::Values(_)
        | Response::Status(_) => "ok",
        Response::Value(None) => "not_found",
        Response::CasFailed { .. } => "cas_failed",
        Response::NotLeader { .. } => "not_leader",
        Response::LeaderLost { .. } => "leader_lost",
        Response::NoReplicaHere { .. } => "no_replica",
        Response::WrongShard { .. } => "wrong_shard",
        Response::TooLarge { .. } => "too_large",
        Response::Invalid(_) => "invalid",
        Response::Unavailable(_) => "unavailable",
        Response::Internal(_) => "internal",
    }
}

fn record(kind: &'static str, resp: &Response, started: std::time::Instant) {
    let m = crate::metrics::metrics();
    m.client_requests
        .get_or_create(&crate::metrics::RequestLabels {
            kind,
            result: result_of(resp),
        })
        .inc();
    m.client_request_seconds
        .get_or_create(&crate::metrics::KindLabels { kind })
        .observe(started.elapsed().as_secs_f64());
}

/// Message types one replica may send another over the network.
fn peer_message_allowed(t: MessageType) -> bool {
    use MessageType::*;
    matches!(
        t,
        MsgAppend
            | MsgAppendResponse
            | MsgRequestVote
            | MsgRequestVoteResponse
            | MsgRequestPreVote
            | MsgRequestPreVoteResponse
            | MsgHeartbeat
            | MsgHeartbeatResponse
            | MsgTimeoutNow
    )
}

impl Handler<InboundSnapshot> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: InboundSnapshot, _: &mut Self::Context) {
        let drop_file = |why: &str| {
            warn!(from = msg.from, shard = msg.shard, why, "snapshot dropped");
            let _ = std::fs::remove_file(&msg.path);
        };
        let m = match RaftMessage::parse_from_bytes(&msg.message) {
            Ok(m) => m,
            Err(_) => return drop_file("undecodable message"),
        };
        let member = self.is_member(msg.shard, msg.from);
        if !member || m.get_msg_type() != MessageType::MsgSnapshot {
            return drop_file("not a snapshot from a member of the shard");
        }
        if m.from != msg.from || m.to != self.settings.host {
            return drop_file("forged or misdirected");
        }
        // Only from the incarnation on record; a snapshot never records one (Raft traffic
        // does, first).
        if self.peers.judge_known(msg.from, msg.incarnation) != Verdict::Accept {
            return drop_file("from an incarnation of the host other than the one on record");
        }
        match self.local.get(&msg.shard) {
            Some(r) => r.snapshots.do_send(StepSnapshot {
                message: m,
                path: msg.path,
            }),
            None => drop_file("shard not hosted here"),
        }
    }
}

/// To the RouterActor: this host's status, its local replicas in shard order (the answer to
/// an admin status request).
#[derive(Message)]
#[rtype(result = "HostStatus")]
pub struct GetHostStatus;

impl Handler<GetHostStatus> for RouterActor {
    type Result = ResponseFuture<HostStatus>;

    fn handle(&mut self, _: GetHostStatus, _: &mut Self::Context) -> Self::Result {
        let host = self.settings.host;
        let cluster = self.settings.cluster.clone();
        let layout = self.settings.layout.clone();
        let map_epoch = self.settings.map.epoch();
        let incarnation = self.settings.incarnation;
        let peer_incarnations = self.peers.records();
        let futs: Vec<_> = self
            .local
            .values()
            .map(|r| r.status.send(GetStatus))
            .collect();
        Box::pin(async move {
            let mut replicas = Vec::new();
            for f in futs {
                if let Ok(s) = f.await {
                    replicas.push(s);
                }
            }
            replicas.sort_by_key(|s| s.shard);
            HostStatus {
                host,
                cluster,
                version: env!("CARGO_PKG_VERSION").to_string(),
                replicas,
                layout,
                map_epoch,
                incarnation,
                peer_incarnations,
            }
        })
    }
}

/// To the RouterActor: change the replicas of `shard` through its replica here (see
/// [`shardkv_transport::wire::AdminRequest::ChangeReplicas`]).
#[derive(Message)]
#[rtype(result = "Response")]
pub struct ChangeShardReplicas {
    pub shard: ShardId,
    pub changes: Vec<shardkv_transport::wire::ReplicaChange>,
}

impl Handler<ChangeShardReplicas> for RouterActor {
    type Result = ResponseFuture<Response>;

    fn handle(&mut self, msg: ChangeShardReplicas, _: &mut Self::Context) -> Self::Result {
        let shard = msg.shard;
        match self.local_replica(shard) {
            Ok(replica) => answer_from(
                shard,
                replica.changes.send(ChangeReplicas {
                    changes: msg.changes,
                }),
            ),
            Err(resp) => Box::pin(async move { resp }),
        }
    }
}

/// To the RouterActor: hand the leadership of `shard` to voter `to`, through its replica here
/// (see [`shardkv_transport::wire::AdminRequest::TransferLeader`]).
#[derive(Message)]
#[rtype(result = "Response")]
pub struct TransferShardLeader {
    pub shard: ShardId,
    pub to: HostId,
}

impl Handler<TransferShardLeader> for RouterActor {
    type Result = ResponseFuture<Response>;

    fn handle(&mut self, msg: TransferShardLeader, _: &mut Self::Context) -> Self::Result {
        let shard = msg.shard;
        match self.local_replica(shard) {
            Ok(replica) => answer_from(
                shard,
                replica.transfer_to.send(TransferLeaderTo { to: msg.to }),
            ),
            Err(resp) => Box::pin(async move { resp }),
        }
    }
}

/// To the RouterActor: from now on deliver `shard`'s requests and Raft traffic to `replica`
/// (a replica started while the host runs, for a shard it is being added to). Refused, and
/// `replica` handed back so the caller can stop it, if the host already has one: two replicas
/// of one shard on one host would share its rows.
#[derive(Message)]
#[rtype(result = "Result<(), LocalReplica>")]
pub struct AddLocalReplica {
    pub shard: ShardId,
    pub replica: LocalReplica,
}

impl Handler<AddLocalReplica> for RouterActor {
    type Result = MessageResult<AddLocalReplica>;

    fn handle(&mut self, msg: AddLocalReplica, _: &mut Self::Context) -> Self::Result {
        if self.local.contains_key(&msg.shard) {
            warn!(
                shard = msg.shard,
                "a second replica of a shard hosted here refused"
            );
            return MessageResult(Err(msg.replica));
        }
        info!(shard = msg.shard, "now hosting a replica of the shard");
        if let Some(&host) = self.settings.map.preferred_leaders().get(&msg.shard) {
            msg.replica.preferred.do_send(SetPreferredLeader { host });
        }
        self.local.insert(msg.shard, msg.replica);
        MessageResult(Ok(()))
    }
}

/// To the RouterActor: stop delivering to `shard`'s replica here; its requests are answered
/// `NoReplicaHere` from now on and its Raft traffic dropped. Answers the replica (None if the
/// host had none), still running: the caller stops it and deletes its data.
#[derive(Message)]
#[rtype(result = "Option<LocalReplica>")]
pub struct RemoveLocalReplica {
    pub shard: ShardId,
}

impl Handler<RemoveLocalReplica> for RouterActor {
    type Result = MessageResult<RemoveLocalReplica>;

    fn handle(&mut self, msg: RemoveLocalReplica, _: &mut Self::Context) -> Self::Result {
        let removed = self.local.remove(&msg.shard);
        if removed.is_some() {
            info!(
                shard = msg.shard,
                "no longer hosting a replica of the shard"
            );
        }
        MessageResult(removed)
    }
}

/// To the RouterActor: ask every local leader to hand leadership away (graceful stop).
/// Answers how many local replicas were still leading.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct TransferAll;

impl Handler<TransferAll> for RouterActor {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _: TransferAll, _: &mut Self::Context) -> Self::Result {
        let futs: Vec<_> = self
            .local
            .values()
            .map(|r| r.transfer.send(TransferLeadership))
            .collect();
        Box::pin(async move {
            let mut leading = 0;
            for f in futs {
                if matches!(f.await, Ok(true)) {
                    leading += 1;
                }
            }
            leading
        })
    }
}

mod map;
mod split;
#[cfg(test)]
mod tests;

pub use map::{MapOp, SetMap};
pub use split::SplitLocalShard;
