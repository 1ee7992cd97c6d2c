//! Atomic updates of keys in one slot: what Redis' write commands need beyond put, delete and
//! CAS (conditional sets, the old value back, counters, appends, several keys at once).
//!
//! An [`Op::Update`](super::Op::Update) carries one or more [`KeyUpdate`]s, all in one slot
//! and so in one shard; the shard applies them in order in one log entry, all or none. The
//! arithmetic runs in the state machine, so two clients incrementing one counter never lose
//! an increment the way a client-side read-modify-write loop can.

use serde::{Deserialize, Serialize};

/// One key's change inside an update.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyUpdate {
    #[serde(with = "crate::bytes::vec")]
    pub key: Vec<u8>,
    pub change: Change,
    /// The change runs only if this holds for the key's value as of the earlier changes.
    pub condition: Condition,
    /// Answer the key's value as it was before this change (GETSET, GETDEL, SET .. GET).
    pub return_previous: bool,
}

/// What happens to the key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set the value.
    Set(#[serde(with = "crate::bytes::vec")] Vec<u8>),
    /// Remove the key.
    Delete,
    /// Add to the value read as a signed 64-bit decimal (an absent key counts as 0) and store
    /// the sum in decimal. A value that is no such integer, or a sum that overflows, fails
    /// the whole update with [`UPDATE_NOT_AN_INTEGER`] or [`UPDATE_OVERFLOW`].
    IncrBy(i64),
    /// Append bytes to the value (an absent key counts as empty). A result longer than the
    /// host's value limit fails the whole update.
    Append(#[serde(with = "crate::bytes::vec")] Vec<u8>),
}

/// When a change runs.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Condition {
    #[default]
    Always,
    /// Only if the key has no value (SET NX, SETNX).
    IfAbsent,
    /// Only if the key has a value (SET XX).
    IfPresent,
}

/// What one [`KeyUpdate`] did; the update's reply holds one per key, in order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateOutcome {
    /// The condition held and the change ran; for a delete, also that the key existed.
    pub applied: bool,
    /// The value before the change, if `return_previous` was asked (`None`: absent).
    #[serde(with = "crate::bytes::option")]
    pub previous: Option<Vec<u8>>,
    /// After `IncrBy`: the new value; after `Append`: the new length; otherwise 0.
    pub number: i64,
}

/// The reason an update failed because a value is not a decimal integer (Redis' wording).
pub const UPDATE_NOT_AN_INTEGER: &str = "value is not an integer or out of range";
/// The reason an update failed because an increment overflows (Redis' wording).
pub const UPDATE_OVERFLOW: &str = "increment or decrement would overflow";
