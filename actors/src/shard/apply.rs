//! The apply step as a pure core: committed entries in, the batch's effects and each
//! entry's reply out.
//!
//! It reads only through an [`AppliedView`] and writes only into [`Effects`], so it does the
//! same on every replica whatever its storage has committed yet, and is tested without LMDB.
//! One function per command ([`put`], [`delete`], [`cas`]); the session rules (dedup of a
//! retried write, expiry of idle sessions) are in [`super::sessions`], judged by the log
//! clock ([`LogClock`]) that the entries themselves advance.

use raft::eraftpb::Entry;
use shardkv_transport::wire::Response;
use shardkv_transport::ShardId;
use tracing::debug;

use super::command::{Action, Command};
use super::effects::Effects;
use super::log_clock::LogClock;
use super::sessions;
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
}

/// Applies `entries` (in log order) of `shard` over `view`, whose state is applied up to
/// `applied` with the log clock at `log_clock`: entries at or below it are skipped (raft-rs
/// may hand them again after a restart). Each command first advances the log clock, which
/// then judges and stamps sessions. The effects end with the log clock (if it moved) and the
/// new applied index, so both become durable in the same transaction as the writes.
///
/// # Panics
/// If the entries past `applied` do not follow on from it: applying out of order would make
/// this replica diverge, and no later step could notice.
pub fn plan(
    shard: ShardId,
    applied: u64,
    log_clock: LogClock,
    entries: &[Entry],
    view: &impl AppliedView,
) -> Result<Plan, ActorError> {
    let mut effects = Effects::new(shard);
    let mut replies = Vec::with_capacity(entries.len());
    let mut last = applied;
    let mut clock = log_clock;
    let mut clock_moved = false;
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
        let response = apply_command(cmd, clock.now_ms, view, &mut effects)?;
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
    })
}

/// Applies one command once: a retry of a write its session already applied is answered
/// from the session and changes nothing; otherwise the action runs and, for a write in a
/// session, the session records it with its reply at log time `now_ms`.
fn apply_command(
    cmd: Command,
    now_ms: u64,
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
    let response = match cmd.action {
        Action::Put { key, value } => put(key, value, effects),
        Action::Delete { key } => delete(key, effects),
        Action::Cas { key, expected, new } => cas(key, expected, new, view, effects)?,
        Action::Split(_) => Response::Invalid("shard splits are not applied by this build".into()),
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
