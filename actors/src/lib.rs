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
pub mod storage;

pub use error::ActorError;
