//! Snapshot files: one shard's state (its rows, client sessions and log clock) at one applied
//! index, written from a single LMDB read transaction so it is exactly the state at that index.
//!
//! A file is a sequence of length-prefixed postcard records: first [`Record::Meta`] (what the
//! snapshot is of, and the log clock at its index), then [`Record::Owned`] (the slots the
//! shard owns at that index: the rows that follow are those of these slots), then one record
//! per row. Files are
//! streamed to followers in chunks (see the transport's `snapshot_stream`), checked record by
//! record off the actor threads, and loaded into LMDB by the storage writer thread in one
//! transaction ([`load`]); no step holds a whole snapshot in memory.
//!
//! Who deletes what: a leader's files (`shard-*.snap`) are removed by
//! [`remove_unused`] once no follower is being sent them; a follower's arrivals
//! (`recv-*.snap`) once installed or refused; leftovers of a crash by [`clean_at_start`].
//!
//! When a leader builds its files, and how many builds run at once, is [`ShardSnapshots`]'s
//! and [`BuildSlots`]'s business (in `build.rs`).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use heed::RoTxn;
use serde::{Deserialize, Serialize};
use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::{HostId, ShardId};

use crate::error::ActorError;
use crate::schema::session_record::SESSION_RECORD_BYTES_MIN;
use crate::schema::{kv_key, kv_ranges, kv_user_key, session_key, Schema};
use crate::shard::{LogClock, OwnedSlots};

mod build;

pub use build::{BuildSlots, ShardSnapshots, SNAPSHOT_BUILDS_MAX};

/// What a snapshot is of; also the `data` raft-rs carries in `MsgSnapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapMeta {
    pub shard: ShardId,
    pub index: u64,
    pub term: u64,
}

/// The first record of a snapshot file: what it is of, and the shard's state that is no row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub snapshot: SnapMeta,
    /// The shard's log clock at the snapshot's index: sessions in the file are stamped by it,
    /// so a replica that installs the file must go on from it.
    pub log_clock: LogClock,
}

/// One record of a snapshot file. Postcard encodes a variant by its position: new variants
/// go at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The first record of a file written before files carried the log clock (only an older
    /// version's leader sends one): read with the log clock at zero, never written. Its
    /// sessions, stamped by a wall clock, are then ahead of the log clock and get stamped
    /// afresh at the next sweep (see `shard::sessions`), so none is forgotten early.
    MetaWithoutClock(SnapMeta),
    /// A row of `kv` (user key, without the shard prefix).
    Kv { key: Vec<u8>, value: Vec<u8> },
    /// A row of `sessions`: client id and its stored record.
    Session { client: u64, record: Vec<u8> },
    /// The first record of a file.
    Meta(FileMeta),
    /// The slots the shard owns at the snapshot's index; right after the meta record.
    /// Files of earlier versions have none, and are refused for a data shard (its rows
    /// could not be told from another shard's).
    Owned(OwnedSlots),
}

/// What a file says of itself before its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub meta: FileMeta,
    /// `None` in a file of an earlier version.
    pub owned: Option<OwnedSlots>,
}

/// Largest record accepted when reading a file (a maximal value plus envelope).
const RECORD_BYTES_MAX: usize = 65 * 1024 * 1024;

fn io(path: &Path, e: impl std::fmt::Display) -> ActorError {
    ActorError::Storage(format!("snapshot {}: {e}", path.display()))
}

/// The file name of a snapshot of `shard` at (`index`, `term`).
pub fn file_name(shard: ShardId, index: u64, term: u64) -> String {
    format!("shard-{shard}-{index}-{term}.snap")
}

/// The file name of a snapshot of `shard` arriving from host `from`; `nanos` (the time it
/// started to arrive) keeps two arrivals apart.
pub fn received_file_name(from: HostId, shard: ShardId, nanos: u128) -> String {
    format!("recv-{from}-{shard}-{nanos}.snap")
}

/// The shard a snapshot file name of this module is of (None: not one of ours).
fn shard_of_file_name(name: &str) -> Option<ShardId> {
    let base = name
        .strip_suffix(".snap")
        .or_else(|| name.strip_suffix(".snap.tmp"))?;
    let shard = if let Some(rest) = base.strip_prefix("shard-") {
        rest.split('-').next()?
    } else {
        base.strip_prefix("recv-")?.split('-').nth(1)?
    };
    shard.parse().ok()
}

/// Removes every snapshot file of `shard` in `dir` (built here or received), for a replica
/// destroyed while the host runs; answers how many it removed. A build still running on a
/// blocking thread may write one more, which [`clean_at_start`] removes at the next start.
pub fn remove_shard_files(dir: &Path, shard: ShardId) -> Result<usize, ActorError> {
    remove_files_where(dir, |name| shard_of_file_name(name) == Some(shard))
}

/// Removes every file in `dir` whose name `doomed` picks; answers how many. A missing
/// directory holds nothing, and a file already gone (retired or installed meanwhile by
/// whoever else owned it) is not an error.
fn remove_files_where(dir: &Path, doomed: impl Fn(&str) -> bool) -> Result<usize, ActorError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(dir, e)),
    };
    let mut removed = 0;
    for e in entries {
        let e = e.map_err(|e| io(dir, e))?;
        if doomed(&e.file_name().to_string_lossy()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => removed += 1,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io(&e.path(), err)),
            }
        }
    }
    Ok(removed)
}

/// Writes the snapshot of `meta.snapshot.shard` as seen by `rtxn` into `dir` (atomically: a
/// temp file renamed into place) and returns its path. An existing file for the same point
/// is reused. `file_meta.log_clock` and `owned` must be what `rtxn` sees.
pub fn write(
    schema: &Schema,
    rtxn: &RoTxn,
    dir: &Path,
    file_meta: &FileMeta,
    owned: &OwnedSlots,
) -> Result<PathBuf, ActorError> {
    let meta = &file_meta.snapshot;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let path = dir.join(file_name(meta.shard, meta.index, meta.term));
    if path.exists() {
        return Ok(path);
    }
    let tmp = dir.join(format!(
        "{}.tmp",
        file_name(meta.shard, meta.index, meta.term)
    ));
    let file = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    let mut out = BufWriter::new(file);
    let mut put = |r: &Record| -> Result<(), ActorError> {
        let frame = shardkv_transport::frame::encode(r).map_err(|e| io(&tmp, e))?;
        out.write_all(&frame).map_err(|e| io(&tmp, e))
    };
    put(&Record::Meta(file_meta.clone()))?;
    put(&Record::Owned(owned.clone()))?;
    for (_, from, to) in kv_ranges(meta.shard, &owned.ranges) {
        let range = (
            std::ops::Bound::Included(from.as_slice()),
            std::ops::Bound::Excluded(to.as_slice()),
        );
        for item in schema.kv.range(rtxn, &range)? {
            let (k, v) = item?;
            put(&Record::Kv {
                key: kv_user_key(k).to_vec(),
                value: v.to_vec(),
            })?;
        }
    }
    let prefix = meta.shard.to_be_bytes();
    for item in schema.sessions.prefix_iter(rtxn, &prefix)? {
        let (k, v) = item?;
        let client = k
            .get(4..12)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| ActorError::Corrupt {
                what: "session key".into(),
                detail: format!("{} bytes", k.len()),
            })?;
        put(&Record::Session {
            client,
            record: v.to_vec(),
        })?;
    }
    let file = out.into_inner().map_err(|e| io(&tmp, e))?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    Ok(path)
}

/// Reads the records of a snapshot file one at a time, handing each row to `each`; returns
/// its header (the meta record, which must come first, and the owned slots). Memory use is
/// one record.
pub fn for_each(
    path: &Path,
    mut each: impl FnMut(Record) -> Result<(), ActorError>,
) -> Result<Header, ActorError> {
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut input = BufReader::new(file);
    let mut meta = None;
    let mut owned = None;
    let mut rows_seen = false;
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(path, e)),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > RECORD_BYTES_MAX {
            return Err(io(path, format!("record of {len} bytes")));
        }
        buf.resize(len, 0);
        input.read_exact(&mut buf).map_err(|e| io(path, e))?;
        let r: Record = shardkv_transport::frame::decode(&buf).map_err(|e| io(path, e))?;
        match (r, &meta) {
            (Record::Meta(m), None) => meta = Some(m),
            (Record::MetaWithoutClock(snapshot), None) => {
                meta = Some(FileMeta {
                    snapshot,
                    log_clock: LogClock::default(),
                })
            }
            (Record::Meta(_) | Record::MetaWithoutClock(_), Some(_)) => {
                return Err(io(path, "a second meta record"))
            }
            (_, None) => return Err(io(path, "does not start with its meta record")),
            (Record::Owned(o), Some(_)) if owned.is_none() && !rows_seen => owned = Some(o),
            (Record::Owned(_), Some(_)) => return Err(io(path, "a misplaced owned-slots record")),
            (r, Some(_)) => {
                rows_seen = true;
                each(r)?
            }
        }
    }
    let meta = meta.ok_or_else(|| io(path, "empty file"))?;
    Ok(Header { meta, owned })
}

/// Reads a whole file through, checking every record (so that loading it cannot fail on
/// its content); returns its header, its owned slots filled in. A data shard's file must say
/// which slots it owns, or be of an earlier version (which could not split) and then own the
/// shard's `day0` slots; every row must be of one of them.
pub fn verify(path: &Path, day0: Option<&OwnedSlots>) -> Result<Header, ActorError> {
    let max = shardkv_transport::wire::KEY_BYTES_MAX;
    // Which slots the rows are of (one flag per slot: constant memory whatever the size).
    let mut slots = vec![false; usize::from(shardkv_transport::slot::SLOT_COUNT)];
    let header = for_each(path, |r| match r {
        Record::Kv { key, .. } if key.is_empty() || key.len() > max => {
            Err(io(path, format!("a key of {} bytes", key.len())))
        }
        Record::Kv { key, .. } => {
            slots[usize::from(shardkv_transport::slot::slot(&key))] = true;
            Ok(())
        }
        Record::Session { record, .. } if record.len() < SESSION_RECORD_BYTES_MIN => Err(io(
            path,
            format!("a session record of {} bytes", record.len()),
        )),
        _ => Ok(()),
    })?;
    if header.meta.snapshot.shard == META_SHARD {
        return Ok(header);
    }
    let Some(owned) = header.owned.clone().or_else(|| day0.cloned()) else {
        return Err(io(
            path,
            "says nothing of the slots it holds, and its shard is no day-0 shard",
        ));
    };
    let well_formed = owned
        .ranges
        .iter()
        .all(|&(first, last)| first <= last && last < shardkv_transport::slot::SLOT_COUNT)
        && owned.ranges.windows(2).all(|w| w[0].1 < w[1].0);
    if !well_formed {
        return Err(io(
            path,
            format!("owns malformed slot ranges {:?}", owned.ranges),
        ));
    }
    let outside = (0..shardkv_transport::slot::SLOT_COUNT)
        .find(|s| slots[usize::from(*s)] && !owned.contains(*s));
    if let Some(slot) = outside {
        return Err(io(
            path,
            format!("rows of slot {slot}, outside its owned {:?}", owned.ranges),
        ));
    }
    Ok(Header {
        meta: header.meta,
        owned: Some(owned),
    })
}

/// Writes the rows of the snapshot at `path` into `wtxn` (the caller has cleared the shard).
pub fn load(
    schema: &Schema,
    wtxn: &mut heed::RwTxn,
    shard: ShardId,
    path: &Path,
) -> Result<(), ActorError> {
    let header = for_each(path, |r| {
        match r {
            Record::Kv { key, value } => schema.kv.put(wtxn, &kv_key(shard, &key), &value)?,
            Record::Session { client, record } => {
                schema
                    .sessions
                    .put(wtxn, &session_key(shard, client), &record)?
            }
            Record::Meta(_) | Record::MetaWithoutClock(_) | Record::Owned(_) => {}
        }
        Ok(())
    })?;
    if header.meta.snapshot.shard != shard {
        return Err(io(
            path,
            format!("is of shard {}, not {shard}", header.meta.snapshot.shard),
        ));
    }
    Ok(())
}

/// Deletes the snapshot files of `shard` in `dir` except those in `keep`.
pub fn remove_unused(dir: &Path, shard: ShardId, keep: &[&Path]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mine = format!("shard-{shard}-");
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let path = e.path();
        if name.starts_with(&mine) && name.ends_with(".snap") && !keep.contains(&path.as_path()) {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "snapshot file removed"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove snapshot file")
                }
            }
        }
    }
}

/// Removes what a previous run of the host left in `dir`: snapshots it built or received
/// (only ever referenced from memory) and unfinished temp files.
pub fn clean_at_start(dir: &Path) -> Result<usize, ActorError> {
    remove_files_where(dir, |name| {
        (name.starts_with("shard-") || name.starts_with("recv-"))
            && (name.ends_with(".snap") || name.ends_with(".snap.tmp"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_files_of_one_shard_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            file_name(3, 10, 2),
            format!("{}.tmp", file_name(3, 11, 2)),
            received_file_name(2, 3, 77),
            file_name(31, 10, 2),
            received_file_name(3, 4, 77),
            "notes.txt".to_string(),
        ];
        for n in &names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        assert_eq!(remove_shard_files(dir.path(), 3).unwrap(), 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = names[3..].to_vec();
        want.sort();
        assert_eq!(left, want);
        assert_eq!(
            remove_shard_files(&dir.path().join("absent"), 3).unwrap(),
            0
        );
    }
    use crate::messages::{WriteBatch, WriteOp};
    use crate::schema::TableId;
    use crate::test_fixtures::open_schema;

    /// Rows `k0..k9` of shard 1 and of shard 2, in slot-keyed rows over disjoint owned
    /// slots, and a session of each; answers shard 2's ownership.
    fn two_shards_rows(schema: &Schema) -> OwnedSlots {
        let keys: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'k', i]).collect();
        // Shard 2 owns the slots of the even keys, shard 1 everything else.
        let even: Vec<(u16, u16)> = keys
            .iter()
            .step_by(2)
            .map(|k| shardkv_transport::slot::slot(k))
            .map(|s| (s, s))
            .collect();
        let mut ops = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let shard = if i % 2 == 0 { 2u8 } else { 1 };
            ops.push(WriteOp::Put(
                TableId::Kv,
                kv_key(u32::from(shard), key),
                vec![shard, i as u8],
            ));
        }
        for shard in [1u32, 2] {
            ops.push(WriteOp::Put(
                TableId::Sessions,
                session_key(shard, 7).to_vec(),
                vec![9; SESSION_RECORD_BYTES_MIN],
            ));
        }
        crate::storage::commit(schema, vec![WriteBatch { ops }]).unwrap();
        let mut ranges = even;
        ranges.sort_unstable();
        ranges.dedup();
        OwnedSlots { ranges, epoch: 4 }
    }

    #[test]
    fn a_snapshot_holds_exactly_the_rows_of_the_slots_its_shard_owns() {
        let dir = tempfile::tempdir().unwrap();
        let schema = open_schema(&dir.path().join("db"));
        let owned = two_shards_rows(&schema);
        let rtxn = schema.env.read_txn().unwrap();
        let meta = FileMeta {
            snapshot: SnapMeta {
                shard: 2,
                index: 42,
                term: 3,
            },
            log_clock: LogClock {
                now_ms: 77,
                anchor: None,
            },
        };
        let path = write(&schema, &rtxn, &dir.path().join("snap"), &meta, &owned).unwrap();
        let mut records = Vec::new();
        let got = for_each(&path, |r| {
            records.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            got,
            Header {
                meta,
                owned: Some(owned.clone())
            }
        );
        assert_eq!(records.len(), 6, "5 rows and one session: {records:?}");
        assert!(records.iter().all(|r| match r {
            Record::Kv { key, value } => key[0] == b'k' && value[0] == 2,
            Record::Session { client, .. } => *client == 7,
            _ => false,
        }));
        assert_eq!(verify(&path, None).unwrap().owned, Some(owned));
    }

    #[test]
    fn a_file_with_rows_outside_its_owned_slots_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = SnapMeta {
            shard: 1,
            index: 9,
            term: 2,
        };
        let key = b"k".to_vec();
        let s = shardkv_transport::slot::slot(&key);
        let elsewhere = OwnedSlots {
            ranges: vec![(s + 1, s + 1)],
            epoch: 1,
        };
        let path = old_file(
            dir.path(),
            &[
                Record::Meta(FileMeta {
                    snapshot,
                    log_clock: LogClock::default(),
                }),
                Record::Owned(elsewhere),
                Record::Kv {
                    key,
                    value: b"v".to_vec(),
                },
            ],
        );
        let err = verify(&path, None).unwrap_err();
        assert!(err.to_string().contains(&format!("slot {s}")), "{err}");
    }

    /// A file as an earlier version wrote it: `records`, framed.
    fn old_file(dir: &Path, records: &[Record]) -> PathBuf {
        let path = dir.join("recv-old.snap");
        let mut bytes = Vec::new();
        for r in records {
            bytes.extend(shardkv_transport::frame::encode(r).unwrap());
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_file_without_a_log_clock_is_read_with_the_clock_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = SnapMeta {
            shard: 1,
            index: 9,
            term: 2,
        };
        let kv = Record::Kv {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        let path = old_file(
            dir.path(),
            &[Record::MetaWithoutClock(snapshot.clone()), kv.clone()],
        );
        let mut rows = Vec::new();
        let header = for_each(&path, |r| {
            rows.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            header.meta,
            FileMeta {
                snapshot,
                log_clock: LogClock::default()
            }
        );
        assert_eq!(rows, vec![kv]);
        // Such a file says nothing of its slots: it holds its shard's day-0 ones, if any.
        assert_eq!(header.owned, None);
        let day0 = OwnedSlots {
            ranges: vec![(0, 16383)],
            epoch: 1,
        };
        assert_eq!(verify(&path, Some(&day0)).unwrap().owned, Some(day0));
        let err = verify(&path, None).unwrap_err();
        assert!(err.to_string().contains("no day-0 shard"), "{err}");
    }

    #[test]
    fn a_file_with_two_meta_records_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = SnapMeta {
            shard: 1,
            index: 9,
            term: 2,
        };
        let meta = Record::Meta(FileMeta {
            snapshot: snapshot.clone(),
            log_clock: LogClock::default(),
        });
        let path = old_file(dir.path(), &[Record::MetaWithoutClock(snapshot), meta]);
        let err = verify(&path, None).unwrap_err();
        assert!(err.to_string().contains("second meta"), "{err}");
    }
}
