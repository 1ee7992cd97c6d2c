//! The ShardActor: runs the apply core on committed entries, keeps the overlay, hands the
//! batches to storage, answers waiting writes and reads, compacts the log and installs
//! snapshots.

use actix::prelude::*;
use raft::eraftpb::Entry;
use shardkv_transport::wire::{
    LimitKind, ReadValue, Response, REPLY_BYTES_PER_VALUE, VALUE_BYTES_MAX_CEILING,
};
use shardkv_transport::{HostId, ShardId};
use tracing::{debug, warn};

use super::applied_index::AppliedIndex;
use super::apply::{self, owns_key, ApplyState, Plan};
use super::log_clock::LogClock;
use super::overlay::Overlay;
use super::owned::{OwnedSlots, PublishedSlots};
use super::split::{SplitApplied, SplitNotices};
use super::store_view::StoreView;
use super::view::AppliedView;
use super::waiters::{ReadWaiter, ReadWaiters, WriteWaiters};
use crate::error::ActorError;
use crate::fatal::{Fatal, FatalReporter};
use crate::messages::{
    ApplyEntries, AwaitApply, FailWaiters, InstallSnapshot, Persist, PersistLazy, ReadAt, ReadKeys,
    WriteBatch, WriteOp,
};
use crate::schema::log_clock_record::{log_clock_op, stored_log_clock};
use crate::schema::owned_record::{owned_op, stored_owned};
use crate::schema::{log_key, raft_records, Schema, TableId};

/// Apply batches that may be on their way to disk at once; past this, apply waits.
pub(crate) const APPLY_BATCHES_IN_FLIGHT_MAX: usize = 64;

/// When to compact the Raft log (see [`ShardActor`]).
#[derive(Debug, Clone, Copy)]
pub struct Compaction {
    /// Compact once this many entries are durably applied past the last compaction.
    pub after: u64,
    /// Entries to keep below the durable applied index, so a follower a little behind
    /// catches up by entries rather than a snapshot.
    pub keep: u64,
}

/// What a shard's state machine is built with, besides where it starts from.
pub struct ShardSetup {
    pub shard: ShardId,
    /// The host it runs on: a split creates the child here only if the host is a voter.
    pub host: HostId,
    pub schema: Schema,
    pub storage: Addr<crate::storage::StorageActor>,
    /// Compact every this many applied entries, keeping the last `keep` (None: never).
    pub compaction: Option<Compaction>,
    /// Where a batch that could not be stored is reported: the host must stop.
    pub fatal: FatalReporter,
    /// Where the applied index is published for the replica's status.
    pub published: AppliedIndex,
    /// Where the durably owned slots are published for the router and status.
    pub slots: PublishedSlots,
    /// Where an applied split is told once durable, so the child's replica starts.
    pub splits: SplitNotices,
    /// The slots the shard owned at day 0 (None: a shard made by a split, or the meta
    /// group): what a snapshot from a host of an earlier version holds, which says nothing
    /// of its slots.
    pub day0: Option<OwnedSlots>,
}

/// The state machine of one shard's replica on this host; see [`crate::shard`].
pub struct ShardActor {
    shard: ShardId,
    host: HostId,
    schema: Schema,
    storage: Addr<crate::storage::StorageActor>,
    /// Where a batch that could not be stored is reported: the host must stop.
    fatal: FatalReporter,
    /// Highest index applied (visible to reads through the overlay).
    applied: u64,
    /// Where `applied` is published for the replica's status.
    published: AppliedIndex,
    /// The log clock as of `applied`: what the next batch starts from.
    log_clock: LogClock,
    /// The slots owned as of `applied`: writes and reads of other keys are refused.
    owned: OwnedSlots,
    /// Where the owned slots are published once durable.
    published_slots: PublishedSlots,
    /// Where applied splits are told once durable.
    splits: SplitNotices,
    /// See [`ShardSetup::day0`].
    day0: Option<OwnedSlots>,
    /// Values and sessions written by batches not yet committed to LMDB.
    overlay: Overlay,
    /// Number of the last apply batch sent to storage.
    batch_seq: u64,
    /// Apply batches sent to storage and not yet committed.
    in_flight: usize,
    /// Highest index whose apply batch LMDB holds. A power loss may undo LMDB's last commit;
    /// then the apply and any compaction sent after it are kept or lost together (both are
    /// log records, in order).
    durable_applied: u64,
    /// The log is compacted up to here (inclusive).
    compacted: u64,
    /// Compact every this many applied entries, keeping the last `keep` (None: never).
    compaction: Option<Compaction>,
    /// Writes waiting for their entry.
    writes: WriteWaiters,
    /// Reads waiting for `applied` to reach an index.
    reads: ReadWaiters,
}

impl ShardActor {
    /// A state machine set up by `setup`, starting at the durable `applied` index (and the
    /// log clock and owned slots stored with it).
    pub fn new(setup: ShardSetup, applied: u64) -> Result<Self, ActorError> {
        let ShardSetup {
            shard,
            host,
            schema,
            storage,
            compaction,
            fatal,
            published,
            slots,
            splits,
            day0,
        } = setup;
        let (compacted, _) = raft_records::truncated_state(&schema, shard)?;
        let log_clock = stored_log_clock(&schema, shard)?;
        let owned = stored_owned(&schema, shard)?;
        slots.publish(owned.ranges.clone());
        Ok(ShardActor {
            durable_applied: applied,
            compacted,
            compaction,
            shard,
            host,
            schema,
            storage,
            fatal,
            applied,
            published,
            log_clock,
            owned,
            published_slots: slots,
            splits,
            day0,
            overlay: Overlay::default(),
            batch_seq: 0,
            in_flight: 0,
            writes: WriteWaiters::default(),
            reads: ReadWaiters::default(),
        })
    }

    /// The applied state as reads and the apply core see it.
    fn view(&self) -> StoreView<'_> {
        StoreView {
            schema: &self.schema,
            shard: self.shard,
            overlay: &self.overlay,
        }
    }

    /// Turns committed entries into one write batch and the reply of each entry.
    pub(super) fn plan(&self, entries: &[Entry]) -> Result<Plan, ActorError> {
        let state = ApplyState {
            host: self.host,
            applied: self.applied,
            log_clock: self.log_clock,
            owned: self.owned.clone(),
        };
        apply::plan(self.shard, &state, entries, &self.view())
    }

    /// Every `after` durably applied entries, drop the log up to `keep` entries before the
    /// durable applied index; a follower that needs older entries gets a snapshot instead.
    fn maybe_compact(&mut self) {
        let Some(c) = self.compaction else { return };
        // Cheap test first: this runs after every durable apply batch.
        if self.durable_applied.saturating_sub(c.keep) < self.compacted + c.after {
            return;
        }
        self.compact(c.keep, c.after);
    }

    /// Drops the log up to `keep` entries below the durable applied index, if that moves its
    /// start by at least `after`.
    fn compact(&mut self, keep: u64, after: u64) {
        // Never past the stored commit index: on restart raft-rs requires the log's start to
        // be at or below it (a commit-only change of the hard state is stored lazily).
        let stored_commit = raft_records::hard_state(&self.schema, self.shard)
            .map(|hs| hs.commit)
            .unwrap_or(0);
        let upto = self.durable_applied.saturating_sub(keep).min(stored_commit);
        if upto < self.compacted + after {
            return;
        }
        let term = match raft_records::durable_term(&self.schema, self.shard, upto) {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                warn!(shard = self.shard, error = %e, "cannot read the term for compaction");
                return;
            }
        };
        let ops = vec![
            WriteOp::DeleteRange(
                TableId::RaftLog,
                log_key(self.shard, 0).to_vec(),
                log_key(self.shard, upto + 1).to_vec(),
            ),
            raft_records::truncated_op(self.shard, upto, term),
        ];
        debug!(shard = self.shard, upto, "compacting the Raft log");
        self.compacted = upto;
        self.storage.do_send(PersistLazy(WriteBatch { ops }));
    }

    /// Serves a read of `keys` as of the applied index, if the shard owns their slot there:
    /// all of several keys in one go, so at one applied state.
    fn read(&self, keys: &ReadKeys) -> Response {
        let many = match keys {
            ReadKeys::One(key) => std::slice::from_ref(key),
            ReadKeys::Many(keys) => keys.as_slice(),
        };
        if !many
            .iter()
            .all(|key| owns_key(self.shard, &self.owned, key))
        {
            return Response::WrongShard {
                shard: self.shard,
                epoch: self.owned.epoch,
            };
        }
        let view = self.view();
        if let ReadKeys::One(key) = keys {
            return match view.value(key) {
                Ok(v) => Response::Value(v),
                Err(e) => Response::Internal(format!("read failed: {e}")),
            };
        }
        // A reply travels in one frame, which holds one value at the ceiling: stop reading
        // as soon as the values pass that, before they cost more memory.
        let mut values = Vec::with_capacity(many.len());
        let mut bytes = 0usize;
        for key in many {
            match view.value(key) {
                Ok(v) => {
                    bytes += v.as_ref().map_or(0, Vec::len) + REPLY_BYTES_PER_VALUE;
                    if bytes > VALUE_BYTES_MAX_CEILING {
                        return Response::TooLarge {
                            what: LimitKind::Reply,
                            len: bytes,
                            limit: VALUE_BYTES_MAX_CEILING,
                        };
                    }
                    values.push(ReadValue(v));
                }
                Err(e) => return Response::Internal(format!("read failed: {e}")),
            }
        }
        Response::Values(values)
    }

    /// Everything up to `last` is applied: answer the writes and reads waiting on it.
    fn on_applied(&mut self, last: u64, replies: Vec<apply::EntryReply>) {
        crate::metrics::metrics()
            .raft_applied_entries
            .get_or_create(&crate::metrics::ShardLabels { shard: self.shard })
            .inc_by(last.saturating_sub(self.applied));
        self.applied = last;
        self.published.publish(last);
        self.writes.complete(replies, last);
        for read in self.reads.take_ready(last) {
            let _ = read.reply.send(self.read(&read.keys));
        }
    }

    /// The state machine cannot go on: an applied batch could not be stored (memory and disk
    /// now disagree), or committed entries could not be planned (a corrupt entry or row).
    /// This shard stops at once (nothing later may reach disk past the lost batch) and the
    /// daemon, told, stops the host: a replica must not keep leading and voting for a shard
    /// nothing applies. On restart the host re-applies from the durable Raft log.
    fn fail_fatally(&mut self, reason: String, ctx: &mut Context<Self>) {
        self.fatal.report(Fatal {
            shard: Some(self.shard),
            reason,
        });
        ctx.stop();
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::MAILBOX_CAPACITY);
    }
}

impl Handler<ApplyEntries> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: ApplyEntries, ctx: &mut Self::Context) {
        let Some(last) = msg.entries.last().map(|e| e.index) else {
            return;
        };
        if last <= self.applied {
            return;
        }
        let mut plan = match self.plan(&msg.entries) {
            Ok(p) => p,
            Err(e) => {
                return self.fail_fatally(format!("cannot apply committed entries: {e}"), ctx);
            }
        };
        if let Some(conf) = &msg.conf_state {
            match raft_records::conf_state_op(self.shard, conf) {
                Ok(op) => plan.effects.batch.ops.push(op),
                Err(e) => return self.fail_fatally(format!("cannot encode conf state: {e}"), ctx),
            }
        }
        // Make the batch visible through the overlay, answer its writers and the reads it
        // unblocks, then let storage commit it in the background (in order, with others).
        self.batch_seq += 1;
        let seq = self.batch_seq;
        let effects = plan.effects;
        self.overlay.add(seq, effects.values, effects.sessions);
        self.log_clock = plan.log_clock;
        // A split takes effect for the requests after it at once; the router and the child
        // learn of it once it is on disk.
        let split = plan.owned.map(|owned| {
            self.owned = owned;
            (self.owned.ranges.clone(), plan.children)
        });
        self.on_applied(last, plan.replies);
        self.in_flight += 1;
        let persist: futures::future::BoxFuture<'static, _> = if split.is_some() {
            // Not lazily: the child's replica starts from what this batch stores.
            Box::pin(self.storage.send(Persist(effects.batch)))
        } else {
            Box::pin(self.storage.send(PersistLazy(effects.batch)))
        };
        let done = persist.into_actor(self).map(move |res, act, ctx| {
            act.in_flight -= 1;
            match res {
                Ok(Ok(())) => {
                    act.overlay.settle(seq);
                    act.durable_applied = act.durable_applied.max(last);
                    if let Some((ranges, children)) = split {
                        act.published_slots.publish(ranges);
                        for child in children {
                            let notice = SplitApplied {
                                parent: act.shard,
                                child,
                            };
                            // No listener: the host is going down, and restarts the child
                            // from its stored state.
                            let _ = act.splits.send(notice);
                        }
                    }
                    act.maybe_compact();
                }
                Ok(Err(e)) => {
                    act.fail_fatally(format!("applied batch could not be stored: {e}"), ctx)
                }
                Err(e) => act.fail_fatally(format!("applied batch could not be stored: {e}"), ctx),
            }
        });
        if self.in_flight > APPLY_BATCHES_IN_FLIGHT_MAX {
            // Storage is behind: stop taking work until this batch is down (bounds the overlay).
            ctx.wait(done);
        } else {
            ctx.spawn(done);
        }
    }
}

impl Handler<InstallSnapshot> for ShardActor {
    type Result = ResponseActFuture<Self, Result<(), ActorError>>;

    /// Replaces the shard's rows, sessions, log clock and owned slots by the snapshot's, and
    /// the log by the snapshot point, in one transaction with the replica's conf and hard state. The file is
    /// checked through on a blocking thread first, then streamed into LMDB by the writer
    /// thread: neither this actor's thread nor memory carries the snapshot.
    fn handle(&mut self, msg: InstallSnapshot, _: &mut Self::Context) -> Self::Result {
        let shard = self.shard;
        // No compaction may be queued from now on: computed from the state before the
        // install, it would commit after it and move the log's start below the snapshot.
        self.compacted = self.compacted.max(msg.index);
        let check_path = msg.path.clone();
        let day0 = self.day0.clone();
        let verified = tokio::task::spawn_blocking(move || {
            crate::snapshot::verify(&check_path, day0.as_ref())
        });
        let InstallSnapshot {
            index,
            term,
            path,
            raft_ops,
        } = msg;
        // The rows to replace: those of the slots owned now (which the snapshot may no longer
        // give this shard: they belong to no local shard after it) and of those it owns.
        let owned_before = self.owned.ranges.clone();
        let storage = self.storage.clone();
        let schema = self.schema.clone();
        let check = async move {
            let header = verified
                .await
                .map_err(|e| ActorError::Storage(format!("snapshot check: {e}")))??;
            let meta = header.meta.snapshot;
            if meta.shard != shard || meta.index != index || meta.term != term {
                return Err(ActorError::Corrupt {
                    what: format!("snapshot {}", path.display()),
                    detail: format!("is {meta:?}, expected shard {shard} at {index}/{term}"),
                });
            }
            let owned = header.owned.unwrap_or_default();
            let schema_check = schema.clone();
            let slots = owned.ranges.clone();
            tokio::task::spawn_blocking(move || owned_elsewhere(&schema_check, shard, &slots))
                .await
                .map_err(|e| ActorError::Storage(format!("snapshot check: {e}")))??;
            let mut replaced = owned_before;
            replaced.extend(owned.ranges.iter().copied());
            let mut ops =
                crate::schema::delete_ranges(crate::schema::shard_data_ranges(shard, &replaced));
            ops.extend([
                WriteOp::LoadSnapshot(shard, path.clone()),
                raft_records::applied_op(shard, index),
                raft_records::truncated_op(shard, index, term),
                owned_op(shard, &owned)?,
            ]);
            ops.extend(raft_ops);
            let log_clock = header.meta.log_clock;
            ops.push(log_clock_op(shard, &log_clock));
            storage
                .send(Persist(WriteBatch { ops }))
                .await
                .map_err(|_| ActorError::StorageGone)??;
            Ok((path, log_clock, owned))
        };
        Box::pin(check.into_actor(self).map(move |res, act, _| {
            let (path, log_clock, owned) = res?;
            let _ = std::fs::remove_file(&path);
            act.overlay.clear();
            act.applied = index;
            act.log_clock = log_clock;
            act.published_slots.publish(owned.ranges.clone());
            act.owned = owned;
            act.durable_applied = index;
            act.compacted = index;
            act.writes.fail_all(&Response::Unavailable(
                "replica replaced by a snapshot; retry".into(),
            ));
            act.on_applied(index, Vec::new());
            Ok(())
        }))
    }
}

/// Refuses a snapshot of `shard` owning `slots` that another replica on this host owns some
/// of: installing it would put two state machines over the same rows. The host's rules
/// (a replica joins only once no local replica owns its slots) keep this from happening.
fn owned_elsewhere(
    schema: &Schema,
    shard: ShardId,
    slots: &[(shardkv_transport::slot::Slot, shardkv_transport::slot::Slot)],
) -> Result<(), ActorError> {
    for other in raft_records::hosted_shards(schema)? {
        if other != shard && stored_owned(schema, other)?.overlaps(slots) {
            return Err(ActorError::Corrupt {
                what: format!("snapshot of shard {shard}"),
                detail: format!("its slots {slots:?} are owned by shard {other} on this host"),
            });
        }
    }
    Ok(())
}

impl Handler<AwaitApply> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: AwaitApply, _: &mut Self::Context) {
        if msg.index <= self.applied {
            warn!(
                shard = self.shard,
                index = msg.index,
                "waiter for an index already applied"
            );
            let _ = msg.reply.send(Response::Unavailable(
                "proposal raced with apply; retry".into(),
            ));
            return;
        }
        self.writes.wait(msg.index, msg.term, msg.reply);
    }
}

impl Handler<ReadAt> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: ReadAt, _: &mut Self::Context) {
        if msg.index <= self.applied {
            let _ = msg.reply.send(self.read(&msg.keys));
        } else {
            let read = ReadWaiter {
                keys: msg.keys,
                reply: msg.reply,
            };
            self.reads.wait(msg.index, read);
        }
    }
}

impl Handler<FailWaiters> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: FailWaiters, _: &mut Self::Context) {
        self.writes.fail_all(&msg.0);
    }
}

#[cfg(test)]
mod tests;
