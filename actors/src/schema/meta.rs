//! The data dir's identity and what it was bootstrapped with, in the `meta` table.
//!
//! - `incarnation` (u64 BE): drawn at random when the data dir is created. Raft safety assumes
//!   no voter forgets what it acknowledged; a host whose disk was wiped comes back with a new
//!   incarnation, and peers that recorded the old one drop its Raft traffic, so it never votes
//!   or counts toward a quorum.
//! - `layout` (postcard [`Layout`]): the layout this host's replicas were bootstrapped with.
//!   Present once the host has bootstrapped; a `cluster.toml` declaring another layout is
//!   refused, and placement comes from here, never from a host list that has grown.
//! - `peer-incarnation` + host id (u64 BE) -> u64 BE: the incarnation first heard from each
//!   peer, recorded durably before any of its traffic is accepted.
//! - `retired-shard` + shard id (u32 BE) -> empty: this host's replica of the shard was
//!   destroyed after it moved away.
//! - `last-cluster-map` ([`ClusterMap::encode`]): the last live map this host's map watcher
//!   took, so that a restart routes and links peers by it, not by the day-0 map, before the
//!   meta group answers (or when it cannot, having lost its quorum).
//! - `awaiting-replace` (empty): this data dir replaced a lost one (a peer knew the host by
//!   another incarnation); no replica starts here until the live map lists this data dir's
//!   incarnation (`shardkv host replace`), whatever restarts happen meanwhile.

use heed::RwTxn;
use shardkv_transport::{ClusterMap, HostId, Layout, ShardId};

use super::{decode_u64, Schema, Table, TableId};
use crate::error::ActorError;
use crate::messages::WriteOp;

const INCARNATION: &[u8] = b"incarnation";
const LAYOUT: &[u8] = b"layout";
const PEER_INCARNATION: &[u8] = b"peer-incarnation";
const RETIRED: &[u8] = b"retired-shard";
const LAST_MAP: &[u8] = b"last-cluster-map";
const AWAITING_REPLACE: &[u8] = b"awaiting-replace";

/// The data dir's incarnation, drawn (and written in `wtxn`) if it has none yet. A data dir of
/// an older version gets one at its first start here, before it sends any Raft traffic.
pub(super) fn ensure_incarnation(meta: &Table, wtxn: &mut RwTxn) -> Result<u64, ActorError> {
    if let Some(v) = meta.get(wtxn, INCARNATION)? {
        return decode_u64("incarnation", v);
    }
    // Never 0, so that 0 can never match a recorded incarnation by accident.
    let incarnation = rand::random::<u64>().max(1);
    meta.put(wtxn, INCARNATION, &incarnation.to_be_bytes())?;
    Ok(incarnation)
}

/// The layout this data dir was bootstrapped with; `None` before its first bootstrap.
pub fn stored_layout(schema: &Schema) -> Result<Option<Layout>, ActorError> {
    let rtxn = schema.env.read_txn()?;
    match schema.meta.get(&rtxn, LAYOUT)? {
        None => Ok(None),
        Some(v) => postcard::from_bytes(v)
            .map(Some)
            .map_err(|e| ActorError::Corrupt {
                what: "stored layout".into(),
                detail: e.to_string(),
            }),
    }
}

/// Records `layout` as the one this data dir is bootstrapped with (durably, before any
/// replica starts).
pub fn store_layout(schema: &Schema, layout: &Layout) -> Result<(), ActorError> {
    let bytes = postcard::to_allocvec(layout).map_err(|e| ActorError::Corrupt {
        what: "layout".into(),
        detail: e.to_string(),
    })?;
    let mut wtxn = schema.env.write_txn()?;
    schema.meta.put(&mut wtxn, LAYOUT, &bytes)?;
    schema.commit_synced(wtxn)?;
    Ok(())
}

/// Whether some replica was bootstrapped here (a data dir of a version that did not store
/// its layout yet).
pub fn has_replicas(schema: &Schema) -> Result<bool, ActorError> {
    let rtxn = schema.env.read_txn()?;
    Ok(!schema.raft_state.is_empty(&rtxn)?)
}

/// The incarnation recorded for each peer, by host id.
pub fn peer_incarnations(schema: &Schema) -> Result<Vec<(HostId, u64)>, ActorError> {
    let rtxn = schema.env.read_txn()?;
    let mut out = Vec::new();
    for row in schema.meta.prefix_iter(&rtxn, PEER_INCARNATION)? {
        let (k, v) = row?;
        let host = decode_u64("peer id", &k[PEER_INCARNATION.len()..])?;
        out.push((host, decode_u64("peer incarnation", v)?));
    }
    Ok(out)
}

/// The write that records `incarnation` for `host`.
pub fn peer_incarnation_op(host: HostId, incarnation: u64) -> WriteOp {
    let mut key = PEER_INCARNATION.to_vec();
    key.extend_from_slice(&host.to_be_bytes());
    WriteOp::Put(TableId::Meta, key, incarnation.to_be_bytes().to_vec())
}

/// The write that records that this host's replica of `shard` was destroyed (it moved
/// away): written with the deletion of its rows, so a restart never bootstraps it again as a
/// day-0 voter.
pub fn retired_op(shard: ShardId) -> WriteOp {
    WriteOp::Put(TableId::Meta, retired_key(shard), Vec::new())
}

/// Whether this host's replica of `shard` was destroyed after it moved away.
pub fn is_retired(schema: &Schema, shard: ShardId) -> Result<bool, ActorError> {
    let rtxn = schema.env.read_txn()?;
    Ok(schema.meta.get(&rtxn, &retired_key(shard))?.is_some())
}

/// Records, durably, that this data dir replaced a lost one.
pub fn store_awaiting_replace(schema: &Schema) -> Result<(), ActorError> {
    let mut wtxn = schema.env.write_txn()?;
    schema.meta.put(&mut wtxn, AWAITING_REPLACE, &[])?;
    schema.commit_synced(wtxn)?;
    Ok(())
}

/// Whether this data dir replaced a lost one and the map does not list it yet.
pub fn is_awaiting_replace(schema: &Schema) -> Result<bool, ActorError> {
    let rtxn = schema.env.read_txn()?;
    Ok(schema.meta.get(&rtxn, AWAITING_REPLACE)?.is_some())
}

/// The write that records that the live map lists this data dir's incarnation.
pub fn replaced_op() -> WriteOp {
    WriteOp::Delete(TableId::Meta, AWAITING_REPLACE.to_vec())
}

/// The write that records `map` as the last live map this host took.
pub fn last_map_op(map: &ClusterMap) -> WriteOp {
    WriteOp::Put(TableId::Meta, LAST_MAP.to_vec(), map.encode())
}

/// The last live map this host took; `None` if it never took one. A stored map that does not
/// decode or breaks a map invariant is [`ActorError::Corrupt`], never used.
pub fn last_map(schema: &Schema) -> Result<Option<ClusterMap>, ActorError> {
    let rtxn = schema.env.read_txn()?;
    match schema.meta.get(&rtxn, LAST_MAP)? {
        None => Ok(None),
        Some(v) => ClusterMap::decode(v)
            .map(Some)
            .map_err(|e| ActorError::Corrupt {
                what: "stored cluster map".into(),
                detail: e.to_string(),
            }),
    }
}

fn retired_key(shard: ShardId) -> Vec<u8> {
    let mut key = RETIRED.to_vec();
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::WriteBatch;
    use crate::storage::commit;

    fn open(dir: &std::path::Path) -> Schema {
        Schema::open(dir, 1 << 24, "t", 1).unwrap()
    }

    #[test]
    fn the_incarnation_is_drawn_once_per_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).incarnation;
        assert_ne!(first, 0);
        assert_eq!(open(dir.path()).incarnation, first, "kept across restarts");
        let wiped = tempfile::tempdir().unwrap();
        assert_ne!(
            open(wiped.path()).incarnation,
            first,
            "a new data dir, a new one"
        );
    }

    #[test]
    fn layout_and_peer_incarnations_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let schema = open(dir.path());
        assert_eq!(stored_layout(&schema).unwrap(), None);
        assert!(!has_replicas(&schema).unwrap());
        let layout = Layout {
            shards: 2,
            replicas: 1,
            pins: vec![(2, vec![3])],
            placement: vec![(1, vec![1]), (2, vec![3])],
        };
        store_layout(&schema, &layout).unwrap();
        assert_eq!(stored_layout(&schema).unwrap(), Some(layout));
        let ops = vec![peer_incarnation_op(3, 33), peer_incarnation_op(2, 22)];
        commit(&schema, vec![WriteBatch { ops }]).unwrap();
        assert_eq!(peer_incarnations(&schema).unwrap(), [(2, 22), (3, 33)]);
    }

    #[test]
    fn the_last_map_round_trips_and_a_corrupt_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let schema = open(dir.path());
        assert_eq!(last_map(&schema).unwrap(), None, "none before the first");
        let layout = Layout {
            shards: 1,
            replicas: 1,
            pins: vec![],
            placement: vec![(1, vec![1])],
        };
        let mut map = ClusterMap::day0(&layout, &[(1, "127.0.0.1:7101".into())]).unwrap();
        map.add_host(2, "127.0.0.1:7102").unwrap();
        let ops = vec![last_map_op(&map)];
        commit(&schema, vec![WriteBatch { ops }]).unwrap();
        assert_eq!(last_map(&schema).unwrap(), Some(map));

        let garbage = WriteOp::Put(TableId::Meta, LAST_MAP.to_vec(), vec![0xff; 3]);
        commit(&schema, vec![WriteBatch { ops: vec![garbage] }]).unwrap();
        assert!(matches!(last_map(&schema), Err(ActorError::Corrupt { .. })));
    }

    #[test]
    fn a_retired_shard_is_remembered_and_hosted_shards_are_those_with_raft_state() {
        let dir = tempfile::tempdir().unwrap();
        let schema = open(dir.path());
        assert!(!is_retired(&schema, 2).unwrap());
        commit(
            &schema,
            vec![WriteBatch {
                ops: vec![retired_op(2)],
            }],
        )
        .unwrap();
        assert!(is_retired(&schema, 2).unwrap());
        assert!(!is_retired(&schema, 1).unwrap());
        for shard in [7, 0, 3] {
            crate::schema::raft_records::bootstrap(&schema, shard, &[1], None).unwrap();
        }
        assert_eq!(
            crate::schema::raft_records::hosted_shards(&schema).unwrap(),
            [0, 3, 7]
        );
    }
}
