//! The LMDB schema: one Env per host, shared by every shard so that one commit (one fsync)
//! can carry the work of many shards.
//!
//! Tables (keys prefixed by the shard id, u32 big-endian, so a shard's rows are contiguous; but
//! user rows by slot):
//! - `raft_log`:   (shard, index u64 BE)         -> raft-rs `Entry` (protobuf)
//! - `raft_state`: (shard, tag u8)               -> hard state / conf state / applied index /
//!   truncated (index, term) / log clock (see [`log_clock_record`]) / owned slots (see
//!   [`owned_record`])
//! - `slot_kv`:    (slot u16 BE, user key)       -> value; the meta group's rows under
//!   [`SYSTEM_PREFIX`] instead of a slot. Keyed by slot, not shard, so that a split (which
//!   hands slots from one shard to another on the same host) moves no row: which rows a shard
//!   holds is decided by the slots it owns. Slots owned by no local state machine hold no rows.
//!   (Data dirs of earlier versions keyed `kv` by shard; [`migrate`] re-keys them.)
//! - `sessions`:   (shard, client id u64 BE)     -> last applied seq (u64 BE), log time of that
//!   write in ms (u64 BE), then its reply (postcard); see [`session_record`]
//! - `meta`:       b"cluster" / b"host"          -> which cluster and host own this directory;
//!   b"incarnation", b"layout", b"peer-incarnation" + host -> see [`meta`]
//!
//! The layouts of the values live beside the keys: [`raft_records`] encodes and decodes the
//! `raft_log` and `raft_state` rows, [`log_clock_record`] the shard's log clock in
//! `raft_state`, [`session_record`] the `sessions` rows, [`meta`] the data dir's identity and
//! what it was bootstrapped with, [`map_record`] the cluster map a meta replica applied.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions};
use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::slot::{slot, Slot};
use shardkv_transport::{HostId, ShardId};

use crate::error::ActorError;
use crate::messages::WriteOp;

pub mod log_clock_record;
pub mod map_record;
pub mod meta;
pub mod migrate;
pub mod owned_record;
pub mod raft_records;
pub mod session_record;

/// A byte-keyed, byte-valued LMDB table.
pub type Table = Database<Bytes, Bytes>;

/// Which table a write goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TableId {
    RaftLog,
    RaftState,
    Kv,
    Sessions,
    Meta,
}

/// `raft_state` tag: the HardState (term, vote, commit).
pub const TAG_HARD_STATE: u8 = 1;
/// `raft_state` tag: the ConfState (voters).
pub const TAG_CONF_STATE: u8 = 2;
/// `raft_state` tag: the last index applied to `kv` (written in the same transaction).
pub const TAG_APPLIED: u8 = 3;
/// `raft_state` tag: (index, term) of the last entry removed from the log by compaction.
pub const TAG_TRUNCATED: u8 = 4;
/// `raft_state` tag: the shard's log clock as of the applied index (written in the same
/// transaction as it).
pub const TAG_LOG_CLOCK: u8 = 5;
/// `raft_state` tag: the slots the shard's state machine owns as of the applied index
/// (written in the same transaction as it).
pub const TAG_OWNED: u8 = 6;

/// The `slot_kv` prefix of the meta group's rows: above every slot, so no user key's row can
/// be one of them.
pub const SYSTEM_PREFIX: [u8; 2] = [0xff, 0xff];

/// The name of the user-row table since rows are keyed by slot.
const SLOT_KV: &str = "slot_kv";

/// The opened Env and its tables.
#[derive(Clone)]
pub struct Schema {
    pub env: Env,
    pub raft_log: Table,
    pub raft_state: Table,
    pub kv: Table,
    pub sessions: Table,
    pub meta: Table,
    /// This data dir's incarnation (see [`meta`]).
    pub incarnation: u64,
    /// Where the write-ahead log lives (see [`crate::wal`]).
    pub wal_dir: PathBuf,
}

impl Schema {
    /// Opens (creating if needed) the Env in `dir` and checks that it belongs to `cluster` and
    /// `host`; a directory of another cluster or host is refused, never reused.
    pub fn open(
        dir: &Path,
        map_size: u64,
        cluster: &str,
        host: HostId,
    ) -> Result<Self, ActorError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            ActorError::Storage(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let map_size = usize::try_from(map_size)
            .map_err(|_| ActorError::Storage("map_size does not fit in memory space".into()))?;
        // SAFETY (heed's contract): the Env is opened once per process for this path and the
        // file is not modified by anything else while open. NO_META_SYNC keeps LMDB's
        // integrity on a system crash but may undo the last commit: the storage actor's
        // writes are durable in the write-ahead log first (`storage::lmdb_writer`), and
        // writes outside it go through `commit_synced`.
        let env = unsafe {
            let mut options = EnvOpenOptions::new();
            options.flags(EnvFlags::NO_META_SYNC);
            options
                .map_size(map_size)
                .max_dbs(8)
                .max_readers(1024)
                .open(dir)
        }
        .map_err(|e| ActorError::Storage(format!("cannot open LMDB in {}: {e}", dir.display())))?;
        let mut wtxn = env.write_txn()?;
        let raft_log = env.create_database(&mut wtxn, Some("raft_log"))?;
        let raft_state = env.create_database(&mut wtxn, Some("raft_state"))?;
        let kv = env.create_database(&mut wtxn, Some(SLOT_KV))?;
        let sessions = env.create_database(&mut wtxn, Some("sessions"))?;
        let meta: Table = env.create_database(&mut wtxn, Some("meta"))?;
        let expected = format!("cluster {cluster:?} host {host}");
        let found_cluster = meta.get(&wtxn, b"cluster")?.map(|v| v.to_vec());
        let found_host = meta.get(&wtxn, b"host")?.map(|v| v.to_vec());
        match (found_cluster, found_host) {
            (None, None) => {
                meta.put(&mut wtxn, b"cluster", cluster.as_bytes())?;
                meta.put(&mut wtxn, b"host", &host.to_be_bytes())?;
            }
            (Some(c), Some(h)) if c == cluster.as_bytes() && h == host.to_be_bytes() => {}
            (c, h) => {
                let c = c.map(|c| String::from_utf8_lossy(&c).into_owned());
                let h = h
                    .and_then(|h| <[u8; 8]>::try_from(h.as_slice()).ok())
                    .map(u64::from_be_bytes);
                return Err(ActorError::ForeignData {
                    dir: dir.display().to_string(),
                    found: format!("cluster {c:?} host {h:?}"),
                    expected,
                });
            }
        }
        let incarnation = meta::ensure_incarnation(&meta, &mut wtxn)?;
        wtxn.commit()?;
        env.force_sync()?;
        let schema = Schema {
            env,
            raft_log,
            raft_state,
            kv,
            sessions,
            meta,
            incarnation,
            wal_dir: dir.join(crate::wal::DIR),
        };
        // What the log holds past LMDB's checkpoint is durable and acknowledged: LMDB gets
        // it before anyone reads.
        crate::wal::recover(&schema, &schema.wal_dir)?;
        Ok(schema)
    }

    /// Commits `wtxn` and syncs it to disk before returning. The Env does not sync its meta
    /// page on commit (the storage actor's writes are durable in the write-ahead log first),
    /// so a write outside the storage actor that must be durable on return, as at startup,
    /// comes through here.
    pub fn commit_synced(&self, wtxn: heed::RwTxn<'_>) -> Result<(), ActorError> {
        wtxn.commit()?;
        self.env.force_sync()?;
        Ok(())
    }

    /// The table behind an id.
    pub fn table(&self, id: TableId) -> Table {
        match id {
            TableId::RaftLog => self.raft_log,
            TableId::RaftState => self.raft_state,
            TableId::Kv => self.kv,
            TableId::Sessions => self.sessions,
            TableId::Meta => self.meta,
        }
    }
}

/// `raft_log` key of `index` in `shard`.
pub fn log_key(shard: ShardId, index: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&shard.to_be_bytes());
    k[4..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The index part of a `raft_log` key.
pub fn log_key_index(key: &[u8]) -> Option<u64> {
    let b: [u8; 8] = key.get(4..12)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// `raft_state` key of `tag` in `shard`.
pub fn state_key(shard: ShardId, tag: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&shard.to_be_bytes());
    k[4] = tag;
    k
}

/// `slot_kv` key of a user key of `shard`: by the key's slot, or under [`SYSTEM_PREFIX`] for
/// the meta group.
pub fn kv_key(shard: ShardId, key: &[u8]) -> Vec<u8> {
    let prefix = if shard == META_SHARD {
        SYSTEM_PREFIX
    } else {
        slot(key).to_be_bytes()
    };
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(&prefix);
    k.extend_from_slice(key);
    k
}

/// The user key of a `slot_kv` key.
pub fn kv_user_key(key: &[u8]) -> &[u8] {
    key.get(2..).unwrap_or_default()
}

/// `sessions` key of a client in `shard`.
pub fn session_key(shard: ShardId, client_id: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&shard.to_be_bytes());
    k[4..].copy_from_slice(&client_id.to_be_bytes());
    k
}

/// The first key of `shard` in a shard-prefixed table, and the first key after it: every row
/// of the shard in any table lies in between.
pub fn shard_key_range(shard: ShardId) -> (Vec<u8>, Vec<u8>) {
    (
        shard.to_be_bytes().to_vec(),
        (u64::from(shard) + 1).to_be_bytes()[4..].to_vec(),
    )
}

/// A key range `[from, to)` of one table.
pub type TableRange = (TableId, Vec<u8>, Vec<u8>);

/// The `slot_kv` ranges holding the rows of `shard` when it owns `slots`: one per slot range,
/// or the system rows for the meta group.
pub fn kv_ranges(shard: ShardId, slots: &[(Slot, Slot)]) -> Vec<TableRange> {
    if shard == META_SHARD {
        // Past every key under the prefix: no key is longer than KEY_BYTES_MAX.
        let end = vec![0xff; SYSTEM_PREFIX.len() + shardkv_transport::wire::KEY_BYTES_MAX + 1];
        return vec![(TableId::Kv, SYSTEM_PREFIX.to_vec(), end)];
    }
    slots
        .iter()
        .map(|&(first, last)| {
            let end = u32::from(last) + 1;
            (
                TableId::Kv,
                first.to_be_bytes().to_vec(),
                end.to_be_bytes()[2..].to_vec(),
            )
        })
        .collect()
}

/// How many user rows the slots `slots` (inclusive ranges) hold as of the last committed
/// write transaction: a scan of the rows, so its cost grows with them (Redis' `DBSIZE`).
pub fn count_rows_in_slots(schema: &Schema, slots: &[(Slot, Slot)]) -> heed::Result<u64> {
    let rtxn = schema.env.read_txn()?;
    let mut rows = 0;
    // Any shard but the meta group's: user rows are keyed by slot alone.
    for (_, lo, hi) in kv_ranges(META_SHARD + 1, slots) {
        let range = (
            Bound::Included(lo.as_slice()),
            Bound::Excluded(hi.as_slice()),
        );
        for row in schema.kv.range(&rtxn, &range)? {
            row?;
            rows += 1;
        }
    }
    Ok(rows)
}

/// Where `shard`'s data lies when it owns `slots`: its rows, its sessions and its Raft log.
/// A snapshot install replaces exactly these (it overwrites the `raft_state` rows it
/// carries); destroying a replica deletes these and its `raft_state` rows too
/// ([`shard_all_ranges`]).
pub fn shard_data_ranges(shard: ShardId, slots: &[(Slot, Slot)]) -> Vec<TableRange> {
    let (lo, hi) = shard_key_range(shard);
    let mut ranges = kv_ranges(shard, slots);
    ranges.push((TableId::Sessions, lo.clone(), hi.clone()));
    ranges.push((TableId::RaftLog, lo, hi));
    ranges
}

/// Every row `shard` has in this Env when it owns `slots`: its data ([`shard_data_ranges`])
/// and its Raft state (hard state, conf state, applied index, truncation point, log clock,
/// owned slots). Once these are deleted the host holds nothing of the shard, so a restart
/// cannot bring the replica back.
pub fn shard_all_ranges(shard: ShardId, slots: &[(Slot, Slot)]) -> Vec<TableRange> {
    let (lo, hi) = shard_key_range(shard);
    let mut ranges = shard_data_ranges(shard, slots);
    ranges.push((TableId::RaftState, lo, hi));
    ranges
}

/// The writes that delete every key in `ranges`.
pub fn delete_ranges(ranges: impl IntoIterator<Item = TableRange>) -> Vec<WriteOp> {
    ranges
        .into_iter()
        .map(|(table, from, to)| WriteOp::DeleteRange(table, from, to))
        .collect()
}

/// Decodes a big-endian u64 stored value.
pub fn decode_u64(what: &str, v: &[u8]) -> Result<u64, ActorError> {
    let b: [u8; 8] = v.try_into().map_err(|_| ActorError::Corrupt {
        what: what.to_string(),
        detail: format!("expected 8 bytes, found {}", v.len()),
    })?;
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_owner_reopens() {
        let dir = tempfile::tempdir().unwrap();
        drop(Schema::open(dir.path(), 1 << 26, "a", 1).unwrap());
        // Same owner: fine.
        drop(Schema::open(dir.path(), 1 << 26, "a", 1).unwrap());
    }

    #[test]
    fn other_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Schema::open(dir.path(), 1 << 26, "a", 1).unwrap());
        let err = Schema::open(dir.path(), 1 << 26, "b", 1).err().unwrap();
        assert!(matches!(err, ActorError::ForeignData { .. }), "{err}");
        let err = Schema::open(dir.path(), 1 << 26, "a", 2).err().unwrap();
        assert!(err.to_string().contains("host"), "{err}");
    }

    #[test]
    fn a_shards_key_range_holds_all_its_keys_and_no_other_shards() {
        let (lo, hi) = shard_key_range(7);
        for key in [
            log_key(7, 0).to_vec(),
            log_key(7, u64::MAX).to_vec(),
            state_key(7, u8::MAX).to_vec(),
            session_key(7, 1).to_vec(),
        ] {
            assert!(lo <= key && key < hi, "{key:?}");
        }
        for key in [log_key(6, u64::MAX).to_vec(), log_key(8, 0).to_vec()] {
            assert!(key < lo || key >= hi, "{key:?}");
        }
    }

    #[test]
    fn a_shards_kv_ranges_hold_the_keys_of_its_slots_and_no_others() {
        let in_range = |key: &[u8], ranges: &[TableRange]| {
            let k = kv_key(1, key);
            ranges.iter().any(|(_, lo, hi)| *lo <= k && k < *hi)
        };
        let keys: Vec<Vec<u8>> = (0..2000u32).map(|i| format!("k{i}").into_bytes()).collect();
        let ranges = kv_ranges(1, &[(100, 8000), (16000, 16383)]);
        for key in &keys {
            let s = slot(key);
            let owned = (100..=8000).contains(&s) || s >= 16000;
            assert_eq!(in_range(key, &ranges), owned, "slot {s}");
        }
    }

    #[test]
    fn the_meta_groups_rows_lie_apart_from_every_slot() {
        let holds =
            |ranges: &[TableRange], k: &Vec<u8>| ranges.iter().any(|(_, lo, hi)| lo <= k && k < hi);
        let meta_ranges = kv_ranges(META_SHARD, &[]);
        let every_slot = kv_ranges(1, &[(0, 16383)]);
        let meta_row = kv_key(META_SHARD, b"cluster-map");
        let high_row = kv_key(META_SHARD, &[0xff; 480]);
        assert!(
            holds(&meta_ranges, &high_row),
            "a system key of 0xff bytes too"
        );
        let user_row = kv_key(1, b"cluster-map");
        let holds =
            |ranges: &[TableRange], k: &Vec<u8>| ranges.iter().any(|(_, lo, hi)| lo <= k && k < hi);
        assert!(holds(&meta_ranges, &meta_row) && !holds(&every_slot, &meta_row));
        assert!(holds(&every_slot, &user_row) && !holds(&meta_ranges, &user_row));
        assert_eq!(kv_user_key(&meta_row), b"cluster-map");
    }

    #[test]
    fn all_ranges_of_a_shard_cover_every_table_but_meta() {
        let tables: Vec<TableId> = shard_all_ranges(3, &[(0, 5)]).iter().map(|r| r.0).collect();
        assert_eq!(
            tables,
            [
                TableId::Kv,
                TableId::Sessions,
                TableId::RaftLog,
                TableId::RaftState
            ]
        );
    }

    #[test]
    fn log_keys_sort_by_shard_then_index() {
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert!(log_key(1, 255) < log_key(1, 256));
        assert_eq!(log_key_index(&log_key(3, 77)), Some(77));
    }

    #[test]
    fn rows_are_counted_in_the_slots_asked_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::open(dir.path(), 1 << 26, "a", 1).unwrap();
        let mut wtxn = schema.env.write_txn().unwrap();
        let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
        for k in &keys {
            schema
                .kv
                .put(&mut wtxn, &kv_key(2, k.as_bytes()), b"v")
                .unwrap();
        }
        // The meta group's rows are no user rows of any slot.
        schema
            .kv
            .put(&mut wtxn, &kv_key(META_SHARD, b"map"), b"m")
            .unwrap();
        wtxn.commit().unwrap();
        let all = [(0, shardkv_transport::slot::SLOT_COUNT - 1)];
        assert_eq!(count_rows_in_slots(&schema, &all).unwrap(), 200);
        let low = [(0, 8191)];
        let in_low = keys.iter().filter(|k| slot(k.as_bytes()) <= 8191).count();
        assert_eq!(count_rows_in_slots(&schema, &low).unwrap(), in_low as u64);
        let one = slot(b"key-7");
        let in_one = keys.iter().filter(|k| slot(k.as_bytes()) == one).count();
        assert_eq!(
            count_rows_in_slots(&schema, &[(one, one)]).unwrap(),
            in_one as u64
        );
        assert_eq!(count_rows_in_slots(&schema, &[]).unwrap(), 0);
    }
}
