//! ShardActor: the state machine of one shard's replica on this host.
//!
//! It applies committed commands to the shard's rows in LMDB, writing the applied index and the
//! client-session table in the same transaction, so a command is applied exactly once even when
//! a client retries it or the host crashes mid-apply. It completes waiting writes and serves
//! reads once the index they wait for is applied.
//!
//! Applying does not wait for its own fsync: a committed entry is already durable on a
//! majority in the Raft log, so after a crash it is simply applied again from the log (the
//! durable applied index and the sessions move together). The effects of batches still on
//! their way to disk are kept in an in-memory overlay that reads and later applies consult
//! first, so replies and reads never wait for the apply's fsync. (TiKV's apply works the same
//! way.)

use std::collections::{BTreeMap, HashMap};

use actix::prelude::*;
use raft::eraftpb::{Entry, EntryType};
use shardkv_transport::wire::Response;
use shardkv_transport::ShardId;
use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use crate::error::ActorError;
use crate::messages::{
    Action, ApplyEntries, AwaitApply, Command, FailWaiters, InstallSnapshot, Persist, PersistLazy,
    ReadAt, WriteBatch, WriteOp,
};
use crate::schema::raft_records;
use crate::schema::session_record::{decode_session, encode_session};
use crate::schema::{kv_key, log_key, session_key, Schema, TableId};

/// A read waiting for its index: the key and where the answer goes.
type WaitingRead = (Vec<u8>, oneshot::Sender<Response>);
/// A client session: (last applied seq, log time of that write in ms, its reply).
type SessionState = (u64, u64, Option<Response>);

/// How long a client session may stay idle (in log time) before it is forgotten. A client
/// retries a write only within its deadline (seconds), so a session this old can have no
/// retry in flight; forgetting it keeps the table bounded by the clients active recently.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// Sessions are swept at every log index divisible by this.
const SESSION_SWEEP_EVERY: u64 = 4096;

/// The outcome of one applied entry: (index, term, reply).
type Applied = (u64, u64, Response);

/// What applying a run of entries produces: the LMDB writes, each entry's reply, and the
/// values and sessions it changed (for the overlay).
struct Plan {
    batch: WriteBatch,
    results: Vec<Applied>,
    values: HashMap<Vec<u8>, Option<Vec<u8>>>,
    sessions: HashMap<u64, SessionState>,
}

/// The actor; see the module docs.
pub struct ShardActor {
    shard: ShardId,
    schema: Schema,
    storage: Addr<crate::storage::StorageActor>,
    /// Highest index applied (visible to reads through the overlay).
    applied: u64,
    /// Values written by batches not yet committed to LMDB: key -> (batch, value).
    overlay: HashMap<Vec<u8>, (u64, Option<Vec<u8>>)>,
    /// Sessions touched by batches not yet committed: client -> (batch, seq, reply).
    session_overlay: HashMap<u64, (u64, SessionState)>,
    /// Number of the last apply batch sent to storage.
    batch_seq: u64,
    /// Apply batches sent to storage and not yet committed.
    in_flight: usize,
    /// Highest index whose apply batch is committed to LMDB.
    durable_applied: u64,
    /// The log is compacted up to here (inclusive).
    compacted: u64,
    /// Compact every this many applied entries, keeping the last `keep` (None: never).
    compaction: Option<Compaction>,
    /// Writes waiting for their entry: index -> (term it was proposed in, reply).
    waiters: BTreeMap<u64, (u64, oneshot::Sender<Response>)>,
    /// Reads waiting for `applied` to reach an index.
    reads: BTreeMap<u64, Vec<WaitingRead>>,
}

impl ShardActor {
    /// A state machine over `schema` starting at the durable `applied` index.
    pub fn new(
        shard: ShardId,
        schema: Schema,
        storage: Addr<crate::storage::StorageActor>,
        applied: u64,
        compaction: Option<Compaction>,
    ) -> Result<Self, ActorError> {
        let (compacted, _) = raft_records::truncated_state(&schema, shard)?;
        Ok(ShardActor {
            durable_applied: applied,
            compacted,
            compaction,
            shard,
            schema,
            storage,
            applied,
            overlay: HashMap::new(),
            session_overlay: HashMap::new(),
            batch_seq: 0,
            in_flight: 0,
            waiters: BTreeMap::new(),
            reads: BTreeMap::new(),
        })
    }

    /// Every `after` durably applied entries, drop the log up to `keep` entries before the
    /// durable applied index; a follower that needs older entries gets a snapshot instead.
    fn maybe_compact(&mut self) {
        let Some(c) = self.compaction else { return };
        // Cheap test first: this runs after every durable apply batch.
        if self.durable_applied.saturating_sub(c.keep) < self.compacted + c.after {
            return;
        }
        // Never past the stored commit index: on restart raft-rs requires the log's start to
        // be at or below it (a commit-only change of the hard state is stored lazily).
        let stored_commit = raft_records::hard_state(&self.schema, self.shard)
            .map(|hs| hs.commit)
            .unwrap_or(0);
        let upto = self
            .durable_applied
            .saturating_sub(c.keep)
            .min(stored_commit);
        if upto < self.compacted + c.after {
            return;
        }
        let term = match raft_records::durable_term(&self.schema, self.shard, upto) {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                warn!(shard = self.shard, error = %e, "cannot read the term for compaction");
                return;
            }
        };
        let ops = vec![
            WriteOp::DeleteRange(
                TableId::RaftLog,
                log_key(self.shard, 0).to_vec(),
                log_key(self.shard, upto + 1).to_vec(),
            ),
            raft_records::truncated_op(self.shard, upto, term),
        ];
        debug!(shard = self.shard, upto, "compacting the Raft log");
        self.compacted = upto;
        self.storage.do_send(PersistLazy(WriteBatch { ops }));
    }

    fn read(&self, key: &[u8]) -> Response {
        match self.applied_value(key) {
            Ok(v) => Response::Value(v),
            Err(e) => Response::Internal(format!("read failed: {e}")),
        }
    }

    /// The value of `key` as applied so far: the overlay of batches on their way to disk,
    /// then LMDB.
    fn applied_value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ActorError> {
        if let Some((_, v)) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        let rtxn = self.schema.env.read_txn()?;
        Ok(self
            .schema
            .kv
            .get(&rtxn, &kv_key(self.shard, key))?
            .map(|v| v.to_vec()))
    }

    /// The last applied seq of a client session and the reply it got.
    fn session(&self, client_id: u64) -> Result<SessionState, ActorError> {
        if let Some((_, state)) = self.session_overlay.get(&client_id) {
            return Ok(state.clone());
        }
        let rtxn = self.schema.env.read_txn()?;
        match self
            .schema
            .sessions
            .get(&rtxn, &session_key(self.shard, client_id))?
        {
            Some(v) => decode_session(v).map(|s| (s.seq, s.last_ms, s.reply)),
            None => Ok((0, 0, None)),
        }
    }

    /// Deletes sessions idle for longer than [`SESSION_TTL_MS`] of log time, as of `now_ms`.
    /// Runs at the same log indexes on every replica and judges the logical session table
    /// (this batch's plan over the overlay over LMDB), never what happens to be on disk yet,
    /// so every replica keeps the same sessions. Deleted sessions are recorded in `planned`
    /// as absent, so later entries of the same batch see them gone.
    fn expire_sessions(
        &self,
        now_ms: u64,
        planned: &mut HashMap<u64, SessionState>,
        batch: &mut WriteBatch,
    ) -> Result<usize, ActorError> {
        let rtxn = self.schema.env.read_txn()?;
        let mut clients: Vec<u64> = Vec::new();
        for item in self
            .schema
            .sessions
            .prefix_iter(&rtxn, &self.shard.to_be_bytes())?
        {
            let (k, v) = item?;
            let Some(client) = k.get(4..12).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                continue;
            };
            let client = u64::from_be_bytes(client);
            if !planned.contains_key(&client) && !self.session_overlay.contains_key(&client) {
                // Only on disk: its record decides (and is decoded only here).
                if decode_session(v)?.last_ms.saturating_add(SESSION_TTL_MS) < now_ms {
                    clients.push(client);
                }
            }
        }
        drop(rtxn);
        // Sessions with a newer record in memory: that record decides.
        for (client, (seq, last_ms, _)) in planned.iter().map(|(c, s)| (*c, s)).chain(
            self.session_overlay
                .iter()
                .filter(|(c, _)| !planned.contains_key(c))
                .map(|(c, (_, s))| (*c, s)),
        ) {
            if *seq != 0 && last_ms.saturating_add(SESSION_TTL_MS) < now_ms {
                clients.push(client);
            }
        }
        for client in &clients {
            batch.ops.push(WriteOp::Delete(
                TableId::Sessions,
                session_key(self.shard, *client).to_vec(),
            ));
            planned.insert(*client, (0, 0, None));
        }
        Ok(clients.len())
    }

    /// The current value of `key`, seeing writes planned earlier in the same batch.
    fn current(
        &self,
        overlay: &HashMap<Vec<u8>, Option<Vec<u8>>>,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, ActorError> {
        match overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.applied_value(key),
        }
    }

    /// Turns committed entries into one write batch, and the result of each entry.
    fn plan(&self, entries: &[Entry]) -> Result<Plan, ActorError> {
        let mut batch = WriteBatch::default();
        let mut results = Vec::with_capacity(entries.len());
        // Sessions and values touched earlier in this batch (later entries must see them).
        let mut sessions: HashMap<u64, SessionState> = HashMap::new();
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
            if e.index % SESSION_SWEEP_EVERY == 0 {
                let expired = self.expire_sessions(cmd.time_ms, &mut sessions, &mut batch)?;
                if expired > 0 {
                    debug!(shard = self.shard, expired, "idle client sessions expired");
                }
            }
            if cmd.seq != 0 {
                let (seen, _, reply) = match sessions.get(&cmd.client_id) {
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
                batch.ops.push(WriteOp::Put(
                    TableId::Sessions,
                    session_key(self.shard, cmd.client_id).to_vec(),
                    encode_session(cmd.seq, cmd.time_ms, &resp)?,
                ));
                sessions.insert(cmd.client_id, (cmd.seq, cmd.time_ms, Some(resp.clone())));
            }
            results.push((e.index, e.term, resp));
        }
        if last > self.applied {
            batch.ops.push(raft_records::applied_op(self.shard, last));
        }
        Ok(Plan {
            batch,
            results,
            values: overlay,
            sessions,
        })
    }

    fn on_applied(&mut self, last: u64, results: Vec<Applied>) {
        crate::metrics::metrics()
            .raft_applied_entries
            .get_or_create(&crate::metrics::ShardLabels { shard: self.shard })
            .inc_by(last.saturating_sub(self.applied));
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
        ctx.set_mailbox_capacity(crate::MAILBOX_CAPACITY);
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
        let plan = match self.plan(&msg.0) {
            Ok(p) => p,
            Err(e) => {
                error!(shard = self.shard, error = %e, "cannot apply committed entries; stopping shard");
                ctx.stop();
                return;
            }
        };
        // Make the batch visible through the overlay, answer its writers and the reads it
        // unblocks, then let storage commit it in the background (in order, with others).
        self.batch_seq += 1;
        let seq = self.batch_seq;
        for (k, v) in plan.values {
            self.overlay.insert(k, (seq, v));
        }
        for (client, state) in plan.sessions {
            self.session_overlay.insert(client, (seq, state));
        }
        self.on_applied(last, plan.results);
        self.in_flight += 1;
        let persist = self.storage.send(PersistLazy(plan.batch));
        let done = persist.into_actor(self).map(move |res, act, _ctx| {
            act.in_flight -= 1;
            match res {
                Ok(Ok(())) => {
                    act.overlay.retain(|_, (b, _)| *b != seq);
                    act.session_overlay.retain(|_, (b, _)| *b != seq);
                    act.durable_applied = act.durable_applied.max(last);
                    act.maybe_compact();
                }
                Ok(Err(e)) => fatal(act.shard, &e.to_string()),
                Err(e) => fatal(act.shard, &e.to_string()),
            }
        });
        if self.in_flight > APPLY_BATCHES_IN_FLIGHT_MAX {
            // Storage is behind: stop taking work until this batch is down (bounds the overlay).
            ctx.wait(done);
        } else {
            ctx.spawn(done);
        }
    }
}

/// When to compact the Raft log (see [`ShardActor`]).
#[derive(Debug, Clone, Copy)]
pub struct Compaction {
    pub after: u64,
    pub keep: u64,
}

impl Handler<InstallSnapshot> for ShardActor {
    type Result = ResponseActFuture<Self, Result<(), ActorError>>;

    /// Replaces the shard's rows and sessions by the snapshot's, and the log by the
    /// snapshot point, in one transaction with the replica's conf and hard state. The file is
    /// checked through on a blocking thread first, then streamed into LMDB by the writer
    /// thread: neither this actor's thread nor memory carries the snapshot.
    fn handle(&mut self, msg: InstallSnapshot, _: &mut Self::Context) -> Self::Result {
        let shard = self.shard;
        // No compaction may be queued from now on: computed from the state before the
        // install, it would commit after it and move the log's start below the snapshot.
        self.compacted = self.compacted.max(msg.index);
        let check_path = msg.path.clone();
        let verified = tokio::task::spawn_blocking(move || crate::snapshot::verify(&check_path));
        let InstallSnapshot {
            index,
            term,
            path,
            raft_ops,
        } = msg;
        let (lo, hi) = crate::snapshot::shard_range(shard);
        let mut ops = vec![
            WriteOp::DeleteRange(TableId::Kv, lo.clone(), hi.clone()),
            WriteOp::DeleteRange(TableId::Sessions, lo, hi),
            WriteOp::DeleteRange(
                TableId::RaftLog,
                log_key(shard, 0).to_vec(),
                log_key(shard, u64::MAX).to_vec(),
            ),
            WriteOp::LoadSnapshot(shard, path.clone()),
            raft_records::applied_op(shard, index),
            raft_records::truncated_op(shard, index, term),
        ];
        ops.extend(raft_ops);
        let storage = self.storage.clone();
        let check = async move {
            let meta = verified
                .await
                .map_err(|e| ActorError::Storage(format!("snapshot check: {e}")))??;
            if meta.shard != shard || meta.index != index || meta.term != term {
                return Err(ActorError::Corrupt {
                    what: format!("snapshot {}", path.display()),
                    detail: format!("is {meta:?}, expected shard {shard} at {index}/{term}"),
                });
            }
            storage
                .send(Persist(WriteBatch { ops }))
                .await
                .map_err(|_| ActorError::StorageGone)??;
            Ok(path)
        };
        Box::pin(check.into_actor(self).map(move |res, act, _| {
            let path = res?;
            let _ = std::fs::remove_file(&path);
            {
                act.overlay.clear();
                act.session_overlay.clear();
                act.applied = index;
                act.durable_applied = index;
                act.compacted = index;
                for (_, (_, reply)) in std::mem::take(&mut act.waiters) {
                    let _ = reply.send(Response::Unavailable(
                        "replica replaced by a snapshot; retry".into(),
                    ));
                }
                act.on_applied(index, Vec::new());
            }
            Ok(())
        }))
    }
}

/// Apply batches that may be on their way to disk at once; past this, apply waits.
pub(crate) const APPLY_BATCHES_IN_FLIGHT_MAX: usize = 64;

/// An applied batch could not be stored: memory and disk now disagree. The only safe move is
/// to stop the host; on restart it re-applies from the durable Raft log.
fn fatal(shard: ShardId, error: &str) {
    error!(
        shard,
        error, "applied batch could not be stored; exiting so a restart re-applies it from the log"
    );
    std::process::exit(70);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{commit, StorageActor};
    use shardkv_transport::wire::Response;

    fn put_entry(index: u64, client: u64, seq: u64, time_ms: u64, key: &[u8]) -> Entry {
        let cmd = Command {
            client_id: client,
            seq,
            time_ms,
            action: Action::Put {
                key: key.to_vec(),
                value: b"v".to_vec(),
            },
        };
        let mut e = Entry::default();
        e.index = index;
        e.term = 1;
        e.data = postcard::to_allocvec(&cmd).unwrap().into();
        e
    }

    fn session_exists(schema: &Schema, client: u64) -> bool {
        let rtxn = schema.env.read_txn().unwrap();
        schema
            .sessions
            .get(&rtxn, &session_key(1, client))
            .unwrap()
            .is_some()
    }

    #[actix_rt::test]
    async fn idle_sessions_expire_and_live_ones_keep_deduplicating() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::open(dir.path(), 1 << 26, "t", 1).unwrap();
        let storage = StorageActor::new(schema.clone()).unwrap().start();
        let base = SESSION_SWEEP_EVERY * 2;
        let t0 = 1_700_000_000_000;

        // Client 9 writes once and goes quiet; client 8 writes a full TTL later.
        let shard = ShardActor::new(1, schema.clone(), storage.clone(), base - 3, None).unwrap();
        let plan = shard
            .plan(&[
                put_entry(base - 2, 9, 1, t0, b"a"),
                put_entry(base - 1, 8, 1, t0 + SESSION_TTL_MS, b"b"),
            ])
            .unwrap();
        commit(&schema, vec![plan.batch]).unwrap();
        assert!(session_exists(&schema, 9) && session_exists(&schema, 8));

        // The sweep at `base`, 1 ms past client 9's TTL: 9 goes, 8 (idle 1 ms) stays.
        let shard = ShardActor::new(1, schema.clone(), storage.clone(), base - 1, None).unwrap();
        let plan = shard
            .plan(&[put_entry(base, 7, 1, t0 + SESSION_TTL_MS + 1, b"c")])
            .unwrap();
        commit(&schema, vec![plan.batch]).unwrap();
        assert!(!session_exists(&schema, 9), "an idle session is forgotten");
        assert!(session_exists(&schema, 8), "a live session is kept");
        assert!(session_exists(&schema, 7));

        // The live client's retry is still answered from its session, not applied again.
        let shard = ShardActor::new(1, schema.clone(), storage, base, None).unwrap();
        let plan = shard
            .plan(&[put_entry(
                base + 1,
                8,
                1,
                t0 + SESSION_TTL_MS + 2,
                b"b-again",
            )])
            .unwrap();
        assert_eq!(plan.results, vec![(base + 1, 1, Response::Ok)]);
        assert!(
            !plan
                .batch
                .ops
                .iter()
                .any(|op| matches!(op, WriteOp::Put(TableId::Kv, ..))),
            "the duplicate wrote nothing"
        );
    }

    /// Applies `entries` to a fresh shard in runs cut at `cuts`; with `durable`, each run is
    /// committed to LMDB before the next is planned, otherwise it stays in the overlay (as
    /// when storage lags). Returns every reply and the clients with a session at the end.
    fn apply_in_runs(
        entries: &[Entry],
        cuts: &[usize],
        durable: bool,
    ) -> (Vec<Applied>, Vec<u64>, Vec<&'static str>) {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::open(dir.path(), 1 << 26, "t", 1).unwrap();
        let storage = StorageActor::new(schema.clone()).unwrap().start();
        let first = entries[0].index - 1;
        let mut shard = ShardActor::new(1, schema.clone(), storage, first, None).unwrap();
        let mut replies = Vec::new();
        let mut pending = Vec::new();
        let mut from = 0;
        for (seq, to) in cuts.iter().copied().chain([entries.len()]).enumerate() {
            let plan = shard.plan(&entries[from..to]).unwrap();
            from = to;
            replies.extend(plan.results.iter().cloned());
            shard.applied = entries[to - 1].index;
            if durable {
                commit(&schema, vec![plan.batch]).unwrap();
            } else {
                for (client, state) in plan.sessions {
                    shard.session_overlay.insert(client, (seq as u64, state));
                }
                for (k, v) in plan.values {
                    shard.overlay.insert(k, (seq as u64, v));
                }
                pending.push(plan.batch);
            }
        }
        commit(&schema, pending).unwrap();
        let mut live: Vec<u64> = (1..=9).filter(|c| session_exists(&schema, *c)).collect();
        live.sort_unstable();
        let rtxn = schema.env.read_txn().unwrap();
        let keys = ["a", "a2", "b", "b2", "c"]
            .into_iter()
            .filter(|k| {
                schema
                    .kv
                    .get(&rtxn, &kv_key(1, k.as_bytes()))
                    .unwrap()
                    .is_some()
            })
            .collect();
        (replies, live, keys)
    }

    #[actix_rt::test]
    async fn session_expiry_does_not_depend_on_what_is_on_disk_yet() {
        let base = SESSION_SWEEP_EVERY * 3;
        let t0 = 1_700_000_000_000;
        let late = t0 + SESSION_TTL_MS + 100;
        // Client 5 writes, goes idle past its TTL, the sweep at `base` runs, and then an old
        // write of 5 with an old seq arrives: with the session gone it is a new write on every
        // replica, however far each replica's storage lags.
        let entries = [
            put_entry(base - 2, 5, 1, t0, b"a"),
            put_entry(base - 1, 6, 1, t0 + 10, b"b"),
            put_entry(base, 7, 1, late, b"c"),
            put_entry(base + 1, 5, 1, late + 1, b"a2"),
            put_entry(base + 2, 6, 1, late + 2, b"b2"),
        ];
        let on_disk = apply_in_runs(&entries, &[1, 2, 3, 4], true);
        for (cuts, durable) in [
            (&[][..], false),
            (&[2][..], false),
            (&[1, 3][..], false),
            (&[3][..], true),
        ] {
            assert_eq!(
                apply_in_runs(&entries, cuts, durable),
                on_disk,
                "runs cut at {cuts:?}, durable between runs: {durable}"
            );
        }
        // The sweep dropped 5 and 6; 5's and 6's later writes made them new sessions again.
        assert_eq!(on_disk.1, vec![5, 6, 7]);
        assert_eq!(on_disk.2, vec!["a", "a2", "b", "b2", "c"]);
        assert!(on_disk.0.iter().all(|(_, _, r)| *r == Response::Ok));
    }
}
