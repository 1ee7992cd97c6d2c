//! The cluster map as this host's replica of the meta group has applied it: the `kv` row
//! [`MAP_KEY`] of shard [`META_SHARD`], written by the meta group's state machine like any
//! value.
//!
//! A host routes, and admits Raft traffic, by the newest map it knows. At start it knows only
//! the day-0 one until its map watcher reads the live map from the meta group, and that read
//! needs the meta group to have a quorum. Once the meta group has moved off a day-0 host, its
//! voters that start with the day-0 map would drop each other's traffic, and the meta group
//! could not elect the leader every map read needs. A host holding a meta replica therefore
//! starts from the map that replica applied: it lists every replica the meta group had when
//! that replica last applied a change, so the meta voters admit each other again.

use shardkv_transport::cluster_map::{MAP_KEY, META_SHARD};
use shardkv_transport::ClusterMap;

use super::{kv_key, Schema};
use crate::error::ActorError;

/// The map this host's meta replica has applied; `None` if the host holds no meta replica or
/// the map was never written (it is then the day-0 one).
pub fn applied_map(schema: &Schema) -> Result<Option<ClusterMap>, ActorError> {
    let rtxn = schema.env.read_txn()?;
    let Some(bytes) = schema.kv.get(&rtxn, &kv_key(META_SHARD, MAP_KEY))? else {
        return Ok(None);
    };
    ClusterMap::decode(bytes)
        .map(Some)
        .map_err(|e| ActorError::Corrupt {
            what: "the cluster map applied by this host's meta replica".into(),
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{WriteBatch, WriteOp};
    use crate::schema::TableId;
    use crate::storage::commit;
    use shardkv_transport::Layout;

    fn put(schema: &Schema, shard: u32, value: Vec<u8>) {
        let op = WriteOp::Put(TableId::Kv, kv_key(shard, MAP_KEY), value);
        commit(schema, vec![WriteBatch { ops: vec![op] }]).expect("commit");
    }

    #[test]
    fn the_applied_map_is_the_meta_shards_row_and_none_without_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let schema = Schema::open(dir.path(), 1 << 24, "t", 1).expect("schema");
        assert_eq!(applied_map(&schema).expect("read"), None);

        let layout = Layout {
            shards: 1,
            replicas: 1,
            pins: Vec::new(),
            placement: vec![(1, vec![1])],
        };
        let mut map = ClusterMap::day0(&layout, &[(1, "127.0.0.1:1".into())]).expect("day 0");
        map.add_host(2, "127.0.0.1:2").expect("add");
        // The same key in a data shard is a user's value, not the map.
        put(&schema, 1, b"not a map".to_vec());
        assert_eq!(applied_map(&schema).expect("read"), None);

        put(&schema, META_SHARD, map.encode());
        assert_eq!(applied_map(&schema).expect("read"), Some(map));
    }

    #[test]
    fn an_undecodable_applied_map_is_corrupt() {
        let dir = tempfile::tempdir().expect("temp dir");
        let schema = Schema::open(dir.path(), 1 << 24, "t", 1).expect("schema");
        put(&schema, META_SHARD, b"garbage".to_vec());
        assert!(matches!(
            applied_map(&schema),
            Err(ActorError::Corrupt { .. })
        ));
    }
}
