//! The apply step as a pure core: committed entries in, the batch's effects and each
//! entry's reply out.
//!
//! It reads only through an [`AppliedView`] and writes only into [`Effects`], so it does the
//! same on every replica whatever its storage has committed yet, and is tested without LMDB.
//! One function per command ([`put`], [`delete`], [`cas`], the update in [`super::update`]
//! and the split in [`super::split`]);
//! the session rules (dedup of a retried write, expiry of idle sessions) are in
//! [`super::sessions`], judged by the log clock ([`LogClock`]) that the entries themselves
//! advance. A write of a key whose slot the shard does not own (any more) is refused here,
//! where ownership is decided: `WrongShard`, with nothing applied and no session recorded.

use raft::eraftpb::Entry;
use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::slot::slot;
use shardkv_transport::wire::Response;
use shardkv_transport::{HostId, ShardId};
use tracing::{debug, info};

use super::command::{Action, Command};
use super::effects::Effects;
use super::log_clock::LogClock;
use super::owned::OwnedSlots;
use super::sessions;
use super::split::apply_split;
use super::update::update;
use super::view::AppliedView;
use crate::error::ActorError;

/// The reply of one applied entry, for whoever waits on (`index`, `term`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryReply {
    pub index: u64,
    pub term: u64,
    pub response: Response,
}

/// What applying a run of committed entries produces.
#[derive(Debug)]
pub struct Plan {
    /// The LMDB writes and the values and sessions changed (for the overlay).
    pub effects: Effects,
    /// One reply per entry that carried a command, in log order.
    pub replies: Vec<EntryReply>,
    /// The log clock after the last entry.
    pub log_clock: LogClock,
    /// The slots owned after the last entry, if a split changed them.
    pub owned: Option<OwnedSlots>,
    /// Children of splits applied here whose replicas this host starts.
    pub children: Vec<ShardId>,
}

/// Where the apply core stands before a run of entries: the last applied index, the log
/// clock and the owned slots as of it, and the host it runs on.
#[derive(Debug, Clone)]
pub struct ApplyState {
    pub host: HostId,
    pub applied: u64,
    pub log_clock: LogClock,
    pub owned: OwnedSlots,
}

/// Applies `entries` (in log order) of `shard` over `view`, whose state stands at `state`:
/// entries at or below its applied index are skipped (raft-rs may hand them again after a
/// restart). Each command first advances the log clock, which then judges and stamps
/// sessions. The effects end with the log clock (if it moved) and the new applied index, so
/// both become durable in the same transaction as the writes.
///
/// # Panics
/// If the entries past the applied index do not follow on from it: applying out of order
/// would make this replica diverge, and no later step could notice.
pub fn plan(
    shard: ShardId,
    state: &ApplyState,
    entries: &[Entry],
    view: &impl AppliedView,
) -> Result<Plan, ActorError> {
    let applied = state.applied;
    let mut effects = Effects::new(shard);
    let mut replies = Vec::with_capacity(entries.len());
    let mut last = applied;
    let mut clock = state.log_clock;
    let mut clock_moved = false;
    let mut owned = state.owned.clone();
    let mut owned_changed = false;
    let mut children = Vec::new();
    for e in entries {
        if e.index <= applied {
            continue;
        }
        assert_eq!(e.index, last + 1, "shard {shard} applies out of order");
        last = e.index;
        let Some(cmd) = Command::from_entry(shard, e)? else {
            continue;
        };
        clock_moved |= clock.observe(e.term, cmd.time_ms);
        if sessions::sweeps_at(e.index) {
            let expired = sessions::expire_idle(clock.now_ms, view, &mut effects)?;
            if expired > 0 {
                debug!(shard, expired, "idle client sessions expired");
            }
        }
        let response = match cmd.action {
            Action::Split(spec) => {
                let (child, at) = (spec.child, spec.at);
                let outcome =
                    apply_split(spec, state.host, &mut owned, &clock, view, &mut effects)?;
                if outcome.reply == Response::Ok && owned != state.owned {
                    let slots = &owned.ranges;
                    info!(shard, child, at, index = e.index, ?slots, "split applied");
                    owned_changed = true;
                }
                children.extend(outcome.child_here);
                outcome.reply
            }
            _ => apply_command(cmd, clock.now_ms, &owned, view, &mut effects)?,
        };
        replies.push(EntryReply {
            index: e.index,
            term: e.term,
            response,
        });
    }
    if last > applied {
        if clock_moved {
            effects.set_log_clock(&clock);
        }
        effects.set_applied(last);
    }
    Ok(Plan {
        effects,
        replies,
        log_clock: clock,
        owned: owned_changed.then_some(owned),
        children,
    })
}

/// Whether `shard`, owning `owned`, may apply or serve `key`: the meta group's rows are no
/// user keys, any other shard only those of its slots.
pub fn owns_key(shard: ShardId, owned: &OwnedSlots, key: &[u8]) -> bool {
    shard == META_SHARD || owned.contains(slot(key))
}

/// Applies one command once: a retry of a write its session already applied is answered
/// from the session and changes nothing; otherwise the action runs and, for a write in a
/// session, the session records it with its reply at log time `now_ms`.
fn apply_command(
    cmd: Command,
    now_ms: u64,
    owned: &OwnedSlots,
    view: &impl AppliedView,
    effects: &mut Effects,
) -> Result<Response, ActorError> {
    if cmd.seq != 0 {
        let session = effects.session(view, cmd.client_id)?;
        if let Some(first) = sessions::retried_reply(session.as_ref(), cmd.seq) {
            debug!(
                shard = effects.shard(),
                client = cmd.client_id,
                seq = cmd.seq,
                "duplicate write"
            );
            return Ok(first);
        }
    }
    let shard = effects.shard();
    if cmd
        .action
        .key()
        .is_some_and(|key| !owns_key(shard, owned, key))
    {
        // Proposed before the shard gave the slot up, committed after: the new owner applies
        // it when the client retries there (nothing is recorded here).
        return Ok(Response::WrongShard {
            shard,
            epoch: owned.epoch,
        });
    }
    let response = match cmd.action {
        Action::Put { key, value } => put(key, value, effects),
        Action::Delete { key } => delete(key, effects),
        Action::Cas { key, expected, new } => cas(key, expected, new, view, effects)?,
        Action::Update {
            updates,
            value_bytes_max,
        } => update(updates, value_bytes_max, view, effects)?,
        // `plan` applies splits itself; one here would be a bug, answered as such.
        Action::Split(_) => Response::Internal("a split reached the write path".into()),
    };
    if cmd.seq != 0 {
        effects.record_session(cmd.client_id, cmd.seq, now_ms, response.clone())?;
    }
    Ok(response)
}

/// Put: sets `key` to `value`.
pub fn put(key: Vec<u8>, value: Vec<u8>, effects: &mut Effects) -> Response {
    effects.put_value(key, value);
    Response::Ok
}

/// Delete: removes `key`; answered `Ok` whether or not it was there.
pub fn delete(key: Vec<u8>, effects: &mut Effects) -> Response {
    effects.delete_value(key);
    Response::Ok
}

/// Compare-and-swap: sets `key` to `new` (`None`: removes it) only if its current value (as
/// of the earlier entries of this batch) is `expected`; otherwise changes nothing and
/// answers the current value.
pub fn cas(
    key: Vec<u8>,
    expected: Option<Vec<u8>>,
    new: Option<Vec<u8>>,
    view: &impl AppliedView,
    effects: &mut Effects,
) -> Result<Response, ActorError> {
    let current = effects.value(view, &key)?;
    if current != expected {
        return Ok(Response::CasFailed { current });
    }
    match new {
        Some(v) => effects.put_value(key, v),
        None => effects.delete_value(key),
    }
    Ok(Response::CasOk)
}

#[cfg(test)]
mod tests;
