//! The log's segment files as the writer thread keeps them: groups appended and synced, a new
//! segment past [`SEGMENT_BYTES`], and old segments recycled once LMDB holds what they hold.
//!
//! A segment's blocks exist before records are written into them: a new segment is filled
//! with zeros (and synced) when it is made, and a released one is reused as the next. Then a
//! sync writes data only. An `fdatasync` of a file that grew must also commit the file
//! system's journal, which on ext4 (ordered mode) first writes out every other file's new
//! blocks: measured, 0.59 ms per log sync beside LMDB's commits, 0.23 ms alone for an
//! appending file against 0.15-0.19 ms for one written in place. A reused segment still holds
//! old records after the new ones; they are older than the segment's first record, so a
//! reader stops at them (see [`super::decode_segment`]).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{encode, segment_header, SEGMENT_BYTES};
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
    /// Records appended since the last sync (after a new segment, its header first).
    buf: Vec<u8>,
    /// The current segment's nonce (see [`super::segment_header`]).
    nonce: u64,
    /// Released segments kept to be reused as the next ones (their blocks are allocated).
    spares: Vec<PathBuf>,
}

/// Released segments kept for reuse at most; further ones are deleted.
const SPARES_MAX: usize = 2;

/// The extension of a released segment kept for reuse (recovery deletes them).
pub(super) const SPARE_EXTENSION: &str = "spare";

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
pub(super) fn sync_dir(dir: &Path) -> Result<(), ActorError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync directory", dir, e))
}

/// Opens the segment whose first record is `first`, for writing from its start: a spare
/// renamed, or a new file filled with zeros.
fn open_segment(
    dir: &Path,
    first: u64,
    spare: Option<PathBuf>,
) -> Result<(File, PathBuf), ActorError> {
    let path = segment_path(dir, first);
    let file = match spare {
        Some(spare) => {
            std::fs::rename(&spare, &path).map_err(|e| io_error("reuse segment", &spare, e))?;
            OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_error("open segment", &path, e))?
        }
        None => {
            let mut file = OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_error("create segment", &path, e))?;
            let zeros = vec![0u8; 1 << 20];
            let mut left = SEGMENT_BYTES;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                file.write_all(&zeros[..n])
                    .map_err(|e| io_error("fill segment", &path, e))?;
                left -= n as u64;
            }
            file.sync_all()
                .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
                .map_err(|e| io_error("fill segment", &path, e))?;
            file
        }
    };
    // A record acknowledged in this file must not vanish with the file's directory entry.
    sync_dir(dir)?;
    Ok((file, path))
}

impl Wal {
    /// Starts the log in `dir` (which recovery left without segments) with record `next_seq`.
    pub fn create(dir: &Path, next_seq: u64) -> Result<Self, ActorError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let (current, current_path) = open_segment(dir, next_seq, None)?;
        let nonce = rand::random();
        Ok(Wal {
            nonce,
            dir: dir.to_path_buf(),
            closed: VecDeque::new(),
            current,
            current_first: next_seq,
            current_path,
            written: 0,
            next_seq,
            buf: segment_header(nonce).to_vec(),
            spares: Vec::new(),
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
        encode(self.nonce, seq, ops, &mut self.buf)?;
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
        Ok(())
    }

    /// Starts the next segment if the current one is full. Called after a sync's waiters
    /// have heard (making a segment may take a file fill and a directory sync), with no
    /// record pending.
    pub fn rotate_if_full(&mut self) -> Result<(), ActorError> {
        if self.written < SEGMENT_BYTES || !self.buf.is_empty() {
            return Ok(());
        }
        let (file, path) = open_segment(&self.dir, self.next_seq, self.spares.pop())?;
        let old = std::mem::replace(&mut self.current_path, path);
        self.closed.push_back((self.current_first, old));
        self.current = file;
        self.current_first = self.next_seq;
        self.written = 0;
        self.nonce = rand::random();
        self.buf.extend_from_slice(&segment_header(self.nonce));
        Ok(())
    }

    /// Recycles the closed segments whose every record is at or below `seq` (LMDB durably
    /// holds their writes): kept as spares, or deleted past [`SPARES_MAX`].
    pub fn release_through(&mut self, seq: u64) -> Result<(), ActorError> {
        let mut changed = false;
        while let Some((_, path)) = self.closed.front() {
            let next_first = self.closed.get(1).map_or(self.current_first, |(f, _)| *f);
            if next_first.saturating_sub(1) > seq {
                break;
            }
            if self.spares.len() < SPARES_MAX {
                // Out of the log's names at once: recovery must not read its old records.
                let spare = path.with_extension(SPARE_EXTENSION);
                std::fs::rename(path, &spare).map_err(|e| io_error("set aside", path, e))?;
                self.spares.push(spare);
            } else {
                std::fs::remove_file(path).map_err(|e| io_error("delete", path, e))?;
            }
            self.closed.pop_front();
            changed = true;
        }
        if changed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// How many segment files the log has, spares included.
    #[cfg(test)]
    pub fn segments(&self) -> usize {
        self.closed.len() + 1 + self.spares.len()
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
        assert_eq!(bytes.len() as u64, SEGMENT_BYTES, "filled in advance");
        let (records, tail) = decode_segment(&bytes, Some(5));
        assert!(matches!(tail, Tail::Bad { .. }), "zeros follow: {tail:?}");
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].ops, vec![op]);
    }

    #[test]
    fn full_segments_rotate_and_released_ones_are_reused_without_their_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        let half = (SEGMENT_BYTES / 2) as usize;
        let big = |byte: u8| WriteOp::Put(TableId::Kv, b"k".to_vec(), vec![byte; half]);
        for seq in 1..=4 {
            wal.append(seq, &[big(1)]).unwrap();
            wal.sync().unwrap();
            wal.rotate_if_full().unwrap();
        }
        // Two records fill a segment: 1-2, 3-4, then the empty current one from 5.
        assert_eq!(wal.segments(), 3);
        wal.release_through(1).unwrap();
        assert_eq!(wal.closed.len(), 2, "record 2 is still needed");
        wal.release_through(3).unwrap();
        assert_eq!(wal.closed.len(), 1);
        assert!(
            !segment_path(dir.path(), 1).exists(),
            "renamed out of the log"
        );
        assert_eq!(wal.spares.len(), 1);
        wal.release_through(100).unwrap();
        assert_eq!((wal.closed.len(), wal.spares.len()), (0, 2));

        // The next segments reuse the spares: no new file, and only the new records read back.
        for seq in 5..=7 {
            wal.append(seq, &[big(2)]).unwrap();
            wal.sync().unwrap();
            wal.rotate_if_full().unwrap();
        }
        assert_eq!(wal.spares.len(), 1, "segment 7 is a reused one");
        let reused = std::fs::read(segment_path(dir.path(), 7)).unwrap();
        let (records, tail) = decode_segment(&reused, Some(7));
        assert_eq!(records.len(), 1);
        assert!(
            matches!(tail, Tail::Bad { .. }),
            "old records follow: {tail:?}"
        );
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 3, "segments 5 and 7, one spare");
    }
}
