//! ShardActor: the state machine of one shard's replica on this host.
//!
//! It applies committed commands to the shard's rows in LMDB, writing the applied index and the
//! client-session table in the same transaction, so a command is applied exactly once even when
//! a client retries it or the host crashes mid-apply. It completes waiting writes and serves
//! reads once the index they wait for is applied.

use std::collections::{BTreeMap, HashMap};

use actix::prelude::*;
use raft::eraftpb::{Entry, EntryType};
use shardkv_transport::wire::Response;
use shardkv_transport::ShardId;
use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use crate::error::ActorError;
use crate::messages::{
    Action, ApplyEntries, AwaitApply, Command, FailWaiters, Persist, ReadAt, WriteBatch, WriteOp,
};
use crate::schema::{decode_u64, kv_key, session_key, state_key, Schema, TableId, TAG_APPLIED};

/// A read waiting for its index: the key and where the answer goes.
type WaitingRead = (Vec<u8>, oneshot::Sender<Response>);
/// The outcome of one applied entry: (index, term, reply).
type Applied = (u64, u64, Response);

/// The actor; see the module docs.
pub struct ShardActor {
    shard: ShardId,
    schema: Schema,
    storage: Recipient<Persist>,
    /// Highest index whose effects are durable in `kv`.
    applied: u64,
    /// Writes waiting for their entry: index -> (term it was proposed in, reply).
    waiters: BTreeMap<u64, (u64, oneshot::Sender<Response>)>,
    /// Reads waiting for `applied` to reach an index.
    reads: BTreeMap<u64, Vec<WaitingRead>>,
}

impl ShardActor {
    /// A state machine over `schema` starting at the durable `applied` index.
    pub fn new(shard: ShardId, schema: Schema, storage: Recipient<Persist>, applied: u64) -> Self {
        ShardActor {
            shard,
            schema,
            storage,
            applied,
            waiters: BTreeMap::new(),
            reads: BTreeMap::new(),
        }
    }

    fn read(&self, key: &[u8]) -> Response {
        let res = (|| -> Result<Option<Vec<u8>>, ActorError> {
            let rtxn = self.schema.env.read_txn()?;
            Ok(self
                .schema
                .kv
                .get(&rtxn, &kv_key(self.shard, key))?
                .map(|v| v.to_vec()))
        })();
        match res {
            Ok(v) => Response::Value(v),
            Err(e) => Response::Internal(format!("read failed: {e}")),
        }
    }

    /// The last applied seq of a client session and the reply it got.
    fn session(&self, client_id: u64) -> Result<(u64, Option<Response>), ActorError> {
        let rtxn = self.schema.env.read_txn()?;
        match self
            .schema
            .sessions
            .get(&rtxn, &session_key(self.shard, client_id))?
        {
            Some(v) if v.len() >= 8 => {
                let seq = decode_u64("session seq", &v[..8])?;
                let reply = postcard::from_bytes(&v[8..]).ok();
                Ok((seq, reply))
            }
            Some(v) => Err(ActorError::Corrupt {
                what: format!("session of client {client_id:#x}"),
                detail: format!("{} bytes", v.len()),
            }),
            None => Ok((0, None)),
        }
    }

    /// The current value of `key`, seeing writes planned earlier in the same batch.
    fn current(
        &self,
        overlay: &HashMap<Vec<u8>, Option<Vec<u8>>>,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, ActorError> {
        if let Some(v) = overlay.get(key) {
            return Ok(v.clone());
        }
        let rtxn = self.schema.env.read_txn()?;
        Ok(self
            .schema
            .kv
            .get(&rtxn, &kv_key(self.shard, key))?
            .map(|v| v.to_vec()))
    }

    /// Turns committed entries into one write batch, and the result of each entry.
    fn plan(&self, entries: &[Entry]) -> Result<(WriteBatch, Vec<Applied>), ActorError> {
        let mut batch = WriteBatch::default();
        let mut results = Vec::with_capacity(entries.len());
        // Sessions and values touched earlier in this batch (later entries must see them).
        let mut sessions: HashMap<u64, (u64, Option<Response>)> = HashMap::new();
        let mut overlay: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut last = self.applied;
        for e in entries {
            if e.index <= self.applied {
                // Already applied before a restart; raft-rs may hand it again.
                continue;
            }
            assert_eq!(
                e.index,
                last + 1,
                "shard {} applies out of order",
                self.shard
            );
            last = e.index;
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                // Leader no-ops (and, later, membership changes) change no data.
                continue;
            }
            let cmd: Command =
                postcard::from_bytes(&e.data).map_err(|err| ActorError::Corrupt {
                    what: format!("command at index {} of shard {}", e.index, self.shard),
                    detail: err.to_string(),
                })?;
            if cmd.seq != 0 {
                let (seen, reply) = match sessions.get(&cmd.client_id) {
                    Some(s) => s.clone(),
                    None => self.session(cmd.client_id)?,
                };
                if cmd.seq <= seen {
                    // A retry of a write already applied: answer what the first one got.
                    debug!(
                        shard = self.shard,
                        client = cmd.client_id,
                        seq = cmd.seq,
                        "duplicate write"
                    );
                    let resp = match reply {
                        Some(r) if cmd.seq == seen => r,
                        _ => Response::Unavailable(
                            "superseded by a later write of this session".into(),
                        ),
                    };
                    results.push((e.index, e.term, resp));
                    continue;
                }
            }
            let resp = match cmd.action {
                Action::Put { key, value } => {
                    overlay.insert(key.clone(), Some(value.clone()));
                    batch
                        .ops
                        .push(WriteOp::Put(TableId::Kv, kv_key(self.shard, &key), value));
                    Response::Ok
                }
                Action::Delete { key } => {
                    batch
                        .ops
                        .push(WriteOp::Delete(TableId::Kv, kv_key(self.shard, &key)));
                    overlay.insert(key, None);
                    Response::Ok
                }
                Action::Cas { key, expected, new } => {
                    let current = self.current(&overlay, &key)?;
                    if current == expected {
                        match &new {
                            Some(v) => batch.ops.push(WriteOp::Put(
                                TableId::Kv,
                                kv_key(self.shard, &key),
                                v.clone(),
                            )),
                            None => batch
                                .ops
                                .push(WriteOp::Delete(TableId::Kv, kv_key(self.shard, &key))),
                        }
                        overlay.insert(key, new);
                        Response::CasOk
                    } else {
                        Response::CasFailed { current }
                    }
                }
            };
            if cmd.seq != 0 {
                let mut record = cmd.seq.to_be_bytes().to_vec();
                let reply = postcard::to_allocvec(&resp).map_err(|err| ActorError::Corrupt {
                    what: "session reply".into(),
                    detail: err.to_string(),
                })?;
                record.extend_from_slice(&reply);
                batch.ops.push(WriteOp::Put(
                    TableId::Sessions,
                    session_key(self.shard, cmd.client_id).to_vec(),
                    record,
                ));
                sessions.insert(cmd.client_id, (cmd.seq, Some(resp.clone())));
            }
            results.push((e.index, e.term, resp));
        }
        if last > self.applied {
            batch.ops.push(WriteOp::Put(
                TableId::RaftState,
                state_key(self.shard, TAG_APPLIED).to_vec(),
                last.to_be_bytes().to_vec(),
            ));
        }
        Ok((batch, results))
    }

    fn on_applied(&mut self, last: u64, results: Vec<Applied>) {
        self.applied = last;
        for (index, term, resp) in results {
            if let Some((want_term, reply)) = self.waiters.remove(&index) {
                if want_term == term {
                    let _ = reply.send(resp);
                } else {
                    let _ = reply.send(Response::Unavailable(
                        "leadership changed before commit; retry".into(),
                    ));
                }
            }
        }
        // Waiters at or below `last` whose entry was a no-op of another term lost their slot.
        let later = self.waiters.split_off(&(last + 1));
        for (_, (_, reply)) in std::mem::replace(&mut self.waiters, later) {
            let _ = reply.send(Response::Unavailable(
                "leadership changed before commit; retry".into(),
            ));
        }
        let later = self.reads.split_off(&(last + 1));
        let ready = std::mem::replace(&mut self.reads, later);
        for (_, reads) in ready {
            for (key, reply) in reads {
                let _ = reply.send(self.read(&key));
            }
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(usize::MAX);
    }
}

impl Handler<ApplyEntries> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: ApplyEntries, ctx: &mut Self::Context) {
        let Some(last) = msg.0.last().map(|e| e.index) else {
            return;
        };
        if last <= self.applied {
            return;
        }
        let (batch, results) = match self.plan(&msg.0) {
            Ok(p) => p,
            Err(e) => {
                error!(shard = self.shard, error = %e, "cannot apply committed entries; stopping shard");
                ctx.stop();
                return;
            }
        };
        // Applies are strictly sequential: the next batch must see this one's sessions.
        let persist = self.storage.send(Persist(batch));
        ctx.wait(persist.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Ok(())) => act.on_applied(last, results),
            Ok(Err(e)) => {
                error!(shard = act.shard, error = %e, "apply not persisted; stopping shard");
                ctx.stop();
            }
            Err(e) => {
                error!(shard = act.shard, error = %e, "storage unreachable; stopping shard");
                ctx.stop();
            }
        }));
    }
}

impl Handler<AwaitApply> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: AwaitApply, _: &mut Self::Context) {
        if msg.index <= self.applied {
            warn!(
                shard = self.shard,
                index = msg.index,
                "waiter for an index already applied"
            );
            let _ = msg.reply.send(Response::Unavailable(
                "proposal raced with apply; retry".into(),
            ));
            return;
        }
        if let Some((_, old)) = self.waiters.insert(msg.index, (msg.term, msg.reply)) {
            let _ = old.send(Response::Unavailable(
                "leadership changed before commit; retry".into(),
            ));
        }
    }
}

impl Handler<ReadAt> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: ReadAt, _: &mut Self::Context) {
        if msg.index <= self.applied {
            let _ = msg.reply.send(self.read(&msg.key));
        } else {
            self.reads
                .entry(msg.index)
                .or_default()
                .push((msg.key, msg.reply));
        }
    }
}

impl Handler<FailWaiters> for ShardActor {
    type Result = ();

    fn handle(&mut self, msg: FailWaiters, _: &mut Self::Context) {
        for (_, (_, reply)) in std::mem::take(&mut self.waiters) {
            let _ = reply.send(msg.0.clone());
        }
    }
}
