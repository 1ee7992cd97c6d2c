//! Applying a split: at one index of the parent's log, the slots `>= at` go to a new shard.
//!
//! Every replica of the parent applies the same entry to the same state, so they all hand
//! over the same slots with the same rows, sessions and clock: no protocol runs between Raft
//! groups. Rows are keyed by slot (see `schema`), so nothing is copied but the session table,
//! which keeps a retried write applied once whichever side of the split it lands on. On a host
//! among the new group's voters, the child's Raft state (its configuration, an empty log, its
//! owned slots and clock) is written in the same transaction as the parent's smaller
//! ownership; that host then starts the child's replica from it. A host not among them holds
//! the rows of slots none of its shards owns any more, and deletes them.
//!
//! The child's log starts at [`CHILD_LOG_START`], not 0, as if compacted there: a voter that
//! never applied the split (its parent got a snapshot past it) starts the child empty, and
//! the child's leader, finding the entries it lacks compacted away, sends it a snapshot with
//! the rows; from index 0 it would take the log instead and hold no rows at all.

use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::wire::{Response, SplitSpec};
use shardkv_transport::{HostId, ShardId};

use super::effects::Effects;
use super::log_clock::LogClock;
use super::owned::OwnedSlots;
use super::view::AppliedView;
use crate::error::ActorError;
use crate::messages::WriteOp;
use crate::schema::log_clock_record::log_clock_op;
use crate::schema::owned_record::owned_op;
use crate::schema::session_record::encode_record;
use crate::schema::{kv_ranges, raft_records, session_key, TableId};

/// The index (and term) a child's log starts after; see the module docs.
pub const CHILD_LOG_START: u64 = 5;

/// A split this host's replica applied, told to whoever starts replicas: once the batch
/// holding it is durable, the child's replica can start from its stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitApplied {
    pub parent: ShardId,
    pub child: ShardId,
}

/// Where [`SplitApplied`] notices go (the host's map watcher starts the child).
pub type SplitNotices = tokio::sync::mpsc::UnboundedSender<SplitApplied>;

/// What a split entry did here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitOutcome {
    pub reply: Response,
    /// The child whose replica this host must start (None: not split now, or this host is
    /// not among the child's voters).
    pub child_here: Option<ShardId>,
}

/// Applies `spec` to shard `shard` (owning `owned`, updated here) on host `host`, with the
/// log clock at `clock`; the writes go to `effects`.
pub fn apply_split(
    spec: SplitSpec,
    host: HostId,
    owned: &mut OwnedSlots,
    clock: &LogClock,
    view: &impl AppliedView,
    effects: &mut Effects,
) -> Result<SplitOutcome, ActorError> {
    let shard = effects.shard();
    let refuse = |why: String| SplitOutcome {
        reply: Response::Invalid(why),
        child_here: None,
    };
    if shard == META_SHARD || spec.child == META_SHARD || spec.child == shard {
        return Ok(refuse(format!(
            "shard {shard} cannot split into shard {}",
            spec.child
        )));
    }
    if !owned.has_slots_from(spec.at) {
        // Applied before (a re-proposal after a crash or a lost reply): nothing to do.
        return Ok(SplitOutcome {
            reply: Response::Ok,
            child_here: None,
        });
    }
    let Some((kept, handed)) = owned.split_at(spec.at, spec.epoch) else {
        return Ok(refuse(format!(
            "slot {} does not cut shard {shard}'s slots {:?} in two",
            spec.at, owned.ranges
        )));
    };
    effects.batch.ops.push(owned_op(shard, &kept)?);
    let child = spec.child;
    let here = spec.voters.contains(&host);
    let taken = here && view.shard_has_state(child)?;
    if taken {
        // Never over a replica this host holds: the split's rows go as on a host outside
        // the child, and the child's group lacks this voter (it is not created twice).
        tracing::error!(
            shard,
            child,
            "a split names a new shard this host already holds; not creating it here"
        );
    }
    if here && !taken {
        let conf = raft::eraftpb::ConfState {
            voters: spec.voters.clone(),
            ..Default::default()
        };
        let hard_state = raft::eraftpb::HardState {
            term: CHILD_LOG_START,
            commit: CHILD_LOG_START,
            ..Default::default()
        };
        effects.batch.ops.extend([
            raft_records::conf_state_op(child, &conf)?,
            raft_records::hard_state_op(child, &hard_state)?,
            raft_records::truncated_op(child, CHILD_LOG_START, CHILD_LOG_START),
            raft_records::applied_op(child, CHILD_LOG_START),
        ]);
        effects.batch.ops.push(owned_op(child, &handed)?);
        // The child's terms start afresh: its clock goes on from the parent's time, anchored
        // again by its first leader's first command.
        let child_clock = LogClock {
            now_ms: clock.now_ms,
            anchor: None,
        };
        effects.batch.ops.push(log_clock_op(child, &child_clock));
        for (client, record) in effects.all_sessions(view)? {
            effects.batch.ops.push(WriteOp::Put(
                TableId::Sessions,
                session_key(child, client).to_vec(),
                encode_record(&record)?,
            ));
        }
    } else {
        for (table, from, to) in kv_ranges(child, &handed.ranges) {
            effects
                .batch
                .ops
                .push(WriteOp::DeleteRange(table, from, to));
        }
    }
    *owned = kept;
    Ok(SplitOutcome {
        reply: Response::Ok,
        child_here: (here && !taken).then_some(child),
    })
}

#[cfg(test)]
mod tests;
