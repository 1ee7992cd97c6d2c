//! The persistence pipeline: Ready batches on their way to disk, and which hard state the disk
//! holds.
//!
//! A Ready's entries go to storage while raft-rs moves on; what depends on them being durable
//! waits for the fsync (see the Ready loop in `ready.rs`). The hard state is written only
//! when it must be: a new term or vote before anything that depends on it leaves, a commit
//! index only along with entries (it is re-learned from the leader after a restart, and the
//! applied index is clamped to the stored commit at start).

use raft::eraftpb::HardState;

/// Ready batches that may be on their way to disk at once; past this, the replica waits.
pub(crate) const PERSISTS_IN_FLIGHT_MAX: usize = 32;

/// See the module docs.
#[derive(Debug)]
pub struct PersistPipeline {
    in_flight: usize,
    stored: HardState,
}

impl PersistPipeline {
    /// A pipeline over a disk that holds `stored`.
    pub fn new(stored: HardState) -> Self {
        PersistPipeline {
            in_flight: 0,
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
        self.in_flight == 0
    }

    /// A batch was handed to storage; answers whether the disk is so far behind that the
    /// replica must wait for this batch before taking more work (bounds memory).
    pub fn sent(&mut self) -> bool {
        self.in_flight += 1;
        self.in_flight > PERSISTS_IN_FLIGHT_MAX
    }

    /// A batch handed to storage finished (durable or failed).
    pub fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
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
        let mut p = PersistPipeline::new(HardState::default());
        assert!(p.is_idle());
        for _ in 0..PERSISTS_IN_FLIGHT_MAX {
            assert!(!p.sent());
        }
        assert!(p.sent(), "one more than the bound must wait");
        p.finished();
        assert!(!p.is_idle());
        for _ in 0..PERSISTS_IN_FLIGHT_MAX {
            p.finished();
        }
        assert!(p.is_idle());
    }
}
