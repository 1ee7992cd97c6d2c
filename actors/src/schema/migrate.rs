//! Upgrades of a data dir written by an earlier version, run at start before any replica.
//!
//! Earlier versions keyed user rows by shard (`kv`: shard u32 BE, user key) and recorded no
//! owned slots: every shard owned its day-0 range, since nothing could change it. Now rows are
//! keyed by slot (`slot_kv`, see [`super`]) and ownership is recorded. [`upgrade`] moves the
//! rows over in bounded transactions, each moving a chunk from the old table to the new one
//! (so a crash halfway leaves every row in exactly one of them, and the next start goes on),
//! then records each hosted shard's day-0 ownership. On a current data dir it only checks.

use shardkv_transport::cluster_map::{ClusterMap, META_SHARD};
use shardkv_transport::slot::{slot, slot_range};
use shardkv_transport::{Layout, ShardId};
use tracing::info;

use super::owned_record::{owned_op, read_owned};
use super::raft_records::hosted_shards;
use super::{kv_key, Schema, Table};
use crate::error::ActorError;
use crate::messages::WriteBatch;
use crate::shard::OwnedSlots;

/// The table earlier versions kept user rows in.
const OLD_KV: &str = "kv";
/// Rows moved per transaction: bounds the transaction's dirty pages.
const ROWS_PER_TXN: usize = 10_000;

/// What [`upgrade`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upgrade {
    /// User rows re-keyed by slot.
    pub rows_moved: u64,
    /// Shards whose day-0 ownership was recorded.
    pub shards_owned: usize,
}

/// Brings a data dir bootstrapped with `layout` up to the current schema (see the module
/// docs); idempotent.
pub fn upgrade(schema: &Schema, layout: &Layout) -> Result<Upgrade, ActorError> {
    let mut done = Upgrade {
        rows_moved: move_rows_to_slot_keys(schema, layout.shards)?,
        ..Upgrade::default()
    };
    let mut ops = Vec::new();
    let hosted = hosted_shards(schema)?;
    {
        let rtxn = schema.env.read_txn()?;
        for shard in hosted {
            if shard == META_SHARD || read_owned(schema, &rtxn, shard)?.is_some() {
                continue;
            }
            let Some(owned) = day0_owned(shard, layout.shards) else {
                return Err(ActorError::Corrupt {
                    what: format!("shard {shard}"),
                    detail: format!(
                        "held with no owned slots recorded, yet not one of the {} day-0 shards",
                        layout.shards
                    ),
                });
            };
            ops.push(owned_op(shard, &owned)?);
        }
    }
    done.shards_owned = ops.len();
    if !ops.is_empty() {
        crate::storage::commit(schema, vec![WriteBatch { ops }])?;
    }
    if done != Upgrade::default() {
        info!(
            rows = done.rows_moved,
            shards = done.shards_owned,
            "data dir upgraded: rows keyed by slot, each shard's slots recorded"
        );
    }
    Ok(done)
}

/// The slots `shard` owned at day 0 in a layout of `shards` data shards: what it owns until
/// it splits. `None` for the meta group and for shards made by splits.
pub fn day0_owned(shard: ShardId, shards: u32) -> Option<OwnedSlots> {
    (shard != META_SHARD && shard <= shards).then(|| OwnedSlots {
        ranges: vec![slot_range(shard, shards)],
        epoch: ClusterMap::DAY0_EPOCH,
    })
}

/// Whether `key` is of `shard`'s day-0 slots (of `shards` data shards).
fn is_day0_key(shard: ShardId, shards: u32, key: &[u8]) -> bool {
    day0_owned(shard, shards).is_some_and(|owned| owned.contains(slot(key)))
}

/// Moves every row of the old shard-keyed table (of a layout of `shards` data shards) into
/// `slot_kv`; answers how many. A row whose key is not of its shard's day-0 slots is refused
/// as corrupt: it would land among another shard's rows.
fn move_rows_to_slot_keys(schema: &Schema, shards: u32) -> Result<u64, ActorError> {
    let old: Option<Table> = {
        let rtxn = schema.env.read_txn()?;
        schema.env.open_database(&rtxn, Some(OLD_KV))?
    };
    let Some(old) = old else { return Ok(0) };
    let mut moved = 0u64;
    loop {
        let mut wtxn = schema.env.write_txn()?;
        let mut chunk = Vec::with_capacity(ROWS_PER_TXN);
        for row in old.iter(&wtxn)?.take(ROWS_PER_TXN) {
            let (k, v) = row?;
            chunk.push((k.to_vec(), v.to_vec()));
        }
        if chunk.is_empty() {
            return Ok(moved);
        }
        for (k, v) in &chunk {
            let Some(shard) = k.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
                return Err(ActorError::Corrupt {
                    what: "row of the old kv table".into(),
                    detail: format!("key of {} bytes", k.len()),
                });
            };
            let shard = ShardId::from_be_bytes(shard);
            let key = &k[4..];
            if shard != META_SHARD && !is_day0_key(shard, shards, key) {
                return Err(ActorError::Corrupt {
                    what: format!("row of shard {shard} in the old kv table"),
                    detail: format!(
                        "its key's slot {} is not one of the shard's day-0 slots (of {} shards)",
                        slot(key),
                        shards
                    ),
                });
            }
            schema.kv.put(&mut wtxn, &kv_key(shard, key), v)?;
            old.delete(&mut wtxn, k)?;
        }
        schema.commit_synced(wtxn)?;
        moved += chunk.len() as u64;
    }
}

/// The writes of rows in the old layout, for tests of the upgrade.
#[cfg(test)]
fn old_rows(schema: &Schema, rows: &[(ShardId, &[u8], &[u8])]) {
    let mut wtxn = schema.env.write_txn().unwrap();
    let old: Table = schema.env.create_database(&mut wtxn, Some(OLD_KV)).unwrap();
    for (shard, key, value) in rows {
        let mut k = shard.to_be_bytes().to_vec();
        k.extend_from_slice(key);
        old.put(&mut wtxn, &k, value).unwrap();
    }
    wtxn.commit().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::owned_record::stored_owned;
    use crate::schema::raft_records::bootstrap;
    use crate::test_fixtures::temp_schema;

    fn layout() -> Layout {
        Layout {
            shards: 2,
            replicas: 1,
            pins: Vec::new(),
            placement: vec![(1, vec![1]), (2, vec![1])],
        }
    }

    fn value(schema: &Schema, shard: ShardId, key: &[u8]) -> Option<Vec<u8>> {
        let rtxn = schema.env.read_txn().unwrap();
        schema
            .kv
            .get(&rtxn, &kv_key(shard, key))
            .unwrap()
            .map(|v| v.to_vec())
    }

    #[test]
    fn rows_of_an_old_data_dir_are_rekeyed_and_shards_get_their_day0_slots() {
        let (_dir, schema) = temp_schema();
        // Shard 1 of 2 owns slots 0-8191 at day 0, shard 2 the rest.
        let keys: Vec<Vec<u8>> = (0..)
            .map(|i| format!("k{i}").into_bytes())
            .filter(|k| slot(k) < 8192)
            .take(25_000)
            .collect();
        let mut rows: Vec<(ShardId, &[u8], &[u8])> =
            keys.iter().map(|k| (1, k.as_slice(), &b"v1"[..])).collect();
        let other = (0..)
            .map(|i| format!("o{i}").into_bytes())
            .find(|k| slot(k) >= 8192)
            .unwrap();
        rows.push((2, &other, b"v2"));
        rows.push((META_SHARD, b"cluster-map", b"map"));
        old_rows(&schema, &rows);
        bootstrap(&schema, 1, &[1], None).unwrap();
        bootstrap(&schema, 2, &[1], None).unwrap();

        let done = upgrade(&schema, &layout()).unwrap();
        assert_eq!(done.rows_moved, 25_002);
        assert_eq!(done.shards_owned, 2);
        assert_eq!(
            value(&schema, 1, keys.last().unwrap()),
            Some(b"v1".to_vec())
        );
        assert_eq!(value(&schema, 2, &other), Some(b"v2".to_vec()));
        assert_eq!(
            value(&schema, META_SHARD, b"cluster-map"),
            Some(b"map".to_vec())
        );
        assert_eq!(stored_owned(&schema, 1).unwrap().ranges, vec![(0, 8191)]);
        assert_eq!(
            stored_owned(&schema, 2).unwrap().ranges,
            vec![(8192, 16383)]
        );

        // Again: nothing left to do.
        assert_eq!(upgrade(&schema, &layout()).unwrap(), Upgrade::default());
    }

    #[test]
    fn a_current_data_dir_is_left_as_it_is() {
        let (_dir, schema) = temp_schema();
        let owned = OwnedSlots {
            ranges: vec![(0, 99)],
            epoch: 5,
        };
        bootstrap(&schema, 1, &[1], Some(&owned)).unwrap();
        assert_eq!(upgrade(&schema, &layout()).unwrap(), Upgrade::default());
        assert_eq!(stored_owned(&schema, 1).unwrap(), owned);
    }
}

#[cfg(test)]
mod refusals {
    use super::*;
    use crate::test_fixtures::temp_schema;

    #[test]
    fn a_row_outside_its_shards_day0_slots_is_refused_not_merged() {
        let (_dir, schema) = temp_schema();
        let stray = (0..)
            .map(|i| format!("s{i}").into_bytes())
            .find(|k| slot(k) >= 8192)
            .unwrap();
        old_rows(&schema, &[(1, &stray, b"v")]);
        let layout = Layout {
            shards: 2,
            replicas: 1,
            pins: Vec::new(),
            placement: vec![(1, vec![1]), (2, vec![1])],
        };
        let err = upgrade(&schema, &layout).unwrap_err();
        assert!(err.to_string().contains("day-0 slots"), "{err}");
    }
}
