//! The actors of one shardkv host and its LMDB schema.
//!
//! - [`storage::StorageActor`]: the one LMDB writer, committing many shards' writes together.
//! - [`replica::ReplicaActor`]: one per local replica, drives raft-rs.
//! - [`shard::ShardActor`]: one per local replica, the state machine over LMDB.
//! - [`router::RouterActor`]: one per host, routes client requests and inbound Raft traffic.
//! - [`peer::PeerActor`]: one per remote host, the outbound QUIC link.
//!
//! They speak only the messages in [`messages`]; the daemon wires them together.

pub mod error;
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

pub use error::ActorError;

/// Mailbox size of every actor. `do_send` ignores it; `send` waits when a mailbox is full.
/// Large, so bursts (a Ready's worth of messages, a flood of client requests) do not stall,
/// but finite (actix computes sender budgets from it).
pub const MAILBOX_CAPACITY: usize = 1 << 16;
