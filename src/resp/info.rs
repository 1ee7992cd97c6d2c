//! The texts and maps of `HELLO` and `INFO`: what a Redis client or tool asks about the
//! server when it connects. The front end presents itself as Redis 7.2 in cluster mode, the
//! version whose commands and replies it follows, so clients enable what they know of it.

use std::sync::atomic::Ordering;

use super::exec::{Session, Shared};
use super::reply::Reply;

/// The Redis version whose behaviour the front end follows.
pub const REDIS_VERSION: &str = "7.2.0";

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

/// The `INFO` text: every section, or the one named. The keyspace section is empty: counting
/// keys scans them, which `DBSIZE` does when asked and `INFO` does not.
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

/// The settings `CONFIG GET` answers, by their Redis names: what clients and redis-benchmark
/// ask to describe the server. Every write is on a majority's disk before it is answered, so
/// durability is Redis' `appendfsync always`; there are no RDB snapshots to schedule.
const SETTINGS: &[(&str, &str)] = &[
    ("appendfsync", "always"),
    ("appendonly", "yes"),
    ("cluster-enabled", "yes"),
    ("databases", "1"),
    ("save", ""),
];

/// The `CONFIG GET` reply: each setting whose name one of `patterns` (lowercase globs with
/// `*` and `?`) matches, once.
pub fn config_get(patterns: &[String]) -> Reply {
    let matched = SETTINGS
        .iter()
        .filter(|(name, _)| patterns.iter().any(|p| glob(p.as_bytes(), name.as_bytes())));
    Reply::Map(
        matched
            .map(|(name, value)| (Reply::text(*name), Reply::text(*value)))
            .collect(),
    )
}

/// Longest `CONFIG GET` pattern looked at: far longer than any setting's name, so a longer
/// one matches nothing and a client cannot make matching costly.
const PATTERN_BYTES_MAX: usize = 128;

/// Whether `pattern` (`*`: any run, `?`: any one byte, anything else itself) matches all of
/// `name`. Iterative, going back only to the last `*`: time O(pattern x name), no recursion.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    if pattern.len() > PATTERN_BYTES_MAX {
        return false;
    }
    let (mut p, mut n) = (0, 0);
    // After the last `*` seen: the pattern position past it, and the name position it took.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the last `*` take one more byte and try again from there.
                Some((after, taken)) => {
                    star = Some((after, taken + 1));
                    p = after;
                    n = taken + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(reply: Reply) -> Vec<String> {
        match reply {
            Reply::Map(pairs) => pairs
                .into_iter()
                .map(|(name, _)| format!("{name:?}"))
                .collect(),
            other => panic!("a map, not {other:?}"),
        }
    }

    #[test]
    fn config_get_answers_the_settings_its_patterns_match() {
        assert_eq!(names(config_get(&["save".into()])).len(), 1);
        assert_eq!(names(config_get(&["append*".into()])).len(), 2);
        assert_eq!(names(config_get(&["*".into()])).len(), SETTINGS.len());
        assert_eq!(names(config_get(&["sav?".into(), "save".into()])).len(), 1);
        assert!(names(config_get(&["maxmemory".into()])).is_empty());
    }

    #[test]
    fn glob_matches_stars_and_question_marks() {
        assert!(glob(b"a*c", b"abbc"));
        assert!(glob(b"a*c", b"ac"));
        assert!(!glob(b"a*c", b"abd"));
        assert!(glob(b"?ave", b"save"));
        assert!(!glob(b"save", b"saves"));
        assert!(glob(b"**", b""));
        assert!(glob(b"*a*b", b"xxaxxb"));
        assert!(!glob(b"*a*b", b"xxaxxc"));
    }

    #[test]
    fn hostile_patterns_cost_little_and_match_nothing() {
        let stars = "*".repeat(1 << 20);
        assert!(!glob(stars.as_bytes(), b"save"));
        let backtracking = format!("{}b", "*a".repeat(25));
        assert!(!glob(backtracking.as_bytes(), "a".repeat(60).as_bytes()));
    }
}
