//! [`Command`]: a RESP command parsed from its elements, with its arity, options and slots
//! checked, so execution never sees a malformed one. Pure: no I/O, unit-tested beside it.
//!
//! Errors are the replies Redis gives for the same mistake (`wrong number of arguments`,
//! `syntax error`, `unknown command`, `CROSSSLOT`), since clients and their users match on
//! those words.

use bytes::Bytes;
use shardkv_actors::shard::parse_integer;
use shardkv_transport::slot::{slot, Slot};
use shardkv_transport::wire::{Condition, GET_MANY_KEYS_MAX};

use super::reply::{Protocol, Reply};

/// A command this front end serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ping(Option<Bytes>),
    Echo(Bytes),
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    Hello {
        protocol: Option<Protocol>,
        setname: Option<Bytes>,
    },
    ClientSetName(Bytes),
    ClientGetName,
    ClientId,
    /// `CLIENT SETINFO`: accepted and ignored (clients send their library name).
    ClientSetInfo,
    /// `SELECT 0` (the only database).
    Select,
    Quit,
    /// `COMMAND` (no names: every command) and `COMMAND INFO names..` (lowercase names).
    CommandInfo(Vec<String>),
    /// `COMMAND DOCS ..`: no documentation is served.
    CommandDocs,
    CommandCount,
    Info(Option<String>),
    /// `DBSIZE`: the keys of the shards this host leads.
    DbSize,
    /// `CONFIG GET pattern..`: the few settings clients ask for (lowercased patterns).
    ConfigGet(Vec<String>),
    Get(Bytes),
    /// `SET k v [NX|XX] [GET]`.
    Set {
        key: Bytes,
        value: Bytes,
        condition: Condition,
        get: bool,
    },
    SetNx(Bytes, Bytes),
    GetSet(Bytes, Bytes),
    GetDel(Bytes),
    /// `DEL` and `UNLINK`.
    Del(Vec<Bytes>),
    Exists(Vec<Bytes>),
    MGet(Vec<Bytes>),
    MSet(Vec<(Bytes, Bytes)>),
    /// `INCR`, `INCRBY`, `DECR`, `DECRBY`.
    IncrBy(Bytes, i64),
    Append(Bytes, Bytes),
    StrLen(Bytes),
    Type(Bytes),
    Wait,
    ReadOnly,
    ReadWrite,
    Cluster(ClusterCommand),
}

/// The `CLUSTER` subcommands served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCommand {
    Slots,
    Shards,
    Nodes,
    Info,
    MyId,
    KeySlot(Bytes),
}

/// How a command orders against the others of its connection's pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Answered by the connection or the host's own view; touches no data.
    Local,
    /// Reads keys of this slot.
    Read(Slot),
    /// Writes keys of this slot.
    Write(Slot),
    /// Runs once everything before it has answered (`WAIT`, `DBSIZE`).
    Barrier,
}

impl Command {
    /// Parses a command from its elements (`args[0]` is the name).
    pub fn parse(args: &[Bytes]) -> Result<Command, Reply> {
        let Some(name) = args.first() else {
            return Err(Reply::err("empty command"));
        };
        let written = String::from_utf8_lossy(name);
        let name = written.to_ascii_lowercase();
        let rest = &args[1..];
        let arity = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(Reply::err(format!(
                    "wrong number of arguments for '{name}' command"
                )))
            }
        };
        let arg = |i: usize| rest[i].clone();
        let cmd = match name.as_str() {
            "ping" => {
                arity(rest.len() <= 1)?;
                Command::Ping(rest.first().cloned())
            }
            "echo" => {
                arity(rest.len() == 1)?;
                Command::Echo(arg(0))
            }
            "hello" => parse_hello(rest)?,
            "client" => parse_client(rest)?,
            "select" => {
                arity(rest.len() == 1)?;
                match integer(&rest[0])? {
                    0 => Command::Select,
                    _ => return Err(Reply::err("SELECT is not allowed in cluster mode")),
                }
            }
            "quit" => Command::Quit,
            "command" => match rest.first().map(lower).as_deref() {
                None => Command::CommandInfo(Vec::new()),
                Some("info") => Command::CommandInfo(rest[1..].iter().map(lower).collect()),
                Some("docs") => Command::CommandDocs,
                Some("count") => Command::CommandCount,
                Some(other) => return Err(unknown_subcommand(other, "COMMAND")),
            },
            "info" => Command::Info(rest.first().map(lower)),
            "dbsize" => {
                arity(rest.is_empty())?;
                Command::DbSize
            }
            "config" => match rest.first().map(lower).as_deref() {
                Some("get") if rest.len() >= 2 => {
                    Command::ConfigGet(rest[1..].iter().map(lower).collect())
                }
                Some("get") => {
                    return Err(Reply::err(
                        "wrong number of arguments for 'config|get' command",
                    ))
                }
                Some(other) => return Err(unknown_subcommand(other, "CONFIG")),
                None => return Err(Reply::err("wrong number of arguments for 'config' command")),
            },
            "get" => {
                arity(rest.len() == 1)?;
                Command::Get(arg(0))
            }
            "set" => {
                arity(rest.len() >= 2)?;
                parse_set(arg(0), arg(1), &rest[2..])?
            }
            "setnx" => {
                arity(rest.len() == 2)?;
                Command::SetNx(arg(0), arg(1))
            }
            "getset" => {
                arity(rest.len() == 2)?;
                Command::GetSet(arg(0), arg(1))
            }
            "getdel" => {
                arity(rest.len() == 1)?;
                Command::GetDel(arg(0))
            }
            "del" | "unlink" => {
                arity(!rest.is_empty())?;
                same_slot(rest.iter())?;
                Command::Del(rest.to_vec())
            }
            "exists" => {
                arity(!rest.is_empty())?;
                at_most_keys(rest.len())?;
                same_slot(rest.iter())?;
                Command::Exists(rest.to_vec())
            }
            "mget" => {
                arity(!rest.is_empty())?;
                at_most_keys(rest.len())?;
                same_slot(rest.iter())?;
                Command::MGet(rest.to_vec())
            }
            "mset" => {
                arity(!rest.is_empty() && rest.len().is_multiple_of(2))?;
                same_slot(rest.iter().step_by(2))?;
                Command::MSet(
                    rest.chunks_exact(2)
                        .map(|kv| (kv[0].clone(), kv[1].clone()))
                        .collect(),
                )
            }
            "incr" => {
                arity(rest.len() == 1)?;
                Command::IncrBy(arg(0), 1)
            }
            "decr" => {
                arity(rest.len() == 1)?;
                Command::IncrBy(arg(0), -1)
            }
            "incrby" => {
                arity(rest.len() == 2)?;
                Command::IncrBy(arg(0), integer(&rest[1])?)
            }
            "decrby" => {
                arity(rest.len() == 2)?;
                let by = integer(&rest[1])?
                    .checked_neg()
                    .ok_or_else(|| Reply::err("decrement would overflow"))?;
                Command::IncrBy(arg(0), by)
            }
            "append" => {
                arity(rest.len() == 2)?;
                Command::Append(arg(0), arg(1))
            }
            "strlen" => {
                arity(rest.len() == 1)?;
                Command::StrLen(arg(0))
            }
            "type" => {
                arity(rest.len() == 1)?;
                Command::Type(arg(0))
            }
            "wait" => {
                arity(rest.len() == 2)?;
                integer(&rest[0])?;
                integer(&rest[1])?;
                Command::Wait
            }
            "readonly" => Command::ReadOnly,
            "readwrite" => Command::ReadWrite,
            "cluster" => Command::Cluster(parse_cluster(rest)?),
            _ => return Err(unknown_command(&written, rest)),
        };
        Ok(cmd)
    }

    /// The command's name in lowercase, for metrics: `client`, `cluster`, `command` for their
    /// subcommands; INCR, DECR and DECRBY count as `incrby`, UNLINK as `del`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping(_) => "ping",
            Command::Echo(_) => "echo",
            Command::Hello { .. } => "hello",
            Command::ClientSetName(_)
            | Command::ClientGetName
            | Command::ClientId
            | Command::ClientSetInfo => "client",
            Command::Select => "select",
            Command::Quit => "quit",
            Command::CommandInfo(_) | Command::CommandDocs | Command::CommandCount => "command",
            Command::Info(_) => "info",
            Command::DbSize => "dbsize",
            Command::ConfigGet(_) => "config",
            Command::Get(_) => "get",
            Command::Set { .. } => "set",
            Command::SetNx(..) => "setnx",
            Command::GetSet(..) => "getset",
            Command::GetDel(_) => "getdel",
            Command::Del(_) => "del",
            Command::Exists(_) => "exists",
            Command::MGet(_) => "mget",
            Command::MSet(_) => "mset",
            Command::IncrBy(..) => "incrby",
            Command::Append(..) => "append",
            Command::StrLen(_) => "strlen",
            Command::Type(_) => "type",
            Command::Wait => "wait",
            Command::ReadOnly => "readonly",
            Command::ReadWrite => "readwrite",
            Command::Cluster(_) => "cluster",
        }
    }

    /// How the command orders against its neighbours (see [`Class`]).
    pub fn class(&self) -> Class {
        match self {
            Command::Get(k) | Command::StrLen(k) | Command::Type(k) => Class::Read(slot(k)),
            Command::Exists(keys) | Command::MGet(keys) => Class::Read(first_slot(keys)),
            Command::Set { key, .. }
            | Command::SetNx(key, _)
            | Command::GetSet(key, _)
            | Command::GetDel(key)
            | Command::IncrBy(key, _)
            | Command::Append(key, _) => Class::Write(slot(key)),
            Command::Del(keys) => Class::Write(first_slot(keys)),
            Command::MSet(pairs) => Class::Write(pairs.first().map_or(0, |(k, _)| slot(k))),
            Command::Wait | Command::DbSize => Class::Barrier,
            _ => Class::Local,
        }
    }
}

fn first_slot(keys: &[Bytes]) -> Slot {
    keys.first().map_or(0, |k| slot(k))
}

fn lower(arg: &Bytes) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

/// An integer argument, read as Redis reads one (and as the state machine reads values).
fn integer(arg: &Bytes) -> Result<i64, Reply> {
    parse_integer(arg).ok_or_else(|| Reply::err("value is not an integer or out of range"))
}

/// Refuses a multi-key read of more keys than one read may carry.
fn at_most_keys(keys: usize) -> Result<(), Reply> {
    if keys <= GET_MANY_KEYS_MAX {
        Ok(())
    } else {
        Err(Reply::err(format!(
            "{keys} keys in one command; at most {GET_MANY_KEYS_MAX}"
        )))
    }
}

/// `CROSSSLOT` unless every key hashes to one slot.
fn same_slot<'a>(mut keys: impl Iterator<Item = &'a Bytes>) -> Result<(), Reply> {
    let Some(first) = keys.next().map(|k| slot(k)) else {
        return Ok(());
    };
    if keys.all(|k| slot(k) == first) {
        Ok(())
    } else {
        Err(Reply::Error(
            "CROSSSLOT Keys in request don't hash to the same slot".into(),
        ))
    }
}

fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

fn parse_set(key: Bytes, value: Bytes, options: &[Bytes]) -> Result<Command, Reply> {
    let mut condition = Condition::Always;
    let mut get = false;
    for option in options {
        match lower(option).as_str() {
            // Repeating a flag is allowed (as in Redis); NX with XX is not.
            "nx" if condition != Condition::IfPresent => condition = Condition::IfAbsent,
            "xx" if condition != Condition::IfAbsent => condition = Condition::IfPresent,
            "get" => get = true,
            "ex" | "px" | "exat" | "pxat" | "keepttl" => {
                return Err(Reply::err(
                    "SET with a TTL is not supported yet (no key expiry in shardkv)",
                ))
            }
            _ => return Err(syntax_error()),
        }
    }
    Ok(Command::Set {
        key,
        value,
        condition,
        get,
    })
}

fn parse_hello(rest: &[Bytes]) -> Result<Command, Reply> {
    let Some(version) = rest.first() else {
        return Ok(Command::Hello {
            protocol: None,
            setname: None,
        });
    };
    let protocol = match std::str::from_utf8(version)
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(2) => Protocol::Resp2,
        Some(3) => Protocol::Resp3,
        Some(_) => return Err(Reply::Error("NOPROTO unsupported protocol version".into())),
        None => {
            return Err(Reply::err(
                "Protocol version is not an integer or out of range",
            ))
        }
    };
    let mut setname = None;
    let mut i = 1;
    while i < rest.len() {
        match lower(&rest[i]).as_str() {
            // No authentication besides the TLS client certificate: credentials are ignored.
            "auth" if i + 2 < rest.len() => i += 3,
            "setname" if i + 1 < rest.len() => {
                setname = Some(rest[i + 1].clone());
                i += 2;
            }
            _ => return Err(syntax_error()),
        }
    }
    Ok(Command::Hello {
        protocol: Some(protocol),
        setname,
    })
}

fn parse_client(rest: &[Bytes]) -> Result<Command, Reply> {
    let Some(sub) = rest.first().map(lower) else {
        return Err(Reply::err("wrong number of arguments for 'client' command"));
    };
    let arity = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Reply::err(format!(
                "wrong number of arguments for 'client|{sub}' command"
            )))
        }
    };
    match sub.as_str() {
        "setname" => {
            arity(rest.len() == 2)?;
            Ok(Command::ClientSetName(rest[1].clone()))
        }
        "getname" => {
            arity(rest.len() == 1)?;
            Ok(Command::ClientGetName)
        }
        "id" => {
            arity(rest.len() == 1)?;
            Ok(Command::ClientId)
        }
        "setinfo" => {
            arity(rest.len() == 3)?;
            Ok(Command::ClientSetInfo)
        }
        other => Err(unknown_subcommand(other, "CLIENT")),
    }
}

fn parse_cluster(rest: &[Bytes]) -> Result<ClusterCommand, Reply> {
    let Some(sub) = rest.first().map(lower) else {
        return Err(Reply::err(
            "wrong number of arguments for 'cluster' command",
        ));
    };
    let no_args = |cmd: ClusterCommand| {
        if rest.len() == 1 {
            Ok(cmd)
        } else {
            Err(Reply::err(format!(
                "wrong number of arguments for 'cluster|{sub}' command"
            )))
        }
    };
    match sub.as_str() {
        "slots" => no_args(ClusterCommand::Slots),
        "shards" => no_args(ClusterCommand::Shards),
        "nodes" => no_args(ClusterCommand::Nodes),
        "info" => no_args(ClusterCommand::Info),
        "myid" => no_args(ClusterCommand::MyId),
        "keyslot" if rest.len() == 2 => Ok(ClusterCommand::KeySlot(rest[1].clone())),
        "keyslot" => Err(Reply::err(
            "wrong number of arguments for 'cluster|keyslot' command",
        )),
        other => Err(Reply::err(format!(
            "CLUSTER {} is not supported by shardkv",
            other.to_ascii_uppercase()
        ))),
    }
}

fn unknown_subcommand(sub: &str, command: &str) -> Reply {
    Reply::err(format!("unknown subcommand '{sub}'. Try {command} HELP."))
}

/// Redis' wording: the name, then the first arguments, each quoted and followed by a space.
fn unknown_command(name: &str, args: &[Bytes]) -> Reply {
    let mut text = format!("unknown command '{name}', with args beginning with: ");
    for arg in args {
        if text.len() > 128 {
            break;
        }
        text.push_str(&format!("'{}' ", String::from_utf8_lossy(arg)));
    }
    Reply::err(text)
}

#[cfg(test)]
mod tests;
