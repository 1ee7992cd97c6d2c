//! The layout of a shard's log clock in `raft_state` (tag [`TAG_LOG_CLOCK`]): what session
//! expiry is judged by, stored in the same transaction as the applied index it belongs to, so
//! after a restart the clock resumes exactly where the applied state stands.
//!
//! Layout: log time in ms (u64 BE), then, once a command was applied, the anchor's term
//! (u64 BE) and stamp in ms (u64 BE): 8 or 24 bytes. No record: the clock at zero, unanchored
//! (a new shard, or data written before the log clock existed).

use heed::RoTxn;
use shardkv_transport::ShardId;

use crate::error::ActorError;
use crate::messages::WriteOp;
use crate::schema::{decode_u64, state_key, Schema, TableId, TAG_LOG_CLOCK};
use crate::shard::{ClockAnchor, LogClock};

/// Bytes of a record of a clock that has no anchor yet.
const UNANCHORED_BYTES: usize = 8;
/// Bytes of a record of an anchored clock.
const ANCHORED_BYTES: usize = 24;

/// The stored bytes of `clock`.
pub fn encode_log_clock(clock: &LogClock) -> Vec<u8> {
    let mut v = clock.now_ms.to_be_bytes().to_vec();
    if let Some(anchor) = clock.anchor {
        v.extend_from_slice(&anchor.term.to_be_bytes());
        v.extend_from_slice(&anchor.stamp_ms.to_be_bytes());
    }
    v
}

/// Decodes the stored bytes of a log clock.
pub fn decode_log_clock(v: &[u8]) -> Result<LogClock, ActorError> {
    let anchor = match v.len() {
        UNANCHORED_BYTES => None,
        ANCHORED_BYTES => Some(ClockAnchor {
            term: decode_u64("log clock anchor term", &v[8..16])?,
            stamp_ms: decode_u64("log clock anchor stamp", &v[16..])?,
        }),
        n => {
            return Err(ActorError::Corrupt {
                what: "log clock".into(),
                detail: format!("{n} bytes"),
            })
        }
    };
    Ok(LogClock {
        now_ms: decode_u64("log clock", &v[..8])?,
        anchor,
    })
}

/// The write that stores `clock` as `shard`'s log clock; it must travel in the same batch as
/// the applied index the clock is as of.
pub fn log_clock_op(shard: ShardId, clock: &LogClock) -> WriteOp {
    WriteOp::Put(
        TableId::RaftState,
        state_key(shard, TAG_LOG_CLOCK).to_vec(),
        encode_log_clock(clock),
    )
}

/// `shard`'s log clock as `rtxn` sees it (at zero and unanchored if none is stored).
pub fn read_log_clock(
    schema: &Schema,
    rtxn: &RoTxn,
    shard: ShardId,
) -> Result<LogClock, ActorError> {
    match schema
        .raft_state
        .get(rtxn, &state_key(shard, TAG_LOG_CLOCK))?
    {
        Some(v) => decode_log_clock(v),
        None => Ok(LogClock::default()),
    }
}

/// `shard`'s durable log clock, as of its durable applied index.
pub fn stored_log_clock(schema: &Schema, shard: ShardId) -> Result<LogClock, ActorError> {
    read_log_clock(schema, &schema.env.read_txn()?, shard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::WriteBatch;
    use crate::storage::commit;

    #[test]
    fn a_clock_round_trips_with_and_without_its_anchor() {
        let unanchored = LogClock {
            now_ms: 42,
            anchor: None,
        };
        let anchored = LogClock {
            now_ms: 7,
            anchor: Some(ClockAnchor {
                term: 3,
                stamp_ms: 1_700_000_000_000,
            }),
        };
        for clock in [unanchored, anchored, LogClock::default()] {
            assert_eq!(decode_log_clock(&encode_log_clock(&clock)).unwrap(), clock);
        }
        assert_eq!(encode_log_clock(&unanchored).len(), UNANCHORED_BYTES);
        assert_eq!(&encode_log_clock(&anchored)[..8], &7u64.to_be_bytes());
    }

    #[test]
    fn a_record_of_another_length_is_corrupt() {
        for n in [0, 7, 9, 16, 25] {
            assert!(
                matches!(
                    decode_log_clock(&vec![0; n]),
                    Err(ActorError::Corrupt { .. })
                ),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn the_stored_clock_is_per_shard_and_zero_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::open(dir.path(), 1 << 26, "t", 1).unwrap();
        assert_eq!(stored_log_clock(&schema, 1).unwrap(), LogClock::default());
        let clock = LogClock {
            now_ms: 99,
            anchor: Some(ClockAnchor {
                term: 2,
                stamp_ms: 5,
            }),
        };
        commit(
            &schema,
            vec![WriteBatch {
                ops: vec![log_clock_op(1, &clock)],
            }],
        )
        .unwrap();
        assert_eq!(stored_log_clock(&schema, 1).unwrap(), clock);
        assert_eq!(stored_log_clock(&schema, 2).unwrap(), LogClock::default());
    }
}
