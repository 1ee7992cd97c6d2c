//! The daemon's part of `cluster.toml` validation: Raft timing, LMDB, and each host's data
//! directory, metrics listener and certificate files. The client's part (cluster, TLS, host
//! ids and addresses, pins) runs first, in `shardkv_client::config`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use shardkv_client::config::file::{RawHost, RawRaft, RawSize, RawStorage};
use shardkv_client::config::{resolve, Checker, ConfigError, HostAddr, TlsSettings};

use super::{HostConfig, RaftSettings, StorageSettings, MAP_SIZE_DEFAULT, MAP_SIZE_MIN};

/// `[raft]`: `election_timeout` was already read by the client's part of the validation and is
/// kept there; it is passed in to be checked against the tick and heartbeat.
pub(super) fn raft(
    check: &Checker<'_>,
    raw: Option<&RawRaft>,
    election_timeout: Duration,
) -> Result<RaftSettings, ConfigError> {
    let empty = RawRaft::default();
    let raw = raw.unwrap_or(&empty);
    let tick = check.duration("raft.tick", raw.tick.as_deref(), Duration::from_millis(100))?;
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
        heartbeat,
        snapshot_after,
        hibernate: raw.hibernate.unwrap_or(true),
    })
}

/// `[storage]`.
pub(super) fn storage(
    check: &Checker<'_>,
    raw: Option<&RawStorage>,
) -> Result<StorageSettings, ConfigError> {
    let map_size = match raw.and_then(|s| s.map_size.as_ref()) {
        None => MAP_SIZE_DEFAULT,
        Some(size) => {
            let (shown, bytes) = match size {
                RawSize::Bytes(n) => (n.to_string(), u64::try_from(*n).ok()),
                RawSize::Text(t) => (format!("{t:?}"), parse_size(t)),
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
                None => return Err(check.invalid(
                    "storage.map_size",
                    format!("cannot parse {shown} as a size"),
                    "give bytes as an integer or a string like \"64GiB\" (B, KiB, MiB, GiB, TiB)",
                )),
            }
        }
    };
    Ok(StorageSettings { map_size })
}

/// What only a daemon needs of each `[[host]]` (metrics listener, data directory, certificate
/// and key files); `hosts` are the ids and addresses the client's part already validated, in
/// the same order as `raw`.
pub(super) fn hosts(
    check: &Checker<'_>,
    base_dir: &Path,
    tls: &TlsSettings,
    hosts: &[HostAddr],
    raw: &[RawHost],
) -> Result<Vec<HostConfig>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    // Value -> index of the first host that used it, to name both in the message.
    let mut metrics_addrs = BTreeMap::new();
    let mut files = BTreeMap::new();
    for (i, (h, &host)) in raw.iter().zip(hosts).enumerate() {
        let id = host.id;
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
        out.push(HostConfig {
            host,
            data_dir,
            metrics,
            // Set by the RESP keys' validation, which runs after this.
            resp: None,
            cert,
            key,
        });
    }
    Ok(out)
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
