//! The Redis protocol front end's part of `cluster.toml`: `[[host]] resp = "IP:port"` (the
//! host's optional RESP listener) and the `[resp]` table (`tls`, `forward`).
//!
//! The shared schema (`shardkv_client::config::file`) reads these keys, so one file serves the
//! daemon and every client; only the daemon, which opens the listeners, validates them here.
//!
//! Guarantee once validated: every `resp` address is a concrete `IP:port`, distinct from every
//! other host's `resp` and from every `metrics` listener; `tls = false` only when every `resp`
//! address is a loopback one, since plaintext RESP carries no authentication at all.

use std::collections::BTreeMap;

use shardkv_client::config::file::{RawHost, RawResp};
use shardkv_client::config::{Checker, ConfigError};

use super::HostConfig;

/// `[resp]`: how every host's RESP listener behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespSettings {
    /// TLS with a client certificate of the cluster CA required (default). `false` (plaintext)
    /// is accepted only when every host's `resp` address is loopback.
    pub tls: bool,
    /// A host forwards a command for a shard it does not lead to the shard's leader and
    /// answers with the result, instead of redirecting with `-MOVED` (for clients that do not
    /// speak Redis Cluster). Default `false`.
    pub forward: bool,
}

impl Default for RespSettings {
    fn default() -> Self {
        RespSettings {
            tls: true,
            forward: false,
        }
    }
}

/// Validates `[resp]` (`raw`) and each `[[host]] resp` of `raw_hosts`, setting the
/// [`HostConfig::resp`] of `hosts` (the same hosts, in the same order).
pub(super) fn validate(
    check: &Checker<'_>,
    raw: Option<&RawResp>,
    raw_hosts: &[RawHost],
    hosts: &mut [HostConfig],
) -> Result<RespSettings, ConfigError> {
    let mut used = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        if let Some(m) = h.metrics {
            used.insert(m, format!("host[{i}].metrics"));
        }
    }
    for (i, host) in hosts.iter_mut().enumerate() {
        let Some(text) = raw_hosts.get(i).and_then(|h| h.resp.as_deref()) else {
            continue;
        };
        let field = format!("host[{i}].resp");
        let addr = check.socket_addr(&field, text)?;
        if let Some(first) = used.insert(addr, field.clone()) {
            return Err(check.invalid(
                field,
                format!("{addr} is already used by {first}"),
                "give every host its own RESP address (e.g. ports 6101, 6102, ...)",
            ));
        }
        host.resp = Some(addr);
    }
    let settings = RespSettings {
        tls: raw.and_then(|r| r.tls).unwrap_or(true),
        forward: raw.and_then(|r| r.forward).unwrap_or(false),
    };
    if !settings.tls {
        let exposed = hosts
            .iter()
            .enumerate()
            .find_map(|(i, h)| h.resp.filter(|a| !a.ip().is_loopback()).map(|a| (i, a)));
        if let Some((i, addr)) = exposed {
            return Err(check.invalid(
                "resp.tls",
                format!(
                    "is false, but host[{i}].resp {addr} is not a loopback address, and \
                     plaintext RESP has no authentication"
                ),
                "keep tls = true (clients present a certificate from `shardkv certs client \
                 NAME`), or bind every resp address to 127.0.0.1 or ::1",
            ));
        }
    }
    Ok(settings)
}

/// `settings` as the file writes them, for [`super::ClusterConfig::to_toml`]: no table when
/// no host has a listener and the settings are the defaults, as in a file without them.
pub(super) fn raw(settings: RespSettings, hosts: &[HostConfig]) -> Option<RawResp> {
    let used = hosts.iter().any(|h| h.resp.is_some()) || settings != RespSettings::default();
    used.then_some(RawResp {
        tls: Some(settings.tls),
        forward: Some(settings.forward),
    })
}
