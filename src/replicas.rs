//! The replicas a host runs, started and destroyed while it runs.
//!
//! A host's set of replicas is not fixed: when a shard's replica is added to this host it
//! starts one (as a learner waiting for its leader's snapshot), and when it is removed it
//! stops the replica and deletes every row and file of the shard, so a restart cannot bring
//! it back. [`ReplicaFactory`] holds what building one shard's replica takes (the same for
//! every shard of the host), so the daemon's start and a later change build replicas the
//! same way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use shardkv_actors::fatal::FatalReporter;
use shardkv_actors::messages::{Persist, WriteBatch};
use shardkv_actors::peer::links::PeerLinks;
use shardkv_actors::raft_storage::LmdbRaftStorage;
use shardkv_actors::replica::stop::StopReplica;
use shardkv_actors::replica::{ReplicaActor, ReplicaLinks, ReplicaSettings};
use shardkv_actors::router::LocalReplica;
use shardkv_actors::schema::{
    delete_ranges, meta, migrate, owned_record, raft_records, shard_all_ranges, Schema,
};
use shardkv_actors::shard::{
    AppliedIndex, Compaction, OwnedSlots, PublishedSlots, ShardActor, ShardSetup, SplitNotices,
};
use shardkv_actors::snapshot::BuildSlots;
use shardkv_actors::storage::StorageActor;
use shardkv_actors::ActorError;
use shardkv_transport::{HostId, ShardId};
use tracing::info;

/// How long a stopped replica's actors may take to finish the message they are handling.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a replica could not be started or destroyed.
#[derive(thiserror::Error, Debug)]
pub enum ReplicaError {
    #[error(transparent)]
    Storage(#[from] ActorError),
    #[error(
        "replica of shard {shard} did not stop within {STOP_TIMEOUT:?}; its data is kept, and \
         a restart of this host retries the removal"
    )]
    StillRunning { shard: ShardId },
    #[error("the host's storage stopped; the host is going down")]
    StorageGone,
}

/// Everything the host's replicas share, to build one shard's replica on demand.
pub struct ReplicaFactory {
    pub host: HostId,
    pub schema: Schema,
    pub storage: Addr<StorageActor>,
    /// The host's outbound links, one directory shared with every replica it builds (a
    /// replica change may add any member host, and the map watcher adds links as hosts join).
    pub peers: PeerLinks,
    /// Where snapshot files of this host's replicas are built and received.
    pub snap_dir: PathBuf,
    /// The host-wide bound on concurrent snapshot builds, shared by its replicas.
    pub build_slots: Arc<BuildSlots>,
    /// Timing and limits every replica gets (each its own preferred leader).
    pub settings: ReplicaSettings,
    /// When replicas compact their logs (None: never).
    pub compaction: Option<Compaction>,
    /// Where a replica's fatal error goes: the host stops.
    pub fatal: FatalReporter,
    /// Where a replica's state machine tells of a split it applied (the map watcher starts
    /// the child).
    pub splits: SplitNotices,
    /// `cluster.shards` of the layout the data dir was bootstrapped with: which shards are
    /// day-0 ones, and their slots then.
    pub day0_shards: u32,
}

impl ReplicaFactory {
    /// Starts `shard`'s replica as the day-0 layout places it: on the first start of the data
    /// dir the group's configuration is `voters` (every replica of the group records the same
    /// one, so they elect a leader among themselves) and it owns `owned` (`None`: the meta
    /// group); later starts go on from what is stored. `preferred_leader` leads whenever it
    /// is up and caught up.
    pub fn start_bootstrapped(
        &self,
        shard: ShardId,
        voters: &[HostId],
        owned: Option<&OwnedSlots>,
        preferred_leader: Option<HostId>,
    ) -> Result<LocalReplica, ReplicaError> {
        raft_records::bootstrap(&self.schema, shard, voters, owned)?;
        self.start(shard, preferred_leader)
    }

    /// Starts a replica of `shard`, which this host is being added to as a learner. No
    /// configuration is recorded: with an empty one raft-rs never campaigns (it is not a
    /// voter of anything) and rejects the leader's appends until the leader sends a
    /// snapshot, whose configuration makes this replica the learner it was added as. After a
    /// restart halfway through, it goes on from whatever the data dir holds of the shard.
    pub fn start_joining(&self, shard: ShardId) -> Result<LocalReplica, ReplicaError> {
        self.start(shard, None)
    }

    /// Stops `replica` of `shard`, which never went into service, keeping the shard's data.
    pub async fn stop_unused(
        &self,
        shard: ShardId,
        replica: LocalReplica,
    ) -> Result<(), ReplicaError> {
        stop_and_settle(shard, &replica, &self.storage).await
    }

    /// Stops `replica` of `shard` (taken out of the router first, so nothing new reaches it)
    /// and then deletes the shard's data on this host in one transaction: its rows, sessions,
    /// Raft log and Raft state, then its snapshot files. Either every row goes or none does,
    /// so a crash halfway leaves the replica whole (and the removal can be re-run) or absent.
    pub async fn destroy(&self, shard: ShardId, replica: LocalReplica) -> Result<(), ReplicaError> {
        // What either actor handed to storage before is queued ahead of the delete. Its rows
        // are those of the slots it owns, stored with its last applied batch: read once LMDB
        // holds every batch the actors queued.
        stop_and_settle(shard, &replica, &self.storage).await?;
        let owned = owned_record::stored_owned(&self.schema, shard)?;
        let mut ops = delete_ranges(shard_all_ranges(shard, &owned.ranges));
        ops.push(meta::retired_op(shard));
        self.storage
            .send(Persist(WriteBatch { ops }))
            .await
            .map_err(|_| ReplicaError::StorageGone)??;
        let files = shardkv_actors::snapshot::remove_shard_files(&self.snap_dir, shard)?;
        info!(
            shard,
            host = self.host,
            files,
            "replica destroyed: its data is deleted"
        );
        Ok(())
    }

    /// Starts the ShardActor and ReplicaActor of `shard` over what the data dir holds.
    fn start(
        &self,
        shard: ShardId,
        preferred_leader: Option<HostId>,
    ) -> Result<LocalReplica, ReplicaError> {
        let applied = raft_records::applied_index(&self.schema, shard)?;
        let published = AppliedIndex::new(applied);
        let slots = PublishedSlots::default();
        let setup = ShardSetup {
            shard,
            host: self.host,
            schema: self.schema.clone(),
            storage: self.storage.clone(),
            compaction: self.compaction,
            fatal: self.fatal.clone(),
            published: published.clone(),
            slots: slots.clone(),
            splits: self.splits.clone(),
            day0: migrate::day0_owned(shard, self.day0_shards),
        };
        let shard_actor = ShardActor::new(setup, applied)?.start();
        let links = ReplicaLinks {
            storage: self.storage.clone().recipient(),
            apply: shard_actor.clone().recipient(),
            await_apply: shard_actor.clone().recipient(),
            read_at: shard_actor.clone().recipient(),
            fail_waiters: shard_actor.clone().recipient(),
            install: shard_actor.clone().recipient(),
            peers: self.peers.clone(),
            fatal: self.fatal.clone(),
            applied: published,
            slots: slots.clone(),
        };
        let storage = LmdbRaftStorage::new(
            self.schema.clone(),
            shard,
            self.snap_dir.clone(),
            Arc::clone(&self.build_slots),
        );
        let settings = ReplicaSettings {
            preferred_leader,
            ..self.settings.clone()
        };
        let logger = shardkv_actors::logger::raft_logger();
        let replica =
            match ReplicaActor::new(shard, self.host, storage, applied, settings, links, &logger) {
                Ok(r) => r.start(),
                Err(e) => {
                    shard_actor.do_send(StopReplica);
                    return Err(e.into());
                }
            };
        Ok(LocalReplica {
            requests: replica.clone().recipient(),
            raft: replica.clone().recipient(),
            status: replica.clone().recipient(),
            transfer: replica.clone().recipient(),
            transfer_to: replica.clone().recipient(),
            preferred: replica.clone().recipient(),
            snapshots: replica.clone().recipient(),
            changes: replica.clone().recipient(),
            split: replica.clone().recipient(),
            slots,
            stop: replica.recipient(),
            stop_shard: shard_actor.recipient(),
        })
    }
}

/// Stops both actors of `shard`'s `replica` (the replica first: it stops handing entries to
/// the state machine, then the state machine stops) and waits until LMDB holds everything
/// they handed to storage: LMDB takes logged batches a little after they are durable, and
/// whoever reads the shard's data next (a replica started again over it, a deletion of its
/// rows) reads LMDB. An empty batch is taken after every batch sent before it.
async fn stop_and_settle(
    shard: ShardId,
    replica: &LocalReplica,
    storage: &Addr<StorageActor>,
) -> Result<(), ReplicaError> {
    stop_and_wait(shard, &replica.stop).await?;
    stop_and_wait(shard, &replica.stop_shard).await?;
    storage
        .send(Persist(WriteBatch::default()))
        .await
        .map_err(|_| ReplicaError::StorageGone)??;
    Ok(())
}

/// Asks an actor of `shard`'s replica to stop and waits until it has.
async fn stop_and_wait(shard: ShardId, actor: &Recipient<StopReplica>) -> Result<(), ReplicaError> {
    // An actor already gone (it stopped on a fatal error) has nothing more to write.
    let _ = actor.send(StopReplica).await;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while actor.connected() {
        if Instant::now() > deadline {
            return Err(ReplicaError::StillRunning { shard });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
