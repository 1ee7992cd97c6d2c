//! The state machine's applied index, published for status.
//!
//! raft-rs counts an entry as applied once the replica hands it to the ShardActor, which
//! applies it a moment later (or, if its storage failed, never). What an operator needs to see
//! in `status` is what reads are served from: the index the state machine has applied. The
//! ShardActor publishes it here; the replica reads it when asked for its status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A shared, monotonically published index; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AppliedIndex(Arc<AtomicU64>);

impl AppliedIndex {
    /// Starts at `index` (the durable applied index at start).
    pub fn new(index: u64) -> Self {
        AppliedIndex(Arc::new(AtomicU64::new(index)))
    }

    /// The state machine has applied everything up to `index`.
    pub fn publish(&self, index: u64) {
        self.0.fetch_max(index, Ordering::Relaxed);
    }

    /// The index last published.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clone_sees_the_highest_index_published() {
        let applied = AppliedIndex::new(3);
        let reader = applied.clone();
        assert_eq!(reader.get(), 3);
        applied.publish(7);
        applied.publish(5);
        assert_eq!(reader.get(), 7, "never goes back");
    }
}
