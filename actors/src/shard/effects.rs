//! The effects of one apply batch: the LMDB writes it makes, in order, and the values and
//! sessions it changed.
//!
//! Later entries of the same batch must see what earlier ones did before any of it is on
//! disk, so every read of the apply core goes through [`Effects::value`] and
//! [`Effects::session`]: this batch's record first, then the [`AppliedView`]. The changed
//! values and sessions then become the batch's layer of the shard's overlay.

use std::collections::HashMap;

use shardkv_transport::wire::Response;
use shardkv_transport::ShardId;

use super::view::AppliedView;
use crate::error::ActorError;
use crate::messages::{WriteBatch, WriteOp};
use crate::schema::log_clock_record::log_clock_op;
use crate::schema::session_record::encode_session;
use crate::schema::session_record::SessionRecord;
use crate::schema::{kv_key, raft_records, session_key, TableId};
use crate::shard::LogClock;

/// What one batch of committed entries does; see the module docs.
#[derive(Debug)]
pub struct Effects {
    shard: ShardId,
    /// The writes to commit, in the order the entries made them.
    pub batch: WriteBatch,
    /// User keys the batch wrote: the new value, `None` if deleted.
    pub values: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Sessions the batch wrote: the new record, `None` if expired.
    pub sessions: HashMap<u64, Option<SessionRecord>>,
}

impl Effects {
    /// No effects yet, for a batch of `shard`.
    pub fn new(shard: ShardId) -> Self {
        Effects {
            shard,
            batch: WriteBatch::default(),
            values: HashMap::new(),
            sessions: HashMap::new(),
        }
    }

    /// The shard the effects are for.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The current value of `key`: this batch's write, else `view`'s.
    pub fn value(
        &self,
        view: &impl AppliedView,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, ActorError> {
        match self.values.get(key) {
            Some(v) => Ok(v.clone()),
            None => view.value(key),
        }
    }

    /// The current session of `client`: this batch's record, else `view`'s.
    pub fn session(
        &self,
        view: &impl AppliedView,
        client: u64,
    ) -> Result<Option<SessionRecord>, ActorError> {
        match self.sessions.get(&client) {
            Some(s) => Ok(s.clone()),
            None => view.session(client),
        }
    }

    /// Whether this batch wrote or forgot the session of `client`.
    pub fn has_session(&self, client: u64) -> bool {
        self.sessions.contains_key(&client)
    }

    /// The sessions this batch wrote (`Some`) or forgot (`None`).
    pub fn sessions(&self) -> impl Iterator<Item = (u64, Option<&SessionRecord>)> + '_ {
        self.sessions.iter().map(|(c, s)| (*c, s.as_ref()))
    }

    /// Sets `key` to `value`.
    pub fn put_value(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.ops.push(WriteOp::Put(
            TableId::Kv,
            kv_key(self.shard, &key),
            value.clone(),
        ));
        self.values.insert(key, Some(value));
    }

    /// Removes `key`.
    pub fn delete_value(&mut self, key: Vec<u8>) {
        self.batch
            .ops
            .push(WriteOp::Delete(TableId::Kv, kv_key(self.shard, &key)));
        self.values.insert(key, None);
    }

    /// Every session of the shard as of this batch (its own records over `view`'s).
    pub fn all_sessions(
        &self,
        view: &impl AppliedView,
    ) -> Result<Vec<(u64, SessionRecord)>, ActorError> {
        let mut all = view.sessions_except(&|client| self.has_session(client))?;
        all.extend(
            self.sessions
                .iter()
                .filter_map(|(client, s)| s.as_ref().map(|s| (*client, s.clone()))),
        );
        Ok(all)
    }

    /// Records that `client`'s write `seq` at log time `last_ms` was applied and answered
    /// `reply`: what a retry of it will be answered.
    pub fn record_session(
        &mut self,
        client: u64,
        seq: u64,
        last_ms: u64,
        reply: Response,
    ) -> Result<(), ActorError> {
        let record = encode_session(seq, last_ms, &reply)?;
        self.batch.ops.push(WriteOp::Put(
            TableId::Sessions,
            session_key(self.shard, client).to_vec(),
            record,
        ));
        let session = SessionRecord {
            seq,
            last_ms,
            reply: Some(reply),
        };
        self.sessions.insert(client, Some(session));
        Ok(())
    }

    /// Forgets the session of `client`.
    pub fn forget_session(&mut self, client: u64) {
        self.batch.ops.push(WriteOp::Delete(
            TableId::Sessions,
            session_key(self.shard, client).to_vec(),
        ));
        self.sessions.insert(client, None);
    }

    /// Records `clock` as the shard's log clock, in the same transaction as the applied index.
    pub fn set_log_clock(&mut self, clock: &LogClock) {
        self.batch.ops.push(log_clock_op(self.shard, clock));
    }

    /// Records `index` as the shard's applied index, in the same transaction as the rest.
    pub fn set_applied(&mut self, index: u64) {
        self.batch
            .ops
            .push(raft_records::applied_op(self.shard, index));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::sessions::session;
    use crate::shard::view::MemoryView;

    #[test]
    fn the_batch_own_writes_hide_the_view() {
        let mut view = MemoryView::default();
        view.values.insert(b"a".to_vec(), b"old".to_vec());
        view.values.insert(b"b".to_vec(), b"old".to_vec());
        let mut effects = Effects::new(1);
        assert_eq!(effects.value(&view, b"a").unwrap(), Some(b"old".to_vec()));
        effects.put_value(b"a".to_vec(), b"new".to_vec());
        effects.delete_value(b"b".to_vec());
        assert_eq!(effects.value(&view, b"a").unwrap(), Some(b"new".to_vec()));
        assert_eq!(effects.value(&view, b"b").unwrap(), None);
        assert_eq!(effects.batch.ops.len(), 2);
    }

    #[test]
    fn a_forgotten_session_hides_the_stored_one() {
        let mut view = MemoryView::default();
        let stored = session(1, 0, None);
        view.sessions.insert(9, stored.clone());
        let mut effects = Effects::new(1);
        assert_eq!(effects.session(&view, 9).unwrap(), Some(stored));
        effects.forget_session(9);
        assert_eq!(effects.session(&view, 9).unwrap(), None);
        assert!(effects.has_session(9));
    }

    #[test]
    fn a_recorded_session_is_stored_under_the_client_key() {
        let mut effects = Effects::new(2);
        effects.record_session(5, 4, 77, Response::Ok).unwrap();
        assert!(matches!(
            &effects.batch.ops[..],
            [WriteOp::Put(TableId::Sessions, k, _)] if k[..] == session_key(2, 5)
        ));
        assert_eq!(
            effects.session(&MemoryView::default(), 5).unwrap(),
            Some(session(4, 77, Some(Response::Ok)))
        );
    }
}
