//! Stopping one shard's replica while the host keeps running: the host stops hosting a shard
//! (its replica was removed from the group) and must delete its data. Both actors of the
//! replica stop taking messages before anything is deleted, so no apply, log append or
//! snapshot install of the shard can reach storage after the deletion.

use actix::prelude::*;
use tracing::info;

use super::ReplicaActor;
use crate::shard::ShardActor;

/// To a ReplicaActor or ShardActor: stop now. What the actor already handed to storage is
/// queued there ahead of anything sent after the stop; what it had not handed over is
/// dropped with it (pending client requests are answered by their dropped reply channels).
/// The actor is gone once its address reports it disconnected.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopReplica;

impl Handler<StopReplica> for ReplicaActor {
    type Result = ();

    fn handle(&mut self, _: StopReplica, ctx: &mut Self::Context) {
        info!(
            shard = self.shard,
            host = self.host,
            term = self.node.raft.term,
            "replica stopping: this host no longer hosts the shard"
        );
        ctx.stop();
    }
}

impl Handler<StopReplica> for ShardActor {
    type Result = ();

    fn handle(&mut self, _: StopReplica, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
