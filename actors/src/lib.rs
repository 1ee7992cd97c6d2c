//! The actors of one shardkv host and its LMDB schema.
//!
//! - [`storage::StorageActor`]: where the host's writes become durable: the write-ahead log
//!   ([`wal`]) with one fsync per group, and LMDB behind it.
//! - [`replica::ReplicaActor`]: one per local replica, drives raft-rs.
//! - [`shard::ShardActor`]: one per local replica, the state machine over LMDB.
//! - [`router::RouterActor`]: one per host, routes client requests and inbound Raft traffic.
//! - [`peer::PeerActor`]: one per remote host, the outbound QUIC link, all of them in one
//!   directory ([`peer::links::PeerLinks`]) that follows the live cluster map.
//!
//! They speak only the messages in [`messages`]; the daemon wires them together.

pub mod error;
pub mod fatal;
pub mod incarnations;
pub mod logger;
pub mod messages;
pub mod metrics;
pub mod peer;
pub mod raft_storage;
pub mod replica;
pub mod router;
pub mod schema;
pub mod shard;
pub mod snapshot;
pub mod storage;
#[cfg(test)]
mod test_fixtures;
pub mod wal;

pub use error::ActorError;

/// Mailbox size of every actor. `do_send` ignores it; `send` waits when a mailbox is full.
/// Large, so bursts (a Ready's worth of messages, a flood of client requests) do not stall,
/// but finite (actix computes sender budgets from it).
pub const MAILBOX_CAPACITY: usize = 1 << 16;

/// Most replicas one host may hold (the cluster's shard limit; config validation enforces it).
pub const SHARDS_PER_HOST_MAX: usize = 16_384;

/// Mailbox size of the StorageActor. Its senders are each bounded (a replica keeps at most
/// `PERSISTS_IN_FLIGHT_MAX` batches in flight, a shard `APPLY_BATCHES_IN_FLIGHT_MAX` plus a
/// compaction and a snapshot install), and this holds all of them for the most shards a host
/// may have, so a `send` to storage never waits for room. That matters: a send that waits
/// is delivered when its future is next polled, possibly after a later one, and storage
/// must commit every sender's batches in the order they were sent.
pub const STORAGE_MAILBOX_CAPACITY: usize = 1 << 24;

const _: () = assert!(
    SHARDS_PER_HOST_MAX
        * (replica::PERSISTS_IN_FLIGHT_MAX + shard::APPLY_BATCHES_IN_FLIGHT_MAX + 4)
        < STORAGE_MAILBOX_CAPACITY
);
