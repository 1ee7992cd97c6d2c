//! ReplicaActor: one shard's Raft replica on this host, driving a raft-rs `RawNode`.
//!
//! It ticks on a timer, steps inbound messages, turns client writes into proposals and
//! linearizable reads into ReadIndex requests, and handles `Ready` in the order the protocol's
//! safety rules demand (see [`ReplicaActor::drive`]). The state machine lives in the shard's
//! ShardActor: committed entries go there, so consensus and apply overlap.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use raft::eraftpb::{Entry, Message as RaftMessage};
use raft::{RawNode, StateRole};
use shardkv_transport::wire::{Op, ReadConsistency, ReplicaInfo, Response};
use shardkv_transport::{HostId, ShardId};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::messages::{
    Action, ApplyEntries, AwaitApply, ClientRequest, Command, FailWaiters, GetStatus,
    InstallSnapshot, Persist, ReadAt, SendRaft, SnapshotReport, StepRaft, StepSnapshot,
    TransferLeadership, WriteBatch,
};
use crate::raft_storage::LmdbRaftStorage;

/// Timing and limits of one replica.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// How long a request may wait for commit/apply before the client is told to retry.
    pub request_timeout: Duration,
    /// How long after a quorum confirmed its leadership (a ReadIndex round) the leader may
    /// serve lease reads without asking again. Must stay below the election timeout: with
    /// check-quorum on, followers refuse to vote for anyone else for that long after hearing
    /// from the leader.
    pub lease: Duration,
    /// The host that should lead this shard when healthy (None: whoever wins elections).
    pub preferred_leader: Option<HostId>,
}

/// Where a replica sends things; handed over by the daemon.
pub struct ReplicaLinks {
    pub storage: Recipient<Persist>,
    pub apply: Recipient<ApplyEntries>,
    pub await_apply: Recipient<AwaitApply>,
    pub read_at: Recipient<ReadAt>,
    pub fail_waiters: Recipient<FailWaiters>,
    pub install: Recipient<InstallSnapshot>,
    /// One per other host that holds a replica of this shard.
    pub peers: HashMap<HostId, Recipient<SendRaft>>,
}

struct PendingRead {
    /// When the ReadIndex round was asked for: a lease derived from it starts here.
    issued: Instant,
    key: Vec<u8>,
    reply: oneshot::Sender<Response>,
    deadline: Instant,
}

/// The actor; see the module docs.
pub struct ReplicaActor {
    shard: ShardId,
    host: HostId,
    node: RawNode<LmdbRaftStorage>,
    links: ReplicaLinks,
    settings: ReplicaSettings,
    /// ReadIndex requests waiting for their read state, by context id.
    pending_reads: HashMap<u64, PendingRead>,
    next_read_id: u64,
    /// Reads waiting for the next ReadIndex round to be asked.
    deferred_reads: Vec<u64>,
    /// ReadIndex rounds asked and not yet confirmed: round id -> the reads it serves.
    read_rounds: HashMap<u64, Vec<u64>>,
    /// Ready batches handed to storage and not yet durable.
    persists_in_flight: usize,
    /// A drive is queued behind the messages already in the mailbox.
    drive_scheduled: bool,
    leader: u64,
    role: StateRole,
    /// The hard state as last written to storage.
    stored_hs: raft::eraftpb::HardState,
    /// Until when lease reads may be served locally (leaders only).
    lease_until: Option<Instant>,
    /// Leadership is being handed away: no lease reads (the transferee may campaign at once).
    transferring: bool,
    /// When this replica tried to hand its leadership away for a shutdown.
    handoff_at: Option<Instant>,
    /// Set when a snapshot was installed: (Ready number, index). Once raft-rs counts that
    /// Ready as persisted, it must also count the snapshot as applied.
    snapshot_applied: Option<(u64, u64)>,
    /// This actor, for snapshot reports from the PeerActors.
    me: Option<Recipient<SnapshotReport>>,
    /// Snapshot files that arrived, by (index, term), waiting for raft-rs to accept them.
    incoming_snapshots: HashMap<(u64, u64), std::path::PathBuf>,
    /// Snapshot files being streamed to followers, by follower (kept until it reports).
    snapshots_out: HashMap<u64, std::path::PathBuf>,
    /// The host that should lead this shard when it is healthy (the first of its placement),
    /// so that leaders, and the work only leaders do, spread over the hosts.
    preferred_leader: HostId,
    /// When this replica last became leader, or last tried to hand leadership to the
    /// preferred host.
    balanced_at: Instant,
    /// Until then, vote requests are dropped (see `refuses_vote`).
    votes_refused_until: Instant,
}

impl ReplicaActor {
    /// Builds the replica over its storage. `applied` is the durable apply index, so raft-rs
    /// hands over only entries the state machine has not applied yet.
    pub fn new(
        shard: ShardId,
        host: HostId,
        storage: LmdbRaftStorage,
        applied: u64,
        settings: ReplicaSettings,
        links: ReplicaLinks,
        logger: &slog::Logger,
    ) -> Result<Self, crate::error::ActorError> {
        // Applied never exceeds the stored commit (raft-rs refuses to start otherwise); if a
        // crash left it so, re-deliver from the commit: the ShardActor skips what it applied.
        let stored_hs = storage.hard_state()?;
        let votes_refused_until = Instant::now() + election_timeout(&settings);
        let preferred_leader = settings.preferred_leader.unwrap_or(host);
        let applied = applied.min(stored_hs.commit);
        let cfg = raft::Config {
            id: host,
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()
            .map_err(|e| crate::error::ActorError::Raft(e.to_string()))?;
        let logger = logger.new(slog::o!("shard" => shard, "host" => host));
        let node = RawNode::new(&cfg, storage, &logger)
            .map_err(|e| crate::error::ActorError::Raft(e.to_string()))?;
        Ok(ReplicaActor {
            shard,
            host,
            node,
            links,
            settings,
            pending_reads: HashMap::new(),
            next_read_id: 1,
            deferred_reads: Vec::new(),
            read_rounds: HashMap::new(),
            persists_in_flight: 0,
            drive_scheduled: false,
            leader: 0,
            role: StateRole::Follower,
            stored_hs,
            lease_until: None,
            transferring: false,
            me: None,
            snapshot_applied: None,
            handoff_at: None,
            incoming_snapshots: HashMap::new(),
            snapshots_out: HashMap::new(),
            preferred_leader,
            balanced_at: Instant::now(),
            votes_refused_until,
        })
    }

    /// Hands leadership to the preferred host once it is back and caught up, after this
    /// replica has led for a while (so an election settles first and a flapping host cannot
    /// make leadership ping-pong faster than once per interval). A leader that hands over
    /// stops serving lease reads at once: the transferee campaigns without waiting for the
    /// other followers' leases to run out.
    fn balance_leadership(&mut self) {
        let interval = election_timeout(&self.settings) * 2;
        let pref = self.preferred_leader;
        if pref == self.host
            || !self.is_leader()
            || self.handoff_at.is_some()
            || self.node.raft.lead_transferee.is_some()
            || self.balanced_at.elapsed() < interval
        {
            return;
        }
        let last = self.node.raft.raft_log.last_index();
        let ready = self
            .node
            .raft
            .prs()
            .get(pref)
            .is_some_and(|pr| pr.recent_active && pr.matched == last);
        if !ready {
            return;
        }
        self.balanced_at = Instant::now();
        self.lease_until = None;
        self.transferring = true;
        info!(
            shard = self.shard,
            to = pref,
            "handing leadership to the shard's preferred host"
        );
        self.node.transfer_leader(pref);
    }

    /// A replica that just started may have acknowledged a leader right before it went down,
    /// and that leader may still serve lease reads on the strength of it. raft-rs only
    /// protects such a lease while a follower remembers its leader, which a restart forgets;
    /// so for one election timeout after start this replica votes for nobody. A leadership
    /// transfer is let through: the leader handing over has already given up its lease.
    fn refuses_vote(&self, m: &RaftMessage) -> bool {
        use raft::eraftpb::MessageType;
        matches!(
            m.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) && m.get_context() != raft::CAMPAIGN_TRANSFER
            && Instant::now() < self.votes_refused_until
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    fn not_leader(&self) -> Response {
        let leader = self.node.raft.leader_id;
        Response::NotLeader {
            shard: self.shard,
            leader: (leader != 0 && leader != self.host).then_some(leader),
        }
    }

    /// Handles Ready once the mailbox has drained, so one Ready carries everything that
    /// arrived meanwhile (proposals, acks, reads): one persist, one send per peer.
    fn schedule_drive(&mut self, ctx: &mut Context<Self>) {
        if !self.drive_scheduled {
            self.drive_scheduled = true;
            ctx.notify(Drive);
        }
    }

    /// The Ready loop, in the order of Raft's safety rules. Persistence is pipelined: a
    /// Ready's entries are handed to storage and raft-rs moves on (reading them from the
    /// storage's staging area meanwhile); what depends on their durability — messages that
    /// promise them, and raft-rs counting them as persisted — waits for the fsync. The
    /// replica keeps stepping messages and taking proposals while the disk works.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        self.issue_deferred_reads();
        if !self.node.has_ready() {
            return;
        }
        let mut ready = self.node.ready();

        // 1. Leadership changes: log them, and fail what only a leader could finish.
        if let Some(ss) = ready.ss() {
            self.on_soft_state(ss.leader_id, ss.raft_state);
        }

        // 2. Messages that need nothing on our disk first (a leader's appends and heartbeats
        //    may go out while it persists the same entries: raft-rs counts the leader's own
        //    copy only once it is persisted).
        self.send(ready.take_messages());

        // 3. A snapshot from the leader replaces the shard's state and log; it is installed
        //    (durably, with the hard state) before anything else of this Ready.
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready, ctx);
            return;
        }
        self.drive_rest(ready, false, ctx);
    }

    fn install_snapshot(&mut self, ready: raft::Ready, ctx: &mut Context<Self>) {
        let meta = ready.snapshot().get_metadata().clone();
        let Some(path) = self.incoming_snapshots.remove(&(meta.index, meta.term)) else {
            error!(
                shard = self.shard,
                index = meta.index,
                "snapshot data missing; stopping replica"
            );
            ctx.stop();
            return;
        };
        let mut raft_ops = Vec::new();
        match LmdbRaftStorage::conf_state_op(self.shard, meta.get_conf_state()) {
            Ok(op) => raft_ops.push(op),
            Err(e) => {
                error!(shard = self.shard, error = %e, "cannot encode conf state; stopping replica");
                ctx.stop();
                return;
            }
        }
        let hs_done = ready.hs().is_some();
        if let Some(hs) = ready.hs() {
            match LmdbRaftStorage::hard_state_op(self.shard, hs) {
                Ok(op) => raft_ops.push(op),
                Err(e) => {
                    error!(shard = self.shard, error = %e, "cannot encode hard state; stopping replica");
                    ctx.stop();
                    return;
                }
            }
            self.stored_hs = hs.clone();
        }
        let install = self.links.install.send(InstallSnapshot {
            index: meta.index,
            term: meta.term,
            path,
            raft_ops,
        });
        let shard = self.shard;
        ctx.wait(
            install
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(Ok(())) => {
                        info!(
                            shard,
                            index = meta.index,
                            term = meta.term,
                            "snapshot installed"
                        );
                        act.node.mut_store().clear_staged();
                        act.snapshot_applied = Some((ready.number(), meta.index));
                        crate::metrics::metrics()
                            .snapshots_installed
                            .get_or_create(&crate::metrics::ShardLabels { shard })
                            .inc();
                        act.drive_rest(ready, hs_done, ctx);
                    }
                    Ok(Err(e)) => {
                        error!(shard, error = %e, "snapshot install failed; stopping replica");
                        ctx.stop();
                    }
                    Err(e) => {
                        error!(shard, error = %e, "shard actor unreachable; stopping replica");
                        ctx.stop();
                    }
                }),
        );
    }

    /// Steps 4-7 of the Ready loop (after any snapshot is installed).
    fn drive_rest(&mut self, mut ready: raft::Ready, hs_stored: bool, ctx: &mut Context<Self>) {
        // 4. Linearizable reads whose ReadIndex is confirmed: serve once applied up to it.
        for rs in ready.take_read_states() {
            let Some(round) = read_id(&rs.request_ctx) else {
                continue;
            };
            let Some(ids) = self.read_rounds.remove(&round) else {
                continue;
            };
            for p in ids.iter().filter_map(|id| self.pending_reads.remove(id)) {
                // A quorum confirmed our leadership after `issued`: lease reads may be served
                // locally until `issued + lease` (never while handing leadership away).
                if !self.transferring {
                    let until = p.issued + self.settings.lease;
                    self.lease_until = Some(self.lease_until.map_or(until, |u| u.max(until)));
                }
                self.links.read_at.do_send(ReadAt {
                    index: rs.index,
                    key: p.key,
                    reply: p.reply,
                });
            }
        }

        // 5. Committed entries (raft-rs hands over only entries already persisted here) go
        //    to the state machine, in order.
        let committed = ready.take_committed_entries();
        let handed = committed.last().map(|e| e.index);
        self.apply(committed);

        // 6. New entries and hard state go to storage. The hard state must be durable before
        //    anything that depends on it leaves (a vote, a new term). A change of the commit
        //    index alone need not be: it is re-learned from the leader after a restart, and
        //    applied is clamped to the stored commit at start; so it rides along with the next
        //    write instead of costing an fsync on every write's path.
        let entries = ready.take_entries();
        let mut batch = WriteBatch::default();
        if let Err(e) = LmdbRaftStorage::append_ops(self.shard, &entries, &mut batch.ops) {
            error!(shard = self.shard, error = %e, "cannot encode entries; stopping replica");
            ctx.stop();
            return;
        }
        if !hs_stored {
            // The Ready reports the hard state only when it changed since the last Ready; a
            // commit-only change skipped then is caught up here with the next entries.
            let hs = ready
                .hs()
                .cloned()
                .unwrap_or_else(|| self.node.raft.hard_state());
            let hs = &hs;
            let term_or_vote = hs.term != self.stored_hs.term || hs.vote != self.stored_hs.vote;
            if term_or_vote || (!batch.ops.is_empty() && *hs != self.stored_hs) {
                match LmdbRaftStorage::hard_state_op(self.shard, hs) {
                    Ok(op) => batch.ops.push(op),
                    Err(e) => {
                        error!(shard = self.shard, error = %e, "cannot encode hard state; stopping replica");
                        ctx.stop();
                        return;
                    }
                }
                self.stored_hs = hs.clone();
            }
        }
        let promises = ready.take_persisted_messages();
        let number = ready.number();
        self.node.mut_store().stage(number, entries);
        self.node.advance_append_async(ready);
        if let Some(index) = handed {
            // The ShardActor applies asynchronously and durably, in order.
            self.node.advance_apply_to(index);
        }

        // 7. Once durable (and everything sent to storage before it, which commits in order):
        //    send the messages that promise it and let raft-rs count it.
        if batch.ops.is_empty() && self.persists_in_flight == 0 {
            self.on_persisted(number, promises, ctx);
        } else {
            self.persists_in_flight += 1;
            let persist = self.links.storage.send(Persist(batch));
            let done = persist.into_actor(self).map(move |res, act, ctx| {
                act.persists_in_flight -= 1;
                match res {
                    Ok(Ok(())) => act.on_persisted(number, promises, ctx),
                    Ok(Err(e)) => {
                        error!(shard = act.shard, error = %e, "persist failed; stopping replica");
                        ctx.stop();
                    }
                    Err(e) => {
                        error!(shard = act.shard, error = %e, "storage unreachable; stopping replica");
                        ctx.stop();
                    }
                }
            });
            if self.persists_in_flight > PERSISTS_IN_FLIGHT_MAX {
                // The disk is behind: stop taking work until it catches up (bounds memory).
                ctx.wait(done);
            } else {
                ctx.spawn(done);
            }
        }
        self.issue_deferred_reads();
        self.schedule_drive(ctx);
    }

    fn on_persisted(&mut self, number: u64, promises: Vec<RaftMessage>, ctx: &mut Context<Self>) {
        self.node.mut_store().unstage(number);
        self.send(promises);
        self.node.on_persist_ready(number);
        if let Some((n, index)) = self.snapshot_applied {
            if n <= number {
                // The snapshot counts as persisted now, and the state machine stands at it.
                self.snapshot_applied = None;
                self.node.advance_apply_to(index);
            }
        }
        self.issue_deferred_reads();
        self.schedule_drive(ctx);
    }

    /// Asks one ReadIndex round for every read that arrived since the last one: all reads of
    /// a mailbox drain share a single quorum confirmation. raft-rs ignores ReadIndex on a
    /// leader that has not yet committed an entry of its own term; reads wait here until it
    /// has, instead of timing out.
    fn issue_deferred_reads(&mut self) {
        if self.deferred_reads.is_empty()
            || !self.is_leader()
            || !self.node.raft.commit_to_current_term()
        {
            return;
        }
        let ids: Vec<u64> = std::mem::take(&mut self.deferred_reads)
            .into_iter()
            .filter(|id| self.pending_reads.contains_key(id))
            .collect();
        if ids.is_empty() {
            return;
        }
        let round = self.next_read_id;
        self.next_read_id += 1;
        self.read_rounds.insert(round, ids);
        self.node.read_index(round.to_be_bytes().to_vec());
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        if !entries.is_empty() {
            self.links.apply.do_send(ApplyEntries(entries));
        }
    }

    fn send(&mut self, msgs: Vec<RaftMessage>) {
        for m in msgs {
            match self.links.peers.get(&m.to) {
                Some(peer) => {
                    let is_snapshot = m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
                    if is_snapshot {
                        let meta = m.get_snapshot().get_metadata();
                        let path = self.node.store().snapshot_path(meta.index, meta.term);
                        self.node.store().claim_snapshot(&path);
                        self.snapshots_out.insert(m.to, path);
                    }
                    let report = is_snapshot.then(|| self.me.clone()).flatten();
                    peer.do_send(SendRaft {
                        shard: self.shard,
                        message: m,
                        report,
                    })
                }
                None => warn!(shard = self.shard, to = m.to, "no link to Raft peer"),
            }
        }
    }

    fn on_soft_state(&mut self, leader: u64, role: StateRole) {
        let m = crate::metrics::metrics();
        let labels = crate::metrics::ShardLabels { shard: self.shard };
        m.raft_is_leader
            .get_or_create(&labels)
            .set(i64::from(role == StateRole::Leader));
        m.raft_term
            .get_or_create(&labels)
            .set(i64::try_from(self.node.raft.term).unwrap_or(i64::MAX));
        if role == StateRole::Candidate && self.role != StateRole::Candidate {
            m.raft_elections.get_or_create(&labels).inc();
        }
        if leader != self.leader {
            m.raft_leader_changes.get_or_create(&labels).inc();
            info!(
                shard = self.shard,
                host = self.host,
                term = self.node.raft.term,
                leader,
                "leader changed"
            );
            self.leader = leader;
        }
        if self.role == StateRole::Leader && role != StateRole::Leader {
            let resp = self.not_leader();
            for (_, p) in self.pending_reads.drain() {
                let _ = p.reply.send(resp.clone());
            }
            self.deferred_reads.clear();
            self.read_rounds.clear();
            self.links.fail_waiters.do_send(FailWaiters(resp));
        }
        if role != self.role {
            self.lease_until = None;
            self.transferring = false;
            self.balanced_at = Instant::now();
        }
        self.role = role;
    }

    fn expire_reads(&mut self) {
        let now = Instant::now();
        self.pending_reads
            .retain(|_, p| p.deadline > now && !p.reply.is_closed());
        let pending = &self.pending_reads;
        self.read_rounds
            .retain(|_, ids| ids.iter().any(|id| pending.contains_key(id)));
    }

    fn handle_request(
        &mut self,
        req: shardkv_transport::wire::Request,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        match req.op {
            Op::Get {
                key,
                consistency: ReadConsistency::Stale,
            } => {
                self.links.read_at.do_send(ReadAt {
                    index: 0,
                    key,
                    reply: tx,
                });
            }
            Op::Get {
                key,
                consistency: consistency @ (ReadConsistency::Linearizable | ReadConsistency::Lease),
            } => {
                if !self.is_leader() {
                    let _ = tx.send(self.not_leader());
                    return rx;
                }
                let now = Instant::now();
                if consistency == ReadConsistency::Lease
                    && !self.transferring
                    && self.node.raft.commit_to_current_term()
                    && self.lease_until.is_some_and(|u| u > now)
                {
                    // Everything acknowledged so far is committed at or below this index.
                    let index = self.node.raft.raft_log.committed;
                    self.links.read_at.do_send(ReadAt {
                        index,
                        key,
                        reply: tx,
                    });
                    return rx;
                }
                let id = self.next_read_id;
                self.next_read_id += 1;
                // Joins the next ReadIndex round (asked when the mailbox has drained).
                self.deferred_reads.push(id);
                self.pending_reads.insert(
                    id,
                    PendingRead {
                        issued: now,
                        key,
                        reply: tx,
                        deadline: Instant::now() + self.settings.request_timeout,
                    },
                );
                self.schedule_drive(ctx);
            }
            Op::Put { key, value } => {
                self.propose(req.client_id, req.seq, Action::Put { key, value }, tx, ctx)
            }
            Op::Delete { key } => {
                self.propose(req.client_id, req.seq, Action::Delete { key }, tx, ctx)
            }
            Op::Cas { key, expected, new } => {
                let action = Action::Cas { key, expected, new };
                self.propose(req.client_id, req.seq, action, tx, ctx)
            }
        }
        rx
    }

    fn propose(
        &mut self,
        client_id: u64,
        seq: u64,
        action: Action,
        tx: oneshot::Sender<Response>,
        ctx: &mut Context<Self>,
    ) {
        if !self.is_leader() {
            let _ = tx.send(self.not_leader());
            return;
        }
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let cmd = Command {
            client_id,
            seq,
            time_ms,
            action,
        };
        let data = match postcard::to_allocvec(&cmd) {
            Ok(d) => d,
            Err(e) => {
                let _ = tx.send(Response::Internal(format!("cannot encode command: {e}")));
                return;
            }
        };
        if let Err(e) = self.node.propose(vec![], data) {
            let _ = tx.send(Response::Unavailable(format!(
                "proposal dropped: {e}; retry"
            )));
            return;
        }
        let index = self.node.raft.raft_log.last_index();
        let term = self.node.raft.term;
        crate::metrics::metrics()
            .raft_proposals
            .get_or_create(&crate::metrics::ShardLabels { shard: self.shard })
            .inc();
        self.links.await_apply.do_send(AwaitApply {
            index,
            term,
            reply: tx,
        });
        self.schedule_drive(ctx);
    }
}

/// Ready batches that may be on their way to disk at once; past this, the replica waits.
pub(crate) const PERSISTS_IN_FLIGHT_MAX: usize = 32;

fn remove_snapshot_file(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        warn!(path = %path.display(), error = %e, "cannot remove snapshot file");
    }
}

/// The base election timeout in real time.
fn election_timeout(settings: &ReplicaSettings) -> Duration {
    settings.tick * u32::try_from(settings.election_ticks).unwrap_or(u32::MAX)
}

fn read_id(ctx: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(ctx.try_into().ok()?))
}

impl Actor for ReplicaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::MAILBOX_CAPACITY);
        self.me = Some(ctx.address().recipient());
        // Ticks never catch up: after a stall (SIGSTOP, a long fsync, an overloaded host)
        // one tick fires, then the schedule restarts from now. A burst of missed ticks would
        // make this replica's election timer run faster than real time, so it could vote for
        // a new leader while the old one still holds a lease it was granted in real time.
        let mut interval = tokio::time::interval_at(
            tokio::time::Instant::now() + self.settings.tick,
            self.settings.tick,
        );
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ctx.add_stream(futures::stream::unfold(
            interval,
            |mut interval| async move {
                interval.tick().await;
                Some((Tick, interval))
            },
        ));
        // A single-replica group elects itself at once instead of waiting a timeout.
        if self.node.raft.prs().conf().voters().ids().len() == 1 {
            let _ = self.node.campaign();
        }
        self.schedule_drive(ctx);
        debug!(shard = self.shard, host = self.host, "replica started");
    }
}

/// Internal: one Raft tick is due.
struct Tick;

impl StreamHandler<Tick> for ReplicaActor {
    fn handle(&mut self, _: Tick, ctx: &mut Self::Context) {
        self.node.tick();
        self.expire_reads();
        self.balance_leadership();
        self.schedule_drive(ctx);
    }
}

/// Internal: handle Ready now.
#[derive(Message)]
#[rtype(result = "()")]
struct Drive;

impl Handler<Drive> for ReplicaActor {
    type Result = ();

    fn handle(&mut self, _: Drive, ctx: &mut Self::Context) {
        self.drive_scheduled = false;
        self.drive(ctx);
    }
}

impl Handler<StepSnapshot> for ReplicaActor {
    type Result = ();

    fn handle(&mut self, msg: StepSnapshot, ctx: &mut Self::Context) {
        let meta = msg.message.get_snapshot().get_metadata();
        let key = (meta.index, meta.term);
        // Only the newest arrival per point is kept; older files are dropped.
        if let Some(old) = self.incoming_snapshots.insert(key, msg.path) {
            remove_snapshot_file(&old);
        }
        if let Err(e) = self.node.step(msg.message) {
            debug!(shard = self.shard, error = %e, "snapshot step refused");
        }
        // Keep only the file raft-rs now wants installed (if any): one it refused (stale, or
        // from a deposed leader) or superseded will never be asked for.
        let wanted = self
            .node
            .raft
            .raft_log
            .unstable
            .snapshot
            .as_ref()
            .map(|s| (s.get_metadata().index, s.get_metadata().term));
        self.incoming_snapshots.retain(|k, path| {
            let keep = Some(*k) == wanted;
            if !keep {
                remove_snapshot_file(path);
            }
            keep
        });
        self.schedule_drive(ctx);
    }
}

impl Handler<SnapshotReport> for ReplicaActor {
    type Result = ();

    fn handle(&mut self, msg: SnapshotReport, ctx: &mut Self::Context) {
        let status = if msg.ok {
            raft::SnapshotStatus::Finish
        } else {
            self.node.report_unreachable(msg.to);
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(msg.to, status);
        self.snapshots_out.remove(&msg.to);
        let in_use: Vec<&std::path::Path> =
            self.snapshots_out.values().map(|p| p.as_path()).collect();
        self.node.store().retire_snapshots(&in_use);
        self.schedule_drive(ctx);
    }
}

impl Handler<StepRaft> for ReplicaActor {
    type Result = ();

    fn handle(&mut self, msg: StepRaft, ctx: &mut Self::Context) {
        if self.refuses_vote(&msg.0) {
            debug!(
                shard = self.shard,
                from = msg.0.from,
                "vote request dropped: this replica started less than an election timeout ago"
            );
            return;
        }
        if let Err(e) = self.node.step(msg.0) {
            debug!(shard = self.shard, error = %e, "step refused");
        }
        self.schedule_drive(ctx);
    }
}

impl Handler<ClientRequest> for ReplicaActor {
    type Result = ResponseFuture<Response>;

    fn handle(&mut self, msg: ClientRequest, ctx: &mut Self::Context) -> Self::Result {
        let rx = self.handle_request(msg.0, ctx);
        let timeout = self.settings.request_timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(_)) => Response::Unavailable("request dropped by the replica; retry".into()),
                Err(_) => Response::Unavailable(format!("not committed within {timeout:?}; retry")),
            }
        })
    }
}

impl Handler<GetStatus> for ReplicaActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        let raft = &self.node.raft;
        MessageResult(ReplicaInfo {
            shard: self.shard,
            term: raft.term,
            leader: (raft.leader_id != 0).then_some(raft.leader_id),
            is_leader: raft.state == StateRole::Leader,
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            last_index: raft.raft_log.last_index(),
        })
    }
}

impl Handler<TransferLeadership> for ReplicaActor {
    type Result = bool;

    /// Hands leadership to the most up-to-date active voter, once per shutdown; answers
    /// whether a hand-off is still worth waiting for. When every host stops at once (say
    /// `shardkv up` ending), peers would pass leadership back and forth; one attempt each,
    /// bounded by an election timeout, ends that quickly.
    fn handle(&mut self, _: TransferLeadership, ctx: &mut Self::Context) -> bool {
        if !self.is_leader() {
            return false;
        }
        let patience = election_timeout(&self.settings);
        if let Some(at) = self.handoff_at {
            return at.elapsed() < patience;
        }
        self.handoff_at = Some(Instant::now());
        let me = self.host;
        let best = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, pr)| **id != me && pr.recent_active)
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(id, _)| *id);
        self.lease_until = None;
        self.transferring = true;
        match best {
            Some(to) => {
                info!(
                    shard = self.shard,
                    to, "transferring leadership before shutdown"
                );
                self.node.transfer_leader(to);
                self.schedule_drive(ctx);
                true
            }
            None => false,
        }
    }
}
