//! In-process tests of one connection: raw RESP bytes in, replies out, against a stand-in
//! router that keeps keys in memory (and answers `NotLeader` for keys starting with
//! `elsewhere`), so the pipeline, the replies and the redirections are checked without
//! Raft or LMDB.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use actix::prelude::*;
use shardkv_actors::messages::ClientRequest;
use shardkv_actors::schema::Schema;
use shardkv_transport::wire::{Change, Condition, Op, ReadValue, Response, UpdateOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::resp::topology::test_topology;

/// Keys in a map, changed as the shard state machine would.
#[derive(Default)]
struct FakeRouter {
    values: HashMap<Vec<u8>, Vec<u8>>,
}

impl Actor for FakeRouter {
    type Context = Context<Self>;
}

impl Handler<ClientRequest> for FakeRouter {
    type Result = ();

    fn handle(&mut self, msg: ClientRequest, _: &mut Context<Self>) {
        let _ = msg.reply.send(self.answer(msg.request.op));
    }
}

impl FakeRouter {
    fn answer(&mut self, op: Op) -> Response {
        if op.key().starts_with(b"elsewhere") {
            return Response::NotLeader {
                shard: 2,
                leader: Some(2),
            };
        }
        match op {
            Op::Get { key, .. } => Response::Value(self.values.get(&key).cloned()),
            Op::GetMany { keys, .. } => Response::Values(
                keys.iter()
                    .map(|k| ReadValue(self.values.get(k).cloned()))
                    .collect(),
            ),
            Op::Put { key, value } => {
                self.values.insert(key, value);
                Response::Ok
            }
            Op::Update(updates) => {
                let mut outcomes = Vec::new();
                for u in updates {
                    let previous = self.values.get(&u.key).cloned();
                    let holds = match u.condition {
                        Condition::Always => true,
                        Condition::IfAbsent => previous.is_none(),
                        Condition::IfPresent => previous.is_some(),
                    };
                    let mut out = UpdateOutcome {
                        applied: holds,
                        previous: previous.clone().filter(|_| u.return_previous),
                        number: 0,
                    };
                    if holds {
                        match u.change {
                            Change::Set(v) => {
                                self.values.insert(u.key, v);
                            }
                            Change::Delete => out.applied = self.values.remove(&u.key).is_some(),
                            Change::IncrBy(by) => {
                                let now = previous
                                    .and_then(|v| String::from_utf8(v).ok())
                                    .and_then(|s| s.parse::<i64>().ok())
                                    .unwrap_or(0)
                                    + by;
                                self.values.insert(u.key, now.to_string().into_bytes());
                                out.number = now;
                            }
                            Change::Append(v) => {
                                let entry = self.values.entry(u.key).or_default();
                                entry.extend(v);
                                out.number = entry.len() as i64;
                            }
                        }
                    }
                    outcomes.push(out);
                }
                Response::Updated(outcomes)
            }
            other => Response::Invalid(format!("not faked: {other:?}")),
        }
    }
}

fn shared(router: Recipient<ClientRequest>) -> Arc<Shared> {
    Arc::new(Shared {
        router,
        topology: Arc::new(test_topology(&[1, 2, 3])),
        forward: None,
        addr: SocketAddr::from(([127, 0, 0, 1], 6101)),
        connections: AtomicUsize::new(0),
        started: Instant::now(),
        // The open environment keeps its files once the directory is gone.
        store: Schema::open(
            tempfile::tempdir().expect("temp dir").path(),
            1 << 24,
            "t",
            1,
        )
        .expect("a store"),
    })
}

/// A connection served in-process; the test holds the client end.
fn connect() -> DuplexStream {
    let router = FakeRouter::default().start().recipient();
    let (client, server) = tokio::io::duplex(1 << 16);
    let limits = Limits::for_values(1024);
    actix_rt::spawn(serve(server, shared(router), 7, limits));
    client
}

/// Reads until `expected` bytes arrived (or the connection closed, or 5 s passed).
async fn read_reply(client: &mut DuplexStream, expected: usize) -> String {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < expected {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// `words` as a RESP command.
fn command(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend(format!("${}\r\n{w}\r\n", w.len()).into_bytes());
    }
    out
}

async fn exchange(client: &mut DuplexStream, commands: &[&[&str]], expected: &str) {
    let bytes: Vec<u8> = commands.iter().flat_map(|c| command(c)).collect();
    client.write_all(&bytes).await.expect("write");
    assert_eq!(read_reply(client, expected.len()).await, expected);
}

#[actix_rt::test]
async fn a_pipeline_is_answered_in_command_order() {
    let mut client = connect();
    exchange(
        &mut client,
        &[
            &["SET", "a", "1"],
            &["GET", "a"],
            &["INCR", "n"],
            &["INCRBY", "n", "41"],
            &["GET", "n"],
            &["PING"],
            &["APPEND", "a", "23"],
            &["MGET", "a", "{a}missing"],
            &["DEL", "a"],
            &["EXISTS", "a"],
        ],
        "+OK\r\n$1\r\n1\r\n:1\r\n:42\r\n$2\r\n42\r\n+PONG\r\n:3\r\n\
         *2\r\n$3\r\n123\r\n$-1\r\n:1\r\n:0\r\n",
    )
    .await;
}

#[actix_rt::test]
async fn conditional_sets_answer_as_redis_does() {
    let mut client = connect();
    exchange(
        &mut client,
        &[
            &["SET", "k", "v1", "XX"],
            &["SETNX", "k", "v1"],
            &["SETNX", "k", "v2"],
            &["SET", "k", "v3", "GET"],
            &["GETSET", "k", "v4"],
            &["GETDEL", "k"],
            &["TYPE", "k"],
        ],
        "$-1\r\n:1\r\n:0\r\n$2\r\nv1\r\n$2\r\nv3\r\n$2\r\nv4\r\n+none\r\n",
    )
    .await;
}

#[actix_rt::test]
async fn a_key_led_elsewhere_is_moved_to_the_leaders_resp_address() {
    let mut client = connect();
    let slot = shardkv_transport::slot::slot(b"elsewhere");
    exchange(
        &mut client,
        &[&["GET", "elsewhere"]],
        &format!("-MOVED {slot} 127.0.0.1:6102\r\n"),
    )
    .await;
}

#[actix_rt::test]
async fn hello_3_switches_the_replies_to_resp3() {
    let mut session = Session::new(7);
    session.protocol = Protocol::Resp3;
    let mut hello = BytesMut::new();
    crate::resp::info::hello(&session).encode(Protocol::Resp3, &mut hello);
    let hello = String::from_utf8_lossy(&hello).into_owned();
    assert!(
        hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
        "{hello:?}"
    );
    let mut client = connect();
    exchange(
        &mut client,
        &[
            &["HELLO", "3"],
            &["GET", "missing"],
            &["HELLO", "2"],
            &["GET", "missing"],
        ],
        &format!(
            "{hello}_\r\n{}$-1\r\n",
            hello
                .replace(":3\r\n", ":2\r\n")
                .replacen("%7\r\n", "*14\r\n", 1)
        ),
    )
    .await;
}

#[actix_rt::test]
async fn a_protocol_error_is_answered_and_the_connection_closed() {
    let mut client = connect();
    client.write_all(b"*1\r\n$999999\r\n").await.expect("write");
    let reply = read_reply(&mut client, 1 << 20).await;
    assert!(
        reply.starts_with("-ERR Protocol error: invalid bulk length 999999"),
        "{reply:?}"
    );
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).await.expect("read"), 0, "closed");
}

#[actix_rt::test]
async fn quit_answers_ok_and_closes() {
    let mut client = connect();
    exchange(&mut client, &[&["QUIT"]], "+OK\r\n").await;
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).await.expect("read"), 0, "closed");
}

#[actix_rt::test]
async fn wait_counts_the_replicas_holding_the_last_write() {
    let mut client = connect();
    exchange(
        &mut client,
        &[&["WAIT", "1", "0"], &["SET", "w", "1"], &["WAIT", "2", "0"]],
        ":0\r\n+OK\r\n:1\r\n",
    )
    .await;
}

/// Slots below 100 are shard 1's, the rest shard 2's.
fn shard_of(slot: Slot) -> Option<ShardId> {
    Some(if slot < 100 { 1 } else { 2 })
}

#[test]
fn consecutive_reads_run_together() {
    assert!(joins(Class::Read(5), None, false, shard_of));
    assert!(joins(Class::Read(500), Some(Group::Reads), false, shard_of));
}

#[test]
fn writes_to_one_shard_run_together_and_to_another_wait() {
    let writes_1 = Some(Group::Writes(Some(1)));
    assert!(joins(Class::Write(5), writes_1, false, shard_of));
    assert!(!joins(Class::Write(500), writes_1, false, shard_of));
    assert!(
        !joins(Class::Write(5), Some(Group::Writes(None)), false, shard_of),
        "a slot the map has no shard for joins nothing"
    );
}

#[test]
fn reads_and_writes_wait_for_each_other() {
    assert!(!joins(
        Class::Read(5),
        Some(Group::Writes(Some(1))),
        false,
        shard_of
    ));
    assert!(!joins(Class::Write(5), Some(Group::Reads), false, shard_of));
}

#[test]
fn wait_waits_for_everything_and_local_commands_for_nothing() {
    assert!(!joins(Class::Barrier, Some(Group::Reads), false, shard_of));
    assert!(!joins(
        Class::Barrier,
        Some(Group::Writes(Some(1))),
        false,
        shard_of
    ));
    assert!(joins(Class::Barrier, None, false, shard_of));
    assert!(joins(
        Class::Local,
        Some(Group::Writes(Some(1))),
        false,
        shard_of
    ));
    // Nothing joins a barrier in flight: one DBSIZE scan at a time, in order.
    assert!(!joins(
        Class::Barrier,
        Some(Group::Barrier),
        false,
        shard_of
    ));
    assert!(!joins(
        Class::Read(5),
        Some(Group::Barrier),
        false,
        shard_of
    ));
    assert!(joins(Class::Local, Some(Group::Barrier), false, shard_of));
}

#[test]
fn a_forwarding_host_runs_each_write_alone() {
    // A forwarded write travels over a connection of its own, so only one at a time keeps
    // the connection's order.
    let writes_1 = Some(Group::Writes(Some(1)));
    assert!(!joins(Class::Write(5), writes_1, true, shard_of));
    assert!(joins(Class::Write(5), None, true, shard_of));
    assert!(joins(Class::Read(5), Some(Group::Reads), true, shard_of));
}
