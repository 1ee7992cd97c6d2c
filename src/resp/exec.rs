//! Runs a parsed [`Command`]: local ones at once against the connection's [`Session`] and
//! the host's [`Topology`], data ones through the host's router as one shardkv operation
//! each (an `MGET` or `EXISTS` as one read of its keys at one applied state), their answers
//! turned into Redis replies.
//!
//! A data command is sent to the router when it is started, not when its future is first
//! polled: commands of one connection reach a replica's mailbox in the order they were read,
//! which is what lets the connection run writes to one shard concurrently. Every command is
//! proposed once (`seq` 0, no session): a RESP connection has no exactly-once session.
//!
//! Where the key's shard is led elsewhere, `super::redirect` answers `-MOVED` or forwards.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use actix::Recipient;
use bytes::Bytes;
use shardkv_actors::messages::ClientRequest;
use shardkv_actors::schema::{count_rows_in_slots, Schema};
use shardkv_transport::slot::{slot, Slot};
use shardkv_transport::wire::{
    Change, Condition, KeyUpdate, Op, ReadConsistency, Request, Response, UpdateOutcome,
};
use shardkv_transport::ShardId;

use super::command::{ClusterCommand, Command};
use super::command_table;
use super::forward::Forwarder;
use super::info;
use super::redirect::{settle, unexpected};
use super::reply::{Protocol, Reply};
use super::topology::Topology;

/// What every connection of this host shares.
pub struct Shared {
    /// The host's router (a recipient, so tests can stand in for it).
    pub router: Recipient<ClientRequest>,
    pub topology: Arc<Topology>,
    /// Set with `[resp] forward = true`.
    pub forward: Option<Forwarder>,
    /// The listener's address (for `INFO`).
    pub addr: std::net::SocketAddr,
    /// Connections open now.
    pub connections: AtomicUsize,
    /// When the listener started (for `INFO`).
    pub started: Instant,
    /// The host's LMDB, whose rows `DBSIZE` counts.
    pub store: Schema,
}

/// One connection's state, changed by the commands that set it, in command order.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub protocol: Protocol,
    /// `READONLY`: reads are served by any local replica.
    pub readonly: bool,
    pub name: Option<Bytes>,
    /// The shard of the last acknowledged write (for `WAIT`).
    pub last_write: Option<ShardId>,
}

impl Session {
    /// A fresh connection's session: RESP2, reads linearizable.
    pub fn new(id: u64) -> Session {
        Session {
            id,
            protocol: Protocol::Resp2,
            readonly: false,
            name: None,
            last_write: None,
        }
    }
}

/// A command's reply, and the shard it wrote if it was an acknowledged write.
#[derive(Debug)]
pub struct Outcome {
    pub reply: Reply,
    pub wrote: Option<ShardId>,
}

/// A running command.
pub type Running = Pin<Box<dyn Future<Output = Outcome> + Send>>;

fn ready(reply: Reply) -> Running {
    Box::pin(std::future::ready(Outcome { reply, wrote: None }))
}

/// Starts `cmd`; local commands are already answered when this returns.
pub fn start(cmd: Command, session: &mut Session, shared: &Arc<Shared>) -> Running {
    let consistency = if session.readonly {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    };
    let get = |key: Bytes| Op::Get {
        key: key.to_vec(),
        consistency,
    };
    let get_many = |keys: Vec<Bytes>| Op::GetMany {
        keys: keys.into_iter().map(|k| k.to_vec()).collect(),
        consistency,
    };
    match cmd {
        Command::Get(key) => read(shared, session, get(key), |mut v| {
            Reply::value(v.pop().flatten())
        }),
        Command::StrLen(key) => read(shared, session, get(key), |v| {
            Reply::Integer(
                v.first()
                    .and_then(|v| v.as_ref())
                    .map_or(0, |v| v.len() as i64),
            )
        }),
        Command::Type(key) => read(shared, session, get(key), |v| {
            let kind = if v.first().is_some_and(Option::is_some) {
                "string"
            } else {
                "none"
            };
            Reply::Status(kind.into())
        }),
        Command::MGet(keys) => read(shared, session, get_many(keys), |v| {
            Reply::Array(v.into_iter().map(Reply::value).collect())
        }),
        Command::Exists(keys) => read(shared, session, get_many(keys), |v| {
            Reply::Integer(v.iter().filter(|v| v.is_some()).count() as i64)
        }),
        Command::Set {
            key,
            value,
            condition: Condition::Always,
            get: false,
        } => {
            let op = Op::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            };
            write(shared, session, op, |_| Reply::ok())
        }
        Command::Set {
            key,
            value,
            condition,
            get,
        } => {
            let up = one(key, Change::Set(value.to_vec()), condition, get);
            update(shared, session, vec![up], move |o| match (get, o.first()) {
                (true, Some(o)) => Reply::value(o.previous.clone()),
                (false, Some(o)) if o.applied => Reply::ok(),
                _ => Reply::Null,
            })
        }
        Command::SetNx(key, value) => {
            let up = one(key, Change::Set(value.to_vec()), Condition::IfAbsent, false);
            update(shared, session, vec![up], |o| {
                Reply::Integer(i64::from(o.first().is_some_and(|o| o.applied)))
            })
        }
        Command::GetSet(key, value) => {
            let up = one(key, Change::Set(value.to_vec()), Condition::Always, true);
            update(shared, session, vec![up], previous)
        }
        Command::GetDel(key) => {
            let up = one(key, Change::Delete, Condition::Always, true);
            update(shared, session, vec![up], previous)
        }
        Command::Del(keys) => {
            let ups = keys
                .into_iter()
                .map(|k| one(k, Change::Delete, Condition::Always, false))
                .collect();
            update(shared, session, ups, |o| {
                Reply::Integer(o.iter().filter(|o| o.applied).count() as i64)
            })
        }
        Command::MSet(pairs) => {
            let ups = pairs
                .into_iter()
                .map(|(k, v)| one(k, Change::Set(v.to_vec()), Condition::Always, false))
                .collect();
            update(shared, session, ups, |_| Reply::ok())
        }
        Command::IncrBy(key, by) => {
            let up = one(key, Change::IncrBy(by), Condition::Always, false);
            update(shared, session, vec![up], number)
        }
        Command::Append(key, value) => {
            let up = one(
                key,
                Change::Append(value.to_vec()),
                Condition::Always,
                false,
            );
            update(shared, session, vec![up], number)
        }
        Command::DbSize => db_size(shared),
        other => ready(local(other, session, shared)),
    }
}

/// `DBSIZE`: the keys of the shards this host leads, the way a Redis Cluster master counts
/// the keys of its slots (so the counts of all masters add up to the cluster's keys). Counted
/// in the host's LMDB off the runtime's threads; the latest few milliseconds of writes may
/// still be on their way there.
fn db_size(shared: &Arc<Shared>) -> Running {
    let picture = shared.topology.picture();
    let me = shared.topology.host();
    let slots: Vec<(Slot, Slot)> = picture
        .map
        .shards()
        .iter()
        .filter(|(shard, _)| picture.leader_of(**shard) == Some(me))
        .flat_map(|(_, entry)| entry.slots.iter().copied())
        .collect();
    let store = shared.store.clone();
    Box::pin(async move {
        // One scan at a time on a host: each is a read transaction as long as the scan, which
        // keeps LMDB from reusing the pages writes free meanwhile.
        static SCANS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
        let Ok(scanning) = SCANS.acquire().await else {
            return outcome(Reply::err("DBSIZE: the host is stopping"), None);
        };
        // The permit goes with the scan: a client that leaves does not stop it.
        let counted = tokio::task::spawn_blocking(move || {
            let rows = count_rows_in_slots(&store, &slots);
            drop(scanning);
            rows
        })
        .await;
        let reply = match counted {
            Ok(Ok(keys)) => Reply::Integer(i64::try_from(keys).unwrap_or(i64::MAX)),
            Ok(Err(e)) => Reply::err(format!("DBSIZE could not read the store: {e}")),
            Err(e) => Reply::err(format!("DBSIZE stopped: {e}")),
        };
        Outcome { reply, wrote: None }
    })
}

/// Answers a command that touches no data.
fn local(cmd: Command, session: &mut Session, shared: &Arc<Shared>) -> Reply {
    let topology = &shared.topology;
    match cmd {
        Command::Ping(None) => Reply::Status("PONG".into()),
        Command::Ping(Some(msg)) | Command::Echo(msg) => Reply::Bulk(msg),
        Command::Hello { protocol, setname } => {
            if let Some(p) = protocol {
                session.protocol = p;
            }
            if setname.is_some() {
                session.name = setname;
            }
            info::hello(session)
        }
        Command::ClientSetName(name) => {
            session.name = (!name.is_empty()).then_some(name);
            Reply::ok()
        }
        Command::ClientGetName => session.name.clone().map_or(Reply::Null, Reply::Bulk),
        Command::ClientId => Reply::Integer(i64::try_from(session.id).unwrap_or(i64::MAX)),
        Command::ClientSetInfo | Command::Select | Command::Quit => Reply::ok(),
        Command::CommandInfo(names) => command_table::info(&names),
        Command::CommandDocs => Reply::Map(Vec::new()),
        Command::CommandCount => Reply::Integer(command_table::count()),
        Command::Info(section) => Reply::text(info::info(section.as_deref(), shared)),
        Command::ConfigGet(patterns) => info::config_get(&patterns),
        Command::ReadOnly => {
            session.readonly = true;
            Reply::ok()
        }
        Command::ReadWrite => {
            session.readonly = false;
            Reply::ok()
        }
        Command::Wait => {
            // A write is acknowledged once a majority of its shard's voters hold it, so that
            // many replicas besides the leader hold every write this connection saw answered.
            let replicas = session.last_write.map_or(0, |shard| {
                let voters = topology.picture().map.voters_of(shard).count();
                (voters / 2 + 1).saturating_sub(1)
            });
            Reply::Integer(replicas as i64)
        }
        Command::Cluster(sub) => cluster(sub, topology),
        // Data commands never get here (see `start`).
        data => Reply::err(format!("internal: {data:?} is not a local command")),
    }
}

fn cluster(sub: ClusterCommand, topology: &Topology) -> Reply {
    match sub {
        ClusterCommand::Slots => topology.cluster_view().slots(),
        ClusterCommand::Shards => topology.cluster_view().shards(),
        ClusterCommand::Nodes => Reply::text(topology.cluster_view().nodes()),
        ClusterCommand::Info => Reply::text(topology.cluster_view().info()),
        ClusterCommand::MyId => Reply::text(topology.my_id()),
        ClusterCommand::KeySlot(key) => Reply::Integer(i64::from(slot(&key))),
    }
}

fn one(key: Bytes, change: Change, condition: Condition, return_previous: bool) -> KeyUpdate {
    KeyUpdate {
        key: key.to_vec(),
        change,
        condition,
        return_previous,
    }
}

fn previous(outcomes: &[UpdateOutcome]) -> Reply {
    Reply::value(outcomes.first().and_then(|o| o.previous.clone()))
}

fn number(outcomes: &[UpdateOutcome]) -> Reply {
    Reply::Integer(outcomes.first().map_or(0, |o| o.number))
}

/// Sends `op` to the router now; the future resolves to its answer.
fn send(shared: &Shared, session: &Session, op: Op) -> impl Future<Output = Response> + Send {
    let request = ClientRequest::ask(
        &shared.router,
        Request {
            client_id: session.id,
            seq: 0,
            op,
        },
    );
    async move {
        request
            .await
            .unwrap_or_else(|| Response::Internal("router stopped before answering".into()))
    }
}

/// A read of one key (`Op::Get`) or of several at one applied state (`Op::GetMany`), sent
/// now; `done` builds the reply from the values, in the keys' order.
fn read(
    shared: &Arc<Shared>,
    session: &Session,
    op: Op,
    done: impl FnOnce(Vec<Option<Vec<u8>>>) -> Reply + Send + 'static,
) -> Running {
    let first = send(shared, session, op.clone());
    let fut = settle(shared.clone(), session.id, op, first);
    Box::pin(async move {
        match fut.await {
            Ok(Response::Value(v)) => outcome(done(vec![v]), None),
            Ok(Response::Values(values)) => {
                outcome(done(values.into_iter().map(|v| v.0).collect()), None)
            }
            Ok(other) => outcome(unexpected(&other), None),
            Err(reply) => outcome(reply, None),
        }
    })
}

/// A write other than an update (a plain `SET`).
fn write(
    shared: &Arc<Shared>,
    session: &Session,
    op: Op,
    done: impl FnOnce(&Response) -> Reply + Send + 'static,
) -> Running {
    let key_slot = slot(op.key());
    let first = send(shared, session, op.clone());
    let topology = shared.topology.clone();
    let fut = settle(shared.clone(), session.id, op, first);
    Box::pin(async move {
        match fut.await {
            Ok(resp @ Response::Ok) => outcome(done(&resp), shard_of(&topology, key_slot)),
            Ok(other) => outcome(unexpected(&other), None),
            Err(reply) => outcome(reply, None),
        }
    })
}

/// An update of keys of one slot; `done` builds the reply from its outcomes.
fn update(
    shared: &Arc<Shared>,
    session: &Session,
    updates: Vec<KeyUpdate>,
    done: impl FnOnce(&[UpdateOutcome]) -> Reply + Send + 'static,
) -> Running {
    let op = Op::Update(updates);
    let key_slot = slot(op.key());
    let first = send(shared, session, op.clone());
    let topology = shared.topology.clone();
    let fut = settle(shared.clone(), session.id, op, first);
    Box::pin(async move {
        match fut.await {
            Ok(Response::Updated(outcomes)) => {
                outcome(done(&outcomes), shard_of(&topology, key_slot))
            }
            Ok(other) => outcome(unexpected(&other), None),
            Err(reply) => outcome(reply, None),
        }
    })
}

fn outcome(reply: Reply, wrote: Option<ShardId>) -> Outcome {
    let wrote = wrote.filter(|_| !reply.is_error());
    Outcome { reply, wrote }
}

fn shard_of(topology: &Topology, key_slot: Slot) -> Option<ShardId> {
    topology.picture().map.shard_of_slot(key_slot)
}
