//! raft-rs `Storage` over the host's LMDB Env: the log, hard state and conf state of one shard
//! survive restarts, so a restarted replica can never vote twice in a term or forget an entry it
//! acknowledged.
//!
//! Reads go straight to LMDB through read transactions; writes are produced as [`WriteOp`]s and
//! made durable by the StorageActor *before* raft-rs is told they are persisted. Entries on
//! their way to disk sit in a staging area that reads consult first, because raft-rs stops
//! holding them itself as soon as they are handed to storage (`advance_append_async`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    /// The newest snapshot file of this shard, and whether one is being built.
    snaps: Arc<Mutex<SnapFiles>>,
    /// Where build slots come from (the host's, shared by all shards).
    build_slots: &'static BuildSlots,
}

#[derive(Default)]
struct SnapFiles {
    building: bool,
    latest: Option<BuiltSnapshot>,
    /// Files handed to raft-rs whose `MsgSnapshot` the replica has not sent yet (it then
    /// tracks them itself until the follower's report); never retired.
    handed_out: Vec<PathBuf>,
}

fn lock(snaps: &Mutex<SnapFiles>) -> std::sync::MutexGuard<'_, SnapFiles> {
    match snaps.lock() {
        Ok(f) => f,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Snapshot builds that may run at once on this host. Each reads a whole shard and holds an
/// LMDB reader slot for as long (LMDB has a fixed number of them); when all are busy raft-rs
/// is told to ask again later.
pub const SNAPSHOT_BUILDS_MAX: usize = 2;

/// Counts running snapshot builds against a limit.
pub struct BuildSlots {
    max: usize,
    running: std::sync::atomic::AtomicUsize,
}

impl BuildSlots {
    pub const fn new(max: usize) -> Self {
        BuildSlots {
            max,
            running: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A slot for a build of the shard whose files are `snaps`, if one is free. Marks the
    /// shard as building; dropping the slot (when the build ends, panics, or cannot start)
    /// frees it and clears the mark.
    fn acquire(&'static self, snaps: &Arc<Mutex<SnapFiles>>) -> Option<BuildSlot> {
        use std::sync::atomic::Ordering::SeqCst;
        self.running
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max).then_some(n + 1))
            .ok()?;
        lock(snaps).building = true;
        Some(BuildSlot {
            slots: self,
            snaps: Arc::clone(snaps),
        })
    }
}

static BUILD_SLOTS: BuildSlots = BuildSlots::new(SNAPSHOT_BUILDS_MAX);

struct BuildSlot {
    slots: &'static BuildSlots,
    snaps: Arc<Mutex<SnapFiles>>,
}

impl Drop for BuildSlot {
    fn drop(&mut self) {
        lock(&self.snaps).building = false;
        self.slots
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A snapshot file on disk and what raft-rs needs to know of it.
#[derive(Clone)]
struct BuiltSnapshot {
    meta: SnapMeta,
    conf: ConfState,
    path: PathBuf,
}

impl BuiltSnapshot {
    fn to_raft(&self) -> raft::Result<Snapshot> {
        let mut snap = Snapshot {
            data: postcard::to_allocvec(&self.meta).map_err(store_err)?.into(),
            ..Default::default()
        };
        let m = snap.mut_metadata();
        m.index = self.meta.index;
        m.term = self.meta.term;
        m.set_conf_state(self.conf.clone());
        Ok(snap)
    }
}

/// Writes a snapshot of `shard` at its durable applied index, all read in one transaction.
fn build_snapshot(
    schema: &Schema,
    shard: ShardId,
    dir: &Path,
) -> Result<BuiltSnapshot, ActorError> {
    let rtxn = schema.env.read_txn()?;
    let durable = Durable { schema, shard };
    let applied = durable.applied(&rtxn)?;
    if applied == 0 {
        return Err(ActorError::Storage("nothing applied yet".into()));
    }
    let term = durable
        .term_of(&rtxn, applied)?
        .ok_or_else(|| ActorError::Storage(format!("applied entry {applied} is not in the log")))?;
    let conf: ConfState = durable
        .read_state(&rtxn, TAG_CONF_STATE)
        .map_err(|e| ActorError::Storage(e.to_string()))?;
    let meta = SnapMeta {
        shard,
        index: applied,
        term,
    };
    let path = crate::snapshot::write(schema, &rtxn, dir, &meta)?;
    Ok(BuiltSnapshot { meta, conf, path })
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
            snaps: Arc::default(),
            build_slots: &BUILD_SLOTS,
        }
    }

    /// Draw snapshot-build slots from `slots` instead of the host's (tests).
    pub fn with_build_slots(mut self, slots: &'static BuildSlots) -> Self {
        self.build_slots = slots;
        self
    }

    /// Where the snapshot of this shard at (`index`, `term`) is (or would be) written.
    pub fn snapshot_path(&self, index: u64, term: u64) -> PathBuf {
        self.snap_dir
            .join(crate::snapshot::file_name(self.shard, index, term))
    }

    /// Deletes this shard's snapshot files other than the newest and those in `in_use` (being
    /// streamed to followers). Skipped while a build runs; the next call catches up.
    pub fn retire_snapshots(&self, in_use: &[&Path]) {
        let files = lock(&self.snaps);
        if files.building {
            return;
        }
        let mut keep = in_use.to_vec();
        keep.extend(files.handed_out.iter().map(|p| p.as_path()));
        if let Some(b) = &files.latest {
            keep.push(&b.path);
        }
        crate::snapshot::remove_unused(&self.snap_dir, self.shard, &keep);
    }

    /// The replica sent a `MsgSnapshot` for the file at `path` and tracks it from now on.
    pub fn claim_snapshot(&self, path: &Path) {
        lock(&self.snaps).handed_out.retain(|p| p != path);
    }

    /// Forgets every staged entry (a snapshot replaced the log).
    pub fn clear_staged(&mut self) {
        self.staged.clear();
        self.staged_numbers.clear();
    }

    /// The (index, term) of the last entry removed by compaction or replaced by a snapshot.
    pub fn truncated_state(schema: &Schema, shard: ShardId) -> Result<(u64, u64), ActorError> {
        let rtxn = schema.env.read_txn()?;
        Durable { schema, shard }
            .truncated(&rtxn)
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
        let rtxn = schema.env.read_txn()?;
        Durable { schema, shard }.term_of(&rtxn, index)
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
        Durable { schema, shard }.applied(&rtxn)
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

    /// Reads of what LMDB holds for this shard (not the staged entries).
    fn durable(&self) -> Durable<'_> {
        Durable {
            schema: &self.schema,
            shard: self.shard,
        }
    }
}

/// Reads of one shard's durable Raft state inside a read transaction.
pub(crate) struct Durable<'a> {
    pub schema: &'a Schema,
    pub shard: ShardId,
}

impl Durable<'_> {
    /// The index applied to `kv` (0 if none).
    pub(crate) fn applied(&self, rtxn: &heed::RoTxn) -> Result<u64, ActorError> {
        match self
            .schema
            .raft_state
            .get(rtxn, &state_key(self.shard, TAG_APPLIED))?
        {
            Some(v) => decode_u64("applied index", v),
            None => Ok(0),
        }
    }

    /// The term of durable entry `index`, or of the truncation point if it is that.
    pub(crate) fn term_of(
        &self,
        rtxn: &heed::RoTxn,
        index: u64,
    ) -> Result<Option<u64>, ActorError> {
        let raft_err = |e: raft::Error| ActorError::Storage(e.to_string());
        let (t_index, t_term) = self.truncated(rtxn).map_err(raft_err)?;
        if index == t_index {
            return Ok(Some(t_term));
        }
        Ok(self
            .entry_at(rtxn, index)
            .map_err(raft_err)?
            .map(|e| e.term))
    }

    pub(crate) fn truncated(&self, rtxn: &heed::RoTxn) -> raft::Result<(u64, u64)> {
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
    pub(crate) fn read_state<M: protobuf::Message>(
        &self,
        rtxn: &heed::RoTxn,
        tag: u8,
    ) -> raft::Result<M> {
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

    pub(crate) fn last_index_in(&self, rtxn: &heed::RoTxn) -> raft::Result<u64> {
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

    pub(crate) fn entry_at(&self, rtxn: &heed::RoTxn, index: u64) -> raft::Result<Option<Entry>> {
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
        let hs: HardState = self.durable().read_state(&rtxn, TAG_HARD_STATE)?;
        let cs: ConfState = self.durable().read_state(&rtxn, TAG_CONF_STATE)?;
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
        let (truncated, _) = self.durable().truncated(&rtxn)?;
        if low <= truncated {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = match self.staged.back() {
            Some(e) => e.index,
            None => self.durable().last_index_in(&rtxn)?,
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
        let (truncated, truncated_term) = self.durable().truncated(&rtxn)?;
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
        match self.durable().entry_at(&rtxn, idx)? {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        let rtxn = self.schema.env.read_txn().map_err(store_err)?;
        Ok(self.durable().truncated(&rtxn)?.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        if let Some(e) = self.staged.back() {
            return Ok(e.index);
        }
        let rtxn = self.schema.env.read_txn().map_err(store_err)?;
        self.durable().last_index_in(&rtxn)
    }

    /// The newest snapshot file of this shard if it is recent enough: at or past
    /// `request_index` and the log's truncation point (so the follower can continue from the
    /// log after installing it). Otherwise a build starts on a thread of its own and raft-rs
    /// is told to ask again later: building reads the whole shard and must not stall the
    /// replica. `data` names the file, which the PeerActor streams to the follower.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let truncated = {
            let rtxn = self.schema.env.read_txn().map_err(store_err)?;
            self.durable().truncated(&rtxn)?.0
        };
        let mut files = lock(&self.snaps);
        if let Some(b) = files.latest.clone() {
            if b.meta.index >= request_index.max(truncated) && b.path.exists() {
                if !files.handed_out.contains(&b.path) {
                    files.handed_out.push(b.path.clone());
                }
                return b.to_raft();
            }
        }
        if files.building {
            return Err(unavailable());
        }
        drop(files);
        let Some(slot) = self.build_slots.acquire(&self.snaps) else {
            tracing::debug!(
                shard = self.shard,
                "snapshot builds busy; asking again later"
            );
            return Err(unavailable());
        };
        let (schema, shard, dir) = (self.schema.clone(), self.shard, self.snap_dir.clone());
        let snaps = Arc::clone(&self.snaps);
        let spawned = std::thread::Builder::new()
            .name(format!("snapshot-{shard}"))
            .spawn(move || {
                // Freed when this thread ends, however it ends.
                let _slot = slot;
                let started = std::time::Instant::now();
                match build_snapshot(&schema, shard, &dir) {
                    Ok(b) => {
                        tracing::info!(
                            shard,
                            index = b.meta.index,
                            term = b.meta.term,
                            millis = started.elapsed().as_millis() as u64,
                            "snapshot built"
                        );
                        lock(&snaps).latest = Some(b);
                    }
                    // raft-rs asks again on the follower's next response; a lasting
                    // failure (disk full) shows in this log line each time.
                    Err(e) => tracing::warn!(shard, error = %e, "snapshot not built"),
                }
            });
        match spawned {
            Ok(_) => tracing::debug!(shard, to, "building a snapshot"),
            Err(e) => tracing::warn!(shard, error = %e, "cannot start snapshot thread"),
        }
        Err(unavailable())
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

    /// Calls `snapshot` until the background build has produced a file.
    fn snapshot_when_built(s: &LmdbRaftStorage, request_index: u64) -> Snapshot {
        for _ in 0..500 {
            match s.snapshot(request_index, 2) {
                Ok(snap) => return snap,
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("snapshot failed: {e}"),
            }
        }
        panic!("snapshot never built");
    }

    fn set_applied(schema: &Schema, shard: ShardId, index: u64) {
        let op = WriteOp::Put(
            TableId::RaftState,
            state_key(shard, TAG_APPLIED).to_vec(),
            index.to_be_bytes().to_vec(),
        );
        commit(schema, vec![WriteBatch { ops: vec![op] }]).unwrap();
    }

    #[test]
    fn snapshots_are_built_off_thread_reused_and_retired() {
        let (d, schema) = setup();
        let snap_dir = d.path().join("snap");
        LmdbRaftStorage::bootstrap(&schema, 1, &[1, 2, 3]).unwrap();
        append(&schema, 1, &[entry(1, 1), entry(2, 1), entry(3, 2)]);
        set_applied(&schema, 1, 2);
        let s = LmdbRaftStorage::new(schema.clone(), 1, snap_dir.clone());

        // The first ask starts a build and is told to come back.
        assert!(matches!(
            s.snapshot(0, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        let first = snapshot_when_built(&s, 0);
        assert_eq!(
            (first.get_metadata().index, first.get_metadata().term),
            (2, 1)
        );
        assert_eq!(first.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        let first_path = s.snapshot_path(2, 1);
        assert!(first_path.exists());
        // Good enough for a follower that needs index 2: served again, not rebuilt.
        assert_eq!(s.snapshot(2, 3).unwrap(), first);

        // A follower that needs more gets a newer one; the old file stays while in use.
        set_applied(&schema, 1, 3);
        let second = snapshot_when_built(&s, 3);
        assert_eq!(second.get_metadata().index, 3);
        let second_path = s.snapshot_path(3, 2);
        // The first file was handed to raft-rs and its message not sent yet: kept.
        s.retire_snapshots(&[]);
        assert!(first_path.exists() && second_path.exists());
        // Sent (the replica tracks it now) and still streaming: kept.
        s.claim_snapshot(&first_path);
        s.retire_snapshots(&[&first_path]);
        assert!(first_path.exists() && second_path.exists());
        s.retire_snapshots(&[]);
        assert!(!first_path.exists(), "a file no one streams is removed");
        assert!(
            second_path.exists(),
            "the newest stays for the next follower"
        );

        // A write error is "try later" for raft-rs, never a fatal storage error.
        std::fs::remove_file(&second_path).unwrap();
        std::fs::remove_dir(&snap_dir).unwrap();
        std::fs::write(&snap_dir, b"not a directory").unwrap();
        for _ in 0..20 {
            assert!(matches!(
                s.snapshot(3, 2),
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable
                ))
            ));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn build_slots_are_bounded_and_freed_even_by_a_panicking_build() {
        static SLOTS: BuildSlots = BuildSlots::new(1);
        let a: Arc<Mutex<SnapFiles>> = Arc::default();
        let b: Arc<Mutex<SnapFiles>> = Arc::default();
        let first = SLOTS.acquire(&a).expect("a free slot");
        assert!(lock(&a).building);
        assert!(SLOTS.acquire(&b).is_none(), "only one build at a time");
        assert!(!lock(&b).building, "a refused build marks nothing");
        drop(first);
        assert!(!lock(&a).building);

        let slot = SLOTS.acquire(&b).expect("freed");
        let crashed = std::thread::spawn(move || {
            let _slot = slot;
            panic!("a build that panics");
        })
        .join();
        assert!(crashed.is_err());
        assert!(!lock(&b).building, "the shard may build again");
        assert!(SLOTS.acquire(&a).is_some(), "the slot came back");
    }
}
