//! The layout of a shard's owned slots in `raft_state` (tag [`TAG_OWNED`]): postcard of
//! [`OwnedSlots`], stored in the same transaction as the applied index it is as of.
//!
//! No record: the shard owns nothing yet (a joining replica before its first snapshot), or,
//! for the meta group, ever. Data dirs of earlier versions get theirs from [`super::migrate`].

use heed::RoTxn;
use shardkv_transport::ShardId;

use crate::error::ActorError;
use crate::messages::WriteOp;
use crate::schema::{state_key, Schema, TableId, TAG_OWNED};
use crate::shard::OwnedSlots;

/// The stored bytes of `shard`'s `owned` slots.
pub fn encode_owned(shard: ShardId, owned: &OwnedSlots) -> Result<Vec<u8>, ActorError> {
    postcard::to_allocvec(owned).map_err(|e| ActorError::Corrupt {
        what: format!("owned slots of shard {shard}"),
        detail: e.to_string(),
    })
}

/// The write that stores `owned` as `shard`'s owned slots; it must travel in the same batch
/// as the applied index it is as of.
pub fn owned_op(shard: ShardId, owned: &OwnedSlots) -> Result<WriteOp, ActorError> {
    Ok(WriteOp::Put(
        TableId::RaftState,
        state_key(shard, TAG_OWNED).to_vec(),
        encode_owned(shard, owned)?,
    ))
}

/// `shard`'s owned slots as `rtxn` sees them (`None`: no record).
pub fn read_owned(
    schema: &Schema,
    rtxn: &RoTxn,
    shard: ShardId,
) -> Result<Option<OwnedSlots>, ActorError> {
    let Some(v) = schema.raft_state.get(rtxn, &state_key(shard, TAG_OWNED))? else {
        return Ok(None);
    };
    postcard::from_bytes(v)
        .map(Some)
        .map_err(|e| ActorError::Corrupt {
            what: format!("owned slots of shard {shard}"),
            detail: e.to_string(),
        })
}

/// `shard`'s durable owned slots (empty when it has no record).
pub fn stored_owned(schema: &Schema, shard: ShardId) -> Result<OwnedSlots, ActorError> {
    Ok(read_owned(schema, &schema.env.read_txn()?, shard)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::WriteBatch;
    use crate::storage::commit;
    use crate::test_fixtures::temp_schema;

    #[test]
    fn owned_slots_round_trip_and_default_to_nothing() {
        let (_dir, schema) = temp_schema();
        assert_eq!(stored_owned(&schema, 3).unwrap(), OwnedSlots::default());
        let owned = OwnedSlots {
            ranges: vec![(0, 10), (20, 30)],
            epoch: 9,
        };
        let ops = vec![owned_op(3, &owned).unwrap()];
        commit(&schema, vec![WriteBatch { ops }]).unwrap();
        assert_eq!(stored_owned(&schema, 3).unwrap(), owned);
        assert_eq!(stored_owned(&schema, 4).unwrap(), OwnedSlots::default());
    }
}
