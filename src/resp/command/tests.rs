//! Unit tests of command parsing: arity, options, integers, CROSSSLOT and Redis' wording.

use super::*;

fn parse(line: &str) -> Result<Command, Reply> {
    let args: Vec<Bytes> = line
        .split(' ')
        .map(|s| Bytes::from(s.to_string()))
        .collect();
    Command::parse(&args)
}

#[track_caller]
fn error_of(line: &str) -> String {
    match parse(line) {
        Err(Reply::Error(text)) => text,
        other => panic!("{line:?}: expected an error, got {other:?}"),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

#[test]
fn names_are_case_insensitive() {
    assert_eq!(parse("get k"), Ok(Command::Get(b("k"))));
    assert_eq!(parse("GeT k"), Ok(Command::Get(b("k"))));
}

#[test]
fn wrong_arity_is_refused_in_redis_words() {
    assert_eq!(
        error_of("GET"),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        error_of("get a b"),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        error_of("MSET a 1 b"),
        "ERR wrong number of arguments for 'mset' command"
    );
    assert_eq!(
        error_of("client setname"),
        "ERR wrong number of arguments for 'client|setname' command"
    );
}

#[test]
fn unknown_commands_name_themselves_and_their_first_args() {
    assert_eq!(
        error_of("FLUSHALL now x"),
        "ERR unknown command 'FLUSHALL', with args beginning with: 'now' 'x' "
    );
    assert_eq!(
        error_of("HGETALL"),
        "ERR unknown command 'HGETALL', with args beginning with: "
    );
}

#[test]
fn set_takes_nx_xx_and_get_and_refuses_ttls() {
    assert_eq!(
        parse("SET k v"),
        Ok(Command::Set {
            key: b("k"),
            value: b("v"),
            condition: Condition::Always,
            get: false
        })
    );
    assert_eq!(
        parse("set k v nx get"),
        Ok(Command::Set {
            key: b("k"),
            value: b("v"),
            condition: Condition::IfAbsent,
            get: true
        })
    );
    assert!(matches!(
        parse("set k v XX"),
        Ok(Command::Set {
            condition: Condition::IfPresent,
            ..
        })
    ));
    assert_eq!(error_of("set k v nx xx"), "ERR syntax error");
    assert_eq!(error_of("set k v xx get nx"), "ERR syntax error");
    assert!(matches!(
        parse("set k v nx NX"),
        Ok(Command::Set {
            condition: Condition::IfAbsent,
            ..
        })
    ));
    assert_eq!(error_of("set k v bogus"), "ERR syntax error");
    for ttl in ["EX 10", "PX 10", "EXAT 1", "PXAT 1", "KEEPTTL"] {
        assert_eq!(
            error_of(&format!("set k v {ttl}")),
            "ERR SET with a TTL is not supported yet (no key expiry in shardkv)"
        );
    }
}

#[test]
fn counters_parse_their_increment_and_refuse_what_cannot_negate() {
    assert_eq!(parse("INCR n"), Ok(Command::IncrBy(b("n"), 1)));
    assert_eq!(parse("DECR n"), Ok(Command::IncrBy(b("n"), -1)));
    assert_eq!(parse("INCRBY n -5"), Ok(Command::IncrBy(b("n"), -5)));
    assert_eq!(parse("DECRBY n 5"), Ok(Command::IncrBy(b("n"), -5)));
    assert_eq!(
        error_of("INCRBY n x"),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        error_of(&format!("DECRBY n {}", i64::MIN)),
        "ERR decrement would overflow"
    );
}

#[test]
fn multi_key_commands_across_slots_are_crossslot() {
    let crossslot = "CROSSSLOT Keys in request don't hash to the same slot";
    for line in [
        "MGET a b",
        "DEL a b",
        "UNLINK a b",
        "EXISTS a b",
        "MSET a 1 b 2",
    ] {
        assert_eq!(error_of(line), crossslot, "{line}");
    }
    // A hash tag puts keys in one slot.
    assert!(parse("MGET {u}a {u}b").is_ok());
    assert_eq!(
        parse("MSET {u}a 1 {u}b 2"),
        Ok(Command::MSet(vec![
            (b("{u}a"), b("1")),
            (b("{u}b"), b("2"))
        ]))
    );
}

#[test]
fn commands_are_classed_for_the_pipeline() {
    let s = slot(b"k");
    assert_eq!(parse("GET k").map(|c| c.class()), Ok(Class::Read(s)));
    assert_eq!(parse("SET k v").map(|c| c.class()), Ok(Class::Write(s)));
    assert_eq!(parse("DEL k").map(|c| c.class()), Ok(Class::Write(s)));
    assert_eq!(parse("PING").map(|c| c.class()), Ok(Class::Local));
    assert_eq!(parse("WAIT 1 0").map(|c| c.class()), Ok(Class::Barrier));
}

#[test]
fn hello_chooses_a_protocol_and_a_name() {
    assert_eq!(
        parse("HELLO"),
        Ok(Command::Hello {
            protocol: None,
            setname: None
        })
    );
    assert_eq!(
        parse("HELLO 3 AUTH u p SETNAME me"),
        Ok(Command::Hello {
            protocol: Some(Protocol::Resp3),
            setname: Some(b("me"))
        })
    );
    assert_eq!(error_of("HELLO 4"), "NOPROTO unsupported protocol version");
    assert_eq!(error_of("HELLO 3 AUTH u"), "ERR syntax error");
}

#[test]
fn select_accepts_only_database_zero() {
    assert_eq!(parse("SELECT 0"), Ok(Command::Select));
    assert_eq!(
        error_of("SELECT 1"),
        "ERR SELECT is not allowed in cluster mode"
    );
}

#[test]
fn cluster_subcommands_parse_and_others_are_refused() {
    assert_eq!(
        parse("CLUSTER slots"),
        Ok(Command::Cluster(ClusterCommand::Slots))
    );
    assert_eq!(
        parse("cluster KEYSLOT foo"),
        Ok(Command::Cluster(ClusterCommand::KeySlot(b("foo"))))
    );
    assert_eq!(
        error_of("CLUSTER COUNTKEYSINSLOT 1"),
        "ERR CLUSTER COUNTKEYSINSLOT is not supported by shardkv"
    );
}

#[test]
fn config_get_and_command_docs_are_answered_for_tools() {
    assert_eq!(
        parse("CONFIG GET Save append*"),
        Ok(Command::ConfigGet(vec!["save".into(), "append*".into()]))
    );
    assert_eq!(parse("COMMAND DOCS"), Ok(Command::CommandDocs));
    assert_eq!(parse("COMMAND"), Ok(Command::CommandInfo(vec![])));
    assert_eq!(
        parse("COMMAND INFO Get mset"),
        Ok(Command::CommandInfo(vec!["get".into(), "mset".into()]))
    );
    assert_eq!(parse("COMMAND COUNT"), Ok(Command::CommandCount));
    assert!(error_of("CONFIG SET save x").starts_with("ERR unknown subcommand 'set'"));
}

#[test]
fn multi_key_reads_are_bounded_like_updates() {
    let keys: Vec<String> = (0..=GET_MANY_KEYS_MAX)
        .map(|i| format!("{{t}}{i}"))
        .collect();
    let text = error_of(&format!("MGET {}", keys.join(" ")));
    assert!(text.contains("at most 1024"), "{text}");
    assert!(parse(&format!("MGET {}", keys[1..].join(" "))).is_ok());
}
