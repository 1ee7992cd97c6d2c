//! Recovery: LMDB's checkpoint, and replaying the log past it when a data dir is opened.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

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

/// The segment files in `dir`, oldest first, by the number their name gives.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, ActorError> {
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
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
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

/// Every good record of the log in `dir`, in order. A bad record ends the log if it is in
/// the newest segment (a write cut short by a crash, never acknowledged) and is corruption
/// anywhere else.
fn read_log(dir: &Path) -> Result<Vec<Record>, ActorError> {
    let files = segments(dir)?;
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
        if let Tail::Bad { offset, why } = tail {
            if i + 1 < files.len() {
                return Err(corrupt(format!(
                    "{} is damaged at byte {offset} ({why}) and newer segments follow",
                    path.display()
                )));
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
    let records = read_log(dir)?;
    let checkpoint = checkpoint(schema)?;
    let oldest = segments(dir)?.first().map(|(first, _)| *first);
    if let Some(oldest) = oldest {
        if oldest > checkpoint + 1 {
            return Err(corrupt(format!(
                "LMDB holds the log up to record {checkpoint} but the log in {} starts at \
                 record {oldest}: the records between are gone; this data.mdb is older than \
                 its write-ahead log",
                dir.display()
            )));
        }
    }
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
    for (_, path) in segments(dir)? {
        std::fs::remove_file(&path)
            .map_err(|e| ActorError::Storage(format!("cannot delete {}: {e}", path.display())))?;
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
    use super::super::segments::segment_path;
    use super::*;
    use crate::test_fixtures::open_schema;
    use crate::wal::{encode, Wal};

    fn put(key: &[u8], value: &[u8]) -> WriteOp {
        WriteOp::Put(TableId::Kv, key.to_vec(), value.to_vec())
    }

    fn get(schema: &Schema, key: &[u8]) -> Option<Vec<u8>> {
        let rtxn = schema.env.read_txn().unwrap();
        schema.kv.get(&rtxn, key).unwrap().map(|v| v.to_vec())
    }

    /// A log in `dir` holding records 1..=3 (k = 1, 2, 3 in turn), synced.
    fn three_records(dir: &Path) {
        let mut wal = Wal::create(dir, 1).unwrap();
        for seq in 1..=3u8 {
            wal.append(u64::from(seq), &[put(b"k", &[seq])]).unwrap();
        }
        wal.sync().unwrap();
    }

    #[test]
    fn records_past_the_checkpoint_are_replayed_in_order_and_the_log_restarts_after_them() {
        let data = tempfile::tempdir().unwrap();
        let schema = open_schema(data.path());
        let dir = data.path().join("test-wal");
        three_records(&dir);
        assert_eq!(recover(&schema, &dir).unwrap(), 4);
        assert_eq!(get(&schema, b"k"), Some(vec![3]));
        assert_eq!(checkpoint(&schema).unwrap(), 3);
        assert!(
            segments(&dir).unwrap().is_empty(),
            "replayed segments are deleted"
        );
        // Nothing left to replay: the log continues after the checkpoint.
        assert_eq!(recover(&schema, &dir).unwrap(), 4);
    }

    #[test]
    fn records_lmdb_already_holds_are_not_replayed_over_newer_state() {
        let data = tempfile::tempdir().unwrap();
        let schema = open_schema(data.path());
        let dir = data.path().join("test-wal");
        three_records(&dir);
        // LMDB took records 1 and 2, then a later write of its own changed k.
        crate::storage::commit(
            &schema,
            vec![crate::messages::WriteBatch {
                ops: vec![put(b"k", b"later"), checkpoint_op(2)],
            }],
        )
        .unwrap();
        assert_eq!(recover(&schema, &dir).unwrap(), 4);
        assert_eq!(
            get(&schema, b"k"),
            Some(vec![3]),
            "only record 3 is replayed"
        );
    }

    #[test]
    fn a_torn_tail_is_dropped_and_damage_before_newer_segments_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let schema = open_schema(data.path());
        let dir = data.path().join("test-wal");
        three_records(&dir);
        let path = segment_path(&dir, 1);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(recover(&schema, &dir).unwrap(), 3, "record 3 was cut short");
        assert_eq!(get(&schema, b"k"), Some(vec![2]));

        // Damage in a segment that newer ones follow: refused, nothing applied.
        three_records(&dir.join("again"));
        let mut next = Vec::new();
        encode(4, &[put(b"k", b"4")], &mut next).unwrap();
        std::fs::write(segment_path(&dir.join("again"), 4), next).unwrap();
        let path = segment_path(&dir.join("again"), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let err = recover(&schema, &dir.join("again")).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        assert_eq!(get(&schema, b"k"), Some(vec![2]));
    }

    #[test]
    fn a_log_that_does_not_reach_back_to_the_checkpoint_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let schema = open_schema(data.path());
        let dir = data.path().join("test-wal");
        let mut wal = Wal::create(&dir, 10).unwrap();
        wal.append(10, &[put(b"k", b"x")]).unwrap();
        wal.sync().unwrap();
        let err = recover(&schema, &dir).unwrap_err();
        assert!(err.to_string().contains("older than"), "{err}");
        assert_eq!(get(&schema, b"k"), None);
    }
}
