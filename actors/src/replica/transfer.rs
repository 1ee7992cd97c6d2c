//! Leadership moved on request: an operator (or the rebalancer) asks a shard's leader to hand
//! its leadership to a named voter, so leaders can be spread over hosts or moved off a host
//! about to be drained. The answer says only whether the transfer was started; raft-rs
//! completes it in the background (or abandons it after an election timeout), so the caller
//! polls the shard's status to see where leadership ended up.

use actix::prelude::*;
use shardkv_transport::wire::Response;
use shardkv_transport::HostId;
use tracing::info;

use super::ReplicaActor;

/// To a ReplicaActor: hand the shard's leadership to voter `to` (see
/// [`shardkv_transport::wire::AdminRequest::TransferLeader`]).
#[derive(Message)]
#[rtype(result = "Response")]
pub struct TransferLeaderTo {
    pub to: HostId,
}

/// What a replica does with a [`TransferLeaderTo`], decided from what it knows of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferDecision {
    /// `to` already leads: nothing to do (a re-run after a lost answer is harmless).
    AlreadyLeader,
    /// This replica does not lead, so it cannot hand leadership over.
    NotLeader,
    /// `to` is not a voter of the current configuration: it could never win.
    NotAVoter,
    /// Start the transfer.
    Start,
}

/// Decides a transfer to `to` for a replica that sees `leader` (0: none known) as the leader,
/// leads itself if `is_leader`, and whose configuration has `voters`.
pub fn decide_transfer(
    leader: HostId,
    is_leader: bool,
    voters: &[HostId],
    to: HostId,
) -> TransferDecision {
    if leader != 0 && leader == to {
        TransferDecision::AlreadyLeader
    } else if !is_leader {
        TransferDecision::NotLeader
    } else if !voters.contains(&to) {
        TransferDecision::NotAVoter
    } else {
        TransferDecision::Start
    }
}

impl Handler<TransferLeaderTo> for ReplicaActor {
    type Result = MessageResult<TransferLeaderTo>;

    fn handle(&mut self, msg: TransferLeaderTo, ctx: &mut Self::Context) -> Self::Result {
        self.busy(ctx);
        let to = msg.to;
        let voters = self.conf_state().voters;
        let decision = decide_transfer(self.node.raft.leader_id, self.is_leader(), &voters, to);
        MessageResult(match decision {
            TransferDecision::AlreadyLeader => Response::Ok,
            TransferDecision::NotLeader => self.not_leader(),
            TransferDecision::NotAVoter => Response::Invalid(format!(
                "host {to} is not a voter of shard {} (voters {voters:?}); promote it first",
                self.shard
            )),
            TransferDecision::Start => {
                // As for a hand-back: the transferee campaigns at once, without waiting for
                // the other followers' leases to run out, so this leader stops lease reads now.
                self.lease.suspend();
                info!(shard = self.shard, to, "transferring leadership on request");
                self.node.transfer_leader(to);
                self.schedule_drive(ctx);
                Response::Ok
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_to_the_leader_is_already_done_wherever_it_is_asked() {
        assert_eq!(
            decide_transfer(2, false, &[1, 2, 3], 2),
            TransferDecision::AlreadyLeader
        );
        assert_eq!(
            decide_transfer(1, true, &[1, 2, 3], 1),
            TransferDecision::AlreadyLeader
        );
    }

    #[test]
    fn only_a_leader_starts_a_transfer() {
        assert_eq!(
            decide_transfer(1, false, &[1, 2, 3], 3),
            TransferDecision::NotLeader
        );
        assert_eq!(
            decide_transfer(0, false, &[1, 2, 3], 3),
            TransferDecision::NotLeader,
            "no known leader is no leader to transfer to"
        );
    }

    #[test]
    fn a_transfer_goes_only_to_a_voter() {
        assert_eq!(
            decide_transfer(1, true, &[1, 2], 3),
            TransferDecision::NotAVoter
        );
        assert_eq!(
            decide_transfer(1, true, &[1, 2, 3], 3),
            TransferDecision::Start
        );
    }
}

/// To a ReplicaActor: the host that should lead the shard when healthy, from the live map
/// (see `ClusterMap::preferred_leaders`). A leader hands leadership back to it once it is a
/// caught-up voter; a replica elsewhere only remembers it for when it leads.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPreferredLeader {
    pub host: HostId,
}

impl Handler<SetPreferredLeader> for ReplicaActor {
    type Result = ();

    fn handle(&mut self, msg: SetPreferredLeader, ctx: &mut Self::Context) {
        if self.placement.set_preferred(msg.host) {
            // A leader that is no longer the preferred one hands back on its ticks (a
            // follower has nothing to do about it).
            if self.is_leader() {
                self.busy(ctx);
            }
            info!(
                shard = self.shard,
                preferred = msg.host,
                "preferred leader changed"
            );
        }
    }
}
