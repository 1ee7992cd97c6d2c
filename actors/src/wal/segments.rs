//! The log's segment files as the writer thread keeps them: groups appended and synced, a new
//! segment past [`SEGMENT_BYTES`], and old segments deleted once LMDB holds what they hold.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{encode, SEGMENT_BYTES};
use crate::error::ActorError;
use crate::messages::WriteOp;

/// The open log; see the module docs.
pub struct Wal {
    dir: PathBuf,
    /// Segments no longer written to, oldest first, by the sequence number of their first
    /// record.
    closed: VecDeque<(u64, PathBuf)>,
    current: File,
    current_first: u64,
    current_path: PathBuf,
    /// Bytes in the current segment, synced or not.
    written: u64,
    /// The sequence number the next record must have.
    next_seq: u64,
    /// Records appended since the last sync.
    buf: Vec<u8>,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> ActorError {
    ActorError::Storage(format!(
        "write-ahead log: cannot {what} {}: {e}",
        path.display()
    ))
}

/// The path of the segment whose first record is `first`.
pub(super) fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

/// Makes the directory's entries (a created or deleted segment) durable.
fn sync_dir(dir: &Path) -> Result<(), ActorError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync directory", dir, e))
}

fn create_segment(dir: &Path, first: u64) -> Result<(File, PathBuf), ActorError> {
    let path = segment_path(dir, first);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_error("create segment", &path, e))?;
    // A record acknowledged in this file must not vanish with the file's directory entry.
    sync_dir(dir)?;
    Ok((file, path))
}

impl Wal {
    /// Starts the log in `dir` (which recovery left without segments) with record `next_seq`.
    pub fn create(dir: &Path, next_seq: u64) -> Result<Self, ActorError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let (current, current_path) = create_segment(dir, next_seq)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            closed: VecDeque::new(),
            current,
            current_first: next_seq,
            current_path,
            written: 0,
            next_seq,
            buf: Vec::new(),
        })
    }

    /// Adds `ops` as record `seq`, which must be the next one; it is written by [`Wal::sync`].
    pub fn append(&mut self, seq: u64, ops: &[WriteOp]) -> Result<(), ActorError> {
        if seq != self.next_seq {
            return Err(ActorError::Storage(format!(
                "write-ahead log: record {seq} handed over where {} is due",
                self.next_seq
            )));
        }
        encode(seq, ops, &mut self.buf)?;
        self.next_seq += 1;
        Ok(())
    }

    /// Writes the appended records and fdatasyncs them: they are durable once this returns.
    pub fn sync(&mut self) -> Result<(), ActorError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.current
            .write_all(&self.buf)
            .and_then(|()| self.current.sync_data())
            .map_err(|e| io_error("write", &self.current_path, e))?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        if self.written >= SEGMENT_BYTES {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), ActorError> {
        let (file, path) = create_segment(&self.dir, self.next_seq)?;
        let old = std::mem::replace(&mut self.current_path, path);
        self.closed.push_back((self.current_first, old));
        self.current = file;
        self.current_first = self.next_seq;
        self.written = 0;
        Ok(())
    }

    /// Deletes the closed segments whose every record is at or below `seq` (LMDB durably
    /// holds their writes).
    pub fn release_through(&mut self, seq: u64) -> Result<(), ActorError> {
        let mut deleted = false;
        while let Some((_, path)) = self.closed.front() {
            let next_first = self.closed.get(1).map_or(self.current_first, |(f, _)| *f);
            if next_first.saturating_sub(1) > seq {
                break;
            }
            std::fs::remove_file(path).map_err(|e| io_error("delete", path, e))?;
            self.closed.pop_front();
            deleted = true;
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// How many segment files the log has.
    #[cfg(test)]
    pub fn segments(&self) -> usize {
        self.closed.len() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::TableId;
    use crate::wal::{decode_segment, Tail};

    #[test]
    fn synced_records_are_in_the_segment_and_out_of_order_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 5).unwrap();
        let op = WriteOp::Put(TableId::Kv, b"k".to_vec(), b"v".to_vec());
        wal.append(5, std::slice::from_ref(&op)).unwrap();
        wal.append(6, &[]).unwrap();
        assert!(wal.append(8, &[]).is_err(), "7 is due");
        wal.sync().unwrap();
        let bytes = std::fs::read(segment_path(dir.path(), 5)).unwrap();
        let (records, tail) = decode_segment(&bytes, Some(5));
        assert_eq!(tail, Tail::Clean);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].ops, vec![op]);
    }

    #[test]
    fn full_segments_rotate_and_are_deleted_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        let big = WriteOp::Put(
            TableId::Kv,
            b"k".to_vec(),
            vec![0; (SEGMENT_BYTES / 2) as usize],
        );
        for seq in 1..=4 {
            wal.append(seq, std::slice::from_ref(&big)).unwrap();
            wal.sync().unwrap();
        }
        // Two records fill a segment: 1-2, 3-4, then the empty current one from 5.
        assert_eq!(wal.segments(), 3);
        wal.release_through(1).unwrap();
        assert_eq!(wal.segments(), 3, "record 2 is still needed");
        wal.release_through(3).unwrap();
        assert_eq!(wal.segments(), 2);
        assert!(!segment_path(dir.path(), 1).exists());
        wal.release_through(100).unwrap();
        assert_eq!(wal.segments(), 1, "the current segment stays");
        assert!(segment_path(dir.path(), 5).exists());
    }
}
