//! StorageActor: where a host's writes become durable, with one fsync per group.
//!
//! Every replica and shard of the host sends its writes here, and they are applied to LMDB
//! in the order they arrive, so a sender that sends two batches sees them applied in that
//! order. Three kinds:
//! - [`PersistLog`]: a replica's Raft entries and hard state, the hot path. Durable once the
//!   write-ahead log ([`crate::wal`]) has synced the group it went in: everything that queued
//!   while the previous sync ran, one fdatasync for all of them. LMDB gets the batch shortly
//!   after; the reply hands over a [`Visible`] that resolves then (until then the replica
//!   serves those entries from its staging area).
//! - [`Persist`]: the host's control writes (a map record, a split, a retired replica): in the
//!   log and in LMDB before the reply. A snapshot load is not logged (its file may be gone
//!   when a replay would need it): it commits alone in LMDB and is synced.
//! - [`PersistLazy`]: applying committed entries, compacting the Raft log; a crash only means
//!   redoing them from the Raft log. Logged with no sync of its own (the next synced group
//!   carries it); the reply says LMDB holds it.
//!
//! Two threads do the work, so neither waits for the other's disk time: the log writer
//! ([`wal_writer`]) and the LMDB writer ([`lmdb_writer`]), which takes every batch in
//! arrival order in few large commits. Before, every group was one LMDB commit on the
//! client's path: ~48 random pages and two fsyncs for ~50 Raft appends.
//!
//! Crash consistency rests on four rules. Every batch but a snapshot load is a log record,
//! numbered in arrival order, and LMDB applies them in that order: each LMDB commit holds a
//! prefix of the log and records the last record it holds, and recovery replays the log after
//! that record, which is then exact. The log is one file written in order, so a synced
//! record proves every earlier one durable. Log segments are released only up to a
//! checkpoint LMDB holds durably. And a state machine's applied index never passes its Raft
//! log: raft-rs applies only entries persisted here, so the apply batch comes after the
//! entries' own.
//!
//! A failed write is final. Every sender assumes that a batch it is told is durable comes
//! with every batch it sent before; after a failure (map full, ENOSPC, EIO) that no longer
//! holds, so neither thread acknowledges anything more: the failed group and everything after
//! it is answered [`ActorError::StorageFailed`], and the host is stopped (on restart it
//! recovers from what is durable). The one exception is a snapshot load whose rows fail to
//! load: it commits alone and is rolled back, leaving no one else's batch behind.

mod lmdb_writer;
mod wal_writer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, OnceLock};
use std::thread;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::error;

use crate::error::ActorError;
use crate::fatal::{Fatal, FatalReporter};
use crate::messages::{Persist, PersistLazy, PersistLog, Visible, WriteBatch, WriteOp};
use crate::schema::Schema;
use crate::wal::Wal;
pub use lmdb_writer::LMDB_GROUP_DELAY;
use lmdb_writer::{LmdbJob, LmdbWriter};
use wal_writer::WalJob;

/// Batches in one log sync or one LMDB commit at most; bounds the latency of the first.
const GROUP_BATCHES_MAX: usize = 4096;

/// Batches the LMDB writer may be behind the log by before a [`PersistLog`]'s reply waits
/// for LMDB too: replicas then keep their staged entries no longer than that (bounds memory
/// when LMDB is slower than the log).
const LMDB_BACKLOG_MAX: usize = 16 * 1024;

/// A sender waiting for its batch.
type Waiter = oneshot::Sender<Result<(), ActorError>>;

fn answer(waiter: Waiter, res: Result<(), ActorError>) {
    let _ = waiter.send(res);
}

/// Set once a write failed; from then on neither thread acknowledges anything.
struct Halt {
    cause: OnceLock<String>,
    /// Where the failure goes: the host must stop.
    fatal: FatalReporter,
}

impl Halt {
    /// Fails once halted.
    fn check(&self) -> Result<(), ActorError> {
        match self.cause.get() {
            Some(cause) => Err(ActorError::StorageFailed(cause.clone())),
            None => Ok(()),
        }
    }

    /// A write failed with `error`: halts both threads and stops the host (once); answers
    /// the error to give the failed group.
    fn halt(&self, error: &ActorError) -> ActorError {
        if self.cause.set(error.to_string()).is_ok() {
            error!(error = %error, "a write failed; storage takes no more work and the host must stop");
            self.fatal.report(Fatal {
                shard: None,
                reason: format!("storage write failed: {error}"),
            });
        }
        error.clone()
    }
}

/// The storage actor; see the module docs.
pub struct StorageActor {
    wal: std_mpsc::Sender<WalJob>,
    lmdb: std_mpsc::Sender<LmdbJob>,
    /// The sequence number of the next log record.
    next_seq: u64,
    /// Batches sent to the LMDB writer and not yet answered by it.
    lmdb_backlog: Arc<AtomicUsize>,
    halt: Arc<Halt>,
}

impl StorageActor {
    /// Starts the log and LMDB writer threads over `schema`, whose data dir was recovered
    /// when it was opened; a failed write is reported to `fatal`.
    pub fn new(schema: Schema, fatal: FatalReporter) -> Result<Self, ActorError> {
        let next_seq = crate::wal::checkpoint(&schema)? + 1;
        let wal = Wal::create(&schema.wal_dir, next_seq)?;
        let halt = Arc::new(Halt {
            cause: OnceLock::new(),
            fatal,
        });
        let (wal_tx, wal_rx) = std_mpsc::channel();
        let (lmdb_tx, lmdb_rx) = std_mpsc::channel();
        let wal_halt = halt.clone();
        thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || wal_writer::run(wal, wal_rx, wal_halt))
            .map_err(|e| ActorError::Storage(format!("cannot start the log writer: {e}")))?;
        let lmdb_backlog = Arc::new(AtomicUsize::new(0));
        let writer = LmdbWriter::new(schema, halt.clone(), wal_tx.clone(), lmdb_backlog.clone());
        thread::Builder::new()
            .name("lmdb-writer".into())
            .spawn(move || writer.run(lmdb_rx))
            .map_err(|e| ActorError::Storage(format!("cannot start the LMDB writer: {e}")))?;
        Ok(StorageActor {
            wal: wal_tx,
            lmdb: lmdb_tx,
            next_seq,
            lmdb_backlog,
            halt,
        })
    }

    /// Hands `batch` to the LMDB writer; resolves once LMDB holds it.
    fn hand_to_lmdb(
        &self,
        batch: Arc<WriteBatch>,
        seq: Option<u64>,
        urgent: bool,
    ) -> oneshot::Receiver<Result<(), ActorError>> {
        let (done, rx) = oneshot::channel();
        self.lmdb_backlog.fetch_add(1, Ordering::Relaxed);
        let job = LmdbJob {
            batch,
            seq,
            urgent,
            done,
        };
        if let Err(std_mpsc::SendError(job)) = self.lmdb.send(job) {
            self.lmdb_backlog.fetch_sub(1, Ordering::Relaxed);
            answer(job.done, Err(ActorError::StorageGone));
        }
        rx
    }

    /// Logs `batch` as the next record; resolves once it is durable there.
    fn log_next(
        &mut self,
        batch: Arc<WriteBatch>,
    ) -> (u64, oneshot::Receiver<Result<(), ActorError>>) {
        let (done, rx) = oneshot::channel();
        (self.log_next_as(batch, Some(done)), rx)
    }

    /// Logs `batch` as the next record, answering `done` (if any) once it is durable; answers
    /// its sequence number.
    fn log_next_as(&mut self, batch: Arc<WriteBatch>, done: Option<Waiter>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Err(std_mpsc::SendError(WalJob::Append {
            done: Some(done), ..
        })) = self.wal.send(WalJob::Append { seq, batch, done })
        {
            answer(done, Err(ActorError::StorageGone));
        }
        seq
    }
}

async fn outcome(rx: oneshot::Receiver<Result<(), ActorError>>) -> Result<(), ActorError> {
    rx.await.unwrap_or(Err(ActorError::StorageGone))
}

impl Actor for StorageActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::STORAGE_MAILBOX_CAPACITY);
    }
}

impl Handler<Persist> for StorageActor {
    type Result = ResponseFuture<Result<(), ActorError>>;

    fn handle(&mut self, msg: Persist, _: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.halt.check() {
            return Box::pin(async move { Err(e) });
        }
        let batch = Arc::new(msg.0);
        let load = batch
            .ops
            .iter()
            .any(|op| matches!(op, WriteOp::LoadSnapshot(..)));
        if load {
            let in_lmdb = self.hand_to_lmdb(batch, None, true);
            return Box::pin(outcome(in_lmdb));
        }
        let (seq, logged) = self.log_next(batch.clone());
        let in_lmdb = self.hand_to_lmdb(batch, Some(seq), true);
        Box::pin(async move {
            outcome(logged).await?;
            outcome(in_lmdb).await
        })
    }
}

impl Handler<PersistLog> for StorageActor {
    type Result = ResponseFuture<Result<Visible, ActorError>>;

    fn handle(&mut self, msg: PersistLog, _: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.halt.check() {
            return Box::pin(async move { Err(e) });
        }
        let batch = Arc::new(msg.0);
        let behind = self.lmdb_backlog.load(Ordering::Relaxed) >= LMDB_BACKLOG_MAX;
        let (seq, logged) = self.log_next(batch.clone());
        let in_lmdb = self.hand_to_lmdb(batch, Some(seq), false);
        Box::pin(async move {
            outcome(logged).await?;
            if behind {
                // LMDB is far behind the log: wait for it here, so that the replica does not
                // stage more (see LMDB_BACKLOG_MAX).
                outcome(in_lmdb).await?;
                let (done, rx) = oneshot::channel();
                answer(done, Ok(()));
                return Ok(Visible(rx));
            }
            Ok(Visible(in_lmdb))
        })
    }
}

impl Handler<PersistLazy> for StorageActor {
    type Result = ResponseFuture<Result<(), ActorError>>;

    fn handle(&mut self, msg: PersistLazy, _: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.halt.check() {
            return Box::pin(async move { Err(e) });
        }
        // Logged too, so that every LMDB commit holds a prefix of the log: a later logged
        // batch is never replayed without the lazy ones before it.
        let batch = Arc::new(msg.0);
        let seq = self.log_next_as(batch.clone(), None);
        Box::pin(outcome(self.hand_to_lmdb(batch, Some(seq), false)))
    }
}

/// Applies one write inside `wtxn`.
pub(crate) fn apply_op(
    schema: &Schema,
    wtxn: &mut heed::RwTxn<'_>,
    op: &WriteOp,
) -> Result<(), ActorError> {
    match op {
        WriteOp::Put(t, k, v) => schema.table(*t).put(wtxn, k, v)?,
        WriteOp::Delete(t, k) => {
            schema.table(*t).delete(wtxn, k)?;
        }
        WriteOp::DeleteRange(t, from, to) => {
            let range = (
                std::ops::Bound::Included(from.as_slice()),
                std::ops::Bound::Excluded(to.as_slice()),
            );
            schema.table(*t).delete_range(wtxn, &range)?;
        }
        WriteOp::LoadSnapshot(shard, path) => crate::snapshot::load(schema, wtxn, *shard, path)?,
    }
    Ok(())
}

/// Applies every batch in order in one write transaction and commits it synced, outside the
/// writer threads: for startup and tests, when no StorageActor runs.
pub fn commit(schema: &Schema, batches: Vec<WriteBatch>) -> Result<(), ActorError> {
    let mut wtxn = schema.env.write_txn()?;
    for op in batches.iter().flat_map(|b| b.ops.iter()) {
        apply_op(schema, &mut wtxn, op)?;
    }
    schema.commit_synced(wtxn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::TableId;
    use crate::test_fixtures::{storage_actor, temp_schema};

    #[actix_rt::test]
    async fn batches_commit_in_order_and_are_visible() {
        let (_dir, schema) = temp_schema();
        let addr = storage_actor(&schema);
        let mut futs = Vec::new();
        for i in 0..100u32 {
            let b = WriteBatch {
                ops: vec![WriteOp::Put(
                    TableId::Kv,
                    b"k".to_vec(),
                    i.to_be_bytes().to_vec(),
                )],
            };
            futs.push(addr.send(Persist(b)));
        }
        for f in futs {
            f.await.unwrap().unwrap();
        }
        let rtxn = schema.env.read_txn().unwrap();
        assert_eq!(
            schema.kv.get(&rtxn, b"k").unwrap(),
            Some(&99u32.to_be_bytes()[..])
        );
    }

    #[actix_rt::test]
    async fn delete_range_removes_a_suffix() {
        let (_dir, schema) = temp_schema();
        let mut ops = Vec::new();
        for i in 1..=10u64 {
            ops.push(WriteOp::Put(
                TableId::RaftLog,
                crate::schema::log_key(1, i).to_vec(),
                vec![1],
            ));
        }
        ops.push(WriteOp::DeleteRange(
            TableId::RaftLog,
            crate::schema::log_key(1, 6).to_vec(),
            crate::schema::log_key(1, u64::MAX).to_vec(),
        ));
        commit(&schema, vec![WriteBatch { ops }]).unwrap();
        let rtxn = schema.env.read_txn().unwrap();
        assert_eq!(schema.raft_log.len(&rtxn).unwrap(), 5);
    }

    fn put(key: &[u8], value: &[u8]) -> WriteBatch {
        WriteBatch {
            ops: vec![WriteOp::Put(TableId::Kv, key.to_vec(), value.to_vec())],
        }
    }

    fn get(schema: &Schema, key: &[u8]) -> Option<Vec<u8>> {
        let rtxn = schema.env.read_txn().unwrap();
        schema.kv.get(&rtxn, key).unwrap().map(|v| v.to_vec())
    }

    #[actix_rt::test]
    async fn a_lazy_batch_alone_is_committed_after_its_delay() {
        let (_dir, schema) = temp_schema();
        let addr = storage_actor(&schema);
        addr.send(PersistLazy(put(b"k", b"lazy")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(get(&schema, b"k"), Some(b"lazy".to_vec()));
    }

    #[actix_rt::test]
    async fn lazy_and_urgent_batches_keep_their_arrival_order() {
        let (_dir, schema) = temp_schema();
        let addr = storage_actor(&schema);
        let mut futs = Vec::new();
        for i in 0..50u32 {
            let b = put(b"k", &i.to_be_bytes());
            let f: futures::future::BoxFuture<'static, _> = if i % 3 == 0 {
                Box::pin(addr.send(Persist(b)))
            } else {
                Box::pin(addr.send(PersistLazy(b)))
            };
            futs.push(f);
        }
        for f in futs {
            f.await.unwrap().unwrap();
        }
        assert_eq!(get(&schema, b"k"), Some(49u32.to_be_bytes().to_vec()));
        // The last batch was lazy and rode along with, or after, the last urgent one.
        let last = addr.send(PersistLazy(put(b"k", b"end")));
        addr.send(Persist(put(b"other", b"x")))
            .await
            .unwrap()
            .unwrap();
        last.await.unwrap().unwrap();
        assert_eq!(get(&schema, b"k"), Some(b"end".to_vec()));
    }

    #[actix_rt::test]
    async fn after_a_failed_commit_no_later_batch_is_reported_durable() {
        let dir = tempfile::tempdir().unwrap();
        // A map of 1 MiB: a 4 MiB value fails the commit with MDB_MAP_FULL, a real error.
        let schema = Schema::open(dir.path(), 1 << 20, "t", 1).unwrap();
        let (fatal, mut fatals) = FatalReporter::channel();
        let addr = StorageActor::new(schema.clone(), fatal).unwrap().start();
        let too_big = addr.send(Persist(put(b"big", &vec![7u8; 4 << 20])));
        assert!(too_big.await.unwrap().is_err(), "the map is full");
        // Small enough to fit: without the stop it would commit and be acknowledged, over a
        // hole left by the failed batch.
        let after = addr.send(Persist(put(b"small", b"x"))).await.unwrap();
        assert!(
            matches!(after, Err(ActorError::StorageFailed(_))),
            "{after:?}"
        );
        let lazy = addr.send(PersistLazy(put(b"lazy", b"y"))).await.unwrap();
        assert!(
            matches!(lazy, Err(ActorError::StorageFailed(_))),
            "{lazy:?}"
        );
        assert_eq!(get(&schema, b"small"), None);
        assert_eq!(get(&schema, b"lazy"), None);
        let fatal = fatals.try_recv().expect("the host is told to stop");
        assert_eq!(fatal.shard, None, "the whole host");
        assert!(fatals.try_recv().is_err(), "reported once");
    }

    #[actix_rt::test]
    async fn a_failing_snapshot_load_fails_alone() {
        let (dir, schema) = temp_schema();
        let addr = storage_actor(&schema);
        let before = addr.send(Persist(put(b"before", b"1")));
        let load = addr.send(Persist(WriteBatch {
            ops: vec![WriteOp::LoadSnapshot(1, dir.path().join("no-such.snap"))],
        }));
        let after = addr.send(Persist(put(b"after", b"2")));
        before.await.unwrap().unwrap();
        assert!(load.await.unwrap().is_err(), "the load fails");
        after.await.unwrap().unwrap();
        assert_eq!(get(&schema, b"before"), Some(b"1".to_vec()));
        assert_eq!(get(&schema, b"after"), Some(b"2".to_vec()));
    }
}
