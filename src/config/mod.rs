//! `cluster.toml`: the one file that describes a cluster, as a host daemon sees it.
//!
//! Every host daemon, the CLI and the tests read the same file, so this module turns it into a
//! [`ClusterConfig`] that is *valid by construction*: once [`ClusterConfig::load`] returns `Ok`,
//! host ids are unique and non-zero, addresses parse and differ, every shard has exactly
//! `replicas` distinct known hosts, and the Raft timing is something raft-rs accepts. Callers do
//! not re-check any of that.
//!
//! The file's schema and the checks a client also needs live in `shardkv_client::config`; a
//! [`ClusterConfig`] holds that client part as it is ([`ClusterConfig::cluster`]) and adds what
//! only a daemon needs (`validate.rs`). This module also writes configs back out
//! ([`ClusterConfig::to_toml`]). Errors name the field (`host[1].addr`,
//! `raft.election_timeout`), give the reason and say what to do. Certificate files are
//! deliberately *not* checked while parsing, because `shardkv certs init` itself needs a parsed
//! config; [`ClusterConfig::check_certs`] does that when a daemon or client is about to use
//! them.

mod render;
mod resp;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shardkv_client::config::{read_file, Checker};
pub use shardkv_client::config::{
    replica_hosts, ClientConfig, ConfigError, HostAddr, ShardPin, TlsSettings, SHARDS_MAX,
};
use shardkv_transport::{HostId, ShardId};

pub use resp::RespSettings;

const _: () = assert!(SHARDS_MAX as usize <= shardkv_actors::SHARDS_PER_HOST_MAX);

/// Default LMDB map size (64 GiB): address space only, not disk, on 64-bit hosts.
pub const MAP_SIZE_DEFAULT: u64 = 64 << 30;
/// Smallest LMDB map size accepted (1 MiB); anything smaller cannot hold a useful shard.
pub const MAP_SIZE_MIN: u64 = 1 << 20;

/// The sample `cluster.toml` committed at the repository root (three hosts on loopback).
/// Kept here so tests and `--help` texts can show a config known to parse.
pub const SAMPLE: &str = include_str!("../../cluster.toml");

/// A parsed and validated `cluster.toml`.
///
/// Guarantee: every value has passed the checks listed in the module docs; all paths are
/// resolved against the directory of the file they came from (absolute if that was absolute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The part a client also reads (name, shards and placement, value limit, election
    /// timeout, TLS, host addresses, the file's path), validated once by the client crate;
    /// hand it to [`shardkv_client::Client::from_config`].
    pub cluster: ClientConfig,
    /// Raft timing and snapshot policy beyond [`ClientConfig::election_timeout`].
    pub raft: RaftSettings,
    /// LMDB settings.
    pub storage: StorageSettings,
    /// What each host daemon needs, in file order: `hosts[i].host == cluster.hosts[i]`.
    pub hosts: Vec<HostConfig>,
    /// `[resp]`: the Redis protocol listeners' settings (each host's address is
    /// [`HostConfig::resp`]).
    pub resp: RespSettings,
}

/// Raft timing; the base election timeout (raft-rs randomises within `[1, 2)` times it) is
/// [`ClientConfig::election_timeout`], since clients size their timeouts from it too.
/// Guarantee: `tick > 0`, `heartbeat >= tick`, `election_timeout > heartbeat`,
/// `election_timeout >= 3 * tick`, and in whole ticks election > heartbeat (raft-rs requires it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftSettings {
    /// Period of the Raft logical clock.
    pub tick: Duration,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Applied entries between snapshots; at least 1.
    pub snapshot_after: u64,
    /// Whether idle shards stop ticking (see `shardkv_actors::replica::hibernate`); default
    /// on. Off, an idle shard whose leader dies fails over within an election timeout instead
    /// of QUIC's idle timeout, and every shard costs CPU whether used or not.
    pub hibernate: bool,
}

/// LMDB environment settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// LMDB map size in bytes (at least 1 MiB).
    pub map_size: u64,
}

/// One host: who it is and where it listens (as a client sees it), where it keeps data, and
/// which certificate proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Id (also its Raft peer id) and QUIC listen and advertise address.
    pub host: HostAddr,
    /// Directory of the host's LMDB environment.
    pub data_dir: PathBuf,
    /// Optional HTTP `/metrics` listener.
    pub metrics: Option<SocketAddr>,
    /// Optional Redis protocol (RESP) listener, TCP; see [`RespSettings`].
    pub resp: Option<SocketAddr>,
    /// Host certificate (PEM); default `<tls.dir>/host-<id>.pem`.
    pub cert: PathBuf,
    /// Host private key (PEM); default `<tls.dir>/host-<id>.key`.
    pub key: PathBuf,
}

impl ClusterConfig {
    /// Reads and validates `path`. Relative paths inside are resolved against the file's
    /// directory, so a config works the same whatever the current directory is.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, base_dir) = read_file(path)?;
        Self::parse(&text, base_dir, path)
    }

    /// Parses and validates `text` as if it were the file `origin`, resolving relative paths
    /// against `base_dir`. For tests and configs built in memory.
    pub fn parse(text: &str, base_dir: &Path, origin: &Path) -> Result<Self, ConfigError> {
        let raw = ClientConfig::read(text, origin)?;
        let cluster = ClientConfig::from_raw(&raw, base_dir, origin)?;
        let check = Checker { origin };
        let raft = validate::raft(&check, raw.raft.as_ref(), cluster.election_timeout)?;
        let storage = validate::storage(&check, raw.storage.as_ref())?;
        let mut hosts = validate::hosts(&check, base_dir, &cluster.tls, &cluster.hosts, &raw.host)?;
        let resp = resp::validate(&check, raw.resp.as_ref(), &raw.host, &mut hosts)?;
        Ok(ClusterConfig {
            cluster,
            raft,
            storage,
            hosts,
            resp,
        })
    }

    /// The host with this id, if listed.
    pub fn host(&self, id: HostId) -> Option<&HostConfig> {
        self.hosts.iter().find(|h| h.host.id == id)
    }

    /// Shards that have a replica on `host`, in shard order (see [`ClientConfig::placement`]).
    pub fn shards_of_host(&self, host: HostId) -> Vec<ShardId> {
        self.cluster
            .placement()
            .into_iter()
            .filter(|(_, hosts)| hosts.contains(&host))
            .map(|(s, _)| s)
            .collect()
    }

    /// Raft timing in ticks, as raft-rs wants it: `(election_tick, heartbeat_tick)`. Validation
    /// guarantees `election >= 3`, `heartbeat >= 1` and `election > heartbeat`.
    pub fn raft_ticks(&self) -> (usize, usize) {
        let tick = self.raft.tick.as_nanos().max(1);
        let ticks = |d: Duration| usize::try_from(d.as_nanos() / tick).unwrap_or(usize::MAX);
        (
            ticks(self.cluster.election_timeout).max(1),
            ticks(self.raft.heartbeat).max(1),
        )
    }

    /// Checks that the CA certificate and the certificate and key of `host` (or of every host
    /// when `None`) exist, so a daemon fails at start with the command that makes them rather
    /// than at its first TLS handshake.
    pub fn check_certs(&self, host: Option<HostId>) -> Result<(), ConfigError> {
        let missing = |what: String, file: &Path| -> Result<(), ConfigError> {
            if file.is_file() {
                Ok(())
            } else {
                Err(ConfigError::MissingCert {
                    what,
                    file: file.to_path_buf(),
                    config: self.cluster.path.clone(),
                })
            }
        };
        missing("CA certificate".into(), &self.cluster.tls.ca)?;
        let hosts: Vec<&HostConfig> = match host {
            None => self.hosts.iter().collect(),
            Some(id) => match self.host(id) {
                Some(h) => vec![h],
                None => {
                    return Err(ConfigError::UnknownHost {
                        path: self.cluster.path.clone(),
                        id,
                        known: self.hosts.iter().map(|h| h.host.id).collect(),
                    })
                }
            },
        };
        for h in hosts {
            missing(format!("host {} certificate", h.host.id), &h.cert)?;
            missing(format!("host {} key", h.host.id), &h.key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
