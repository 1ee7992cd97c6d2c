//! The read view the apply core works over: the shard's state as applied before the batch
//! being planned.
//!
//! In the running shard that is the overlay of batches on their way to disk over LMDB
//! ([`super::store_view::StoreView`]); in tests it is a map (`MemoryView`). The core adds
//! its own batch's writes on top ([`super::effects::Effects`]), so it never needs to know
//! which layer a value came from.

use shardkv_transport::ShardId;

use super::sessions::SessionActivity;
use crate::error::ActorError;
use crate::schema::session_record::SessionRecord;

/// The shard's applied state as the apply core reads it.
pub trait AppliedView {
    /// The value of a user key, `None` if absent.
    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ActorError>;

    /// The session of a client, `None` if it has none (never had one, or it expired).
    fn session(&self, client: u64) -> Result<Option<SessionRecord>, ActorError>;

    /// The last activity of every session, except clients for which `shadowed` holds: the
    /// caller has newer records for those, so theirs are neither read nor decoded here.
    fn session_activity(
        &self,
        shadowed: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<SessionActivity>, ActorError>;

    /// Every session whole, except clients for which `shadowed` holds (as above): what a
    /// split copies to the new shard.
    fn sessions_except(
        &self,
        shadowed: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<(u64, SessionRecord)>, ActorError>;

    /// Whether this host holds Raft state of `shard` (a split never creates a shard over one).
    fn shard_has_state(&self, shard: ShardId) -> Result<bool, ActorError>;
}

/// An in-memory view, for testing the apply core without LMDB.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryView {
    pub values: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    pub sessions: std::collections::BTreeMap<u64, SessionRecord>,
    /// Shards this host holds Raft state of.
    pub hosted: std::collections::BTreeSet<ShardId>,
}

#[cfg(test)]
impl AppliedView for MemoryView {
    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ActorError> {
        Ok(self.values.get(key).cloned())
    }

    fn session(&self, client: u64) -> Result<Option<SessionRecord>, ActorError> {
        Ok(self.sessions.get(&client).cloned())
    }

    fn session_activity(
        &self,
        shadowed: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<SessionActivity>, ActorError> {
        Ok(self
            .sessions
            .iter()
            .filter(|(client, _)| !shadowed(**client))
            .map(|(client, s)| SessionActivity {
                client: *client,
                last_ms: s.last_ms,
            })
            .collect())
    }

    fn sessions_except(
        &self,
        shadowed: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<(u64, SessionRecord)>, ActorError> {
        Ok(self
            .sessions
            .iter()
            .filter(|(client, _)| !shadowed(**client))
            .map(|(client, s)| (*client, s.clone()))
            .collect())
    }

    fn shard_has_state(&self, shard: ShardId) -> Result<bool, ActorError> {
        Ok(self.hosted.contains(&shard))
    }
}
