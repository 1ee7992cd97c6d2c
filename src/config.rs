//! `cluster.toml`: the one file that describes a cluster (DESIGN §4).
//!
//! Every host daemon, the CLI and the tests read the same file, so this module turns it into a
//! [`ClusterConfig`] that is *valid by construction*: once [`ClusterConfig::load`] returns `Ok`,
//! host ids are unique and non-zero, addresses parse and differ, every shard has exactly
//! `replicas` distinct known hosts, and the Raft timing is something raft-rs accepts. Callers do
//! not re-check any of that.
//!
//! Errors name the field (`host[1].addr`, `raft.election_timeout`), give the reason and say what
//! to do. Certificate files are deliberately *not* checked while parsing, because
//! `shardkv certs init` itself needs a parsed config; [`ClusterConfig::check_certs`] does that
//! when a daemon or client is about to use them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Identifies a host (one daemon, one LMDB environment). Doubles as the Raft peer id, which is
/// why 0 — reserved by Raft for "no node" — is rejected.
pub type HostId = u64;

/// Identifies a shard (one Raft group); shards are numbered `1..=shards`.
pub type ShardId = u32;

/// Most shards a cluster may declare; a limit so placement and per-shard state stay bounded.
pub const SHARDS_MAX: u32 = 16_384;
const _: () = assert!(SHARDS_MAX as usize <= shardkv_actors::SHARDS_PER_HOST_MAX);

/// Default and bounds for `cluster.max_value_bytes`.
pub const MAX_VALUE_BYTES_DEFAULT: usize = 1 << 20;
/// Upper bound for `cluster.max_value_bytes`: values ride whole in one Raft entry and one frame.
pub const MAX_VALUE_BYTES_LIMIT: usize = 64 << 20;

/// Default LMDB map size (64 GiB): address space only, not disk, on 64-bit hosts.
pub const MAP_SIZE_DEFAULT: u64 = 64 << 30;
/// Smallest LMDB map size accepted (1 MiB); anything smaller cannot hold a useful shard.
pub const MAP_SIZE_MIN: u64 = 1 << 20;

/// The sample `cluster.toml` committed at the repository root (three hosts on loopback).
/// Kept here so tests and `--help` texts can show a config known to parse.
pub const SAMPLE: &str = include_str!("../cluster.toml");

const ORIGIN_INLINE: &str = "<inline>";

/// A parsed and validated `cluster.toml`.
///
/// Guarantee: every value has passed the checks listed in the module docs; all paths are
/// resolved against the directory of the file they came from (absolute if that was absolute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Cluster name; appears in the CA's subject so certificates of two clusters are told apart.
    pub name: String,
    /// Number of shards (Raft groups), numbered `1..=shards`.
    pub shards: u32,
    /// Replicas per shard; always `<=` the number of hosts.
    pub replicas: u32,
    /// Largest value a client may write, in bytes (`1..=64 MiB`, default 1 MiB).
    pub max_value_bytes: usize,
    /// Raft timing and snapshot policy.
    pub raft: RaftSettings,
    /// Where the cluster's TLS material lives.
    pub tls: TlsSettings,
    /// LMDB settings.
    pub storage: StorageSettings,
    /// Hosts in file order; ids are unique and non-zero.
    pub hosts: Vec<HostConfig>,
    /// Explicit placements for some shards (`[[shard]]`); the rest are placed round-robin.
    pub pins: Vec<ShardPin>,
    /// The file this came from, or `<inline>`; used in messages (`run ... --config <path>`).
    pub path: PathBuf,
}

/// Raft timing. Guarantee: `tick > 0`, `heartbeat >= tick`, `election_timeout > heartbeat`,
/// `election_timeout >= 3 * tick`, and in whole ticks election > heartbeat (raft-rs requires it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftSettings {
    /// Period of the Raft logical clock.
    pub tick: Duration,
    /// Base election timeout (raft-rs randomises within `[1, 2)` times this).
    pub election_timeout: Duration,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Applied entries between snapshots; at least 1.
    pub snapshot_after: u64,
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

/// LMDB environment settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// LMDB map size in bytes (at least 1 MiB).
    pub map_size: u64,
}

/// One host: where it listens, where it keeps data, and which certificate proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Host id, also its Raft peer id; never 0.
    pub id: HostId,
    /// QUIC listen and advertise address; a concrete IP and non-zero port, unique in the cluster.
    pub addr: SocketAddr,
    /// Directory of the host's LMDB environment.
    pub data_dir: PathBuf,
    /// Optional HTTP `/metrics` listener.
    pub metrics: Option<SocketAddr>,
    /// Host certificate (PEM); default `<tls.dir>/host-<id>.pem`.
    pub cert: PathBuf,
    /// Host private key (PEM); default `<tls.dir>/host-<id>.key`.
    pub key: PathBuf,
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

/// Why a `cluster.toml` could not be used. Each variant carries the file and says what to do.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read cluster config {}: {source}; check the path given with --config", path.display())]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Not valid TOML, or a field is unknown or of the wrong type. `detail` (toml's own message)
    /// shows the line, the column and the offending text.
    #[error("{}: {detail}", path.display())]
    Syntax {
        /// The file being parsed.
        path: PathBuf,
        /// toml's error, with line and column.
        detail: toml::de::Error,
    },
    /// Well-formed TOML whose content breaks a rule.
    #[error("{}: {field}: {reason}; {hint}", path.display())]
    Invalid {
        /// The file being parsed.
        path: PathBuf,
        /// Dotted path of the offending field, e.g. `host[1].addr` (0-based array index).
        field: String,
        /// What is wrong.
        reason: String,
        /// What to do about it.
        hint: String,
    },
    /// A host id asked for (e.g. `--host 7`) is not in the file.
    #[error("{}: no [[host]] with id {id}; use one of {known:?}", path.display())]
    UnknownHost {
        /// The config file.
        path: PathBuf,
        /// The id asked for.
        id: HostId,
        /// Ids that do exist.
        known: Vec<HostId>,
    },
    /// A certificate or key the config points at does not exist yet.
    #[error("{what} {} is missing; run `shardkv certs init --config {}`", file.display(), config.display())]
    MissingCert {
        /// Which file, e.g. "CA certificate" or "host 2 key".
        what: String,
        /// Where it should be.
        file: PathBuf,
        /// The config file, for the command in the hint.
        config: PathBuf,
    },
}

// ---------------------------------------------------------------------------------------------
// The file as written. Deserialised first, then validated into the public types above. Integers
// are read as i64 so a negative number gets our message rather than a type error.

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: RawCluster,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raft: Option<RawRaft>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls: Option<RawTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    storage: Option<RawStorage>,
    #[serde(default)]
    host: Vec<RawHost>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    shard: Vec<RawPin>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    shards: i64,
    replicas: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_value_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRaft {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tick: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    election_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    heartbeat: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot_after: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    map_size: Option<RawSize>,
}

/// `map_size = 68719476736` or `map_size = "64GiB"`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    id: i64,
    addr: String,
    data_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPin {
    id: i64,
    hosts: Vec<i64>,
}

/// Builds [`ConfigError::Invalid`] for one file.
struct Checker<'a> {
    origin: &'a Path,
}

impl Checker<'_> {
    fn invalid(
        &self,
        field: impl Into<String>,
        reason: impl Into<String>,
        hint: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
            hint: hint.into(),
        }
    }

    fn duration(
        &self,
        field: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(text) = text else {
            return Ok(default);
        };
        humantime::parse_duration(text).map_err(|e| {
            self.invalid(
                field,
                format!("cannot parse {text:?} as a duration ({e})"),
                "write it like \"100ms\", \"1s\" or \"1m 30s\"",
            )
        })
    }

    fn socket_addr(&self, field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        let addr: SocketAddr = text.parse().map_err(|_| {
            self.invalid(
                field,
                format!("{text:?} is not an IP:port address"),
                "write it like \"127.0.0.1:7101\" or \"[::1]:7101\" (host names are not resolved)",
            )
        })?;
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(self.invalid(
                field,
                format!("{addr} is not a concrete address"),
                "peers and clients dial this address, so give a reachable IP and a non-zero port",
            ));
        }
        Ok(addr)
    }
}

fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// Parses `"64GiB"`, `"512 MiB"`, `"1048576"` or `"4096B"` into bytes; `None` if malformed or
/// if it overflows u64.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return None;
    }
    let number: u64 = digits.parse().ok()?;
    let shift = match suffix.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

impl ClusterConfig {
    /// Reads and validates `path`. Relative paths inside are resolved against the file's
    /// directory, so a config works the same whatever the current directory is.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new(""));
        Self::parse(&text, base_dir, path)
    }

    /// Parses and validates `text` as if it were the file `origin`, resolving relative paths
    /// against `base_dir`. For tests and configs built in memory (`origin` may be `<inline>`).
    pub fn parse(text: &str, base_dir: &Path, origin: &Path) -> Result<Self, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|detail| ConfigError::Syntax {
            path: origin.to_path_buf(),
            detail,
        })?;
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
        let max_value_bytes = match raw.cluster.max_value_bytes {
            None => MAX_VALUE_BYTES_DEFAULT,
            Some(n) => match usize::try_from(n) {
                Ok(n) if (1..=MAX_VALUE_BYTES_LIMIT).contains(&n) => n,
                _ => {
                    return Err(check.invalid(
                        "cluster.max_value_bytes",
                        format!("{n} is out of range"),
                        format!("use 1..={MAX_VALUE_BYTES_LIMIT} (64 MiB), or omit it for 1 MiB"),
                    ))
                }
            },
        };

        let raft = Self::validate_raft(&check, raw.raft.unwrap_or_default())?;

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

        // [storage]
        let map_size = match raw.storage.and_then(|s| s.map_size) {
            None => MAP_SIZE_DEFAULT,
            Some(size) => {
                let (shown, bytes) = match size {
                    RawSize::Bytes(n) => (n.to_string(), u64::try_from(n).ok()),
                    RawSize::Text(t) => (format!("{t:?}"), parse_size(&t)),
                };
                match bytes {
                    Some(b) if b >= MAP_SIZE_MIN => b,
                    Some(_) => {
                        return Err(check.invalid(
                            "storage.map_size",
                            format!("{shown} is below the 1 MiB minimum"),
                            "use e.g. \"64GiB\"; it reserves address space, not disk",
                        ))
                    }
                    None => {
                        return Err(check.invalid(
                            "storage.map_size",
                            format!("cannot parse {shown} as a size"),
                            "give bytes as an integer or a string like \"64GiB\" (B, KiB, MiB, GiB, TiB)",
                        ))
                    }
                }
            }
        };
        let storage = StorageSettings { map_size };

        let hosts = Self::validate_hosts(&check, base_dir, &tls, raw.host)?;
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
        let pins = Self::validate_pins(&check, shards, replicas, &hosts, raw.shard)?;

        Ok(ClusterConfig {
            name,
            shards,
            replicas,
            max_value_bytes,
            raft,
            tls,
            storage,
            hosts,
            pins,
            path: origin.to_path_buf(),
        })
    }

    fn validate_raft(check: &Checker<'_>, raw: RawRaft) -> Result<RaftSettings, ConfigError> {
        let tick = check.duration("raft.tick", raw.tick.as_deref(), Duration::from_millis(100))?;
        let election_timeout = check.duration(
            "raft.election_timeout",
            raw.election_timeout.as_deref(),
            Duration::from_secs(1),
        )?;
        let heartbeat = check.duration(
            "raft.heartbeat",
            raw.heartbeat.as_deref(),
            Duration::from_millis(100),
        )?;
        if tick.is_zero() {
            return Err(check.invalid(
                "raft.tick",
                "is zero",
                "use a positive period such as \"100ms\"",
            ));
        }
        if heartbeat < tick {
            return Err(check.invalid(
                "raft.heartbeat",
                format!(
                    "{} is shorter than raft.tick ({})",
                    humantime::format_duration(heartbeat),
                    humantime::format_duration(tick)
                ),
                "a heartbeat is sent on a tick, so make it at least one tick",
            ));
        }
        if election_timeout <= heartbeat {
            return Err(check.invalid(
                "raft.election_timeout",
                format!(
                    "{} is not longer than raft.heartbeat ({})",
                    humantime::format_duration(election_timeout),
                    humantime::format_duration(heartbeat)
                ),
                "make it several heartbeats long (e.g. 10x) so a live leader is not deposed",
            ));
        }
        let election_ticks = election_timeout.as_nanos() / tick.as_nanos();
        let heartbeat_ticks = heartbeat.as_nanos() / tick.as_nanos();
        if election_ticks < 3 || election_ticks <= heartbeat_ticks {
            return Err(check.invalid(
                "raft.election_timeout",
                format!(
                    "{} is {election_ticks} tick(s) of {}, heartbeat is {heartbeat_ticks}",
                    humantime::format_duration(election_timeout),
                    humantime::format_duration(tick)
                ),
                "it must be at least 3 ticks and more whole ticks than the heartbeat",
            ));
        }
        let snapshot_after = match raw.snapshot_after {
            None => 10_000,
            Some(n) => match u64::try_from(n) {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(check.invalid(
                        "raft.snapshot_after",
                        format!("{n} is out of range"),
                        "use a positive number of applied entries, e.g. 10000",
                    ))
                }
            },
        };
        Ok(RaftSettings {
            tick,
            election_timeout,
            heartbeat,
            snapshot_after,
        })
    }

    fn validate_hosts(
        check: &Checker<'_>,
        base_dir: &Path,
        tls: &TlsSettings,
        raw: Vec<RawHost>,
    ) -> Result<Vec<HostConfig>, ConfigError> {
        if raw.is_empty() {
            return Err(check.invalid(
                "host",
                "no [[host]] entries",
                "add one [[host]] table per daemon with id, addr and data_dir",
            ));
        }
        let mut hosts: Vec<HostConfig> = Vec::with_capacity(raw.len());
        // Value -> index of the first host that used it, to name both in the message.
        let mut ids = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        let mut metrics_addrs = BTreeMap::new();
        let mut files = BTreeMap::new();
        for (i, h) in raw.into_iter().enumerate() {
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
            let metrics = match h.metrics.as_deref() {
                None => None,
                Some(text) => {
                    let field = format!("host[{i}].metrics");
                    let m = check.socket_addr(&field, text)?;
                    if let Some(first) = metrics_addrs.insert(m, i) {
                        return Err(check.invalid(
                            field,
                            format!("{m} is already used by host[{first}]"),
                            "give every host its own metrics address, or omit it",
                        ));
                    }
                    Some(m)
                }
            };
            if h.data_dir.trim().is_empty() {
                return Err(check.invalid(
                    format!("host[{i}].data_dir"),
                    "is empty",
                    format!("name a directory, e.g. data_dir = \"data/host-{id}\""),
                ));
            }
            let data_dir = resolve(base_dir, &h.data_dir);
            let cert = match h.cert.as_deref() {
                Some(p) => resolve(base_dir, p),
                None => tls.dir.join(format!("host-{id}.pem")),
            };
            let key = match h.key.as_deref() {
                Some(p) => resolve(base_dir, p),
                None => tls.dir.join(format!("host-{id}.key")),
            };
            // `certs init` writes each of these files; two owners for one file would leave one
            // host with the other's identity.
            for (field, file) in [("cert", &cert), ("key", &key)] {
                let name = format!("host[{i}].{field}");
                if *file == tls.ca || *file == tls.ca_key {
                    return Err(check.invalid(
                        name,
                        format!("{} is the CA's file", file.display()),
                        "give each host its own certificate and key files",
                    ));
                }
                if let Some(first) = files.insert(file.clone(), name.clone()) {
                    return Err(check.invalid(
                        name,
                        format!("{} is already used by {first}", file.display()),
                        "give each host its own certificate and key files",
                    ));
                }
            }
            hosts.push(HostConfig {
                id,
                addr,
                data_dir,
                metrics,
                cert,
                key,
            });
        }
        Ok(hosts)
    }

    fn validate_pins(
        check: &Checker<'_>,
        shards: u32,
        replicas: u32,
        hosts: &[HostConfig],
        raw: Vec<RawPin>,
    ) -> Result<Vec<ShardPin>, ConfigError> {
        let mut pins: Vec<ShardPin> = Vec::with_capacity(raw.len());
        let mut seen = BTreeMap::new();
        for (i, p) in raw.into_iter().enumerate() {
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

    /// The host with this id, if listed.
    pub fn host(&self, id: HostId) -> Option<&HostConfig> {
        self.hosts.iter().find(|h| h.id == id)
    }

    /// Every shard `1..=shards` with its replica hosts, in shard order. Pinned shards use their
    /// pin; the rest are round-robin over hosts sorted by id: shard `s` gets
    /// `hosts[(s - 1 + r) % n]` for `r in 0..replicas`. Deterministic: every process that reads
    /// the same file computes the same placement.
    pub fn placement(&self) -> Vec<(ShardId, Vec<HostId>)> {
        (1..=self.shards)
            .map(|s| (s, self.shard_hosts(s)))
            .collect()
    }

    /// Replica hosts of one shard (see [`ClusterConfig::placement`]); empty if `shard` is not in
    /// `1..=shards`.
    pub fn shard_hosts(&self, shard: ShardId) -> Vec<HostId> {
        if !(1..=self.shards).contains(&shard) {
            return Vec::new();
        }
        if let Some(pin) = self.pins.iter().find(|p| p.id == shard) {
            return pin.hosts.clone();
        }
        let mut ids: Vec<HostId> = self.hosts.iter().map(|h| h.id).collect();
        ids.sort_unstable();
        let n = ids.len();
        (0..self.replicas as usize)
            .map(|r| ids[(shard as usize - 1 + r) % n])
            .collect()
    }

    /// Shards that have a replica on `host`, in shard order.
    pub fn shards_of_host(&self, host: HostId) -> Vec<ShardId> {
        self.placement()
            .into_iter()
            .filter(|(_, hosts)| hosts.contains(&host))
            .map(|(s, _)| s)
            .collect()
    }

    /// Certificate and key of client `name`: `(<tls.dir>/client-<name>.pem, .key)`.
    pub fn client_cert_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.tls.dir.join(format!("client-{name}.pem")),
            self.tls.dir.join(format!("client-{name}.key")),
        )
    }

    /// Raft timing in ticks, as raft-rs wants it: `(election_tick, heartbeat_tick)`. Validation
    /// guarantees `election >= 3`, `heartbeat >= 1` and `election > heartbeat`.
    pub fn raft_ticks(&self) -> (usize, usize) {
        let tick = self.raft.tick.as_nanos().max(1);
        let ticks = |d: Duration| usize::try_from(d.as_nanos() / tick).unwrap_or(usize::MAX);
        (
            ticks(self.raft.election_timeout).max(1),
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
                    config: self.path.clone(),
                })
            }
        };
        missing("CA certificate".into(), &self.tls.ca)?;
        let hosts: Vec<&HostConfig> = match host {
            None => self.hosts.iter().collect(),
            Some(id) => match self.host(id) {
                Some(h) => vec![h],
                None => {
                    return Err(ConfigError::UnknownHost {
                        path: self.path.clone(),
                        id,
                        known: self.hosts.iter().map(|h| h.id).collect(),
                    })
                }
            },
        };
        for h in hosts {
            missing(format!("host {} certificate", h.id), &h.cert)?;
            missing(format!("host {} key", h.id), &h.key)?;
        }
        Ok(())
    }

    /// Renders this config as `cluster.toml` text that [`ClusterConfig::parse`] turns back into
    /// an equal config (apart from `path`). Paths are written as stored, i.e. already resolved;
    /// defaults are written out explicitly. Tests use it to write configs for spawned daemons.
    pub fn to_toml(&self) -> String {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let raw = RawFile {
            cluster: RawCluster {
                name: self.name.clone(),
                shards: i64::from(self.shards),
                replicas: i64::from(self.replicas),
                max_value_bytes: Some(self.max_value_bytes as i64),
            },
            raft: Some(RawRaft {
                tick: Some(humantime::format_duration(self.raft.tick).to_string()),
                election_timeout: Some(
                    humantime::format_duration(self.raft.election_timeout).to_string(),
                ),
                heartbeat: Some(humantime::format_duration(self.raft.heartbeat).to_string()),
                snapshot_after: Some(i64::try_from(self.raft.snapshot_after).unwrap_or(i64::MAX)),
            }),
            tls: Some(RawTls {
                ca: Some(path(&self.tls.ca)),
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
                    id: i64::try_from(h.id).unwrap_or(i64::MAX),
                    addr: h.addr.to_string(),
                    data_dir: path(&h.data_dir),
                    metrics: h.metrics.map(|m| m.to_string()),
                    cert: Some(path(&h.cert)),
                    key: Some(path(&h.key)),
                })
                .collect(),
            shard: self
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
        };
        // ok: RawFile has only strings, integers, tables and arrays of tables, which TOML
        // can always represent; serialisation cannot fail.
        toml::to_string(&raw)
            .expect("RawFile holds only strings, integers, tables and arrays of tables")
    }

    /// A config parsed from `text` with no file behind it: paths resolve against `base_dir` and
    /// messages say `<inline>`.
    pub fn parse_inline(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        Self::parse(text, base_dir, Path::new(ORIGIN_INLINE))
    }
}

#[cfg(test)]
mod tests;
