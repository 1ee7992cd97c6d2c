//! [`ClusterConfig::to_toml`]: a validated config written back as `cluster.toml` text, so
//! tests and launchers can hand spawned daemons a config built in memory.

use std::path::Path;

use shardkv_client::config::file::{
    RawCluster, RawFile, RawHost, RawPin, RawRaft, RawSize, RawStorage, RawTls,
};

use super::ClusterConfig;

impl ClusterConfig {
    /// Renders this config as `cluster.toml` text that [`ClusterConfig::parse`] turns back into
    /// an equal config (apart from `path`). Paths are written as stored, i.e. already resolved;
    /// defaults are written out explicitly. Tests use it to write configs for spawned daemons.
    pub fn to_toml(&self) -> String {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let raw = RawFile {
            cluster: RawCluster {
                name: self.cluster.name.clone(),
                shards: i64::from(self.cluster.shards),
                replicas: i64::from(self.cluster.replicas),
                max_value_bytes: Some(
                    i64::try_from(self.cluster.value_bytes_max).unwrap_or(i64::MAX),
                ),
            },
            raft: Some(RawRaft {
                tick: Some(humantime::format_duration(self.raft.tick).to_string()),
                election_timeout: Some(
                    humantime::format_duration(self.cluster.election_timeout).to_string(),
                ),
                heartbeat: Some(humantime::format_duration(self.raft.heartbeat).to_string()),
                snapshot_after: Some(i64::try_from(self.raft.snapshot_after).unwrap_or(i64::MAX)),
                hibernate: Some(self.raft.hibernate),
            }),
            tls: Some(RawTls {
                ca: Some(path(&self.cluster.tls.ca)),
            }),
            storage: Some(RawStorage {
                map_size: Some(RawSize::Bytes(
                    i64::try_from(self.storage.map_size).unwrap_or(i64::MAX),
                )),
            }),
            host: self
                .hosts
                .iter()
                .map(|h| RawHost {
                    id: i64::try_from(h.host.id).unwrap_or(i64::MAX),
                    addr: h.host.addr.to_string(),
                    data_dir: path(&h.data_dir),
                    metrics: h.metrics.map(|m| m.to_string()),
                    resp: h.resp.map(|r| r.to_string()),
                    cert: Some(path(&h.cert)),
                    key: Some(path(&h.key)),
                })
                .collect(),
            shard: self
                .cluster
                .pins
                .iter()
                .map(|p| RawPin {
                    id: i64::from(p.id),
                    hosts: p
                        .hosts
                        .iter()
                        .map(|&h| i64::try_from(h).unwrap_or(i64::MAX))
                        .collect(),
                })
                .collect(),
            resp: super::resp::raw(self.resp, &self.hosts),
        };
        // ok: RawFile has only strings, integers, booleans, tables and arrays of tables, which TOML
        // can always represent; serialisation cannot fail.
        toml::to_string(&raw)
            .expect("RawFile holds only strings, integers, booleans, tables and arrays of tables")
    }
}
