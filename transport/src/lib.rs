//! shardkv's wire: QUIC endpoints with mutual TLS and peer identity, length-prefixed postcard
//! frames, the messages clients and hosts exchange, and the key -> slot function.
//!
//! This crate knows nothing of actors or configuration files; it is shared by the host daemon
//! and the client library so both sides speak exactly the same protocol.

pub mod admission;
pub mod bytes;
pub mod cluster_map;
pub mod endpoint;
pub mod error;
pub mod fault;
pub mod frame;
pub mod identity;
pub mod layout;
pub mod slot;
pub mod snapshot_stream;
mod stream_end;
pub mod tls;
pub mod wire;

pub use cluster_map::{
    ClusterMap, HostEntry, HostState, MapError, Move, ReplicaRole, ShardEntry, Split,
};
pub use error::TransportError;
pub use identity::PeerIdentity;
pub use layout::{Layout, LayoutMismatch};
pub use tls::TlsFiles;
pub use wire::{HostId, ShardId};
