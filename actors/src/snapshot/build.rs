//! Building snapshot files for raft-rs, off the replica's thread and a bounded number at once.
//!
//! raft-rs asks its storage for a snapshot when a follower is too far behind for the log. A
//! build reads a whole shard, so it runs on a thread of its own and raft-rs is told to ask
//! again later; the finished file is then served to every follower that needs no newer one.
//! Builds draw from the host's [`BuildSlots`], created once by the daemon and shared by all
//! its shards, because each build holds an LMDB reader slot (of which there is a fixed
//! number) for as long as it runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use raft::eraftpb::{ConfState, Snapshot};
use raft::StorageError;
use shardkv_transport::ShardId;

use crate::error::ActorError;
use crate::schema::log_clock_record::read_log_clock;
use crate::schema::owned_record::read_owned;
use crate::schema::raft_records::Durable;
use crate::schema::Schema;
use crate::snapshot::{file_name, remove_unused, write, FileMeta, SnapMeta};

/// Snapshot builds that may run at once on one host. Each reads a whole shard and holds an
/// LMDB reader slot for as long (LMDB has a fixed number of them); when all are busy raft-rs
/// is told to ask again later.
pub const SNAPSHOT_BUILDS_MAX: usize = 2;

/// Counts running snapshot builds against a limit; one per host, shared by its shards.
pub struct BuildSlots {
    max: usize,
    running: AtomicUsize,
}

impl BuildSlots {
    /// Slots for at most `max` builds at once.
    pub fn new(max: usize) -> Self {
        BuildSlots {
            max,
            running: AtomicUsize::new(0),
        }
    }

    /// A slot for a build of the shard whose files are `files`, if one is free. Marks the
    /// shard as building; dropping the slot (when the build ends, panics, or cannot start)
    /// frees it and clears the mark.
    fn acquire(self: &Arc<Self>, files: &Arc<Mutex<SnapFiles>>) -> Option<BuildSlot> {
        self.running
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max).then_some(n + 1))
            .ok()?;
        lock(files).building = true;
        Some(BuildSlot {
            slots: Arc::clone(self),
            files: Arc::clone(files),
        })
    }
}

/// One running build's claim on a [`BuildSlots`]; freed on drop, however the build ends.
struct BuildSlot {
    slots: Arc<BuildSlots>,
    files: Arc<Mutex<SnapFiles>>,
}

impl Drop for BuildSlot {
    fn drop(&mut self) {
        lock(&self.files).building = false;
        self.slots.running.fetch_sub(1, SeqCst);
    }
}

/// What one shard knows of its snapshot files.
#[derive(Default)]
struct SnapFiles {
    building: bool,
    latest: Option<BuiltSnapshot>,
    /// Files handed to raft-rs whose `MsgSnapshot` the replica has not sent yet (it then
    /// tracks them itself until the follower's report); never retired.
    handed_out: Vec<PathBuf>,
}

/// Locks the files' state. A thread that panicked holding the lock cannot have left it half
/// updated (each update is one step), so a poisoned lock is used as it is.
fn lock(files: &Mutex<SnapFiles>) -> MutexGuard<'_, SnapFiles> {
    match files.lock() {
        Ok(f) => f,
        Err(poisoned) => poisoned.into_inner(),
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
    /// The snapshot as raft-rs sends it: its `data` names the file (the PeerActor streams it).
    fn to_raft(&self) -> Result<Snapshot, ActorError> {
        let data = postcard::to_allocvec(&self.meta)
            .map_err(|e| ActorError::Storage(format!("snapshot meta: {e}")))?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let m = snap.mut_metadata();
        m.index = self.meta.index;
        m.term = self.meta.term;
        m.set_conf_state(self.conf.clone());
        Ok(snap)
    }
}

/// Writes a snapshot of `shard` at its durable applied index (with the log clock stored
/// with it), all read in one transaction.
fn build_snapshot(
    schema: &Schema,
    shard: ShardId,
    dir: &Path,
) -> Result<BuiltSnapshot, ActorError> {
    let durable = Durable::new(schema, shard);
    let rtxn = durable.read_txn()?;
    let applied = durable.applied(&rtxn)?;
    if applied == 0 {
        return Err(ActorError::Storage("nothing applied yet".into()));
    }
    let term = durable
        .term_of(&rtxn, applied)?
        .ok_or_else(|| ActorError::Storage(format!("applied entry {applied} is not in the log")))?;
    let conf = durable.conf_state(&rtxn)?;
    let file_meta = FileMeta {
        snapshot: SnapMeta {
            shard,
            index: applied,
            term,
        },
        log_clock: read_log_clock(schema, &rtxn, shard)?,
    };
    let owned = read_owned(schema, &rtxn, shard)?.unwrap_or_default();
    let path = write(schema, &rtxn, dir, &file_meta, &owned)?;
    Ok(BuiltSnapshot {
        meta: file_meta.snapshot,
        conf,
        path,
    })
}

/// One shard's snapshot files: the newest one built, the builds of newer ones, and the
/// removal of files no one needs any more.
pub struct ShardSnapshots {
    schema: Schema,
    shard: ShardId,
    /// Where snapshot files of this host live.
    dir: PathBuf,
    files: Arc<Mutex<SnapFiles>>,
    /// The host's build slots.
    slots: Arc<BuildSlots>,
}

impl ShardSnapshots {
    /// The snapshots of `shard` in `schema`, written to `dir`, built within `slots`.
    pub fn new(schema: Schema, shard: ShardId, dir: PathBuf, slots: Arc<BuildSlots>) -> Self {
        ShardSnapshots {
            schema,
            shard,
            dir,
            files: Arc::default(),
            slots,
        }
    }

    /// Where the snapshot of this shard at (`index`, `term`) is (or would be) written.
    pub fn path(&self, index: u64, term: u64) -> PathBuf {
        self.dir.join(file_name(self.shard, index, term))
    }

    /// Deletes this shard's snapshot files other than the newest and those in `in_use` (being
    /// streamed to followers). Skipped while a build runs; the next call catches up.
    pub fn retire(&self, in_use: &[&Path]) {
        let files = lock(&self.files);
        if files.building {
            return;
        }
        let mut keep = in_use.to_vec();
        keep.extend(files.handed_out.iter().map(|p| p.as_path()));
        if let Some(b) = &files.latest {
            keep.push(&b.path);
        }
        remove_unused(&self.dir, self.shard, &keep);
    }

    /// The replica sent a `MsgSnapshot` for the file at `path` and tracks it from now on.
    pub fn claim(&self, path: &Path) {
        lock(&self.files).handed_out.retain(|p| p != path);
    }

    /// The newest snapshot file of this shard if it is at or past `min_index` and its
    /// configuration lists `to` (the follower it is for: raft-rs refuses to restore a
    /// snapshot that does not list it, so one built before a new learner's addition was
    /// durably applied would be sent again and again). Otherwise a build starts (unless one
    /// runs or no slot is free) and raft-rs is told to ask again later, never that storage
    /// failed: a build that fails (disk full) is retried on its next ask.
    pub fn snapshot(&self, min_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let mut files = lock(&self.files);
        if let Some(b) = files.latest.clone() {
            if b.meta.index >= min_index
                && b.path.exists()
                && crate::replica::membership::lists(&b.conf, to)
            {
                if !files.handed_out.contains(&b.path) {
                    files.handed_out.push(b.path.clone());
                }
                return Ok(b.to_raft()?);
            }
        }
        if files.building {
            return Err(unavailable());
        }
        drop(files);
        let Some(slot) = self.slots.acquire(&self.files) else {
            tracing::debug!(
                shard = self.shard,
                "snapshot builds busy; asking again later"
            );
            return Err(unavailable());
        };
        self.start_build(slot, to);
        Err(unavailable())
    }

    /// Builds a snapshot on a thread of its own, holding `slot` until the thread ends.
    fn start_build(&self, slot: BuildSlot, to: u64) {
        let (schema, shard, dir) = (self.schema.clone(), self.shard, self.dir.clone());
        let files = Arc::clone(&self.files);
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
                        lock(&files).latest = Some(b);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::WriteBatch;
    use crate::schema::raft_records::bootstrap;
    use crate::storage::commit;
    use crate::test_fixtures::{append, entry, set_applied, temp_schema};

    /// Calls `snapshot` until the background build has produced a file.
    fn snapshot_when_built(s: &ShardSnapshots, request_index: u64) -> Snapshot {
        snapshot_for_when_built(s, request_index, 2)
    }

    fn snapshot_for_when_built(s: &ShardSnapshots, request_index: u64, to: u64) -> Snapshot {
        for _ in 0..500 {
            match s.snapshot(request_index, to) {
                Ok(snap) => return snap,
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("snapshot failed: {e}"),
            }
        }
        panic!("snapshot never built");
    }

    #[test]
    fn a_snapshot_that_does_not_list_the_follower_is_rebuilt_once_its_addition_is_applied() {
        let (d, schema) = temp_schema();
        bootstrap(&schema, 1, &[1, 2, 3], None).unwrap();
        append(&schema, 1, &[entry(1, 1), entry(2, 1)]);
        set_applied(&schema, 1, 1);
        let slots = Arc::new(BuildSlots::new(SNAPSHOT_BUILDS_MAX));
        let s = ShardSnapshots::new(schema.clone(), 1, d.path().join("snap"), slots);
        let old = snapshot_when_built(&s, 0);
        assert_eq!(
            old.get_metadata().get_conf_state().learners,
            Vec::<u64>::new()
        );
        // Learner 4 was added at index 2: until that is applied, nothing is served to it.
        assert!(s.snapshot(0, 4).is_err(), "a snapshot 4 would refuse");
        let with_learner = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        };
        let conf = crate::schema::raft_records::conf_state_op(1, &with_learner).unwrap();
        commit(&schema, vec![WriteBatch { ops: vec![conf] }]).unwrap();
        set_applied(&schema, 1, 2);
        let new = snapshot_for_when_built(&s, 0, 4);
        assert_eq!(new.get_metadata().get_conf_state().learners, vec![4]);
        assert_eq!(new.get_metadata().index, 2);
    }

    #[test]
    fn snapshots_are_built_off_thread_reused_and_retired() {
        let (d, schema) = temp_schema();
        let snap_dir = d.path().join("snap");
        bootstrap(&schema, 1, &[1, 2, 3], None).unwrap();
        append(&schema, 1, &[entry(1, 1), entry(2, 1), entry(3, 2)]);
        set_applied(&schema, 1, 2);
        let slots = Arc::new(BuildSlots::new(SNAPSHOT_BUILDS_MAX));
        let s = ShardSnapshots::new(schema.clone(), 1, snap_dir.clone(), slots);

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
        let first_path = s.path(2, 1);
        assert!(first_path.exists());
        // Good enough for a follower that needs index 2: served again, not rebuilt.
        assert_eq!(s.snapshot(2, 3).unwrap(), first);

        // A follower that needs more gets a newer one; the old file stays while in use.
        set_applied(&schema, 1, 3);
        let second = snapshot_when_built(&s, 3);
        assert_eq!(second.get_metadata().index, 3);
        let second_path = s.path(3, 2);
        // The first file was handed to raft-rs and its message not sent yet: kept.
        s.retire(&[]);
        assert!(first_path.exists() && second_path.exists());
        // Sent (the replica tracks it now) and still streaming: kept.
        s.claim(&first_path);
        s.retire(&[&first_path]);
        assert!(first_path.exists() && second_path.exists());
        s.retire(&[]);
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
        let slots = Arc::new(BuildSlots::new(1));
        let a: Arc<Mutex<SnapFiles>> = Arc::default();
        let b: Arc<Mutex<SnapFiles>> = Arc::default();
        let first = slots.acquire(&a).expect("a free slot");
        assert!(lock(&a).building);
        assert!(slots.acquire(&b).is_none(), "only one build at a time");
        assert!(!lock(&b).building, "a refused build marks nothing");
        drop(first);
        assert!(!lock(&a).building);

        let slot = slots.acquire(&b).expect("freed");
        let crashed = std::thread::spawn(move || {
            let _slot = slot;
            panic!("a build that panics");
        })
        .join();
        assert!(crashed.is_err());
        assert!(!lock(&b).building, "the shard may build again");
        assert!(slots.acquire(&a).is_some(), "the slot came back");
    }

    #[test]
    fn shards_share_the_hosts_slots() {
        let (d, schema) = temp_schema();
        let slots = Arc::new(BuildSlots::new(1));
        let one = ShardSnapshots::new(schema.clone(), 1, d.path().into(), Arc::clone(&slots));
        let two = ShardSnapshots::new(schema, 2, d.path().into(), Arc::clone(&slots));
        let held = slots.acquire(&one.files).expect("a free slot");
        assert!(matches!(
            two.snapshot(0, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert!(!lock(&two.files).building, "no slot, no build");
        drop(held);
        assert_eq!(slots.running.load(SeqCst), 0);
    }
}
