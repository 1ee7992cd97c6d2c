//! The layout of one shard's Raft rows: log entries in `raft_log`, and in `raft_state` the
//! hard state, conf state, applied index and truncation point. Encoders produce [`WriteOp`]s
//! (made durable by the StorageActor: in its write-ahead log, then in LMDB, in order);
//! readers decode what LMDB holds. Keeping both sides of each record here is what keeps them
//! in agreement across restarts and versions.
//!
//! Layouts: entries, hard state and conf state are raft-rs protobuf; the applied index is a
//! u64 BE; the truncation point is (index u64 BE, term u64 BE).

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};
use shardkv_transport::ShardId;

use crate::error::ActorError;
use crate::messages::WriteOp;
use crate::schema::owned_record::encode_owned;
use crate::schema::{
    decode_u64, log_key, log_key_index, shard_key_range, state_key, Schema, TableId, TAG_APPLIED,
    TAG_CONF_STATE, TAG_HARD_STATE, TAG_OWNED, TAG_TRUNCATED,
};
use crate::shard::OwnedSlots;

/// Bytes of a stored truncation point: index then term.
const TRUNCATED_BYTES: usize = 16;

/// The protobuf bytes of `record`.
fn encode_proto(record: &impl protobuf::Message) -> Result<Vec<u8>, ActorError> {
    record
        .write_to_bytes()
        .map_err(|e| ActorError::Storage(e.to_string()))
}

/// The write of a protobuf record of `shard` under `tag` in `raft_state`.
fn state_op(
    shard: ShardId,
    tag: u8,
    record: &impl protobuf::Message,
) -> Result<WriteOp, ActorError> {
    Ok(WriteOp::Put(
        TableId::RaftState,
        state_key(shard, tag).to_vec(),
        encode_proto(record)?,
    ))
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
        ops.push(WriteOp::Put(
            TableId::RaftLog,
            log_key(shard, e.index).to_vec(),
            encode_proto(e)?,
        ));
    }
    Ok(())
}

/// The write of the hard state (term, vote, commit).
pub fn hard_state_op(shard: ShardId, hs: &HardState) -> Result<WriteOp, ActorError> {
    state_op(shard, TAG_HARD_STATE, hs)
}

/// The write of the conf state (voters).
pub fn conf_state_op(shard: ShardId, cs: &ConfState) -> Result<WriteOp, ActorError> {
    state_op(shard, TAG_CONF_STATE, cs)
}

/// The write that records (`index`, `term`) as the truncation point: the last entry removed
/// by compaction or replaced by a snapshot.
pub fn truncated_op(shard: ShardId, index: u64, term: u64) -> WriteOp {
    let mut v = index.to_be_bytes().to_vec();
    v.extend_from_slice(&term.to_be_bytes());
    WriteOp::Put(
        TableId::RaftState,
        state_key(shard, TAG_TRUNCATED).to_vec(),
        v,
    )
}

/// The write that records `index` as applied to `kv`; it must travel in the same batch as
/// the rows and sessions that applying up to `index` wrote, so they move together.
pub fn applied_op(shard: ShardId, index: u64) -> WriteOp {
    WriteOp::Put(
        TableId::RaftState,
        state_key(shard, TAG_APPLIED).to_vec(),
        index.to_be_bytes().to_vec(),
    )
}

/// Decodes a stored truncation point.
fn decode_truncated(v: &[u8]) -> Result<(u64, u64), ActorError> {
    if v.len() != TRUNCATED_BYTES {
        return Err(ActorError::Corrupt {
            what: "truncated state".into(),
            detail: format!("{} bytes", v.len()),
        });
    }
    Ok((
        decode_u64("truncated index", &v[..8])?,
        decode_u64("truncated term", &v[8..])?,
    ))
}

/// On first start, records the initial voters and the slots the shard owns (`None`: the
/// meta group, which owns none); later starts keep what is stored. Returns whether it
/// recorded them.
pub fn bootstrap(
    schema: &Schema,
    shard: ShardId,
    voters: &[u64],
    owned: Option<&OwnedSlots>,
) -> Result<bool, ActorError> {
    let mut wtxn = schema.env.write_txn()?;
    let key = state_key(shard, TAG_CONF_STATE);
    if schema.raft_state.get(&wtxn, &key)?.is_some() {
        return Ok(false);
    }
    let cs = ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    };
    schema
        .raft_state
        .put(&mut wtxn, &key, &encode_proto(&cs)?)?;
    if let Some(owned) = owned {
        let key = state_key(shard, TAG_OWNED);
        schema
            .raft_state
            .put(&mut wtxn, &key, &encode_owned(shard, owned)?)?;
    }
    schema.commit_synced(wtxn)?;
    Ok(true)
}

/// Whether this host holds Raft state of `shard`: a replica bootstrapped here, or one that
/// joined and heard from its leader. A destroyed replica has none (its rows are deleted in one
/// transaction), so a host starting up tells the shards it hosts from those it does not.
pub fn has_state(schema: &Schema, shard: ShardId) -> Result<bool, ActorError> {
    let rtxn = schema.env.read_txn()?;
    let (lo, hi) = shard_key_range(shard);
    let range = (
        std::ops::Bound::Included(lo.as_slice()),
        std::ops::Bound::Excluded(hi.as_slice()),
    );
    let found = schema.raft_state.range(&rtxn, &range)?.next().is_some();
    Ok(found)
}

/// Every shard with Raft state on this host (the replicas it holds), in shard order.
pub fn hosted_shards(schema: &Schema) -> Result<Vec<ShardId>, ActorError> {
    let rtxn = schema.env.read_txn()?;
    let mut shards = Vec::new();
    for row in schema.raft_state.iter(&rtxn)? {
        let (key, _) = row?;
        let Some(id) = key.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
            continue;
        };
        let shard = ShardId::from_be_bytes(id);
        if shards.last() != Some(&shard) {
            shards.push(shard);
        }
    }
    Ok(shards)
}

/// The index applied to `kv` (durably, in the apply transaction); 0 if none.
pub fn applied_index(schema: &Schema, shard: ShardId) -> Result<u64, ActorError> {
    let durable = Durable::new(schema, shard);
    durable.applied(&durable.read_txn()?)
}

/// The (index, term) of the last entry removed by compaction or replaced by a snapshot.
pub fn truncated_state(schema: &Schema, shard: ShardId) -> Result<(u64, u64), ActorError> {
    let durable = Durable::new(schema, shard);
    durable.truncated(&durable.read_txn()?)
}

/// The term of durable entry `index` (or of the truncation point), for compaction.
pub fn durable_term(
    schema: &Schema,
    shard: ShardId,
    index: u64,
) -> Result<Option<u64>, ActorError> {
    let durable = Durable::new(schema, shard);
    durable.term_of(&durable.read_txn()?, index)
}

/// The stored hard state (default if none).
pub fn hard_state(schema: &Schema, shard: ShardId) -> Result<HardState, ActorError> {
    let durable = Durable::new(schema, shard);
    durable.hard_state(&durable.read_txn()?)
}

/// Reads of one shard's durable Raft rows inside a read transaction (never the entries still
/// on their way to disk: those only the shard's `LmdbRaftStorage` knows).
pub(crate) struct Durable<'a> {
    schema: &'a Schema,
    shard: ShardId,
}

impl<'a> Durable<'a> {
    /// Reads of `shard` in `schema`.
    pub(crate) fn new(schema: &'a Schema, shard: ShardId) -> Self {
        Durable { schema, shard }
    }

    /// A read transaction on the Env; reads through one see one committed state.
    pub(crate) fn read_txn(&self) -> Result<heed::RoTxn<'a>, ActorError> {
        Ok(self.schema.env.read_txn()?)
    }

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
        let (t_index, t_term) = self.truncated(rtxn)?;
        if index == t_index {
            return Ok(Some(t_term));
        }
        Ok(self.entry_at(rtxn, index)?.map(|e| e.term))
    }

    /// The truncation point ((0, 0) if the log was never truncated).
    pub(crate) fn truncated(&self, rtxn: &heed::RoTxn) -> Result<(u64, u64), ActorError> {
        match self
            .schema
            .raft_state
            .get(rtxn, &state_key(self.shard, TAG_TRUNCATED))?
        {
            Some(v) => decode_truncated(v),
            None => Ok((0, 0)),
        }
    }

    /// The stored hard state (default if none).
    pub(crate) fn hard_state(&self, rtxn: &heed::RoTxn) -> Result<HardState, ActorError> {
        self.read_state(rtxn, TAG_HARD_STATE, "hard state")
    }

    /// The stored conf state (default if none).
    pub(crate) fn conf_state(&self, rtxn: &heed::RoTxn) -> Result<ConfState, ActorError> {
        self.read_state(rtxn, TAG_CONF_STATE, "conf state")
    }

    /// A protobuf record of this shard in `raft_state` (its default if none is stored).
    fn read_state<M: protobuf::Message>(
        &self,
        rtxn: &heed::RoTxn,
        tag: u8,
        what: &str,
    ) -> Result<M, ActorError> {
        match self
            .schema
            .raft_state
            .get(rtxn, &state_key(self.shard, tag))?
        {
            Some(v) => M::parse_from_bytes(v).map_err(|e| ActorError::Corrupt {
                what: format!("{what} of shard {}", self.shard),
                detail: e.to_string(),
            }),
            None => Ok(M::new()),
        }
    }

    /// The index of the last durable entry, or the truncation point if the log is empty.
    pub(crate) fn last_index_in(&self, rtxn: &heed::RoTxn) -> Result<u64, ActorError> {
        let probe = log_key(self.shard, u64::MAX);
        match self
            .schema
            .raft_log
            .get_lower_than_or_equal_to(rtxn, &probe)?
        {
            Some((k, _)) if k[..4] == self.shard.to_be_bytes() => {
                log_key_index(k).ok_or_else(|| ActorError::Corrupt {
                    what: format!("raft_log key of shard {}", self.shard),
                    detail: format!("{} bytes", k.len()),
                })
            }
            _ => Ok(self.truncated(rtxn)?.0),
        }
    }

    /// The durable entry at `index`, if the log holds it.
    pub(crate) fn entry_at(
        &self,
        rtxn: &heed::RoTxn,
        index: u64,
    ) -> Result<Option<Entry>, ActorError> {
        match self
            .schema
            .raft_log
            .get(rtxn, &log_key(self.shard, index))?
        {
            Some(v) => decode_entry(v).map(Some),
            None => Ok(None),
        }
    }

    /// The durable entries from `low` up to (not including) `high`, in index order; indexes
    /// the log does not hold are skipped, so the caller checks it got what it asked for.
    pub(crate) fn entries_in<'t>(
        &self,
        rtxn: &'t heed::RoTxn,
        low: u64,
        high: u64,
    ) -> Result<impl Iterator<Item = Result<Entry, ActorError>> + 't, ActorError> {
        let start = log_key(self.shard, low);
        let end = log_key(self.shard, high);
        let range = (
            std::ops::Bound::Included(&start[..]),
            std::ops::Bound::Excluded(&end[..]),
        );
        Ok(self
            .schema
            .raft_log
            .range(rtxn, &range)?
            .map(|item| decode_entry(item?.1)))
    }
}

/// Decodes a stored log entry.
fn decode_entry(v: &[u8]) -> Result<Entry, ActorError> {
    Entry::parse_from_bytes(v).map_err(|e| ActorError::Corrupt {
        what: "raft_log entry".into(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::WriteBatch;
    use crate::storage::commit;
    use crate::test_fixtures::{entry, temp_schema};

    #[test]
    fn an_append_first_drops_the_suffix_it_replaces() {
        let mut ops = Vec::new();
        append_ops(1, &[entry(3, 1), entry(4, 1)], &mut ops).unwrap();
        assert_eq!(ops.len(), 3);
        assert!(matches!(
            &ops[0],
            WriteOp::DeleteRange(TableId::RaftLog, from, to)
                if *from == log_key(1, 3) && *to == log_key(1, u64::MAX)
        ));
        assert!(matches!(
            &ops[2],
            WriteOp::Put(TableId::RaftLog, key, v)
                if *key == log_key(1, 4) && decode_entry(v).unwrap() == entry(4, 1)
        ));
    }

    #[test]
    fn an_empty_append_writes_nothing() {
        let mut ops = Vec::new();
        append_ops(1, &[], &mut ops).unwrap();
        assert!(ops.is_empty());
    }

    #[test]
    #[should_panic(expected = "non-contiguous")]
    fn a_non_contiguous_append_is_refused() {
        append_ops(1, &[entry(3, 1), entry(5, 1)], &mut Vec::new()).unwrap();
    }

    #[test]
    fn the_truncation_point_decodes_as_written() {
        let WriteOp::Put(TableId::RaftState, key, v) = truncated_op(2, 40, 7) else {
            panic!("a raft_state put");
        };
        assert_eq!(key, state_key(2, TAG_TRUNCATED));
        assert_eq!(decode_truncated(&v).unwrap(), (40, 7));
        assert!(matches!(
            decode_truncated(&v[..15]),
            Err(ActorError::Corrupt { .. })
        ));
    }

    #[test]
    fn records_written_are_read_back_per_shard() {
        let (_dir, schema) = temp_schema();
        assert!(bootstrap(&schema, 1, &[1, 2, 3], None).unwrap());
        assert!(
            !bootstrap(&schema, 1, &[9], None).unwrap(),
            "stored voters are kept"
        );
        let hs = HardState {
            term: 4,
            commit: 2,
            ..Default::default()
        };
        let mut ops = vec![
            hard_state_op(1, &hs).unwrap(),
            applied_op(1, 2),
            truncated_op(1, 1, 3),
        ];
        append_ops(1, &[entry(2, 3), entry(3, 4)], &mut ops).unwrap();
        commit(&schema, vec![WriteBatch { ops }]).unwrap();

        assert_eq!(hard_state(&schema, 1).unwrap(), hs);
        assert_eq!(applied_index(&schema, 1).unwrap(), 2);
        assert_eq!(truncated_state(&schema, 1).unwrap(), (1, 3));
        assert_eq!(durable_term(&schema, 1, 1).unwrap(), Some(3));
        assert_eq!(durable_term(&schema, 1, 3).unwrap(), Some(4));
        assert_eq!(durable_term(&schema, 1, 4).unwrap(), None);
        let durable = Durable::new(&schema, 1);
        let rtxn = durable.read_txn().unwrap();
        assert_eq!(durable.conf_state(&rtxn).unwrap().voters, vec![1, 2, 3]);
        assert_eq!(durable.last_index_in(&rtxn).unwrap(), 3);
        let got: Vec<Entry> = durable
            .entries_in(&rtxn, 2, 4)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, vec![entry(2, 3), entry(3, 4)]);
        // One read transaction per thread at a time (LMDB's reader slots are per thread).
        drop(rtxn);

        // Another shard sees none of it.
        assert!(has_state(&schema, 1).unwrap());
        assert!(!has_state(&schema, 2).unwrap());
        assert_eq!(applied_index(&schema, 2).unwrap(), 0);
        assert_eq!(hard_state(&schema, 2).unwrap(), HardState::default());
        let other = Durable::new(&schema, 2);
        assert_eq!(other.last_index_in(&other.read_txn().unwrap()).unwrap(), 0);
    }
}
