//! Fixtures the crate's unit tests share: a throwaway LMDB schema, a storage actor over it,
//! and Raft log entries and records written straight to LMDB. One definition, so every test
//! builds them the same way and a change to how a test schema is opened reaches all of them.

use std::path::Path;

use actix::{Actor, Addr};
use raft::eraftpb::Entry;
use shardkv_transport::ShardId;
use tempfile::TempDir;

use crate::fatal::FatalReporter;
use crate::messages::WriteBatch;
use crate::schema::raft_records::{append_ops, applied_op};
use crate::schema::Schema;
use crate::storage::{commit, StorageActor};

/// LMDB map size of a test schema (64 MiB): room for every test's data, little address space.
pub(crate) const MAP_SIZE: u64 = 1 << 26;

/// Opens (or reopens) the test schema of cluster `"t"`, host 1, in `dir`.
pub(crate) fn open_schema(dir: &Path) -> Schema {
    Schema::open(dir, MAP_SIZE, "t", 1).expect("a test schema opens in its own directory")
}

/// A test schema in a fresh temporary directory; the schema lives as long as the directory.
pub(crate) fn temp_schema() -> (TempDir, Schema) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let schema = open_schema(dir.path());
    (dir, schema)
}

/// A started [`StorageActor`] over `schema` whose fatal reports nobody reads; needs a running
/// actix system.
pub(crate) fn storage_actor(schema: &Schema) -> Addr<StorageActor> {
    StorageActor::new(schema.clone(), FatalReporter::channel().0)
        .expect("the storage thread starts")
        .start()
}

/// A log entry at `index` of `term` whose 10 data bytes come from the index, so entries at
/// different indexes differ in content and size is not zero.
pub(crate) fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8; 10].into(),
        ..Default::default()
    }
}

/// Appends `entries` to `shard`'s durable log in one commit, as a persisted Ready would.
pub(crate) fn append(schema: &Schema, shard: ShardId, entries: &[Entry]) {
    let mut ops = Vec::new();
    append_ops(shard, entries, &mut ops).expect("test entries are contiguous and encode");
    commit(schema, vec![WriteBatch { ops }]).expect("a test commit succeeds");
}

/// Records `index` as `shard`'s applied index in one commit, as an apply would.
pub(crate) fn set_applied(schema: &Schema, shard: ShardId, index: u64) {
    commit(
        schema,
        vec![WriteBatch {
            ops: vec![applied_op(shard, index)],
        }],
    )
    .expect("a test commit succeeds");
}
