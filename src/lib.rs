//! shardkv: a sharded, strongly consistent key/value store. Every shard is a Raft group
//! (raft-rs) whose replicas live on different hosts; state lives in LMDB; hosts and clients
//! talk QUIC with mutual TLS.
//!
//! This crate holds the client library ([`client::Client`]), the `cluster.toml` model
//! ([`config`]), certificate tooling ([`certs`]) and the daemon wiring ([`daemon`]). The
//! actors live in `shardkv-actors`, the wire in `shardkv-transport`.

pub mod certs;
pub mod client;
pub mod config;
pub mod daemon;

pub use client::{Client, ClientError, ClientSettings};
pub use config::ClusterConfig;
pub mod bench;
pub mod chart;
pub mod local;
