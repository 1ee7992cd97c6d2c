//! Recovery: LMDB's checkpoint, and replaying the log past it when a data dir is opened.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::segments::{sync_dir, SPARE_EXTENSION};
use super::{decode_segment, Record, Tail};
use crate::error::ActorError;
use crate::messages::WriteOp;
use crate::schema::{Schema, TableId};

/// `meta` key: the sequence number of the last log record LMDB holds.
const CHECKPOINT: &[u8] = b"wal-checkpoint";

/// Records replayed per LMDB transaction.
const REPLAY_RECORDS_PER_TXN: usize = 1024;

/// The last log record LMDB holds (0: none yet).
pub fn checkpoint(schema: &Schema) -> Result<u64, ActorError> {
    let rtxn = schema.env.read_txn()?;
    match schema.meta.get(&rtxn, CHECKPOINT)? {
        None => Ok(0),
        Some(v) => {
            <[u8; 8]>::try_from(v)
                .map(u64::from_be_bytes)
                .map_err(|_| ActorError::Corrupt {
                    what: "write-ahead log checkpoint".into(),
                    detail: format!("{} bytes, not 8", v.len()),
                })
        }
    }
}

/// The write that records `seq` as the last log record LMDB holds, made in the transaction
/// that applies it.
pub fn checkpoint_op(seq: u64) -> WriteOp {
    WriteOp::Put(
        TableId::Meta,
        CHECKPOINT.to_vec(),
        seq.to_be_bytes().to_vec(),
    )
}

fn corrupt(detail: String) -> ActorError {
    ActorError::Corrupt {
        what: "write-ahead log".into(),
        detail,
    }
}

/// The segment files in `dir`, oldest first, by the number their name gives; with `spares`,
/// the released ones kept for reuse too.
fn files(dir: &Path, spares: bool) -> Result<Vec<(u64, PathBuf)>, ActorError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ActorError::Storage(format!(
                "cannot list {}: {e}",
                dir.display()
            )))
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| ActorError::Storage(format!("cannot list {}: {e}", dir.display())))?;
        let name = entry.file_name();
        let name = name.to_str().unwrap_or_default();
        let is_spare = entry.path().extension() == Some(std::ffi::OsStr::new(SPARE_EXTENSION));
        if is_spare {
            if spares {
                out.push((0, entry.path()));
            }
            continue;
        }
        let Some(first) = name
            .strip_suffix(".wal")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            warn!(file = %entry.path().display(), "not a write-ahead log segment; left alone");
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Every good record of the segments `files`, in order. A bad record ends the log in the
/// newest segment (a write cut short by a crash, never acknowledged, or a reused segment's
/// old bytes); in an older one it must be a reused segment's old bytes, so the next segment
/// must go on from the last good record, and anything else is corruption.
fn read_log(files: &[(u64, PathBuf)]) -> Result<Vec<Record>, ActorError> {
    let mut records = Vec::new();
    for (i, (first, path)) in files.iter().enumerate() {
        let bytes = std::fs::read(path)
            .map_err(|e| ActorError::Storage(format!("cannot read {}: {e}", path.display())))?;
        let expected = records.last().map_or(*first, |r: &Record| r.seq + 1);
        if expected != *first {
            return Err(corrupt(format!(
                "{} should start at record {expected}",
                path.display()
            )));
        }
        let (found, tail) = decode_segment(&bytes, Some(*first));
        records.extend(found);
        let next = records.last().map_or(*first, |r| r.seq + 1);
        if let Tail::Bad { offset, why } = tail {
            if let Some((next_first, _)) = files.get(i + 1) {
                // A reused segment's old records, if the next segment goes on from here.
                if *next_first != next {
                    return Err(corrupt(format!(
                        "{} is damaged at byte {offset} ({why}): the next segment starts at \
                         record {next_first}, not {next}",
                        path.display()
                    )));
                }
                continue;
            }
            warn!(
                file = %path.display(),
                offset,
                why,
                "the write-ahead log ends in a record a crash cut short; it was never acknowledged"
            );
        }
    }
    Ok(records)
}

/// Brings LMDB up to date with the log in `dir`: replays, in order, every record after
/// LMDB's checkpoint, syncs, and deletes the segments. Answers the sequence number the log
/// continues with. Refuses a log that does not reach back to the checkpoint (its records
/// between were deleted, so this LMDB file is older than the log: a restored or swapped
/// file), rather than apply later writes over a hole.
pub fn recover(schema: &Schema, dir: &Path) -> Result<u64, ActorError> {
    let checkpoint = checkpoint(schema)?;
    let segments = files(dir, false)?;
    // The segments before the last one that starts at or below the checkpoint's successor
    // hold only records LMDB has; a recovery that crashed while deleting may have left any
    // of them, in any pattern, so they are not read.
    let from = segments
        .iter()
        .rposition(|(first, _)| *first <= checkpoint + 1);
    if let (None, Some((oldest, _))) = (from, segments.first()) {
        return Err(corrupt(format!(
            "LMDB holds the log up to record {checkpoint} but the log in {} starts at \
             record {oldest}: the records between are gone; this data.mdb is older than its \
             write-ahead log",
            dir.display()
        )));
    }
    let records = read_log(&segments[from.unwrap_or(0)..])?;
    let replay: Vec<&Record> = records.iter().filter(|r| r.seq > checkpoint).collect();
    for chunk in replay.chunks(REPLAY_RECORDS_PER_TXN) {
        replay_chunk(schema, chunk).map_err(|e| {
            ActorError::Storage(format!(
                "cannot replay the write-ahead log into LMDB from record {}: {e} (a full map \
                 needs a larger storage.map_size; the log is kept until the replay succeeds)",
                chunk[0].seq
            ))
        })?;
    }
    schema.env.force_sync()?;
    if !replay.is_empty() {
        info!(
            records = replay.len(),
            from = checkpoint + 1,
            "replayed the write-ahead log into LMDB"
        );
    }
    let last = records.last().map_or(checkpoint, |r| r.seq.max(checkpoint));
    let stale = files(dir, true)?;
    for (_, path) in &stale {
        std::fs::remove_file(path)
            .map_err(|e| ActorError::Storage(format!("cannot delete {}: {e}", path.display())))?;
    }
    if !stale.is_empty() {
        sync_dir(dir)?;
    }
    Ok(last + 1)
}

/// Applies `chunk` and records its last record as the checkpoint, in one transaction.
fn replay_chunk(schema: &Schema, chunk: &[&Record]) -> Result<(), ActorError> {
    let mut wtxn = schema.env.write_txn()?;
    for op in chunk.iter().flat_map(|r| r.ops.iter()) {
        crate::storage::apply_op(schema, &mut wtxn, op)?;
    }
    if let Some(last) = chunk.last() {
        crate::storage::apply_op(schema, &mut wtxn, &checkpoint_op(last.seq))?;
    }
    wtxn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ops::RangeInclusive;

    use super::super::segments::segment_path;
    use super::*;
    use crate::test_fixtures::open_schema;
    use crate::wal::{encode, segment_header, Wal};

    fn put(key: &[u8], value: &[u8]) -> WriteOp {
        WriteOp::Put(TableId::Kv, key.to_vec(), value.to_vec())
    }

    fn get(schema: &Schema, key: &[u8]) -> Option<Vec<u8>> {
        let rtxn = schema.env.read_txn().unwrap();
        schema.kv.get(&rtxn, key).unwrap().map(|v| v.to_vec())
    }

    /// A throwaway data dir, its schema, and where the tests' log goes in it (not created).
    fn data_dir() -> (tempfile::TempDir, Schema, PathBuf) {
        let data = tempfile::tempdir().unwrap();
        let schema = open_schema(data.path());
        let dir = data.path().join("test-wal");
        (data, schema, dir)
    }

    /// A log in `dir` holding records 1..=3 (k = 1, 2, 3 in turn), synced.
    fn three_records(dir: &Path) {
        let mut wal = Wal::create(dir, 1).unwrap();
        for seq in 1..=3u8 {
            wal.append(u64::from(seq), &[put(b"k", &[seq])]).unwrap();
        }
        wal.sync().unwrap();
    }

    /// The bytes of a segment (nonce 1) holding records `seqs`, each setting k to its number.
    fn segment_bytes(seqs: RangeInclusive<u64>) -> Vec<u8> {
        let mut bytes = segment_header(1).to_vec();
        for seq in seqs {
            encode(1, seq, &[put(b"k", &[seq as u8])], &mut bytes).unwrap();
        }
        bytes
    }

    /// LMDB holds the log up to `checkpoint`, and k = `value`.
    fn lmdb_holds(schema: &Schema, value: &[u8], checkpoint: u64) {
        let ops = vec![put(b"k", value), checkpoint_op(checkpoint)];
        crate::storage::commit(schema, vec![crate::messages::WriteBatch { ops }]).unwrap();
    }

    #[test]
    fn records_past_the_checkpoint_are_replayed_in_order_and_the_log_restarts_after_them() {
        let (_data, schema, dir) = data_dir();
        three_records(&dir);
        assert_eq!(recover(&schema, &dir).unwrap(), 4);
        assert_eq!(get(&schema, b"k"), Some(vec![3]));
        assert_eq!(checkpoint(&schema).unwrap(), 3);
        assert!(
            files(&dir, true).unwrap().is_empty(),
            "replayed segments are deleted"
        );
        // Nothing left to replay: the log continues after the checkpoint.
        assert_eq!(recover(&schema, &dir).unwrap(), 4);
    }

    #[test]
    fn records_lmdb_already_holds_are_not_replayed_over_newer_state() {
        let (_data, schema, dir) = data_dir();
        three_records(&dir);
        // LMDB took records 1 and 2, then a later write of its own changed k.
        lmdb_holds(&schema, b"later", 2);
        assert_eq!(recover(&schema, &dir).unwrap(), 4);
        assert_eq!(
            get(&schema, b"k"),
            Some(vec![3]),
            "only record 3 is replayed"
        );
    }

    #[test]
    fn a_torn_tail_is_dropped_and_damage_before_newer_segments_is_refused() {
        let (_data, schema, dir) = data_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = segment_bytes(1..=3);
        std::fs::write(segment_path(&dir, 1), &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(recover(&schema, &dir).unwrap(), 3, "record 3 was cut short");
        assert_eq!(get(&schema, b"k"), Some(vec![2]));

        // Damage in a segment that newer ones follow: refused, nothing applied.
        let again = dir.join("again");
        std::fs::create_dir_all(&again).unwrap();
        let mut first = segment_bytes(3..=4);
        first[36] ^= 0xff;
        std::fs::write(segment_path(&again, 3), first).unwrap();
        std::fs::write(segment_path(&again, 5), segment_bytes(5..=5)).unwrap();
        let err = recover(&schema, &again).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert_eq!(get(&schema, b"k"), Some(vec![2]));
    }

    #[test]
    fn segments_lmdb_already_holds_are_skipped_whatever_an_interrupted_deletion_left() {
        let (_data, schema, dir) = data_dir();
        std::fs::create_dir_all(&dir).unwrap();
        // LMDB holds up to record 8; a recovery that crashed while deleting left segments 1
        // and 5 but not 3 (a gap), and segment 9 holds the one record to replay.
        lmdb_holds(&schema, b"lmdb", 8);
        for seqs in [1..=2, 5..=6, 9..=9] {
            std::fs::write(segment_path(&dir, *seqs.start()), segment_bytes(seqs)).unwrap();
        }
        assert_eq!(recover(&schema, &dir).unwrap(), 10);
        assert_eq!(
            get(&schema, b"k"),
            Some(vec![9]),
            "only record 9 is replayed"
        );
    }

    #[test]
    fn a_log_that_does_not_reach_back_to_the_checkpoint_is_refused() {
        let (_data, schema, dir) = data_dir();
        let mut wal = Wal::create(&dir, 10).unwrap();
        wal.append(10, &[put(b"k", b"x")]).unwrap();
        wal.sync().unwrap();
        let err = recover(&schema, &dir).unwrap_err();
        assert!(err.to_string().contains("older than"), "{err}");
        assert_eq!(get(&schema, b"k"), None);
    }
}
