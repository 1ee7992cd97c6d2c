//! The LMDB writer thread: every batch, in the order the host sent it, in few large commits.
//!
//! A batch waits up to [`LMDB_GROUP_DELAY`] for others to join its commit, unless a sender
//! waits on LMDB for it (`LmdbJob::urgent`). Most batches are already durable in the
//! write-ahead log, so the commit is the background work of updating the B-trees, and the
//! fewer commits, the fewer times the same pages are rewritten. Each commit records the last
//! log record it includes (the checkpoint). The Env does not sync meta pages on commit
//! (`MDB_NOMETASYNC`): a system crash may undo the last commit, never break the file; the
//! next commit's fdatasync makes it durable. So once a commit returns, the checkpoint of
//! the one before is durable, and the log may drop the segments up to it.
//!
//! A snapshot load commits alone and is synced at once: it is not in the log (the snapshot
//! file may be gone before a replay would need it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::wal_writer::WalJob;
use super::{answer, apply_op, Halt, Waiter, GROUP_BATCHES_MAX};
use crate::error::ActorError;
use crate::messages::WriteBatch;
use crate::schema::Schema;
use crate::wal::checkpoint_op;
use shardkv_transport::wire::CrashPoint;

/// How long a batch waits for others to join its LMDB commit. Longer means fewer rewrites of
/// the same pages and less disk time taken from the log's syncs; measured with 64 clients'
/// puts, 5 ms lost 16% against the single-writer design and 30 ms gained 26% (docs/bench.md).
pub const LMDB_GROUP_DELAY: Duration = Duration::from_millis(30);

/// How often a writer held by the `hold_lmdb` fault hook looks whether it is let go.
const HELD_LMDB_POLL: Duration = Duration::from_millis(10);

/// What the LMDB writer is handed.
pub(super) struct LmdbJob {
    pub batch: Arc<WriteBatch>,
    /// The log record that holds the batch (None: a snapshot load, which is not logged).
    pub seq: Option<u64>,
    /// Someone waits for LMDB to hold it: commit without waiting for others.
    pub urgent: bool,
    /// Hears once LMDB holds the batch (visible to readers).
    pub done: Waiter,
}

impl LmdbJob {
    /// Whether the batch is a snapshot load: the one kind the actor does not log.
    fn is_load(&self) -> bool {
        self.seq.is_none()
    }
}

pub(super) struct LmdbWriter {
    schema: Schema,
    halt: Arc<Halt>,
    /// Where released log records are reported.
    wal: std_mpsc::Sender<WalJob>,
    /// Jobs not yet committed, in arrival order, with when they arrived.
    queue: VecDeque<(Instant, LmdbJob)>,
    /// The checkpoint of the last commit, durable once another commit or a sync follows.
    committed_checkpoint: u64,
    /// The checkpoint last reported to the log as durable.
    released: u64,
    /// Jobs handed over and not yet answered (the actor reads it).
    backlog: Arc<AtomicUsize>,
}

impl LmdbWriter {
    pub fn new(
        schema: Schema,
        halt: Arc<Halt>,
        wal: std_mpsc::Sender<WalJob>,
        backlog: Arc<AtomicUsize>,
    ) -> Self {
        LmdbWriter {
            backlog,
            schema,
            halt,
            wal,
            queue: VecDeque::new(),
            committed_checkpoint: 0,
            released: 0,
        }
    }

    pub fn run(mut self, jobs: std_mpsc::Receiver<LmdbJob>) {
        loop {
            let job = match self.wait() {
                Some(wait) => jobs.recv_timeout(wait).map_err(|e| match e {
                    std_mpsc::RecvTimeoutError::Timeout => None,
                    std_mpsc::RecvTimeoutError::Disconnected => Some(()),
                }),
                None => jobs.recv().map_err(|_| Some(())),
            };
            match job {
                Ok(job) => self.queue.push_back((Instant::now(), job)),
                Err(Some(())) => break,
                Err(None) => {}
            }
            while let Ok(job) = jobs.try_recv() {
                self.queue.push_back((Instant::now(), job));
            }
            while self.due() {
                self.commit_next();
            }
        }
        // The host is stopping: what was sent still reaches LMDB.
        while !self.queue.is_empty() {
            self.commit_next();
        }
    }

    /// How long to wait for more jobs: None with nothing queued (wait for one).
    fn wait(&self) -> Option<Duration> {
        let (arrived, _) = self.queue.front()?;
        if shardkv_transport::fault::lmdb_held() {
            return Some(HELD_LMDB_POLL);
        }
        Some(LMDB_GROUP_DELAY.saturating_sub(arrived.elapsed()))
    }

    /// Whether the queue should be committed now.
    fn due(&self) -> bool {
        let Some((arrived, _)) = self.queue.front() else {
            return false;
        };
        if shardkv_transport::fault::lmdb_held() {
            return false;
        }
        self.queue.len() >= GROUP_BATCHES_MAX
            || arrived.elapsed() >= LMDB_GROUP_DELAY
            || self.queue.iter().any(|(_, j)| j.urgent)
    }

    /// Commits the next group: a load alone, or everything queued before the next load.
    fn commit_next(&mut self) {
        let load = self.queue.front().is_some_and(|(_, j)| j.is_load());
        let take = if load {
            1
        } else {
            self.queue
                .iter()
                .take(GROUP_BATCHES_MAX)
                .position(|(_, j)| j.is_load())
                .unwrap_or(self.queue.len().min(GROUP_BATCHES_MAX))
        };
        let group: Vec<LmdbJob> = self.queue.drain(..take).map(|(_, j)| j).collect();
        let res = match self.halt.check() {
            Ok(()) => self.commit(&group, load),
            Err(e) => Err(e),
        };
        self.backlog.fetch_sub(group.len(), Ordering::Relaxed);
        for job in group {
            answer(job.done, res.clone());
        }
    }

    fn commit(&mut self, group: &[LmdbJob], load: bool) -> Result<(), ActorError> {
        let started = Instant::now();
        let checkpoint = group.iter().filter_map(|j| j.seq).max();
        let txn_before = self.schema.env.info().last_txn_id;
        let mut wtxn = self
            .schema
            .env
            .write_txn()
            .map_err(|e| self.halt.halt(&e.into()))?;
        let applied = group
            .iter()
            .flat_map(|j| j.batch.ops.iter())
            .chain(checkpoint.map(checkpoint_op).as_ref())
            .try_for_each(|op| apply_op(&self.schema, &mut wtxn, op));
        if let Err(e) = applied {
            drop(wtxn);
            if load {
                // Rolled back before anything was written; nobody else's batch was in it.
                warn!(error = %e, "snapshot load failed; its transaction was rolled back");
                return Err(e);
            }
            return Err(self.halt.halt(&e));
        }
        wtxn.commit().map_err(|e| self.halt.halt(&e.into()))?;
        shardkv_transport::fault::crash_point(CrashPoint::LmdbCommitted);
        if load {
            self.schema
                .env
                .force_sync()
                .map_err(|e| self.halt.halt(&e.into()))?;
            shardkv_transport::fault::crash_point(CrashPoint::SnapshotLoaded);
            self.release(self.committed_checkpoint);
        } else if self.schema.env.info().last_txn_id != txn_before {
            // This commit's fdatasync flushed the previous commit's meta page.
            self.release(self.committed_checkpoint);
        }
        if let Some(c) = checkpoint {
            self.committed_checkpoint = c;
        }
        let m = crate::metrics::metrics();
        m.storage_commits.inc();
        m.storage_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        m.storage_commit_batches.observe(group.len() as f64);
        debug!(
            batches = group.len(),
            micros = started.elapsed().as_micros() as u64,
            "LMDB group commit"
        );
        Ok(())
    }

    /// LMDB durably holds the log up to `checkpoint`: tell the log writer.
    fn release(&mut self, checkpoint: u64) {
        if checkpoint > self.released {
            self.released = checkpoint;
            let _ = self.wal.send(WalJob::Release(checkpoint));
        }
    }
}
