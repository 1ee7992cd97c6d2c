//! raft-rs `Storage` over the host's LMDB Env: the log, hard state and conf state of one shard
//! survive restarts, so a restarted replica can never vote twice in a term or forget an entry it
//! acknowledged.
//!
//! Reads go straight to LMDB through read transactions (the record layouts are
//! [`crate::schema::raft_records`]'s); writes are produced as `WriteOp`s by the encoders there
//! and made durable by the StorageActor (in its write-ahead log) *before* raft-rs is told they
//! are persisted. Entries not yet in LMDB sit in a staging area that reads consult first,
//! because raft-rs stops holding them itself as soon as they are handed to storage
//! (`advance_append_async`), and LMDB takes them a little after they are durable.
//! Snapshots come from the shard's [`ShardSnapshots`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use shardkv_transport::ShardId;

use crate::error::ActorError;
use crate::schema::raft_records::Durable;
use crate::schema::Schema;
use crate::snapshot::{BuildSlots, ShardSnapshots};

/// One shard's Raft storage.
pub struct LmdbRaftStorage {
    schema: Schema,
    shard: ShardId,
    /// Entries handed to storage and not yet known to be in LMDB, contiguous by index. They
    /// supersede whatever LMDB holds at the same or later indexes (an in-flight append may be
    /// replacing a conflicting suffix there).
    staged: VecDeque<Entry>,
    /// The Ready number each staged entry was handed to storage with (same length).
    staged_numbers: VecDeque<u64>,
    /// This shard's snapshot files and their builds.
    snapshots: ShardSnapshots,
}

impl LmdbRaftStorage {
    /// Storage of `shard` in `schema`; snapshots are written to `snap_dir` and built within
    /// the host's `build_slots`.
    pub fn new(
        schema: Schema,
        shard: ShardId,
        snap_dir: PathBuf,
        build_slots: Arc<BuildSlots>,
    ) -> Self {
        LmdbRaftStorage {
            snapshots: ShardSnapshots::new(schema.clone(), shard, snap_dir, build_slots),
            schema,
            shard,
            staged: VecDeque::new(),
            staged_numbers: VecDeque::new(),
        }
    }

    /// This shard's snapshot files: the replica claims the ones it sends and retires the
    /// ones no follower needs any more.
    pub fn snapshots(&self) -> &ShardSnapshots {
        &self.snapshots
    }

    /// The stored hard state (default if none).
    pub fn hard_state(&self) -> Result<HardState, ActorError> {
        let durable = self.durable();
        durable.hard_state(&durable.read_txn()?)
    }

    /// Records entries just handed to storage with the Ready numbered `number` (they replace
    /// staged ones from their first index on).
    pub fn stage(&mut self, number: u64, entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.index) else {
            return;
        };
        while self.staged.back().is_some_and(|e| e.index >= first) {
            self.staged.pop_back();
            self.staged_numbers.pop_back();
        }
        if let Some(back) = self.staged.back() {
            assert_eq!(back.index + 1, first, "staged entries must stay contiguous");
        }
        self.staged_numbers
            .extend(std::iter::repeat_n(number, entries.len()));
        self.staged.extend(entries);
    }

    /// Forgets the staged entries of every Ready numbered up to `number`: LMDB takes batches
    /// in order, so it holds them all now. Entries staged later (including ones that replaced
    /// a conflicting suffix of an earlier Ready) stay until LMDB holds their own Ready.
    pub fn unstage(&mut self, number: u64) {
        while self.staged_numbers.front().is_some_and(|n| *n <= number) {
            self.staged_numbers.pop_front();
            self.staged.pop_front();
        }
    }

    /// Forgets every staged entry (a snapshot replaced the log).
    pub fn clear_staged(&mut self) {
        self.staged.clear();
        self.staged_numbers.clear();
    }

    fn staged_first(&self) -> Option<u64> {
        self.staged.front().map(|e| e.index)
    }

    fn staged_at(&self, index: u64) -> Option<&Entry> {
        let first = self.staged_first()?;
        let offset = usize::try_from(index.checked_sub(first)?).ok()?;
        self.staged.get(offset)
    }

    /// Reads of what LMDB holds for this shard (not the staged entries).
    fn durable(&self) -> Durable<'_> {
        Durable::new(&self.schema, self.shard)
    }
}

impl raft::Storage for LmdbRaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let durable = self.durable();
        let rtxn = durable.read_txn()?;
        Ok(RaftState::new(
            durable.hard_state(&rtxn)?,
            durable.conf_state(&rtxn)?,
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let durable = self.durable();
        let rtxn = durable.read_txn()?;
        let (truncated, _) = durable.truncated(&rtxn)?;
        if low <= truncated {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = match self.staged.back() {
            Some(e) => e.index,
            None => durable.last_index_in(&rtxn)?,
        };
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        // LMDB serves what precedes the staged entries; the staging area serves the rest.
        let lmdb_high = self.staged_first().map_or(high, |f| high.min(f));
        // Sized by what is likely returned, not by the range asked for (which can be huge).
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let mut full = false;
        if low < lmdb_high {
            for e in durable.entries_in(&rtxn, low, lmdb_high)? {
                let e = e?;
                size += u64::from(e.compute_size());
                // Always return at least one entry, as the Storage contract requires.
                if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                    full = true;
                    break;
                }
                out.push(e);
            }
            if !full && out.len() as u64 != lmdb_high - low {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
        }
        if !full {
            for index in low.max(lmdb_high)..high {
                let Some(e) = self.staged_at(index) else {
                    return Err(raft::Error::Store(StorageError::Unavailable));
                };
                size += u64::from(e.compute_size());
                if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                    break;
                }
                out.push(e.clone());
            }
        }
        if out.is_empty() && low < high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let durable = self.durable();
        let rtxn = durable.read_txn()?;
        let (truncated, truncated_term) = durable.truncated(&rtxn)?;
        if idx == truncated {
            return Ok(truncated_term);
        }
        if idx < truncated {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if let Some(e) = self.staged_at(idx) {
            return Ok(e.term);
        }
        if self.staged_first().is_some_and(|f| idx >= f) {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match durable.entry_at(&rtxn, idx)? {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        let durable = self.durable();
        Ok(durable.truncated(&durable.read_txn()?)?.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        if let Some(e) = self.staged.back() {
            return Ok(e.index);
        }
        let durable = self.durable();
        Ok(durable.last_index_in(&durable.read_txn()?)?)
    }

    /// A snapshot at or past `request_index` and the log's truncation point (so the follower
    /// can continue from the log after installing it); see [`ShardSnapshots::snapshot`].
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let durable = self.durable();
        let truncated = durable.truncated(&durable.read_txn()?)?.0;
        self.snapshots.snapshot(request_index.max(truncated), to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{WriteBatch, WriteOp};
    use crate::schema::raft_records::{bootstrap, hard_state_op};
    use crate::schema::{state_key, TableId, TAG_TRUNCATED};
    use crate::snapshot::SNAPSHOT_BUILDS_MAX;
    use crate::storage::commit;
    use crate::test_fixtures::{append, entry, open_schema, temp_schema};
    use raft::Storage;

    /// Storage of `shard` that never builds a snapshot in these tests.
    fn storage(schema: Schema, shard: ShardId) -> LmdbRaftStorage {
        let slots = Arc::new(BuildSlots::new(SNAPSHOT_BUILDS_MAX));
        LmdbRaftStorage::new(schema, shard, PathBuf::new(), slots)
    }

    #[test]
    fn empty_storage() {
        let (_d, schema) = temp_schema();
        bootstrap(&schema, 1, &[1, 2, 3], None).unwrap();
        let s = storage(schema, 1);
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        let st = s.initial_state().unwrap();
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        assert!(matches!(
            s.term(1),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
    }

    #[test]
    fn append_entries_and_terms() {
        let (_d, schema) = temp_schema();
        append(&schema, 1, &[entry(1, 1), entry(2, 1), entry(3, 2)]);
        // Another shard's log must not leak into shard 1.
        append(
            &schema,
            2,
            &[entry(1, 9), entry(2, 9), entry(3, 9), entry(4, 9)],
        );
        let s = storage(schema.clone(), 1);
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 2);
        let got = s
            .entries(1, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got, vec![entry(1, 1), entry(2, 1), entry(3, 2)]);
        // max_size limits, but at least one entry comes back.
        let one = s
            .entries(1, 4, Some(0), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(one.len(), 1);
        let size = u64::from(entry(1, 1).compute_size() + entry(2, 1).compute_size());
        let two = s
            .entries(1, 4, Some(size), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(storage(schema, 2).last_index().unwrap(), 4);
    }

    #[test]
    fn conflicting_suffix_is_replaced() {
        let (_d, schema) = temp_schema();
        append(
            &schema,
            1,
            &[entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1)],
        );
        append(&schema, 1, &[entry(3, 2)]);
        let s = storage(schema, 1);
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 2);
        assert!(s.term(4).is_err());
    }

    #[test]
    fn compacted_range_is_reported() {
        let (_d, schema) = temp_schema();
        append(&schema, 1, &[entry(4, 2), entry(5, 2), entry(6, 3)]);
        let mut trunc = 3u64.to_be_bytes().to_vec();
        trunc.extend_from_slice(&2u64.to_be_bytes());
        commit(
            &schema,
            vec![WriteBatch {
                ops: vec![WriteOp::Put(
                    TableId::RaftState,
                    state_key(1, TAG_TRUNCATED).to_vec(),
                    trunc,
                )],
            }],
        )
        .unwrap();
        let s = storage(schema, 1);
        assert_eq!(s.first_index().unwrap(), 4);
        assert_eq!(s.last_index().unwrap(), 6);
        assert_eq!(s.term(3).unwrap(), 2);
        assert!(matches!(
            s.term(2),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(3, 5, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(
            s.entries(4, 7, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn hard_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let schema = open_schema(dir.path());
            let hs = HardState {
                term: 7,
                vote: 2,
                commit: 0,
                ..Default::default()
            };
            let op = hard_state_op(1, &hs).unwrap();
            commit(&schema, vec![WriteBatch { ops: vec![op] }]).unwrap();
        }
        let schema = open_schema(dir.path());
        let s = storage(schema, 1);
        let st = s.initial_state().unwrap();
        assert_eq!((st.hard_state.term, st.hard_state.vote), (7, 2));
    }

    #[test]
    fn staged_entries_are_served_and_hide_a_conflicting_durable_suffix() {
        let (_d, schema) = temp_schema();
        append(&schema, 1, &[entry(1, 1), entry(2, 1), entry(3, 1)]);
        let mut s = storage(schema.clone(), 1);
        // Ready 1 stages 3..=5 of term 1 (replacing 3 on disk); before it is durable, Ready 2
        // from a new leader replaces index 4 onwards.
        s.stage(1, vec![entry(3, 2), entry(4, 2), entry(5, 2)]);
        assert_eq!(s.last_index().unwrap(), 5);
        assert_eq!(
            s.term(3).unwrap(),
            2,
            "the staged entry wins over LMDB's stale one"
        );
        assert_eq!(s.term(2).unwrap(), 1);
        let got = s
            .entries(1, 6, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got,
            vec![
                entry(1, 1),
                entry(2, 1),
                entry(3, 2),
                entry(4, 2),
                entry(5, 2)
            ]
        );
        s.stage(2, vec![entry(4, 3)]);
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.term(4).unwrap(), 3);
        // Ready 1 becomes durable: only its surviving entry (3) leaves the staging area; the
        // replacement (4, 3) must stay visible although LMDB now holds (4, 2) and (5, 2).
        append(&schema, 1, &[entry(3, 2), entry(4, 2), entry(5, 2)]);
        s.unstage(1);
        assert_eq!(
            s.last_index().unwrap(),
            4,
            "LMDB's superseded suffix stays hidden"
        );
        assert_eq!(s.term(4).unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 2);
        append(&schema, 1, &[entry(4, 3)]);
        s.unstage(2);
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.term(4).unwrap(), 3);
    }

    #[test]
    fn completions_out_of_order_leave_nothing_staged() {
        let (_d, schema) = temp_schema();
        let mut s = storage(schema.clone(), 1);
        s.stage(1, vec![entry(1, 1)]);
        s.stage(2, vec![entry(2, 1)]);
        s.stage(3, vec![entry(3, 1)]);
        append(&schema, 1, &[entry(1, 1), entry(2, 1), entry(3, 1)]);
        // One group commit made all three durable; the callbacks ran 1, 3, 2.
        s.unstage(1);
        s.unstage(3);
        s.unstage(2);
        assert!(s.staged.is_empty() && s.staged_numbers.is_empty());
        assert_eq!(s.last_index().unwrap(), 3);
    }
}
