//! The texts and maps of `HELLO` and `INFO`: what a Redis client or tool asks about the
//! server when it connects. The front end presents itself as Redis 7.2 in cluster mode, the
//! version whose commands and replies it follows, so clients enable what they know of it.

use std::sync::atomic::Ordering;

use super::exec::{Session, Shared};
use super::reply::Reply;

/// The Redis version whose behaviour the front end follows.
pub const REDIS_VERSION: &str = "7.2.0";

/// How many commands are served (`COMMAND COUNT`): every name [`super::command::Command`]
/// parses, subcommand families counted once.
pub const COMMANDS_SERVED: i64 = 31;

/// The `HELLO` reply for `session` (after the command changed it).
pub fn hello(session: &Session) -> Reply {
    Reply::Map(vec![
        (Reply::text("server"), Reply::text("redis")),
        (Reply::text("version"), Reply::text(REDIS_VERSION)),
        (
            Reply::text("proto"),
            Reply::Integer(session.protocol.version()),
        ),
        (
            Reply::text("id"),
            Reply::Integer(i64::try_from(session.id).unwrap_or(i64::MAX)),
        ),
        (Reply::text("mode"), Reply::text("cluster")),
        (Reply::text("role"), Reply::text("master")),
        (Reply::text("modules"), Reply::Array(Vec::new())),
    ])
}

/// The `INFO` text: every section, or the one named. The keyspace section is empty: no key
/// count is kept.
pub fn info(section: Option<&str>, shared: &Shared) -> String {
    let all = matches!(section, None | Some("default" | "all" | "everything"));
    let wants = |name: &str| all || section == Some(name);
    let mut out = String::new();
    if wants("server") {
        out.push_str(&format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nshardkv_version:{}\r\n\
             redis_mode:cluster\r\nos:{}\r\narch_bits:{}\r\nprocess_id:{}\r\n\
             tcp_port:{}\r\nuptime_in_seconds:{}\r\nshardkv_host:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            usize::BITS,
            std::process::id(),
            shared.addr.port(),
            shared.started.elapsed().as_secs(),
            shared.topology.host(),
        ));
    }
    if wants("clients") {
        out.push_str(&format!(
            "# Clients\r\nconnected_clients:{}\r\n\r\n",
            shared.connections.load(Ordering::Relaxed)
        ));
    }
    if wants("cluster") {
        out.push_str("# Cluster\r\ncluster_enabled:1\r\n\r\n");
    }
    if wants("keyspace") {
        out.push_str("# Keyspace\r\n\r\n");
    }
    out
}
