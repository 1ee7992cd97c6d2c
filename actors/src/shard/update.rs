//! Applying an [`Action::Update`](super::Action::Update): the keys' changes of one entry, in
//! order, all or none.
//!
//! Each change sees the values the earlier changes of the same entry left (so `MSET a 1 a 2`
//! ends with 2, and `SET k v GET` after an `INCR k` in one update would see the sum). The
//! changes first go to a scratch record of this entry; only when every one has succeeded do
//! they become the batch's effects, so an `INCR` of a non-number or an `APPEND` past the value
//! limit leaves every key as it was. The arithmetic follows Redis: decimal signed 64-bit
//! integers without sign `+`, spaces or leading zeros, an absent key counting as 0.

use std::collections::HashMap;

use shardkv_transport::slot::slot;
use shardkv_transport::wire::{
    Change, Condition, KeyUpdate, LimitKind, Response, UpdateOutcome, UPDATE_NOT_AN_INTEGER,
    UPDATE_OVERFLOW,
};

use super::effects::Effects;
use super::view::AppliedView;
use crate::error::ActorError;

/// The writes of one update before they are known to succeed: the new value of each key it
/// changed (`None`: deleted), and the order to write them in.
struct Scratch {
    values: HashMap<Vec<u8>, Option<Vec<u8>>>,
    order: Vec<Vec<u8>>,
}

impl Scratch {
    fn value(
        &self,
        key: &[u8],
        view: &impl AppliedView,
        effects: &Effects,
    ) -> Result<Option<Vec<u8>>, ActorError> {
        match self.values.get(key) {
            Some(v) => Ok(v.clone()),
            None => effects.value(view, key),
        }
    }

    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        if self.values.insert(key.clone(), value).is_none() {
            self.order.push(key);
        }
    }
}

/// Applies `updates` over `view` and the batch so far: answers one [`UpdateOutcome`] per key,
/// or, if any change fails, the failure with nothing changed. `value_bytes_max` bounds the
/// value an append leaves.
pub fn update(
    updates: Vec<KeyUpdate>,
    value_bytes_max: u64,
    view: &impl AppliedView,
    effects: &mut Effects,
) -> Result<Response, ActorError> {
    // The router refuses updates across slots; the apply refuses them too, since the shard's
    // ownership of the keys was checked on the first key alone.
    if let Some(first) = updates.first() {
        let first_slot = slot(&first.key);
        if updates.iter().any(|u| slot(&u.key) != first_slot) {
            return Ok(Response::Invalid(
                "an update's keys must all hash to one slot".into(),
            ));
        }
    }
    let mut scratch = Scratch {
        values: HashMap::new(),
        order: Vec::new(),
    };
    let mut outcomes = Vec::with_capacity(updates.len());
    for u in updates {
        let current = scratch.value(&u.key, view, effects)?;
        let holds = match u.condition {
            Condition::Always => true,
            Condition::IfAbsent => current.is_none(),
            Condition::IfPresent => current.is_some(),
        };
        let mut outcome = UpdateOutcome {
            applied: holds,
            previous: None,
            number: 0,
        };
        if holds {
            match change(u.change, current.as_deref(), value_bytes_max) {
                Ok(Changed::Write(new, number)) => {
                    outcome.number = number;
                    scratch.write(u.key.clone(), new);
                }
                // Deleting an absent key changes nothing, and says so.
                Ok(Changed::Nothing) => outcome.applied = false,
                Err(failure) => return Ok(failure),
            }
        }
        if u.return_previous {
            outcome.previous = current;
        }
        outcomes.push(outcome);
    }
    for key in scratch.order {
        match scratch.values.remove(&key).flatten() {
            Some(value) => effects.put_value(key, value),
            None => effects.delete_value(key),
        }
    }
    Ok(Response::Updated(outcomes))
}

/// What one change does to a key whose condition held.
enum Changed {
    /// Store this value (`None`: remove the key); the number is the outcome's.
    Write(Option<Vec<u8>>, i64),
    /// Leave the key as it is.
    Nothing,
}

/// The change to a key holding `current`, or the reply that fails the whole update.
fn change(
    change: Change,
    current: Option<&[u8]>,
    value_bytes_max: u64,
) -> Result<Changed, Response> {
    match change {
        Change::Set(value) => Ok(Changed::Write(Some(value), 0)),
        Change::Delete if current.is_some() => Ok(Changed::Write(None, 0)),
        Change::Delete => Ok(Changed::Nothing),
        Change::IncrBy(by) => {
            let now = match current {
                None => 0,
                Some(bytes) => parse_integer(bytes)
                    .ok_or_else(|| Response::Invalid(UPDATE_NOT_AN_INTEGER.into()))?,
            };
            let sum = now
                .checked_add(by)
                .ok_or_else(|| Response::Invalid(UPDATE_OVERFLOW.into()))?;
            Ok(Changed::Write(Some(sum.to_string().into_bytes()), sum))
        }
        Change::Append(tail) => {
            let mut value = current.map(<[u8]>::to_vec).unwrap_or_default();
            let len = value.len() + tail.len();
            if len as u64 > value_bytes_max {
                return Err(Response::TooLarge {
                    what: LimitKind::Value,
                    len,
                    limit: usize::try_from(value_bytes_max).unwrap_or(usize::MAX),
                });
            }
            value.extend_from_slice(&tail);
            // A value is at most `value_bytes_max`, far below i64::MAX.
            Ok(Changed::Write(
                Some(value),
                i64::try_from(len).unwrap_or(i64::MAX),
            ))
        }
    }
}

/// `bytes` as Redis reads an integer value: an optional `-`, then decimal digits with no
/// leading zero (except `0` itself), fitting in an i64. Anything else (`+1`, ` 1`, `01`,
/// `-0`, `1.5`, the empty string) is no integer.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == bytes.len(),
        [first, ..] => *first != b'0' && digits.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
