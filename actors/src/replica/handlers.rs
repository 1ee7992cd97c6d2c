//! The replica's inbound messages: Raft traffic and snapshots from peers, snapshot reports,
//! status, and leadership hand-off (back to the preferred host, or away before a stop).

use std::time::Instant;

use actix::prelude::*;
use raft::eraftpb::MessageType;
use raft::StateRole;
use shardkv_transport::wire::ReplicaInfo;
use shardkv_transport::HostId;
use tracing::{debug, info, warn};

use super::placement::{best_transferee, FollowerProgress, ShutdownHandoff};
use super::{membership, ReplicaActor};
use crate::messages::{GetStatus, SnapshotReport, StepRaft, StepSnapshot, TransferLeadership};

impl Handler<StepRaft> for ReplicaActor {
    type Result = ();

    fn handle(&mut self, msg: StepRaft, ctx: &mut Self::Context) {
        if self.votes.refuses(&msg.0, Instant::now()) {
            debug!(
                shard = self.shard,
                from = msg.0.from,
                "vote request dropped: this replica started less than an election timeout ago"
            );
            return;
        }
        if msg.0.get_msg_type() == MessageType::MsgTimeoutNow
            && self
                .disk
                .is_slow(Instant::now(), self.persist.outstanding_since())
        {
            // Leading from a slow disk would make every write to the shard wait for it; the
            // leader's transfer runs out and it keeps leading.
            info!(
                shard = self.shard,
                from = msg.0.from,
                "refusing leadership: this host's disk is slow"
            );
            return;
        }
        let seen = self.before_step(&msg.0, ctx);
        if let Err(e) = self.node.step(msg.0) {
            debug!(shard = self.shard, error = %e, "step refused");
        }
        self.after_step(seen, ctx);
        self.schedule_drive(ctx);
    }
}

impl Handler<StepSnapshot> for ReplicaActor {
    type Result = ();

    fn handle(&mut self, msg: StepSnapshot, ctx: &mut Self::Context) {
        self.busy(ctx);
        let meta = msg.message.get_snapshot().get_metadata();
        self.snapshots.arrived((meta.index, meta.term), msg.path);
        if let Err(e) = self.node.step(msg.message) {
            debug!(shard = self.shard, error = %e, "snapshot step refused");
        }
        let wanted = self
            .node
            .raft
            .raft_log
            .unstable
            .snapshot
            .as_ref()
            .map(|s| (s.get_metadata().index, s.get_metadata().term));
        self.snapshots.keep_only(wanted);
        self.schedule_drive(ctx);
    }
}

impl Handler<SnapshotReport> for ReplicaActor {
    type Result = ();

    fn handle(&mut self, msg: SnapshotReport, ctx: &mut Self::Context) {
        self.busy(ctx);
        let status = if msg.ok {
            raft::SnapshotStatus::Finish
        } else {
            self.node.report_unreachable(msg.to);
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(msg.to, status);
        let in_use = self.snapshots.delivered(msg.to);
        self.node.store().snapshots().retire(&in_use);
        self.schedule_drive(ctx);
    }
}

impl Handler<GetStatus> for ReplicaActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        let raft = &self.node.raft;
        let conf = self.conf_state();
        let matched = if raft.state == StateRole::Leader {
            let mut m: Vec<(HostId, u64)> = raft
                .prs()
                .iter()
                .filter(|(id, _)| **id != self.host)
                .map(|(id, pr)| (*id, pr.matched))
                .collect();
            m.sort_unstable();
            m
        } else {
            Vec::new()
        };
        MessageResult(ReplicaInfo {
            shard: self.shard,
            term: raft.term,
            leader: (raft.leader_id != 0).then_some(raft.leader_id),
            is_leader: raft.state == StateRole::Leader,
            commit: raft.raft_log.committed,
            // What reads are served from, not what raft-rs has handed over.
            applied: self.links.applied.get(),
            last_index: raft.raft_log.last_index(),
            voters: sorted(conf.voters),
            voters_outgoing: sorted(conf.voters_outgoing),
            learners: sorted(
                conf.learners
                    .into_iter()
                    .chain(conf.learners_next)
                    .collect(),
            ),
            matched,
            slots: self.links.slots.get(),
        })
    }
}

fn sorted(mut ids: Vec<HostId>) -> Vec<HostId> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl Handler<TransferLeadership> for ReplicaActor {
    type Result = bool;

    /// Hands leadership to the most up-to-date active voter, once per stop; answers whether a
    /// hand-off is still worth waiting for.
    fn handle(&mut self, _: TransferLeadership, ctx: &mut Self::Context) -> bool {
        self.busy(ctx);
        if !self.is_leader() {
            return false;
        }
        match self.placement.shutdown_handoff(Instant::now()) {
            ShutdownHandoff::Waiting => return true,
            ShutdownHandoff::GaveUp => return false,
            ShutdownHandoff::Begin => {}
        }
        self.lease.suspend();
        let followers = self.replicas_progress();
        let Some(to) = best_transferee(self.host, followers) else {
            return false;
        };
        info!(
            shard = self.shard,
            to, "transferring leadership before shutdown"
        );
        self.node.transfer_leader(to);
        self.schedule_drive(ctx);
        true
    }
}

impl ReplicaActor {
    /// Hands leadership back to the preferred host once it is back and caught up. A leader
    /// that hands over stops serving lease reads at once: the transferee campaigns without
    /// waiting for the other followers' leases to run out.
    pub(super) fn balance_leadership(&mut self) {
        // Not while a replica change is joint: the preferred host may be the one leaving.
        if !self.is_leader() || membership::is_joint(&self.conf_state()) {
            return;
        }
        let preferred = self.follower_progress(self.placement.preferred());
        let Some(to) = self.placement.hand_back(
            Instant::now(),
            self.node.raft.lead_transferee.is_some(),
            preferred,
            self.node.raft.raft_log.last_index(),
        ) else {
            return;
        };
        self.lease.suspend();
        info!(
            shard = self.shard,
            to, "handing leadership to the shard's preferred host"
        );
        self.node.transfer_leader(to);
    }

    /// Hands leadership to the most up-to-date follower while this host's own persist has
    /// been outstanding longer than an election timeout: the shard's writes wait for the
    /// leader's disk, not for its followers'.
    pub(super) fn hand_away_from_slow_disk(&mut self) {
        if !self.is_leader() {
            return;
        }
        let now = Instant::now();
        let behind = self.disk.is_behind(now, self.persist.outstanding_since());
        let followers = self.replicas_progress();
        let Some(to) = self.placement.slow_disk_handoff(
            now,
            behind,
            self.node.raft.lead_transferee.is_some(),
            followers,
        ) else {
            return;
        };
        self.lease.suspend();
        warn!(
            shard = self.shard,
            to, "this host's disk is slow: handing leadership to an up-to-date follower"
        );
        crate::metrics::metrics()
            .raft_slow_disk_handoffs
            .get_or_create(&crate::metrics::ShardLabels { shard: self.shard })
            .inc();
        self.node.transfer_leader(to);
    }

    /// The replication progress of every voter of the shard as this leader tracks it (its
    /// own included).
    fn replicas_progress(&self) -> Vec<FollowerProgress> {
        self.node
            .raft
            .prs()
            .iter()
            .map(|(id, _)| *id)
            .filter_map(|id| self.follower_progress(id))
            .collect()
    }

    /// `host`'s replication progress as this leader tracks it, if it is a voter that stays
    /// (only a voter can take leadership, raft-rs ignores a transfer to a learner, and one
    /// that is leaving must not get it).
    fn follower_progress(&self, host: HostId) -> Option<FollowerProgress> {
        // The incoming voters: while a change is joint, an outgoing-only voter is leaving.
        if !self.conf_state().voters.contains(&host) {
            return None;
        }
        self.node.raft.prs().get(host).map(|pr| FollowerProgress {
            host,
            recent_active: pr.recent_active,
            matched: pr.matched,
        })
    }
}
