//! `cluster.toml` as written, before validation: the one schema of the file.
//!
//! Both the client's [`super::ClientConfig`] and the daemon's full config are validated from
//! these types, so the two cannot disagree on what the file may contain. Unknown fields are
//! rejected, and integers are read as `i64` so a negative number gets a message naming the
//! field rather than a type error. Nothing here is checked yet.

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// `[cluster]`.
    pub cluster: RawCluster,
    /// `[raft]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<RawRaft>,
    /// `[tls]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    /// `[storage]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<RawStorage>,
    /// `[[host]]`, in file order.
    #[serde(default)]
    pub host: Vec<RawHost>,
    /// `[[shard]]` pins, in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard: Vec<RawPin>,
    /// `[resp]`: the hosts' Redis protocol listeners. The daemon validates it; a client reads
    /// past it, so one file serves both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<RawResp>,
}

/// `[resp]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawResp {
    /// TLS with client certificates (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// Forward instead of redirecting (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<bool>,
}

/// `[cluster]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: String,
    pub shards: i64,
    pub replicas: i64,
    /// The value limit; the TOML key keeps its original spelling so existing files parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value_bytes: Option<i64>,
}

/// `[raft]`: durations as humantime text (`"100ms"`).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRaft {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_after: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernate: Option<bool>,
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// `[storage]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_size: Option<RawSize>,
}

/// `map_size = 68719476736` or `map_size = "64GiB"`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

/// One `[[host]]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub id: i64,
    pub addr: String,
    pub data_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// The host's Redis protocol listener (the daemon's; a client reads past it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One `[[shard]]` pin.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPin {
    pub id: i64,
    pub hosts: Vec<i64>,
}
