//! The shardkv client library: everything a Rust application needs to read and write a
//! shardkv cluster, and nothing of the daemon (no actors, LMDB, HTTP or charts).
//!
//! A [`Client`] is built from the cluster's `cluster.toml` ([`ClientConfig`]) and a client
//! certificate, routes each key to its shard by slot through the live cluster map (loaded from
//! any host, cached by epoch, refreshed when a host says the route is stale), talks to the
//! shard's leader over QUIC with mutual TLS, follows `NotLeader` hints and retries with
//! backoff until a deadline.
//! Writes carry a session `(client_id, seq)` so that a retried write is applied once.

pub mod client;
pub mod config;
pub mod error;
pub mod map;
mod retry;
pub mod route;
pub mod settings;

pub use client::Client;
pub use config::{ClientConfig, ConfigError};
pub use error::ClientError;
pub use map::MapVersion;
pub use settings::{ClientSettings, DEADLINE_DEFAULT, DEADLINE_MAX};
pub use shardkv_transport::wire::{
    Change, Condition, KeyUpdate, ReadConsistency, UpdateOutcome, UPDATE_KEYS_MAX,
};
pub use shardkv_transport::{HostId, ShardId};
