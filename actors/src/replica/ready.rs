//! The Ready loop, written in the order of Raft's safety rules.
//!
//! Persistence is pipelined: a Ready's entries are handed to storage and raft-rs moves on
//! (reading them from the storage's staging area meanwhile); what depends on their durability
//! (messages that promise them, and raft-rs counting them as persisted) waits for the fsync.
//! The replica keeps stepping messages and taking proposals while the disk works.

use actix::prelude::*;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use raft::ReadState;
use raft::StateRole;
use shardkv_transport::wire::Response;
use tracing::{info, warn};

use super::ReplicaActor;
use crate::messages::{
    ApplyEntries, FailWaiters, InstallSnapshot, PersistLog, ReadAt, SendRaft, Visible, WriteBatch,
};
use crate::metrics::{metrics, ShardLabels};
use crate::schema::raft_records;

/// Internal: handle Ready now.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Drive;

impl Handler<Drive> for ReplicaActor {
    type Result = ();

    fn handle(&mut self, _: Drive, ctx: &mut Self::Context) {
        self.drive_scheduled = false;
        self.drive(ctx);
    }
}

impl ReplicaActor {
    /// Handles Ready once the mailbox has drained, so one Ready carries everything that
    /// arrived meanwhile (proposals, acks, reads): one persist, one send per peer.
    pub(super) fn schedule_drive(&mut self, ctx: &mut Context<Self>) {
        if !self.drive_scheduled {
            self.drive_scheduled = true;
            ctx.notify(Drive);
        }
    }

    /// Steps 1-3 of the Ready loop; a snapshot install (step 3) finishes asynchronously
    /// before steps 4-7 run.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        self.start_read_round();
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
        self.finish_ready(ready, false, ctx);
    }

    fn install_snapshot(&mut self, ready: raft::Ready, ctx: &mut Context<Self>) {
        let meta = ready.snapshot().get_metadata().clone();
        let Some(path) = self.snapshots.take_incoming((meta.index, meta.term)) else {
            let missing = format!("no file for index {} term {}", meta.index, meta.term);
            return self.stop_fatally(ctx, "snapshot data missing", &missing);
        };
        let mut raft_ops = Vec::new();
        match raft_records::conf_state_op(self.shard, meta.get_conf_state()) {
            Ok(op) => raft_ops.push(op),
            Err(e) => return self.stop_fatally(ctx, "cannot encode conf state", &e),
        }
        let hs_stored = ready.hs().is_some();
        if let Some(hs) = ready.hs() {
            match raft_records::hard_state_op(self.shard, hs) {
                Ok(op) => raft_ops.push(op),
                Err(e) => return self.stop_fatally(ctx, "cannot encode hard state", &e),
            }
            self.persist.stored_with_snapshot(hs.clone());
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
                        act.snapshots.installed(ready.number(), meta.index);
                        // The snapshot's configuration is in effect (raft-rs applied it).
                        act.conf_applied_through = meta.index;
                        metrics()
                            .snapshots_installed
                            .get_or_create(&ShardLabels { shard })
                            .inc();
                        act.finish_ready(ready, hs_stored, ctx);
                    }
                    Ok(Err(e)) => act.stop_fatally(ctx, "snapshot install failed", &e),
                    Err(e) => act.stop_fatally(ctx, "shard actor unreachable", &e),
                }),
        );
    }

    /// Steps 4-7 of the Ready loop (after any snapshot is installed). `hs_stored`: the hard
    /// state of this Ready was already written with the snapshot.
    fn finish_ready(&mut self, mut ready: raft::Ready, hs_stored: bool, ctx: &mut Context<Self>) {
        // 4. Linearizable reads whose ReadIndex is confirmed: serve once applied up to it.
        self.serve_confirmed_reads(ready.take_read_states());

        // 5. Committed entries (raft-rs hands over only entries already persisted here) go
        //    to the state machine, in order; it applies asynchronously and durably.
        //    Configuration changes among them take effect now (see `membership.rs`).
        let committed = ready.take_committed_entries();
        let handed = committed.last().map(|e| e.index);
        if !committed.is_empty() {
            let conf_state = self.apply_conf_changes(&committed, ctx);
            self.links.apply.do_send(ApplyEntries {
                entries: committed,
                conf_state,
            });
        }

        // 6. New entries and hard state go to storage. The hard state must be durable before
        //    anything that depends on it leaves (a vote, a new term); a commit-only change
        //    rides along with the next entries (see `PersistPipeline::take_hard_state`).
        let entries = ready.take_entries();
        let mut batch = WriteBatch::default();
        if let Err(e) = raft_records::append_ops(self.shard, &entries, &mut batch.ops) {
            return self.stop_fatally(ctx, "cannot encode entries", &e);
        }
        if !hs_stored {
            // The Ready reports the hard state only when it changed since the last Ready; a
            // commit-only change skipped then is caught up here with the next entries.
            let hs = ready
                .hs()
                .cloned()
                .unwrap_or_else(|| self.node.raft.hard_state());
            if let Some(hs) = self.persist.take_hard_state(hs, !batch.ops.is_empty()) {
                match raft_records::hard_state_op(self.shard, &hs) {
                    Ok(op) => batch.ops.push(op),
                    Err(e) => return self.stop_fatally(ctx, "cannot encode hard state", &e),
                }
            }
        }
        let promises = ready.take_persisted_messages();
        let number = ready.number();
        self.node.mut_store().stage(number, entries);
        self.node.advance_append_async(ready);
        if let Some(index) = handed {
            self.node.advance_apply_to(index);
        }

        // 7. Once durable (and everything sent to storage before it, which commits in order):
        //    send the messages that promise it and let raft-rs count it.
        if batch.ops.is_empty() && self.persist.is_idle() {
            self.on_persisted(number, promises, ctx);
        } else {
            let must_wait = self.persist.sent(std::time::Instant::now());
            let persist = self.links.storage.send(PersistLog(batch));
            let done = persist.into_actor(self).map(move |res, act, ctx| {
                let now = std::time::Instant::now();
                let took = act.persist.finished(now);
                act.disk.persisted(now, took);
                match res {
                    Ok(Ok(visible)) => {
                        act.on_persisted(number, promises, ctx);
                        act.unstage_once_visible(number, visible, ctx);
                    }
                    Ok(Err(e)) => act.stop_fatally(ctx, "persist failed", &e),
                    Err(e) => act.stop_fatally(ctx, "storage unreachable", &e),
                }
            });
            if must_wait {
                // The disk is behind: stop taking work until it catches up (bounds memory).
                ctx.wait(done);
            } else {
                ctx.spawn(done);
            }
        }
        self.start_read_round();
        self.schedule_drive(ctx);
    }

    /// Serves the reads of confirmed ReadIndex rounds once the state machine has applied up to
    /// the round's index. A quorum confirmed our leadership after each read arrived, so the
    /// lease is renewed from it.
    fn serve_confirmed_reads(&mut self, states: Vec<ReadState>) {
        for rs in states {
            for read in self.reads.confirmed(&rs.request_ctx) {
                self.lease.renew(read.issued);
                self.links.read_at.do_send(ReadAt {
                    index: rs.index,
                    keys: read.keys,
                    reply: read.reply,
                });
            }
        }
    }

    /// The Ready numbered `number` (and every one before it) is durable.
    fn on_persisted(&mut self, number: u64, promises: Vec<RaftMessage>, ctx: &mut Context<Self>) {
        self.send(promises);
        self.node.on_persist_ready(number);
        if let Some(index) = self.snapshots.persisted(number) {
            // The snapshot counts as persisted now, and the state machine stands at it.
            self.node.advance_apply_to(index);
        }
        self.start_read_round();
        self.schedule_drive(ctx);
    }

    /// Once LMDB holds the Ready numbered `number` (and so every one before it: LMDB takes
    /// batches in order), its entries leave the staging area: reads find them in LMDB.
    fn unstage_once_visible(&mut self, number: u64, visible: Visible, ctx: &mut Context<Self>) {
        ctx.spawn(
            visible
                .wait()
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(()) => act.node.mut_store().unstage(number),
                    Err(e) => act.stop_fatally(ctx, "persist failed", &e),
                }),
        );
    }

    /// Asks one ReadIndex round for every read that arrived since the last one. raft-rs
    /// ignores ReadIndex on a leader that has not yet committed an entry of its own term;
    /// reads wait in the queue until it has, instead of timing out.
    pub(super) fn start_read_round(&mut self) {
        if !self.reads.has_waiting()
            || !self.is_leader()
            || !self.node.raft.commit_to_current_term()
        {
            return;
        }
        if let Some(context) = self.reads.start_round() {
            self.node.read_index(context);
        }
    }

    fn send(&mut self, messages: Vec<RaftMessage>) {
        for m in messages {
            if self.starts_newcomer_from_log(&m) {
                // A learner that joined with an empty log must start from a snapshot, which
                // carries the configuration; the log's first entries predate any it could
                // know. raft-rs sends the snapshot on the learner's next response.
                if let Some(pr) = self.node.raft.mut_prs().get_mut(m.to) {
                    pr.pending_request_snapshot = 1;
                }
                continue;
            }
            let to = m.to;
            let sent = self.links.peers.with(to, |peer| {
                let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
                if is_snapshot {
                    // The file stays until the follower reports (see `SnapshotReport`).
                    let meta = m.get_snapshot().get_metadata();
                    let path = self.node.store().snapshots().path(meta.index, meta.term);
                    self.node.store().snapshots().claim(&path);
                    self.snapshots.sending(to, path);
                }
                let report = is_snapshot.then(|| self.me.clone()).flatten();
                peer.do_send(SendRaft {
                    shard: self.shard,
                    message: m,
                    report,
                });
            });
            if sent.is_none() {
                warn!(shard = self.shard, to, "no link to Raft peer");
            }
        }
    }

    /// Whether `m` would send the log from its first entry to a learner that has nothing yet
    /// (a replica added after day 0; day-0 replicas are voters from the start).
    fn starts_newcomer_from_log(&self, m: &RaftMessage) -> bool {
        m.get_msg_type() == MessageType::MsgAppend
            && m.index == 0
            && self.node.raft.prs().conf().learners().contains(&m.to)
            && self
                .node
                .raft
                .prs()
                .get(m.to)
                .is_some_and(|pr| pr.matched == 0)
    }

    fn on_soft_state(&mut self, leader: u64, role: StateRole) {
        let m = metrics();
        let labels = ShardLabels { shard: self.shard };
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
            self.reads.fail_all(&resp);
            self.fail_change_waiter(&resp);
            // Proposed writes may still commit under the next leader: not a plain refusal.
            let lost = match resp {
                Response::NotLeader { shard, leader } => Response::LeaderLost { shard, leader },
                other => other,
            };
            self.links.fail_waiters.do_send(FailWaiters(lost));
        }
        if role != self.role {
            self.hibernation.forget_round();
            self.lease.reset();
            self.placement
                .role_changed(std::time::Instant::now(), role == StateRole::Leader);
        }
        self.role = role;
    }
}
