//! The host's write-ahead log: what makes a group of Raft writes durable with one fsync.
//!
//! An LMDB commit rewrites every B-tree page it touches (copy on write) and costs an fsync of
//! those pages plus one of its meta page: measured, about 48 random 4 KiB pages per group of
//! ~50 Raft appends. The log instead appends each of the host's write batches (Raft entries
//! and hard states, applies, control writes; all but snapshot loads) as one record to a
//! segment file, and one fdatasync makes a whole group durable: a few sequential pages.
//! LMDB still holds everything, the Raft log included, and is brought up to date in the
//! background by larger, rarer commits (see `storage::lmdb_writer`), each recording the last
//! log record it includes
//! ([`checkpoint`]). A commit's meta page is flushed by the next commit, so once a commit
//! returns, the checkpoint of the one before it is durable in LMDB and the segments wholly
//! at or below it are released.
//!
//! Recovery ([`recover`], when the data dir is opened) replays into LMDB, in order, every
//! record after LMDB's checkpoint, syncs, and starts a fresh log. Replaying a suffix in order
//! is exact because LMDB commits take the host's writes in the order they arrived: a
//! commit holds a prefix of them, so everything after its checkpoint came later.
//!
//! Segment files are `wal/<first sequence number, 20 digits>.wal` (released ones kept for
//! reuse are `.spare`). Each starts with [`SEGMENT_MAGIC`] and a random nonce drawn for this
//! use of the file; records follow with no padding:
//!
//! ```text
//! payload length u32 LE | crc32c u32 LE of (nonce, sequence, payload) | sequence u64 LE | payload
//! ```
//!
//! The payload is the batch's `WriteOp`s in postcard. The nonce keeps a reused segment's old
//! bytes from ever passing for a record of its new use, even where a client's value held
//! something shaped like one. Sequence numbers are consecutive
//! across segments. A record that is cut short, fails its checksum or breaks the sequence
//! ends the segment: in the newest one it is a write the crash interrupted (never
//! acknowledged), or what a reused segment held before. In an older segment it must be the
//! latter, so the next segment must go on from the last good record; anything else is
//! corruption, and the host refuses to start.

mod recover;
mod segments;

use crc::{Crc, CRC_32_ISCSI};

use crate::error::ActorError;
use crate::messages::WriteOp;

pub use recover::{checkpoint, checkpoint_op, recover};
pub use segments::Wal;

/// The log's directory inside a data dir.
pub const DIR: &str = "wal";

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 4 << 20;

/// Bytes before a record's payload.
const HEADER_BYTES: usize = 16;

/// What a segment starts with, before its nonce.
pub const SEGMENT_MAGIC: &[u8; 8] = b"skv-wal1";

/// Bytes of a segment's start: the magic and the nonce.
pub const SEGMENT_HEADER_BYTES: usize = 16;

/// The start of a segment whose records are checksummed with `nonce`.
pub fn segment_header(nonce: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    out[..8].copy_from_slice(SEGMENT_MAGIC);
    out[8..].copy_from_slice(&nonce.to_le_bytes());
    out
}

fn checksum(nonce: u64, seq_and_payload: &[u8]) -> u32 {
    let mut digest = CRC32C.digest();
    digest.update(&nonce.to_le_bytes());
    digest.update(seq_and_payload);
    digest.finalize()
}

/// A record's payload may not exceed this (a batch is bounded far below by the host's
/// request and entry limits; anything larger is a corrupt length).
const PAYLOAD_MAX: usize = 1 << 30;

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// One record: a batch of writes and its place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub ops: Vec<WriteOp>,
}

/// Appends the record of `ops` at `seq`, in a segment of `nonce`, to `out`.
pub fn encode(nonce: u64, seq: u64, ops: &[WriteOp], out: &mut Vec<u8>) -> Result<(), ActorError> {
    let payload = postcard::to_allocvec(ops)
        .map_err(|e| ActorError::Storage(format!("cannot encode a write-ahead log record: {e}")))?;
    let len = u32::try_from(payload.len())
        .map_err(|_| ActorError::Storage("write-ahead log record over 4 GiB".into()))?;
    out.extend_from_slice(&len.to_le_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = checksum(nonce, &out[crc_at + 4..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// What reading a segment found after its last good record.
#[derive(Debug, PartialEq)]
pub enum Tail {
    /// The segment ends exactly after it.
    Clean,
    /// Bytes follow that are not a good next record: at `offset`, because of `why`.
    Bad { offset: usize, why: String },
}

/// Decodes the records of one segment's bytes, expecting the first to be numbered `first`
/// (if known); stops at the first bad one.
pub fn decode_segment(bytes: &[u8], mut first: Option<u64>) -> (Vec<Record>, Tail) {
    let mut out = Vec::new();
    let nonce = match bytes.get(..SEGMENT_HEADER_BYTES) {
        Some(h) if &h[..8] == SEGMENT_MAGIC => {
            u64::from_le_bytes(<[u8; 8]>::try_from(&h[8..]).unwrap_or_default())
        }
        _ => {
            let why = "no segment header (a segment made but never written)".to_string();
            return (out, Tail::Bad { offset: 0, why });
        }
    };
    let mut at = SEGMENT_HEADER_BYTES;
    while at < bytes.len() {
        let bad = |why: &str| Tail::Bad {
            offset: at,
            why: why.to_string(),
        };
        let Some(header) = bytes.get(at..at + HEADER_BYTES) else {
            return (out, bad("the header is cut short"));
        };
        let field = |i: usize| <[u8; 4]>::try_from(&header[i..i + 4]).unwrap_or_default();
        let len = u32::from_le_bytes(field(0)) as usize;
        let crc = u32::from_le_bytes(field(4));
        let seq = u64::from_le_bytes(<[u8; 8]>::try_from(&header[8..16]).unwrap_or_default());
        if len > PAYLOAD_MAX {
            return (out, bad("the length is impossible"));
        }
        let Some(body) = bytes.get(at + 8..at + HEADER_BYTES + len) else {
            return (out, bad("the payload is cut short"));
        };
        if checksum(nonce, body) != crc {
            return (out, bad("the checksum does not match"));
        }
        if first.is_some_and(|f| f != seq) {
            return (out, bad(&format!("sequence {seq} where {first:?} was due")));
        }
        let ops: Vec<WriteOp> = match postcard::from_bytes(&body[8..]) {
            Ok(ops) => ops,
            Err(e) => return (out, bad(&format!("the payload does not decode: {e}"))),
        };
        out.push(Record { seq, ops });
        first = Some(seq + 1);
        at += HEADER_BYTES + len;
    }
    (out, Tail::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::TableId;

    fn put(k: &[u8]) -> WriteOp {
        WriteOp::Put(TableId::Kv, k.to_vec(), b"value".to_vec())
    }

    fn first_ops() -> Vec<WriteOp> {
        vec![put(b"a"), WriteOp::Delete(TableId::Meta, b"m".to_vec())]
    }

    /// A segment of nonce 1 holding records 7 and 8.
    fn two_records() -> Vec<u8> {
        let mut bytes = segment_header(1).to_vec();
        encode(1, 7, &first_ops(), &mut bytes).unwrap();
        encode(1, 8, &[put(b"b")], &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn records_round_trip_in_order() {
        let (records, tail) = decode_segment(&two_records(), Some(7));
        assert_eq!(tail, Tail::Clean);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].seq, 7);
        assert_eq!(
            records[0].ops[1],
            WriteOp::Delete(TableId::Meta, b"m".to_vec())
        );
        assert_eq!(records[1].ops, vec![put(b"b")]);
    }

    #[test]
    fn a_torn_last_record_ends_the_log_after_the_good_ones() {
        let bytes = two_records();
        let mut first = segment_header(1).to_vec();
        encode(1, 7, &first_ops(), &mut first).unwrap();
        for cut in SEGMENT_HEADER_BYTES + 1..bytes.len() {
            let (records, tail) = decode_segment(&bytes[..cut], None);
            let whole = usize::from(cut >= first.len());
            assert_eq!(records.len(), whole, "cut at {cut}");
            if cut != first.len() {
                assert!(matches!(tail, Tail::Bad { .. }), "cut at {cut}: {tail:?}");
            }
        }
    }

    #[test]
    fn records_of_another_use_of_the_segment_do_not_pass() {
        // The same bytes under another nonce: a reused segment's old records, or a record
        // shaped inside a client's value.
        let mut bytes = two_records();
        bytes[8..16].copy_from_slice(&2u64.to_le_bytes());
        let (records, tail) = decode_segment(&bytes, Some(7));
        assert!(records.is_empty());
        assert!(matches!(tail, Tail::Bad { ref why, .. } if why.contains("checksum")));
        let (records, _) = decode_segment(&[0; 64], None);
        assert!(records.is_empty(), "a zero-filled segment holds nothing");
    }

    #[test]
    fn a_flipped_bit_or_a_gap_in_the_sequence_is_caught() {
        let mut bytes = two_records();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let (records, tail) = decode_segment(&bytes, None);
        assert_eq!(records.len(), 1);
        assert!(matches!(tail, Tail::Bad { ref why, .. } if why.contains("checksum")));
        let (records, tail) = decode_segment(&two_records(), Some(6));
        assert!(records.is_empty());
        assert!(matches!(tail, Tail::Bad { ref why, .. } if why.contains("sequence 7")));
    }
}
