//! What a client needs from `cluster.toml`: the hosts and their addresses, the shards and
//! where their replicas live, the TLS files, and the limits the hosts enforce.
//!
//! [`ClientConfig::load`] reads the same file the daemons read (one schema, [`mod@file`]) and
//! validates the parts a client uses; once it returns `Ok`, host ids are unique and non-zero,
//! addresses parse and differ, every shard has exactly `replicas` distinct known hosts, and the
//! value limit is in range. Host-only settings (data directories, Raft timing beyond the
//! election timeout, LMDB) are the daemon's to check. Certificate files are not opened here:
//! the first connection reports a missing one.

pub mod error;
pub mod file;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shardkv_transport::wire::{VALUE_BYTES_MAX_CEILING, VALUE_BYTES_MAX_DEFAULT};
use shardkv_transport::{HostId, Layout, ShardId};

pub use error::{resolve, Checker, ConfigError};
use file::{RawFile, RawHost, RawPin};

/// Most shards a cluster may declare; a limit so placement and per-shard state stay bounded.
pub const SHARDS_MAX: u32 = 16_384;

/// `raft.election_timeout` when the file does not set it.
pub const ELECTION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

/// The client's view of a cluster, validated (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Cluster name; appears in the CA's subject so certificates of two clusters are told apart.
    pub name: String,
    /// Number of shards (Raft groups), numbered `1..=shards`.
    pub shards: u32,
    /// Replicas per shard; always `<=` the number of hosts.
    pub replicas: u32,
    /// Largest value a client may write, in bytes (`cluster.max_value_bytes`: `1..=64 MiB`,
    /// default 1 MiB).
    pub value_bytes_max: usize,
    /// Base Raft election timeout: how long a shard may be without a leader after a host
    /// dies, so a client sizes its per-attempt timeout from it.
    pub election_timeout: Duration,
    /// Where the cluster's TLS material lives.
    pub tls: TlsSettings,
    /// Hosts in file order; ids are unique and non-zero.
    pub hosts: Vec<HostAddr>,
    /// Explicit placements for some shards (`[[shard]]`); the rest are placed round-robin.
    pub pins: Vec<ShardPin>,
    /// The file this came from; used in messages.
    pub path: PathBuf,
}

/// One host as a client sees it: who it is and where to dial it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostAddr {
    /// Host id, also its Raft peer id; never 0.
    pub id: HostId,
    /// QUIC address; a concrete IP and non-zero port, unique in the cluster.
    pub addr: SocketAddr,
}

/// TLS material locations. The CA key sits beside the CA certificate with extension `.key`;
/// client certificates live in [`TlsSettings::dir`] as `client-<name>.pem` / `.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// CA certificate (PEM), trusted by every host and client.
    pub ca: PathBuf,
    /// CA private key (PEM); only `shardkv certs` reads it.
    pub ca_key: PathBuf,
    /// Directory of `ca`; default home of host and client certificates.
    pub dir: PathBuf,
}

impl TlsSettings {
    /// Certificate and key of client `name`: `(<dir>/client-<name>.pem, .key)`.
    pub fn client_cert_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("client-{name}.pem")),
            self.dir.join(format!("client-{name}.key")),
        )
    }
}

/// A pinned placement for one shard. Guarantee: `id` in `1..=shards`, `hosts` are `replicas`
/// distinct known host ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPin {
    /// The pinned shard.
    pub id: ShardId,
    /// Its replica hosts, in the order written.
    pub hosts: Vec<HostId>,
}

/// Replica hosts of `shard` in a cluster of `shards` shards with `replicas` replicas each:
/// its pin if it has one, else `ids[(shard - 1 + r) % n]` for `r in 0..replicas` over the host
/// ids sorted. Deterministic, so every process that reads the same file agrees; empty if
/// `shard` is not in `1..=shards` or there are no hosts.
pub fn replica_hosts(
    shard: ShardId,
    shards: u32,
    replicas: u32,
    host_ids: impl IntoIterator<Item = HostId>,
    pins: &[ShardPin],
) -> Vec<HostId> {
    if !(1..=shards).contains(&shard) {
        return Vec::new();
    }
    if let Some(pin) = pins.iter().find(|p| p.id == shard) {
        return pin.hosts.clone();
    }
    let mut ids: Vec<HostId> = host_ids.into_iter().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    ids.sort_unstable();
    let n = ids.len();
    (0..replicas as usize)
        .map(|r| ids[(shard as usize - 1 + r) % n])
        .collect()
}

/// The text of the config file `path` and the directory its relative paths resolve against
/// (the file's own, so a config works the same whatever the current directory is). Every
/// loader of `cluster.toml` reads it this way.
pub fn read_file(path: &Path) -> Result<(String, &Path), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((text, path.parent().unwrap_or(Path::new(""))))
}

impl ClientConfig {
    /// Reads and validates `path`, resolving relative paths inside as [`read_file`] says.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, base_dir) = read_file(path)?;
        let raw = Self::read(&text, path)?;
        Self::from_raw(&raw, base_dir, path)
    }

    /// Parses `text` as the file `origin` into the unvalidated schema (syntax and unknown
    /// fields are reported here, with line and column).
    pub fn read(text: &str, origin: &Path) -> Result<RawFile, ConfigError> {
        toml::from_str(text).map_err(|detail| ConfigError::Syntax {
            path: origin.to_path_buf(),
            detail,
        })
    }

    /// Validates the client's part of `raw`, read from `origin`, resolving relative paths
    /// against `base_dir`.
    pub fn from_raw(raw: &RawFile, base_dir: &Path, origin: &Path) -> Result<Self, ConfigError> {
        let check = Checker { origin };

        // [cluster]
        let name = raw.cluster.name.trim().to_string();
        if name.is_empty() {
            return Err(check.invalid(
                "cluster.name",
                "is empty",
                "name the cluster, e.g. name = \"local\"; it goes into the CA certificate",
            ));
        }
        let shards = match u32::try_from(raw.cluster.shards) {
            Ok(n) if (1..=SHARDS_MAX).contains(&n) => n,
            _ => {
                return Err(check.invalid(
                    "cluster.shards",
                    format!("{} is out of range", raw.cluster.shards),
                    format!("use 1..={SHARDS_MAX}"),
                ))
            }
        };
        let replicas = match u32::try_from(raw.cluster.replicas) {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(check.invalid(
                    "cluster.replicas",
                    format!("{} is out of range", raw.cluster.replicas),
                    "use at least 1 (3 tolerates one host failure)",
                ))
            }
        };
        let value_bytes_max = match raw.cluster.max_value_bytes {
            None => VALUE_BYTES_MAX_DEFAULT,
            Some(n) => match usize::try_from(n) {
                Ok(n) if (1..=VALUE_BYTES_MAX_CEILING).contains(&n) => n,
                _ => {
                    return Err(check.invalid(
                        "cluster.max_value_bytes",
                        format!("{n} is out of range"),
                        format!("use 1..={VALUE_BYTES_MAX_CEILING} (64 MiB), or omit it for 1 MiB"),
                    ))
                }
            },
        };
        let election_timeout = check.duration(
            "raft.election_timeout",
            raw.raft
                .as_ref()
                .and_then(|r| r.election_timeout.as_deref()),
            ELECTION_TIMEOUT_DEFAULT,
        )?;

        // [tls]
        let ca = resolve(
            base_dir,
            raw.tls
                .as_ref()
                .and_then(|t| t.ca.as_deref())
                .unwrap_or("certs/ca.pem"),
        );
        let ca_key = ca.with_extension("key");
        if ca_key == ca || ca.file_name().is_none() {
            return Err(check.invalid(
                "tls.ca",
                format!("{} cannot be the CA certificate", ca.display()),
                "name a .pem file, e.g. ca = \"certs/ca.pem\"; its key is the same path ending in .key",
            ));
        }
        let dir = ca.parent().map(Path::to_path_buf).unwrap_or_default();
        let tls = TlsSettings { ca, ca_key, dir };

        let hosts = validate_hosts(&check, &raw.host)?;
        if replicas as usize > hosts.len() {
            return Err(check.invalid(
                "cluster.replicas",
                format!(
                    "{replicas} replicas but only {} host(s) listed",
                    hosts.len()
                ),
                "add [[host]] entries or lower cluster.replicas",
            ));
        }
        let pins = validate_pins(&check, shards, replicas, &hosts, &raw.shard)?;
        Ok(ClientConfig {
            name,
            shards,
            replicas,
            value_bytes_max,
            election_timeout,
            tls,
            hosts,
            pins,
            path: origin.to_path_buf(),
        })
    }

    /// Replica hosts of one shard (see [`replica_hosts`]).
    pub fn shard_hosts(&self, shard: ShardId) -> Vec<HostId> {
        replica_hosts(
            shard,
            self.shards,
            self.replicas,
            self.hosts.iter().map(|h| h.id),
            &self.pins,
        )
    }

    /// The layout this file declares, with the placement computed from its host list. A
    /// cluster keeps the placement it was bootstrapped with; see [`Layout`].
    pub fn declared_layout(&self) -> Layout {
        let mut pins: Vec<(ShardId, Vec<HostId>)> =
            self.pins.iter().map(|p| (p.id, p.hosts.clone())).collect();
        pins.sort_unstable();
        Layout {
            shards: self.shards,
            replicas: self.replicas,
            pins,
            placement: self.placement(),
        }
    }

    /// Every shard `1..=shards` with its replica hosts, in shard order.
    pub fn placement(&self) -> Vec<(ShardId, Vec<HostId>)> {
        (1..=self.shards)
            .map(|s| (s, self.shard_hosts(s)))
            .collect()
    }
}

/// Ids and addresses of `[[host]]`: ids non-zero and unique, addresses concrete and unique.
fn validate_hosts(check: &Checker<'_>, raw: &[RawHost]) -> Result<Vec<HostAddr>, ConfigError> {
    if raw.is_empty() {
        return Err(check.invalid(
            "host",
            "no [[host]] entries",
            "add one [[host]] table per daemon with id, addr and data_dir",
        ));
    }
    let mut hosts = Vec::with_capacity(raw.len());
    // Value -> index of the first host that used it, to name both in the message.
    let mut ids = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for (i, h) in raw.iter().enumerate() {
        let id = match HostId::try_from(h.id) {
            Ok(id) if id != 0 => id,
            _ => {
                return Err(check.invalid(
                    format!("host[{i}].id"),
                    format!("{} is not a valid host id", h.id),
                    "use a positive integer; Raft reserves 0 for \"no node\"",
                ))
            }
        };
        if let Some(first) = ids.insert(id, i) {
            return Err(check.invalid(
                format!("host[{i}].id"),
                format!("id {id} is already used by host[{first}]"),
                "give every host a distinct id",
            ));
        }
        let addr = check.socket_addr(&format!("host[{i}].addr"), &h.addr)?;
        if let Some(first) = addrs.insert(addr, i) {
            return Err(check.invalid(
                format!("host[{i}].addr"),
                format!("{addr} is already used by host[{first}]"),
                "give every host its own address",
            ));
        }
        hosts.push(HostAddr { id, addr });
    }
    Ok(hosts)
}

/// `[[shard]]` pins: existing shards, each pinned once, to `replicas` distinct known hosts.
fn validate_pins(
    check: &Checker<'_>,
    shards: u32,
    replicas: u32,
    hosts: &[HostAddr],
    raw: &[RawPin],
) -> Result<Vec<ShardPin>, ConfigError> {
    let mut pins: Vec<ShardPin> = Vec::with_capacity(raw.len());
    let mut seen = BTreeMap::new();
    for (i, p) in raw.iter().enumerate() {
        let id = match ShardId::try_from(p.id) {
            Ok(id) if (1..=shards).contains(&id) => id,
            _ => {
                return Err(check.invalid(
                    format!("shard[{i}].id"),
                    format!("shard {} does not exist", p.id),
                    format!("pin one of shards 1..={shards} (cluster.shards)"),
                ))
            }
        };
        if let Some(first) = seen.insert(id, i) {
            return Err(check.invalid(
                format!("shard[{i}].id"),
                format!("shard {id} is already pinned by shard[{first}]"),
                "keep one [[shard]] table per shard",
            ));
        }
        let field = format!("shard[{i}].hosts");
        let mut distinct = BTreeSet::new();
        let mut pinned = Vec::with_capacity(p.hosts.len());
        for &h in &p.hosts {
            let known = HostId::try_from(h)
                .ok()
                .filter(|&h| hosts.iter().any(|c| c.id == h));
            let Some(h) = known else {
                return Err(check.invalid(
                    field,
                    format!("host {h} is not a [[host]] in this file"),
                    format!(
                        "use ids of listed hosts: {:?}",
                        hosts.iter().map(|c| c.id).collect::<Vec<_>>()
                    ),
                ));
            };
            if !distinct.insert(h) {
                return Err(check.invalid(
                    field,
                    format!("host {h} is listed twice"),
                    "a shard holds at most one replica per host",
                ));
            }
            pinned.push(h);
        }
        if pinned.len() != replicas as usize {
            return Err(check.invalid(
                field,
                format!("{} host(s) for shard {id}", pinned.len()),
                format!("list exactly cluster.replicas = {replicas} hosts"),
            ));
        }
        pins.push(ShardPin { id, hosts: pinned });
    }
    Ok(pins)
}

#[cfg(test)]
mod tests;
