//! Why a `cluster.toml` could not be used, and the checks that say so.
//!
//! Errors name the field (`host[1].addr`, `raft.election_timeout`), give the reason and say
//! what to do. [`Checker`] is shared by the client's validation and the daemon's, so both
//! phrase the same mistake the same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shardkv_transport::HostId;

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

/// Builds [`ConfigError::Invalid`] for one file.
pub struct Checker<'a> {
    /// The file being checked, named in every error.
    pub origin: &'a Path,
}

impl Checker<'_> {
    /// A [`ConfigError::Invalid`] for `field` of this file.
    pub fn invalid(
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

    /// Parses an optional humantime duration (`"100ms"`), `default` when absent.
    pub fn duration(
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

    /// Parses a concrete `IP:port` that peers and clients can dial.
    pub fn socket_addr(&self, field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
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

/// `path` as written in the file, resolved against the file's directory unless absolute.
pub fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}
