//! The persistence pipeline: Ready batches on their way to disk, and which hard state the disk
//! holds.
//!
//! A Ready's entries go to storage while raft-rs moves on; what depends on them being durable
//! waits for the fsync (see the Ready loop in `ready.rs`). The hard state is written only
//! when it must be: a new term or vote before anything that depends on it leaves, a commit
//! index only along with entries (it is re-learned from the leader after a restart, and the
//! applied index is clamped to the stored commit at start).
//!
//! It also says how long the disk is taking: storage commits batches in the order they were
//! sent, so the oldest batch on its way is the one the disk is working on, and the time since
//! it was sent is how far behind the disk is (see `placement::SlowDisk`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use raft::eraftpb::HardState;

/// Ready batches that may be on their way to disk at once; past this, the replica waits.
pub(crate) const PERSISTS_IN_FLIGHT_MAX: usize = 32;

/// See the module docs.
#[derive(Debug)]
pub struct PersistPipeline {
    /// When each batch on its way to disk was sent, oldest first (its length is the number
    /// in flight).
    sent_at: VecDeque<Instant>,
    stored: HardState,
}

impl PersistPipeline {
    /// A pipeline over a disk that holds `stored`.
    pub fn new(stored: HardState) -> Self {
        PersistPipeline {
            sent_at: VecDeque::with_capacity(PERSISTS_IN_FLIGHT_MAX + 1),
            stored,
        }
    }

    /// The hard state as last handed to storage.
    #[cfg(test)]
    fn stored(&self) -> &HardState {
        &self.stored
    }

    /// Whether `hs` must be written with a batch (`with_entries`: the batch carries entries):
    /// always for a new term or vote, for a commit-only change only along with entries.
    /// If so it counts as stored from here.
    pub fn take_hard_state(&mut self, hs: HardState, with_entries: bool) -> Option<HardState> {
        let term_or_vote = hs.term != self.stored.term || hs.vote != self.stored.vote;
        if term_or_vote || (with_entries && hs != self.stored) {
            self.stored = hs.clone();
            return Some(hs);
        }
        None
    }

    /// `hs` was written outside the pipeline (with a snapshot install).
    pub fn stored_with_snapshot(&mut self, hs: HardState) {
        self.stored = hs;
    }

    /// Whether nothing is on its way to disk (an empty batch may then count as persisted at
    /// once: storage commits in order, so nothing earlier is pending).
    pub fn is_idle(&self) -> bool {
        self.sent_at.is_empty()
    }

    /// A batch was handed to storage at `now`; answers whether the disk is so far behind
    /// that the replica must wait for this batch before taking more work (bounds memory).
    pub fn sent(&mut self, now: Instant) -> bool {
        self.sent_at.push_back(now);
        self.sent_at.len() > PERSISTS_IN_FLIGHT_MAX
    }

    /// The oldest batch handed to storage finished (durable or failed) at `now`; answers how
    /// long it took.
    pub fn finished(&mut self, now: Instant) -> Duration {
        self.sent_at
            .pop_front()
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
    }

    /// When the oldest batch still on its way to disk was sent (None: nothing is).
    pub fn outstanding_since(&self) -> Option<Instant> {
        self.sent_at.front().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn a_new_term_or_vote_is_always_written() {
        let mut p = PersistPipeline::new(hs(1, 1, 5));
        assert_eq!(p.take_hard_state(hs(2, 0, 5), false), Some(hs(2, 0, 5)));
        assert_eq!(p.take_hard_state(hs(2, 3, 5), false), Some(hs(2, 3, 5)));
        assert_eq!(p.stored(), &hs(2, 3, 5));
    }

    #[test]
    fn a_commit_only_change_rides_along_with_entries() {
        let mut p = PersistPipeline::new(hs(1, 1, 5));
        assert_eq!(p.take_hard_state(hs(1, 1, 6), false), None);
        assert_eq!(p.stored(), &hs(1, 1, 5), "not counted as stored");
        assert_eq!(p.take_hard_state(hs(1, 1, 6), true), Some(hs(1, 1, 6)));
        assert_eq!(p.take_hard_state(hs(1, 1, 6), true), None, "unchanged");
    }

    #[test]
    fn the_pipeline_asks_to_wait_past_its_bound() {
        let now = Instant::now();
        let mut p = PersistPipeline::new(HardState::default());
        assert!(p.is_idle());
        for _ in 0..PERSISTS_IN_FLIGHT_MAX {
            assert!(!p.sent(now));
        }
        assert!(p.sent(now), "one more than the bound must wait");
        p.finished(now);
        assert!(!p.is_idle());
        for _ in 0..PERSISTS_IN_FLIGHT_MAX {
            p.finished(now);
        }
        assert!(p.is_idle());
    }

    #[test]
    fn the_oldest_batch_on_its_way_says_how_far_behind_the_disk_is() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = PersistPipeline::new(HardState::default());
        assert_eq!(p.outstanding_since(), None);
        p.sent(t0);
        p.sent(t0 + ms(10));
        assert_eq!(p.outstanding_since(), Some(t0));
        assert_eq!(p.finished(t0 + ms(300)), ms(300), "batches finish in order");
        assert_eq!(p.outstanding_since(), Some(t0 + ms(10)));
        assert_eq!(p.finished(t0 + ms(310)), ms(300));
        assert_eq!(p.outstanding_since(), None);
    }
}
