//! The router's side of splits: which local replica a key goes to while a split is under
//! way, which hosts the new shard's replicas may hear from before the map lists it, and the
//! guard that lets only the split the map records reach a shard's log.

use actix::prelude::*;
use shardkv_transport::slot::Slot;
use shardkv_transport::wire::Response;
use shardkv_transport::{HostId, ShardId};

use super::{answer_from, RouterActor};
use crate::messages::ProposeSplit;

impl RouterActor {
    /// The shard a key of `slot` goes to: `by_map` (the map's shard), unless another local
    /// replica owns the slot. A split hands slots to a new shard in the parent's log before
    /// the map records it, and a host's map lags the meta group's, so the state machines on
    /// this host know better than the map; each still checks the key itself.
    pub(super) fn local_owner(&self, by_map: ShardId, slot: Slot) -> ShardId {
        if let Some(r) = self.local.get(&by_map) {
            if r.slots.contains(slot) {
                return by_map;
            }
        }
        self.local
            .iter()
            .find(|(_, r)| r.slots.contains(slot))
            .map_or(by_map, |(shard, _)| *shard)
    }

    /// Whether `host` holds a replica of `shard` in the map (learners included), or is a
    /// voter of a split the map records whose new shard is `shard`: the new shard's replicas
    /// elect their leader as soon as the split is applied, before the map lists the shard.
    pub(super) fn is_member(&self, shard: ShardId, host: HostId) -> bool {
        let map = &self.settings.map;
        map.replicas_of(shard)
            .is_some_and(|r| r.contains_key(&host))
            || map
                .splits()
                .values()
                .any(|s| s.child == shard && s.voters.contains(&host))
    }
}

/// To the RouterActor: split `shard` through its replica here (see
/// [`shardkv_transport::wire::AdminRequest::SplitShard`]).
#[derive(Message)]
#[rtype(result = "Response")]
pub struct SplitLocalShard {
    pub shard: ShardId,
    pub split: shardkv_transport::wire::SplitSpec,
}

impl Handler<SplitLocalShard> for RouterActor {
    type Result = ResponseFuture<Response>;

    /// Only the split the map records is proposed: a spec naming another new shard, slot or
    /// voters (a stale driver, an operator's mistake) never reaches the shard's log.
    fn handle(&mut self, msg: SplitLocalShard, _: &mut Self::Context) -> Self::Result {
        let shard = msg.shard;
        let map = &self.settings.map;
        let refusal = if map.epoch() < msg.split.epoch {
            Some(Response::Unavailable(format!(
                "this host's cluster map (epoch {}) predates the split (epoch {}); retry",
                map.epoch(),
                msg.split.epoch
            )))
        } else if map.shard(msg.split.child).is_some() && map.split_of(shard).is_none() {
            // The map shows the new shard: the split was applied and recorded.
            Some(Response::Ok)
        } else if map.split_of(shard).map(|s| s.spec()) != Some(msg.split.clone()) {
            Some(Response::Invalid(format!(
                "the cluster map (epoch {}) records no split of shard {shard} into shard {} at \
                 slot {}",
                map.epoch(),
                msg.split.child,
                msg.split.at
            )))
        } else {
            None
        };
        if let Some(resp) = refusal {
            return Box::pin(async move { resp });
        }
        match self.local_replica(shard) {
            Ok(replica) => answer_from(shard, replica.split.send(ProposeSplit(msg.split))),
            Err(resp) => Box::pin(async move { resp }),
        }
    }
}
