//! The log writer thread: everything that queued while one sync ran goes into the next,
//! one record per batch, one fdatasync for them all (group commit). Records of lazy batches
//! wait, unsynced, for the next group that someone waits on.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use super::{answer, Halt, Waiter, GROUP_BATCHES_MAX};
use crate::error::ActorError;
use crate::messages::WriteBatch;
use crate::wal::Wal;

/// What the log writer is handed.
pub(super) enum WalJob {
    /// Log `batch` as record `seq` (the next one); `done` hears once it is durable. Without
    /// `done` (a lazy batch), the record costs no sync of its own: it is written with the
    /// next group that has a waiter, whose sync makes it durable too.
    Append {
        seq: u64,
        batch: Arc<WriteBatch>,
        done: Option<Waiter>,
    },
    /// LMDB durably holds every record up to this one: their segments may go.
    Release(u64),
}

pub(super) fn run(mut wal: Wal, jobs: std_mpsc::Receiver<WalJob>, halt: Arc<Halt>) {
    let mut group = Vec::new();
    while let Ok(job) = jobs.recv() {
        let mut release = None;
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                WalJob::Append { seq, batch, done } => group.push((seq, batch, done)),
                WalJob::Release(seq) => release = release.max(Some(seq)),
            }
            if group.len() < GROUP_BATCHES_MAX {
                next = jobs.try_recv().ok();
            }
        }
        if !group.is_empty() {
            let res = write_group(&mut wal, &group, &halt);
            for done in group.drain(..).filter_map(|(_, _, done)| done) {
                answer(done, res.clone());
            }
            if let Err(e) = wal.rotate_if_full() {
                halt.halt(&e);
            }
        }
        if let Some(seq) = release {
            if let Err(e) = wal.release_through(seq) {
                // Only space is at stake; the records stay readable and are skipped on replay.
                tracing::warn!(error = %e, "cannot release write-ahead log segments LMDB holds");
            }
        }
    }
}

fn write_group(
    wal: &mut Wal,
    group: &[(u64, Arc<WriteBatch>, Option<Waiter>)],
    halt: &Halt,
) -> Result<(), ActorError> {
    halt.check()?;
    if group.iter().all(|(_, _, done)| done.is_none()) {
        // Lazy records only: appended now, written and synced with the next group.
        return group
            .iter()
            .try_for_each(|(seq, batch, _)| wal.append(*seq, &batch.ops))
            .map_err(|e| halt.halt(&e));
    }
    let started = Instant::now();
    if let Some(delay) = shardkv_transport::fault::commit_delay() {
        std::thread::sleep(delay);
    }
    let res = group
        .iter()
        .try_for_each(|(seq, batch, _)| wal.append(*seq, &batch.ops))
        .and_then(|()| wal.sync());
    let m = crate::metrics::metrics();
    m.wal_syncs.inc();
    m.wal_sync_seconds.observe(started.elapsed().as_secs_f64());
    m.wal_sync_batches.observe(group.len() as f64);
    debug!(
        batches = group.len(),
        micros = started.elapsed().as_micros() as u64,
        "write-ahead log group synced"
    );
    res.map_err(|e| halt.halt(&e))?;
    shardkv_transport::fault::crash_point(shardkv_transport::wire::CrashPoint::LogSynced);
    Ok(())
}
