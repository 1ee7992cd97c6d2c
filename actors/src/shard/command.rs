//! The state-machine command: the record a leader proposes and every replica applies.
//!
//! It lives next to the apply core because its fields are exactly what applying needs: the
//! session (`client_id`, `seq`) that makes a retry apply once, and the leader's stamp
//! (`time_ms`) that the log clock ([`super::LogClock`]) measures elapsed time by, so idle
//! sessions expire the same way on every replica.

use raft::eraftpb::{Entry, EntryType};
use serde::{Deserialize, Serialize};
use shardkv_transport::wire::{KeyUpdate, SplitSpec};
use shardkv_transport::ShardId;

use crate::error::ActorError;

/// A state-machine command as stored in the Raft log (postcard-encoded entry data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The session the write belongs to (scoped by the sender's certificate on the host).
    pub client_id: u64,
    /// The client's number for this write within its session; 0: no session (no dedup).
    pub seq: u64,
    /// The proposing leader's clock in ms ([`super::leader_stamp_ms`]). Only its advance
    /// between commands of one term carries meaning: the log clock adds that up and ignores
    /// the value itself, so no leader's clock offset can expire sessions. (Entries of earlier
    /// versions carry the wall clock here; the same rule applies to them.)
    pub time_ms: u64,
    pub action: Action,
}

/// What a command does to the shard's data. It is the log's format, apart from the wire's
/// request type: entries a previous version wrote must still apply after an upgrade.
/// - `Put`: overwrite (or create) the row of `key`.
/// - `Delete`: drop the row of `key`; an absent key is not an error.
/// - `Cas`: replace the row of `key` by `new` (`None`: drop it) if and only if it holds
///   `expected` (`None`: no row) when the entry is applied.
/// - `Update`: the keys' changes of an [`Op::Update`](shardkv_transport::wire::Op::Update),
///   all or none. `value_bytes_max` is the proposing host's value limit, which an append's
///   result must keep to: it travels in the entry so that every replica decides alike even
///   while hosts are restarted with a new limit one by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Put {
        #[serde(with = "shardkv_transport::bytes::vec")]
        key: Vec<u8>,
        #[serde(with = "shardkv_transport::bytes::vec")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "shardkv_transport::bytes::vec")]
        key: Vec<u8>,
    },
    Cas {
        #[serde(with = "shardkv_transport::bytes::vec")]
        key: Vec<u8>,
        #[serde(with = "shardkv_transport::bytes::option")]
        expected: Option<Vec<u8>>,
        #[serde(with = "shardkv_transport::bytes::option")]
        new: Option<Vec<u8>>,
    },
    /// Hand the slots `>= at` to a new shard (see [`SplitSpec`]); proposed with no session.
    Split(SplitSpec),
    Update {
        updates: Vec<KeyUpdate>,
        value_bytes_max: u64,
    },
}

impl Action {
    /// The key a data action touches (`None` for a split, which touches slots).
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Action::Put { key, .. } | Action::Delete { key } | Action::Cas { key, .. } => Some(key),
            // All of an update's keys share one slot (checked before it is proposed), so the
            // first stands for them all.
            Action::Update { updates, .. } => updates.first().map(|u| &u.key[..]),
            Action::Split(_) => None,
        }
    }
}

impl Command {
    /// The command carried by a committed entry of `shard`, or `None` for an entry that
    /// changes no data (a new leader's empty entry, and, later, membership changes). An entry
    /// that does not decode is corrupt: every replica would fail on it alike.
    pub fn from_entry(shard: ShardId, entry: &Entry) -> Result<Option<Command>, ActorError> {
        if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
            return Ok(None);
        }
        postcard::from_bytes(&entry.data)
            .map(Some)
            .map_err(|err| ActorError::Corrupt {
                what: format!("command at index {} of shard {shard}", entry.index),
                detail: err.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data: Vec<u8>, kind: EntryType) -> Entry {
        let mut e = Entry {
            index: 7,
            data: data.into(),
            ..Default::default()
        };
        e.set_entry_type(kind);
        e
    }

    #[test]
    fn a_normal_entry_yields_the_command_it_carries() {
        let cmd = Command {
            client_id: 3,
            seq: 1,
            time_ms: 99,
            action: Action::Delete { key: b"k".to_vec() },
        };
        let data = postcard::to_allocvec(&cmd).unwrap();
        let got = Command::from_entry(1, &entry(data, EntryType::EntryNormal)).unwrap();
        assert_eq!(got, Some(cmd));
    }

    #[test]
    fn empty_and_conf_change_entries_carry_no_command() {
        assert_eq!(
            Command::from_entry(1, &entry(Vec::new(), EntryType::EntryNormal)).unwrap(),
            None
        );
        assert_eq!(
            Command::from_entry(1, &entry(vec![1, 2], EntryType::EntryConfChange)).unwrap(),
            None
        );
    }

    #[test]
    fn an_undecodable_entry_is_corrupt_and_names_its_index() {
        let err = Command::from_entry(4, &entry(vec![0xff; 3], EntryType::EntryNormal))
            .err()
            .unwrap();
        assert!(
            matches!(&err, ActorError::Corrupt { what, .. } if what.contains("index 7 of shard 4")),
            "{err}"
        );
    }
}
