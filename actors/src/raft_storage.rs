//! raft-rs `Storage` over the host's LMDB Env: the log, hard state and conf state of one shard
//! survive restarts, so a restarted replica can never vote twice in a term or forget an entry it
//! acknowledged.
//!
//! Reads go straight to LMDB through read transactions; writes are produced as [`WriteOp`]s and
//! made durable by the StorageActor *before* raft-rs is told they are persisted. Entries on
//! their way to disk sit in a staging area that reads consult first, because raft-rs stops
//! holding them itself as soon as they are handed to storage (`advance_append_async`).

use std::collections::VecDeque;
use std::path::PathBuf;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use shardkv_transport::ShardId;

use crate::error::ActorError;
use crate::messages::WriteOp;
use crate::schema::{
    decode_u64, log_key, log_key_index, state_key, Schema, TableId, TAG_APPLIED, TAG_CONF_STATE,
    TAG_HARD_STATE, TAG_TRUNCATED,
};
use crate::snapshot::SnapMeta;

/// The write of a protobuf record of `shard` under `tag` in `raft_state`.
fn state_op(
    shard: ShardId,
    tag: u8,
    record: &impl protobuf::Message,
) -> Result<WriteOp, ActorError> {
    let bytes = record
        .write_to_bytes()
        .map_err(|e| ActorError::Storage(e.to_string()))?;
    Ok(WriteOp::Put(
        TableId::RaftState,
        state_key(shard, tag).to_vec(),
        bytes,
    ))
}

/// One shard's Raft storage.
pub struct LmdbRaftStorage {
    schema: Schema,
    shard: ShardId,
    /// Entries handed to storage and not yet known durable, contiguous by index. They
    /// supersede whatever LMDB holds at the same or later indexes (an in-flight append may be
    /// replacing a conflicting suffix there).
    staged: VecDeque<Entry>,
    /// The Ready number each staged entry was handed to storage with (same length).
    staged_numbers: VecDeque<u64>,
    /// Where snapshot files of this host live.
    snap_dir: PathBuf,
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(std::io::Error::other(
        e.to_string(),
    ))))
}

impl LmdbRaftStorage {
    /// Storage of `shard` in `schema`.
    pub fn new(schema: Schema, shard: ShardId, snap_dir: PathBuf) -> Self {
        LmdbRaftStorage {
            schema,
            shard,
            staged: VecDeque::new(),
            staged_numbers: VecDeque::new(),
            snap_dir,
        }
    }

    /// Forgets every staged entry (a snapshot replaced the log).
    pub fn clear_staged(&mut self) {
        self.staged.clear();
        self.staged_numbers.clear();
    }

    /// The (index, term) of the last entry removed by compaction or replaced by a snapshot.
    pub fn truncated_state(schema: &Schema, shard: ShardId) -> Result<(u64, u64), ActorError> {
        let s = LmdbRaftStorage::new(schema.clone(), shard, PathBuf::new());
        let rtxn = schema.env.read_txn()?;
        s.truncated(&rtxn)
            .map_err(|e| ActorError::Storage(e.to_string()))
    }

    /// The write that records (index, term) as the truncation point.
    pub fn truncated_op(shard: ShardId, index: u64, term: u64) -> WriteOp {
        let mut v = index.to_be_bytes().to_vec();
        v.extend_from_slice(&term.to_be_bytes());
        WriteOp::Put(
            TableId::RaftState,
            state_key(shard, TAG_TRUNCATED).to_vec(),
            v,
        )
    }

    /// The write of the conf state.
    pub fn conf_state_op(shard: ShardId, cs: &ConfState) -> Result<WriteOp, ActorError> {
        state_op(shard, TAG_CONF_STATE, cs)
    }

    /// The term of durable entry `index` (or of the truncation point), for compaction.
    pub fn durable_term(
        schema: &Schema,
        shard: ShardId,
        index: u64,
    ) -> Result<Option<u64>, ActorError> {
        let s = LmdbRaftStorage::new(schema.clone(), shard, PathBuf::new());
        let rtxn = schema.env.read_txn()?;
        let (t_index, t_term) = s
            .truncated(&rtxn)
            .map_err(|e| ActorError::Storage(e.to_string()))?;
        if index == t_index {
            return Ok(Some(t_term));
        }
        Ok(s.entry_at(&rtxn, index)
            .map_err(|e| ActorError::Storage(e.to_string()))?
            .map(|e| e.term))
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

    /// Forgets the staged entries of every Ready numbered up to `number`: storage commits in
    /// order, so they are all durable now. Entries staged later (including ones that replaced
    /// a conflicting suffix of an earlier Ready) stay until their own Ready is durable.
    pub fn unstage(&mut self, number: u64) {
        while self.staged_numbers.front().is_some_and(|n| *n <= number) {
            self.staged_numbers.pop_front();
            self.staged.pop_front();
        }
    }

    fn staged_first(&self) -> Option<u64> {
        self.staged.front().map(|e| e.index)
    }

    fn staged_at(&self, index: u64) -> Option<&Entry> {
        let first = self.staged_first()?;
        let offset = usize::try_from(index.checked_sub(first)?).ok()?;
        self.staged.get(offset)
    }

    /// On first start, records the initial voters; later starts keep what is stored.
    pub fn bootstrap(schema: &Schema, shard: ShardId, voters: &[u64]) -> Result<bool, ActorError> {
        let mut wtxn = schema.env.write_txn()?;
        let key = state_key(shard, TAG_CONF_STATE);
        if schema.raft_state.get(&wtxn, &key)?.is_some() {
            return Ok(false);
        }
        let cs = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        let bytes = cs
            .write_to_bytes()
            .map_err(|e| ActorError::Storage(e.to_string()))?;
        schema.raft_state.put(&mut wtxn, &key, &bytes)?;
        wtxn.commit()?;
        Ok(true)
    }

    /// The index applied to `kv` (durably, in the apply transaction).
    pub fn applied_index(schema: &Schema, shard: ShardId) -> Result<u64, ActorError> {
        let rtxn = schema.env.read_txn()?;
        match schema
            .raft_state
            .get(&rtxn, &state_key(shard, TAG_APPLIED))?
        {
            Some(v) => decode_u64("applied index", v),
            None => Ok(0),
        }
    }

    /// Writes that append `entries` (replacing any conflicting suffix of the log).
    pub fn append_ops(
        shard: ShardId,
        entries: &[Entry],
        ops: &mut Vec<WriteOp>,
    ) -> Result<(), ActorError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        // Entries at or after the first new index are superseded by the new ones.
        ops.push(WriteOp::DeleteRange(
            TableId::RaftLog,
            log_key(shard, first.index).to_vec(),
            log_key(shard, u64::MAX).to_vec(),
        ));
        for (expected, e) in (first.index..).zip(entries) {
            assert_eq!(e.index, expected, "raft-rs handed a non-contiguous append");
            let bytes = e
                .write_to_bytes()
                .map_err(|e| ActorError::Storage(e.to_string()))?;
            ops.push(WriteOp::Put(
                TableId::RaftLog,
                log_key(shard, e.index).to_vec(),
                bytes,
            ));
        }
        Ok(())
    }

    /// Write of the hard state.
    pub fn hard_state_op(shard: ShardId, hs: &HardState) -> Result<WriteOp, ActorError> {
        state_op(shard, TAG_HARD_STATE, hs)
    }

    /// The stored hard state (default if none).
    pub fn hard_state(&self) -> Result<HardState, ActorError> {
        let rtxn = self.schema.env.read_txn()?;
        match self
            .schema
            .raft_state
            .get(&rtxn, &state_key(self.shard, TAG_HARD_STATE))?
        {
            Some(v) => HardState::parse_from_bytes(v).map_err(|e| ActorError::Corrupt {
                what: format!("hard state of shard {}", self.shard),
                detail: e.to_string(),
            }),
            None => Ok(HardState::default()),
        }
    }

    fn truncated(&self, rtxn: &heed::RoTxn) -> raft::Result<(u64, u64)> {
        match self
            .schema
            .raft_state
            .get(rtxn, &state_key(self.shard, TAG_TRUNCATED))
            .map_err(store_err)?
        {
            Some(v) if v.len() == 16 => {
                let i = decode_u64("truncated index", &v[..8]).map_err(store_err)?;
                let t = decode_u64("truncated term", &v[8..]).map_err(store_err)?;
                Ok((i, t))
            }
            Some(v) => Err(store_err(format!("truncated state has {} bytes", v.len()))),
            None => Ok((0, 0)),
        }
    }

    /// A protobuf record of this shard in `raft_state` (its default if none is stored).
    fn read_state<M: protobuf::Message>(&self, rtxn: &heed::RoTxn, tag: u8) -> raft::Result<M> {
        match self
            .schema
            .raft_state
            .get(rtxn, &state_key(self.shard, tag))
            .map_err(store_err)?
        {
            Some(v) => M::parse_from_bytes(v).map_err(store_err),
            None => Ok(M::new()),
        }
    }

    fn last_index_in(&self, rtxn: &heed::RoTxn) -> raft::Result<u64> {
        let probe = log_key(self.shard, u64::MAX);
        let found = self
            .schema
            .raft_log
            .get_lower_than_or_equal_to(rtxn, &probe)
            .map_err(store_err)?;
        match found {
            Some((k, _)) if k[..4] == self.shard.to_be_bytes() => {
                log_key_index(k).ok_or_else(|| store_err("short raft_log key"))
            }
            _ => Ok(self.truncated(rtxn)?.0),
        }
    }

    fn entry_at(&self, rtxn: &heed::RoTxn, index: u64) -> raft::Result<Option<Entry>> {
        match self
            .schema
            .raft_log
            .get(rtxn, &log_key(self.shard, index))
            .map_err(store_err)?
        {
            Some(v) => Entry::parse_from_bytes(v).map(Some).map_err(store_err),
            None => Ok(None),
        }
    }
}

impl raft::Storage for LmdbRaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let rtxn = self.schema.env.read_txn().map_err(store_err)?;
        let hs: HardState = self.read_state(&rtxn, TAG_HARD_STATE)?;
        let cs: ConfState = self.read_state(&rtxn, TAG_CONF_STATE)?;
        Ok(RaftState::new(hs, cs))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let rtxn = self.schema.env.read_txn().map_err(store_err)?;
        let (truncated, _) = self.truncated(&rtxn)?;
        if low <= truncated {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = match self.staged.back() {
            Some(e) => e.index,
            None => self.last_index_in(&rtxn)?,
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
            let start = log_key(self.shard, low);
            let end = log_key(self.shard, lmdb_high);
            let range = (
                std::ops::Bound::Included(&start[..]),
                std::ops::Bound::Excluded(&end[..]),
            );
            for item in self
                .schema
                .raft_log
                .range(&rtxn, &range)
                .map_err(store_err)?
            {
                let (_, v) = item.map_err(store_err)?;
                let e = Entry::parse_from_bytes(v).map_err(store_err)?;
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
        let rtxn = self.schema.env.read_txn().map_err(store_err)?;
        let (truncated, truncated_term) = self.truncated(&rtxn)?;
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
        match self.entry_at(&rtxn, idx)? {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        let rtxn = self.schema.env.read_txn().map_err(store_err)?;
        Ok(self.truncated(&rtxn)?.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        if let Some(e) = self.staged.back() {
            return Ok(e.index);
        }
        let rtxn = self.schema.env.read_txn().map_err(store_err)?;
        self.last_index_in(&rtxn)
    }

    /// The shard's state at its durable applied index, written to a file (reused while it is
    /// the latest) that the PeerActor streams to the follower; `data` names it.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let rtxn = self.schema.env.read_txn().map_err(store_err)?;
        let applied = match self
            .schema
            .raft_state
            .get(&rtxn, &state_key(self.shard, TAG_APPLIED))
            .map_err(store_err)?
        {
            Some(v) => decode_u64("applied index", v).map_err(store_err)?,
            None => 0,
        };
        if applied == 0 || applied < request_index {
            return Err(unavailable());
        }
        let (t_index, t_term) = self.truncated(&rtxn)?;
        let term = if applied == t_index {
            t_term
        } else {
            match self.entry_at(&rtxn, applied)? {
                Some(e) => e.term,
                None => return Err(unavailable()),
            }
        };
        let cs: ConfState = self.read_state(&rtxn, TAG_CONF_STATE)?;
        let meta = SnapMeta {
            shard: self.shard,
            index: applied,
            term,
        };
        crate::snapshot::write(&self.schema, &rtxn, &self.snap_dir, &meta).map_err(store_err)?;
        let mut snap = Snapshot {
            data: postcard::to_allocvec(&meta).map_err(store_err)?.into(),
            ..Default::default()
        };
        let m = snap.mut_metadata();
        m.index = applied;
        m.term = term;
        m.set_conf_state(cs);
        tracing::info!(
            shard = self.shard,
            index = applied,
            term,
            "snapshot prepared"
        );
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::WriteBatch;
    use crate::storage::commit;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8; 10].into();
        e
    }

    fn setup() -> (tempfile::TempDir, Schema) {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::open(dir.path(), 1 << 26, "t", 1).unwrap();
        (dir, schema)
    }

    fn append(schema: &Schema, shard: ShardId, entries: &[Entry]) {
        let mut ops = Vec::new();
        LmdbRaftStorage::append_ops(shard, entries, &mut ops).unwrap();
        commit(schema, vec![WriteBatch { ops }]).unwrap();
    }

    #[test]
    fn empty_storage() {
        let (_d, schema) = setup();
        LmdbRaftStorage::bootstrap(&schema, 1, &[1, 2, 3]).unwrap();
        let s = LmdbRaftStorage::new(schema, 1, PathBuf::new());
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
        let (_d, schema) = setup();
        append(&schema, 1, &[entry(1, 1), entry(2, 1), entry(3, 2)]);
        // Another shard's log must not leak into shard 1.
        append(
            &schema,
            2,
            &[entry(1, 9), entry(2, 9), entry(3, 9), entry(4, 9)],
        );
        let s = LmdbRaftStorage::new(schema.clone(), 1, PathBuf::new());
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
        assert_eq!(
            LmdbRaftStorage::new(schema, 2, PathBuf::new())
                .last_index()
                .unwrap(),
            4
        );
    }

    #[test]
    fn conflicting_suffix_is_replaced() {
        let (_d, schema) = setup();
        append(
            &schema,
            1,
            &[entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1)],
        );
        append(&schema, 1, &[entry(3, 2)]);
        let s = LmdbRaftStorage::new(schema, 1, PathBuf::new());
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 2);
        assert!(s.term(4).is_err());
    }

    #[test]
    fn compacted_range_is_reported() {
        let (_d, schema) = setup();
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
        let s = LmdbRaftStorage::new(schema, 1, PathBuf::new());
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
            let schema = Schema::open(dir.path(), 1 << 26, "t", 1).unwrap();
            let mut hs = HardState::default();
            hs.term = 7;
            hs.vote = 2;
            hs.commit = 0;
            let op = LmdbRaftStorage::hard_state_op(1, &hs).unwrap();
            commit(&schema, vec![WriteBatch { ops: vec![op] }]).unwrap();
        }
        let schema = Schema::open(dir.path(), 1 << 26, "t", 1).unwrap();
        let s = LmdbRaftStorage::new(schema, 1, PathBuf::new());
        let st = s.initial_state().unwrap();
        assert_eq!((st.hard_state.term, st.hard_state.vote), (7, 2));
    }

    #[test]
    fn staged_entries_are_served_and_hide_a_conflicting_durable_suffix() {
        let (_d, schema) = setup();
        append(&schema, 1, &[entry(1, 1), entry(2, 1), entry(3, 1)]);
        let mut s = LmdbRaftStorage::new(schema.clone(), 1, PathBuf::new());
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
        let (_d, schema) = setup();
        let mut s = LmdbRaftStorage::new(schema.clone(), 1, PathBuf::new());
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
