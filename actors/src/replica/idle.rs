//! The replica's side of hibernation (the rules are in [`super::hibernate`]): when its group
//! is quiet, when it stops and restarts its clock, and what wakes it.

use std::collections::BTreeSet;

use actix::prelude::*;
use raft::eraftpb::Message as RaftMessage;
use raft::StateRole;
use shardkv_transport::HostId;
use tokio::sync::broadcast::error::RecvError;
use tracing::debug;

use super::hibernate::{LeaderTick, Signal};
use super::membership::is_joint;
use super::{ReplicaActor, Tick};
use crate::messages::SendRaft;
use crate::metrics::{metrics, ShardLabels};

impl ReplicaActor {
    /// Starts the Raft clock. Ticks never catch up: after a stall (SIGSTOP, a long fsync, an
    /// overloaded host) one tick fires, then the schedule restarts from now. A burst of missed
    /// ticks would make this replica's election timer run faster than real time, so it could
    /// vote for a new leader while the old one still holds a lease it was granted in real
    /// time.
    pub(super) fn start_ticking(&mut self, ctx: &mut Context<Self>) {
        if self.ticks.is_some() {
            return;
        }
        let mut interval = tokio::time::interval_at(
            tokio::time::Instant::now() + self.settings.tick,
            self.settings.tick,
        );
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.ticks = Some(ctx.add_stream(futures::stream::unfold(
            interval,
            |mut interval| async move {
                interval.tick().await;
                Some((Tick, interval))
            },
        )));
    }

    /// Hears of every lost Raft link of the host, for as long as the replica lives.
    pub(super) fn watch_lost_links(&mut self, ctx: &mut Context<Self>) {
        let lost = self.links.peers.subscribe_lost();
        ctx.add_stream(futures::stream::unfold(lost, |mut lost| async move {
            match lost.recv().await {
                Ok(host) => Some((LinkLost(Some(host)), lost)),
                // Some losses were missed: any of them may have been the leader's.
                Err(RecvError::Lagged(_)) => Some((LinkLost(None), lost)),
                Err(RecvError::Closed) => None,
            }
        }));
    }

    /// The leader's part of a tick: ask the group to sleep once it has been quiet long enough.
    pub(super) fn hibernate_tick(&mut self, ctx: &mut Context<Self>) {
        if !self.is_leader() {
            return;
        }
        let quiet = self.is_quiet();
        let members: BTreeSet<HostId> = self
            .node
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != self.host)
            .collect();
        match self.hibernation.leader_tick(quiet, members) {
            LeaderTick::Stay => {}
            LeaderTick::Ask(context) => self.node.read_index(context),
            LeaderTick::Sleep => self.sleep(ctx),
        }
    }

    /// Whether this leader's group has nothing in flight: every member holds the whole log,
    /// all of it committed and handed to the state machine, and no read, replica change,
    /// leadership transfer or persist is under way here. A leader that should hand its
    /// leadership back to the preferred host is not quiet either (the hand-back runs on ticks).
    pub(super) fn is_quiet(&self) -> bool {
        let raft = &self.node.raft;
        let log = &raft.raft_log;
        let last = log.last_index();
        let conf = self.conf_state();
        let preferred = self.placement.preferred();
        raft.state == StateRole::Leader
            && raft.commit_to_current_term()
            && log.committed == last
            && log.applied == last
            && self.links.applied.get() >= last
            && raft.lead_transferee.is_none()
            && self.persist.is_idle()
            && self.reads.is_empty()
            && self.change_waiter.is_none()
            && !is_joint(&conf)
            && raft.prs().iter().all(|(_, pr)| pr.matched == last)
            && (preferred == self.host || !conf.voters.contains(&preferred))
    }

    /// Stops the clock.
    pub(super) fn sleep(&mut self, ctx: &mut Context<Self>) {
        self.hibernation.fall_asleep();
        if let Some(ticks) = self.ticks.take() {
            ctx.cancel_future(ticks);
        }
        self.hibernating_gauge(true);
        debug!(shard = self.shard, host = self.host, "hibernating");
    }

    /// A message from `from`, or a lost link (`None`): the clock runs again if it had
    /// stopped.
    pub(super) fn wake(&mut self, from: Option<HostId>, ctx: &mut Context<Self>) {
        let was_asleep = self.hibernation.wake();
        self.restart_clock(was_asleep, from, ctx);
    }

    /// Work for the group (a request, an admin change): awake, and quiet only after a whole
    /// idle stretch from now.
    pub(super) fn busy(&mut self, ctx: &mut Context<Self>) {
        let was_asleep = self.hibernation.busy();
        self.restart_clock(was_asleep, None, ctx);
    }

    /// After a sleep: a leader's check-quorum starts over from fresh answers (the flags still
    /// say who answered before it slept); a follower woken by anything but its leader wakes
    /// the leader (see [`super::hibernate`]).
    fn restart_clock(&mut self, was_asleep: bool, cause: Option<HostId>, ctx: &mut Context<Self>) {
        if !was_asleep {
            return;
        }
        self.start_ticking(ctx);
        self.hibernating_gauge(false);
        debug!(shard = self.shard, host = self.host, "awake");
        let host = self.host;
        let raft = &mut self.node.raft;
        match raft.state {
            StateRole::Leader => {
                raft.election_elapsed = 0;
                for (id, pr) in raft.mut_prs().iter_mut() {
                    if *id != host {
                        pr.recent_active = false;
                    }
                }
            }
            StateRole::Follower if raft.leader_id != 0 && cause != Some(raft.leader_id) => {
                let leader = raft.leader_id;
                let wake_up = Signal::wake_up(host, leader, raft.term, raft.raft_log.committed);
                self.links.peers.with(leader, |peer| {
                    peer.do_send(SendRaft {
                        shard: self.shard,
                        message: wake_up,
                        report: None,
                    })
                });
            }
            _ => {}
        }
    }

    /// Before stepping `m`: wakes the replica for activity from a member of its group (a
    /// replica removed without knowing it keeps asking for votes; that must not keep the
    /// group awake). Returns the signal and what [`Self::after_step`] compares against.
    pub(super) fn before_step(&mut self, m: &RaftMessage, ctx: &mut Context<Self>) -> StepSeen {
        let signal = Signal::of(m);
        if signal == Signal::Activity && self.node.raft.prs().get(m.from).is_some() {
            self.wake(Some(m.from), ctx);
        }
        StepSeen {
            signal,
            from: m.from,
            term: m.term,
            before: self.raft_standing(),
        }
    }

    /// After stepping: a step that changed the replica's term, role or leader wakes it; a
    /// follower told to sleep by its leader sleeps; a leader sleeps once every voter has
    /// answered its round in its term.
    pub(super) fn after_step(&mut self, seen: StepSeen, ctx: &mut Context<Self>) {
        if self.raft_standing() != seen.before {
            self.hibernation.forget_round();
            self.wake(Some(seen.from), ctx);
        }
        let raft = &self.node.raft;
        let in_term = raft.term == seen.term;
        match seen.signal {
            Signal::SleepRequest
                if in_term && raft.state == StateRole::Follower && raft.leader_id == seen.from =>
            {
                self.sleep(ctx)
            }
            Signal::SleepAnswer { round }
                if in_term
                    && raft.state == StateRole::Leader
                    && self.hibernation.answered(seen.from, round)
                    && self.is_quiet() =>
            {
                self.sleep(ctx)
            }
            _ => {}
        }
    }

    /// Term, role and leader: what a step that matters changes.
    fn raft_standing(&self) -> (u64, StateRole, HostId) {
        let raft = &self.node.raft;
        (raft.term, raft.state, raft.leader_id)
    }

    fn hibernating_gauge(&self, asleep: bool) {
        metrics()
            .raft_hibernating
            .get_or_create(&ShardLabels { shard: self.shard })
            .set(i64::from(asleep));
    }
}

/// What [`ReplicaActor::before_step`] saw of a message, for [`ReplicaActor::after_step`].
pub(super) struct StepSeen {
    signal: Signal,
    from: HostId,
    term: u64,
    before: (u64, StateRole, HostId),
}

/// Internal: the host's Raft link to this host was lost (`None`: some losses were missed).
struct LinkLost(Option<HostId>);

impl StreamHandler<LinkLost> for ReplicaActor {
    /// A sleeping follower hears nothing from a leader that is gone; once the link to the
    /// leader's host is lost, its election timer must run again.
    fn handle(&mut self, LinkLost(host): LinkLost, ctx: &mut Self::Context) {
        let leader = self.node.raft.leader_id;
        if self.hibernation.is_asleep() && host.is_none_or(|h| h == leader) {
            self.wake(None, ctx);
        }
    }

    /// The stream ends only with the host's link directory; the replica goes on.
    fn finished(&mut self, _: &mut Self::Context) {}
}
