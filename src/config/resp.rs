//! The Redis protocol front end's part of `cluster.toml`: `[[host]] resp = "IP:port"` (the
//! host's optional RESP listener) and the `[resp]` table (`tls`, `forward`).
//!
//! These keys are the daemon's alone (a shardkv client never dials a RESP listener), so they
//! are read here and taken out of the text before the shared schema
//! (`shardkv_client::config::file`, which rejects unknown fields) reads the rest. A file
//! without them goes to the shared schema untouched, so its syntax errors keep their lines
//! and columns.
//!
//! Guarantee once validated: every `resp` address is a concrete `IP:port`, distinct from every
//! other host's `resp` and from every `metrics` listener; `tls = false` only when every `resp`
//! address is a loopback one, since plaintext RESP carries no authentication at all.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
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

/// `[resp]` as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawResp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forward: Option<bool>,
}

/// The RESP keys of a file, taken out of it, and the text the shared schema reads.
pub(super) struct RespKeys {
    /// The file's text without the RESP keys (the text itself if it had none).
    pub rest: String,
    raw: RawResp,
    /// `[[host]] resp` of each host, in file order (shorter than the hosts if the file has
    /// none past some index).
    hosts: Vec<Option<String>>,
}

/// Takes the RESP keys out of `text`, the file `origin`. A file that is not valid TOML is
/// reported by the shared schema's reader, as for a file without RESP keys.
pub(super) fn take_keys(text: &str, origin: &Path) -> Result<RespKeys, ConfigError> {
    let syntax = |detail: toml::de::Error| ConfigError::Syntax {
        path: origin.to_path_buf(),
        detail,
    };
    let mut doc: toml::Table = match text.parse() {
        Ok(doc) => doc,
        Err(e) => {
            // The shared reader's message is the one every other syntax error shows.
            shardkv_client::ClientConfig::read(text, origin)?;
            return Err(syntax(e));
        }
    };
    let check = Checker { origin };
    let mut taken = false;
    let raw = match doc.remove("resp") {
        None => RawResp::default(),
        Some(value) => {
            taken = true;
            value.try_into().map_err(syntax)?
        }
    };
    let mut hosts = Vec::new();
    if let Some(toml::Value::Array(list)) = doc.get_mut("host") {
        for (i, host) in list.iter_mut().enumerate() {
            let resp = match host.as_table_mut().and_then(|t| t.remove("resp")) {
                None => None,
                Some(toml::Value::String(addr)) => Some(addr),
                Some(other) => {
                    return Err(check.invalid(
                        format!("host[{i}].resp"),
                        format!("{other} is not a string"),
                        "write it like resp = \"127.0.0.1:6101\"",
                    ))
                }
            };
            taken |= resp.is_some();
            hosts.push(resp);
        }
    }
    let rest = if taken {
        toml::to_string(&doc).map_err(|e| {
            check.invalid(
                "resp",
                format!("the file without its RESP keys cannot be written back: {e}"),
                "check the [[host]] tables and the [resp] table",
            )
        })?
    } else {
        text.to_string()
    };
    Ok(RespKeys { rest, raw, hosts })
}

/// Validates the RESP keys and sets each host's [`HostConfig::resp`].
pub(super) fn validate(
    check: &Checker<'_>,
    keys: &RespKeys,
    hosts: &mut [HostConfig],
) -> Result<RespSettings, ConfigError> {
    let mut used = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        if let Some(m) = h.metrics {
            used.insert(m, format!("host[{i}].metrics"));
        }
    }
    for (i, host) in hosts.iter_mut().enumerate() {
        let Some(text) = keys.hosts.get(i).and_then(|t| t.as_deref()) else {
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
        tls: keys.raw.tls.unwrap_or(true),
        forward: keys.raw.forward.unwrap_or(false),
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

/// Adds the RESP keys of `settings` and `hosts` to `doc`, the rendered shared schema, so
/// [`super::ClusterConfig::to_toml`] round-trips them.
pub(super) fn render(doc: &mut toml::Table, settings: RespSettings, hosts: &[HostConfig]) {
    let mut table = toml::Table::new();
    table.insert("tls".into(), toml::Value::Boolean(settings.tls));
    table.insert("forward".into(), toml::Value::Boolean(settings.forward));
    doc.insert("resp".into(), toml::Value::Table(table));
    if let Some(toml::Value::Array(list)) = doc.get_mut("host") {
        for (raw, host) in list.iter_mut().zip(hosts) {
            if let (Some(t), Some(addr)) = (raw.as_table_mut(), host.resp) {
                t.insert("resp".into(), toml::Value::String(addr.to_string()));
            }
        }
    }
}
