//! Replica changes: the shard's Raft configuration changed by raft-rs `ConfChangeV2`.
//!
//! A move goes learner first (it catches up without counting toward any quorum), then one
//! joint change (promote the newcomer, demote or remove the old replica), then an explicit
//! leave of the joint configuration. Joint changes never leave by themselves: raft-rs may
//! never auto-leave if leadership changes before the joint configuration applies, so the
//! orchestrator always asks for the leave (a request with no changes).
//!
//! A committed change takes effect when the replica hands it to the state machine: the
//! replica applies it to raft-rs there, and the ShardActor stores the resulting
//! configuration in the same transaction as the applied index. A restart (or a snapshot,
//! built from one read transaction) therefore starts from the configuration as of the index
//! it starts from, and raft-rs re-delivers, and the replica re-applies, only the changes
//! after it.

use actix::prelude::*;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    Entry, EntryType,
};
use shardkv_transport::wire::{ReplicaChange, ReplicaTarget, Response};
use shardkv_transport::HostId;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::ReplicaActor;
use crate::messages::ChangeReplicas;

/// The configuration change `changes` asks for: no changes leaves a joint configuration,
/// one change is a simple change, several enter a joint configuration that only an explicit
/// leave ends.
pub fn conf_change_for(changes: &[ReplicaChange]) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    if changes.len() > 1 {
        cc.set_transition(ConfChangeTransition::Explicit);
    }
    for c in changes {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(match c.to {
            ReplicaTarget::Voter => ConfChangeType::AddNode,
            ReplicaTarget::Learner => ConfChangeType::AddLearnerNode,
            ReplicaTarget::Removed => ConfChangeType::RemoveNode,
        });
        single.node_id = c.host;
        cc.mut_changes().push(single);
    }
    cc
}

/// The role `host` has in `conf`.
pub fn role_in(conf: &ConfState, host: HostId) -> ReplicaTarget {
    if conf.voters.contains(&host) {
        ReplicaTarget::Voter
    } else if conf.learners.contains(&host) || conf.learners_next.contains(&host) {
        ReplicaTarget::Learner
    } else {
        ReplicaTarget::Removed
    }
}

/// Whether `conf` has `host` as a voter (incoming or outgoing) or a learner.
pub fn lists(conf: &ConfState, host: HostId) -> bool {
    conf.voters.contains(&host)
        || conf.voters_outgoing.contains(&host)
        || conf.learners.contains(&host)
        || conf.learners_next.contains(&host)
}

/// Whether `conf` is empty: a joining replica before the snapshot that configures it.
pub fn is_unconfigured(conf: &ConfState) -> bool {
    conf.voters.is_empty() && conf.voters_outgoing.is_empty() && conf.learners.is_empty()
}

/// Whether `conf` is joint (a change entered it and no leave has applied yet).
pub fn is_joint(conf: &ConfState) -> bool {
    !conf.voters_outgoing.is_empty()
}

/// Whether `conf` already is what `changes` ask for, so the request is done (a re-run after
/// a crash halfway must not change anything twice).
pub fn already_done(conf: &ConfState, changes: &[ReplicaChange]) -> bool {
    if changes.is_empty() {
        return !is_joint(conf);
    }
    !is_joint(conf) && changes.iter().all(|c| role_in(conf, c.host) == c.to)
}

/// The configuration change carried by a committed entry, if it is one.
pub fn conf_change_of(entry: &Entry) -> Result<Option<ConfChangeV2>, protobuf::ProtobufError> {
    match entry.get_entry_type() {
        EntryType::EntryConfChangeV2 => {
            let mut cc = ConfChangeV2::default();
            cc.merge_from_bytes(&entry.data)?;
            Ok(Some(cc))
        }
        EntryType::EntryConfChange => {
            // The older one-replica format (shardkv proposes only V2; raft-rs accepts both).
            let mut v1 = ConfChange::default();
            v1.merge_from_bytes(&entry.data)?;
            let mut single = ConfChangeSingle::default();
            single.set_change_type(v1.get_change_type());
            single.node_id = v1.node_id;
            let mut cc = ConfChangeV2::default();
            cc.mut_changes().push(single);
            Ok(Some(cc))
        }
        EntryType::EntryNormal => Ok(None),
    }
}

/// A change request waiting for its entry (the same index in the same term) to commit.
#[derive(Debug)]
pub struct ChangeWaiter {
    pub index: u64,
    pub term: u64,
    pub reply: oneshot::Sender<Response>,
}

impl Handler<ChangeReplicas> for ReplicaActor {
    type Result = ResponseFuture<Response>;

    fn handle(&mut self, msg: ChangeReplicas, ctx: &mut Self::Context) -> Self::Result {
        self.busy(ctx);
        let (tx, rx) = oneshot::channel();
        self.propose_change(&msg.changes, tx, ctx);
        let timeout = self.settings.request_timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(_)) => Response::Unavailable("change dropped by the replica; retry".into()),
                Err(_) => Response::Unavailable(format!("not committed within {timeout:?}; retry")),
            }
        })
    }
}

impl ReplicaActor {
    /// The configuration in effect here.
    pub(super) fn conf_state(&self) -> ConfState {
        self.node.raft.prs().conf().to_conf_state()
    }

    fn propose_change(
        &mut self,
        changes: &[ReplicaChange],
        reply: oneshot::Sender<Response>,
        ctx: &mut Context<Self>,
    ) {
        let refuse = |why: String| Response::Invalid(why);
        if !self.is_leader() {
            let _ = reply.send(self.not_leader());
            return;
        }
        let conf = self.conf_state();
        if already_done(&conf, changes) {
            let _ = reply.send(Response::Ok);
            return;
        }
        if self.node.raft.has_pending_conf() || self.change_waiter.is_some() {
            let _ = reply.send(Response::Unavailable(format!(
                "shard {}: a configuration change is still being applied; retry",
                self.shard
            )));
            return;
        }
        if is_joint(&conf) && !changes.is_empty() {
            let _ = reply.send(refuse(format!(
                "shard {} is in a joint configuration; leave it first (a change with no replicas)",
                self.shard
            )));
            return;
        }
        if changes.is_empty() && !conf.voters.contains(&self.host) {
            let _ = reply.send(refuse(format!(
                "host {} leads shard {} but is not a voter of the configuration being entered: \
                 move its leadership to an incoming voter before leaving the joint configuration",
                self.host, self.shard
            )));
            return;
        }
        for c in changes {
            if c.host == self.host && c.to != ReplicaTarget::Voter {
                let _ = reply.send(refuse(format!(
                    "host {} leads shard {}: move its leadership away before demoting or removing it",
                    self.host, self.shard
                )));
                return;
            }
            if c.to == ReplicaTarget::Voter && role_in(&conf, c.host) == ReplicaTarget::Removed {
                let _ = reply.send(refuse(format!(
                    "host {} holds no replica of shard {}: add it as a learner first, and \
                     promote it once it has caught up",
                    c.host, self.shard
                )));
                return;
            }
            if c.host != self.host && !self.links.peers.contains(c.host) {
                let _ = reply.send(refuse(format!(
                    "host {} has no Raft link from host {}: add it to the cluster map \
                     (`shardkv host add {}`) and retry once this host shows the map's new epoch \
                     (links follow the map within seconds)",
                    c.host, self.host, c.host
                )));
                return;
            }
        }
        if let Err(e) = self
            .node
            .propose_conf_change(Vec::new(), conf_change_for(changes))
        {
            let _ = reply.send(Response::Unavailable(format!("change dropped: {e}; retry")));
            return;
        }
        let index = self.node.raft.raft_log.last_index();
        let term = self.node.raft.term;
        info!(
            shard = self.shard,
            index,
            ?changes,
            "replica change proposed"
        );
        self.change_waiter = Some(ChangeWaiter { index, term, reply });
        self.schedule_drive(ctx);
    }

    /// Applies the configuration changes among `committed` (past what the stored
    /// configuration already holds) to raft-rs, answers the change waiting on them, and
    /// returns the configuration now in effect if any changed it (for the state machine to
    /// store with the applied index).
    pub(super) fn apply_conf_changes(
        &mut self,
        committed: &[Entry],
        ctx: &mut Context<Self>,
    ) -> Option<ConfState> {
        let mut changed = None;
        for e in committed {
            if e.index <= self.conf_applied_through {
                continue;
            }
            let outcome = match conf_change_of(e) {
                Ok(None) => None,
                Ok(Some(_)) if is_unconfigured(&self.conf_state()) => {
                    // Only a snapshot may configure a joining replica (see `ready.rs` `send`).
                    self.stop_fatally(
                        ctx,
                        "a replica with no configuration was sent log entries instead of a snapshot",
                        &format!("configuration change at index {}", e.index),
                    );
                    return None;
                }
                Ok(Some(cc)) => Some(match self.node.apply_conf_change(&cc) {
                    Ok(cs) => {
                        info!(shard = self.shard, index = e.index, conf = ?cs, "replica change applied");
                        // A lease was granted by the old configuration's quorum.
                        self.lease.reset();
                        changed = Some(cs);
                        Response::Ok
                    }
                    // Every replica refuses it alike (the change is deterministic): it has
                    // no effect anywhere.
                    Err(err) => {
                        warn!(shard = self.shard, index = e.index, error = %err, "committed replica change refused");
                        Response::Invalid(format!("change refused: {err}"))
                    }
                }),
                Err(err) => {
                    warn!(shard = self.shard, index = e.index, error = %err, "undecodable replica change ignored");
                    Some(Response::Internal(format!("undecodable change: {err}")))
                }
            };
            self.conf_applied_through = e.index;
            self.answer_change_waiter(e, outcome);
        }
        changed
    }

    /// The entry `e` committed with `outcome` (None: not a change): the waiting change is
    /// answered if it was this entry, and told to retry if its index went by with another.
    fn answer_change_waiter(&mut self, e: &Entry, outcome: Option<Response>) {
        let Some(w) = self.change_waiter.take_if(|w| w.index <= e.index) else {
            return;
        };
        let response = match outcome {
            Some(r) if w.index == e.index && w.term == e.term => r,
            _ => Response::Unavailable(
                "the change was not committed (leadership changed); retry".into(),
            ),
        };
        let _ = w.reply.send(response);
    }

    /// Leadership was lost: the waiting change may or may not commit; its caller re-checks.
    pub(super) fn fail_change_waiter(&mut self, resp: &Response) {
        if let Some(w) = self.change_waiter.take() {
            let _ = w.reply.send(resp.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(host: HostId, to: ReplicaTarget) -> ReplicaChange {
        ReplicaChange { host, to }
    }

    fn conf(voters: &[u64], outgoing: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            voters_outgoing: outgoing.to_vec(),
            learners: learners.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn one_change_is_simple_and_several_enter_a_joint_config_left_only_explicitly() {
        let simple = conf_change_for(&[change(4, ReplicaTarget::Learner)]);
        assert_eq!(simple.enter_joint(), None);
        assert!(!simple.leave_joint());
        let joint = conf_change_for(&[
            change(4, ReplicaTarget::Voter),
            change(1, ReplicaTarget::Removed),
        ]);
        assert_eq!(joint.enter_joint(), Some(false), "never auto-leave");
        assert_eq!(joint.changes[0].get_change_type(), ConfChangeType::AddNode);
        assert_eq!(
            joint.changes[1].get_change_type(),
            ConfChangeType::RemoveNode
        );
        assert!(conf_change_for(&[]).leave_joint());
    }

    #[test]
    fn a_change_already_in_effect_is_done_and_a_joint_config_is_never_done() {
        let c = conf(&[1, 2, 3], &[], &[4]);
        assert!(already_done(&c, &[change(4, ReplicaTarget::Learner)]));
        assert!(already_done(&c, &[change(5, ReplicaTarget::Removed)]));
        assert!(!already_done(&c, &[change(4, ReplicaTarget::Voter)]));
        assert!(already_done(&c, &[]), "nothing to leave");
        let joint = conf(&[1, 2, 4], &[1, 2, 3], &[]);
        assert!(!already_done(&joint, &[]));
        assert!(!already_done(&joint, &[change(4, ReplicaTarget::Voter)]));
    }

    #[test]
    fn roles_come_from_the_incoming_config() {
        let joint = ConfState {
            voters: vec![1, 2, 4],
            voters_outgoing: vec![1, 2, 3],
            learners_next: vec![3],
            ..Default::default()
        };
        assert_eq!(role_in(&joint, 4), ReplicaTarget::Voter);
        assert_eq!(role_in(&joint, 3), ReplicaTarget::Learner);
        assert_eq!(role_in(&joint, 9), ReplicaTarget::Removed);
    }

    #[test]
    fn entries_decode_to_their_change_and_normal_entries_to_none() {
        let cc = conf_change_for(&[change(2, ReplicaTarget::Learner)]);
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.data = cc.write_to_bytes().expect("encodes").into();
        assert_eq!(conf_change_of(&e).expect("decodes"), Some(cc));
        assert_eq!(conf_change_of(&Entry::default()).expect("normal"), None);
        e.data = vec![0xff, 0xff].into();
        assert!(conf_change_of(&e).is_err());
    }
}
