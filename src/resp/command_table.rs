//! The `COMMAND` replies: what each served command is, in Redis' own terms (arity, flags,
//! where its keys are), so cluster clients that route by `COMMAND`'s key positions (redis-py's
//! `RedisCluster`, for one) find the key of every command they send.
//!
//! The entries follow Redis 7.2's for the same commands; [`TABLE`] lists exactly the names
//! [`super::command::Command::parse`] accepts.

use super::reply::Reply;

/// One command's entry.
struct Entry {
    name: &'static str,
    /// Redis' arity: the exact number of elements with the name, or at least that many if
    /// negative.
    arity: i64,
    flags: &'static [&'static str],
    /// The first and last argument that is a key (1-based; 0: no keys; -1 as the last: every
    /// argument from the first on), and the step between keys.
    first_key: i64,
    last_key: i64,
    step: i64,
}

const fn keyless(name: &'static str, arity: i64, flags: &'static [&'static str]) -> Entry {
    Entry {
        name,
        arity,
        flags,
        first_key: 0,
        last_key: 0,
        step: 0,
    }
}

const fn one_key(name: &'static str, arity: i64, flags: &'static [&'static str]) -> Entry {
    Entry {
        name,
        arity,
        flags,
        first_key: 1,
        last_key: 1,
        step: 1,
    }
}

const fn every_key(name: &'static str, flags: &'static [&'static str], step: i64) -> Entry {
    Entry {
        name,
        arity: -1 - step,
        flags,
        first_key: 1,
        last_key: -1,
        step,
    }
}

const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom"];
const WRITE_FAST: &[&str] = &["write", "denyoom", "fast"];
const CONNECTION: &[&str] = &["loading", "stale", "fast"];

/// Every command served.
const TABLE: &[Entry] = &[
    one_key("get", 2, READ),
    one_key("strlen", 2, READ),
    one_key("type", 2, READ),
    every_key("mget", READ, 1),
    every_key("exists", READ, 1),
    one_key("set", -3, WRITE),
    one_key("setnx", 3, WRITE_FAST),
    one_key("getset", 3, WRITE_FAST),
    one_key("getdel", 2, &["write", "fast"]),
    one_key("append", 3, WRITE_FAST),
    one_key("incr", 2, WRITE_FAST),
    one_key("incrby", 3, WRITE_FAST),
    one_key("decr", 2, WRITE_FAST),
    one_key("decrby", 3, WRITE_FAST),
    every_key("del", &["write"], 1),
    every_key("unlink", &["write", "fast"], 1),
    every_key("mset", WRITE, 2),
    keyless("ping", -1, &["fast"]),
    keyless("echo", 2, &["fast"]),
    keyless(
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
    ),
    keyless("client", -2, &[]),
    keyless("select", 2, CONNECTION),
    keyless(
        "quit",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
    ),
    keyless("command", -1, &["loading", "stale"]),
    keyless("info", -1, &["loading", "stale"]),
    keyless("dbsize", 1, READ),
    keyless("config", -2, &[]),
    keyless("wait", 3, &[]),
    keyless("readonly", 1, CONNECTION),
    keyless("readwrite", 1, CONNECTION),
    keyless("cluster", -2, &[]),
];

/// How many commands are served (`COMMAND COUNT`).
pub fn count() -> i64 {
    TABLE.len() as i64
}

/// `COMMAND INFO names..`, or `COMMAND` (every entry) when `names` is empty: one entry per
/// name, null for a name not served.
pub fn info(names: &[String]) -> Reply {
    if names.is_empty() {
        return Reply::Array(TABLE.iter().map(reply).collect());
    }
    Reply::Array(
        names
            .iter()
            .map(|n| {
                TABLE
                    .iter()
                    .find(|e| e.name == n)
                    .map_or(Reply::Null, reply)
            })
            .collect(),
    )
}

/// An entry as Redis 7 writes it: name, arity, flags, first key, last key, step, ACL
/// categories, tips, key specifications, subcommands (the last four empty).
fn reply(e: &Entry) -> Reply {
    let flags = e.flags.iter().map(|f| Reply::Status((*f).into())).collect();
    Reply::Array(vec![
        Reply::text(e.name),
        Reply::Integer(e.arity),
        Reply::Array(flags),
        Reply::Integer(e.first_key),
        Reply::Integer(e.last_key),
        Reply::Integer(e.step),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::command::Command;
    use bytes::Bytes;

    #[test]
    fn every_command_in_the_table_parses_and_names_are_unique() {
        let mut names: Vec<&str> = TABLE.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TABLE.len());
        for e in TABLE {
            // Parsing may refuse the arguments, but never as an unknown command.
            let args = [
                Bytes::from(e.name),
                Bytes::from_static(b"k"),
                Bytes::from_static(b"1"),
            ];
            let arity = usize::try_from(e.arity.unsigned_abs()).unwrap().min(3);
            if let Err(Reply::Error(text)) = Command::parse(&args[..arity.max(1)]) {
                assert!(!text.contains("unknown command"), "{}: {text}", e.name);
            }
        }
    }

    #[test]
    fn info_answers_the_entries_asked_for_and_null_for_others() {
        let Reply::Array(entries) = info(&["mset".into(), "flushall".into()]) else {
            panic!("an array")
        };
        assert_eq!(entries[1], Reply::Null);
        let Reply::Array(mset) = &entries[0] else {
            panic!("an entry")
        };
        assert_eq!(mset[1], Reply::Integer(-3));
        assert_eq!(
            &mset[3..6],
            [Reply::Integer(1), Reply::Integer(-1), Reply::Integer(2)]
        );
        let Reply::Array(all) = info(&[]) else {
            panic!("an array")
        };
        assert_eq!(all.len() as i64, count());
    }
}
