//! shardkv: a sharded, strongly consistent key/value store. Every shard is a Raft group
//! (raft-rs) whose replicas live on different hosts; state lives in LMDB; hosts and clients
//! talk QUIC with mutual TLS.
//!
//! This crate holds the daemon's view of `cluster.toml` ([`config`]), certificate tooling
//! ([`certs`]), the daemon wiring ([`daemon`]), the replicas a host starts and destroys ([`replicas`]), local clusters ([`local`]) and the benchmark
//! ([`mod@bench`], [`chart`]). The client library is the `shardkv-client` crate, re-exported here
//! as [`client`] for applications that already depend on this one; the actors live in
//! `shardkv-actors`, the wire in `shardkv-transport`.

pub mod balancer;
pub mod bench;
pub mod bootstrap;
pub mod certs;
pub mod chart;
pub mod config;
pub mod daemon;
pub mod local;
pub mod map_watch;
pub mod moves;
pub mod replace;
pub mod replicas;
pub mod resp;
pub mod splits;

pub use config::ClusterConfig;
pub use shardkv_client as client;
pub use shardkv_client::{Client, ClientError, ClientSettings};
