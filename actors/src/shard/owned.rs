//! The slots a shard's state machine owns: what it may apply writes to and serve reads of.
//!
//! Ownership is decided in the shard's own log, never by the cluster map: a split is an entry
//! of the log, so every replica changes hands at the same index, and a write or read the
//! replica is asked for after that index is refused (`Response::WrongShard`) even if the
//! caller's map is older. The map follows the log (it records the split once applied), so a
//! host may route by a stale map without ever serving a key twice.
//!
//! Stored in `raft_state` with the applied index it belongs to (`schema::owned_record`), and
//! carried by snapshots, so a restart or an install starts from the ownership as of its index.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use shardkv_transport::slot::Slot;

/// Inclusive `(first, last)` slot ranges, sorted and disjoint, and the map epoch they date
/// from. Empty for the meta group (its rows are no user keys) and for a replica that has not
/// received its first snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedSlots {
    pub ranges: Vec<(Slot, Slot)>,
    /// The map epoch at which these ranges were handed to the shard (the day-0 epoch for a
    /// shard that never split).
    pub epoch: u64,
}

impl OwnedSlots {
    /// Whether `slot` is owned.
    pub fn contains(&self, slot: Slot) -> bool {
        self.ranges
            .iter()
            .any(|&(first, last)| first <= slot && slot <= last)
    }

    /// Whether any slot of `other` is owned here.
    pub fn overlaps(&self, other: &[(Slot, Slot)]) -> bool {
        self.ranges
            .iter()
            .any(|&(a, b)| other.iter().any(|&(c, d)| a <= d && c <= b))
    }

    /// Whether some owned slot is `>= at`.
    pub fn has_slots_from(&self, at: Slot) -> bool {
        self.ranges.iter().any(|&(_, last)| last >= at)
    }

    /// The ownership split at `at`, both dated `epoch`: the slots below `at` and those from
    /// it on. `None` unless both halves are non-empty.
    pub fn split_at(&self, at: Slot, epoch: u64) -> Option<(OwnedSlots, OwnedSlots)> {
        let mut lower = Vec::new();
        let mut upper = Vec::new();
        for &(first, last) in &self.ranges {
            if last < at {
                lower.push((first, last));
            } else if first >= at {
                upper.push((first, last));
            } else {
                lower.push((first, at - 1));
                upper.push((at, last));
            }
        }
        if lower.is_empty() || upper.is_empty() {
            return None;
        }
        Some((
            OwnedSlots {
                ranges: lower,
                epoch,
            },
            OwnedSlots {
                ranges: upper,
                epoch,
            },
        ))
    }
}

/// The slots a state machine owns durably, published for the router (which sends a key to
/// the local replica owning its slot) and for status. Published only once on disk: a host
/// that starts a replica for newly owned slots must find its state there. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PublishedSlots(Arc<RwLock<Vec<(Slot, Slot)>>>);

impl PublishedSlots {
    /// Starts at `ranges` (the durable ownership at start).
    pub fn new(ranges: Vec<(Slot, Slot)>) -> Self {
        PublishedSlots(Arc::new(RwLock::new(ranges)))
    }

    /// The state machine durably owns `ranges` from now on.
    pub fn publish(&self, ranges: Vec<(Slot, Slot)>) {
        // A writer that panicked left a whole vector behind: the value is still sound.
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = ranges;
    }

    /// The ranges last published.
    pub fn get(&self) -> Vec<(Slot, Slot)> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `slot` is in the ranges last published.
    pub fn contains(&self, slot: Slot) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|&(first, last)| first <= slot && slot <= last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(ranges: &[(Slot, Slot)]) -> OwnedSlots {
        OwnedSlots {
            ranges: ranges.to_vec(),
            epoch: 1,
        }
    }

    #[test]
    fn a_split_inside_a_range_cuts_it_in_two() {
        let (lower, upper) = owned(&[(0, 99)]).split_at(50, 7).unwrap();
        assert_eq!(
            lower,
            OwnedSlots {
                ranges: vec![(0, 49)],
                epoch: 7
            }
        );
        assert_eq!(
            upper,
            OwnedSlots {
                ranges: vec![(50, 99)],
                epoch: 7
            }
        );
    }

    #[test]
    fn a_split_between_ranges_keeps_them_whole() {
        let (lower, upper) = owned(&[(0, 9), (20, 29)]).split_at(20, 3).unwrap();
        assert_eq!(lower.ranges, vec![(0, 9)]);
        assert_eq!(upper.ranges, vec![(20, 29)]);
    }

    #[test]
    fn a_split_that_leaves_a_side_empty_is_none() {
        assert!(owned(&[(10, 20)]).split_at(10, 2).is_none());
        assert!(owned(&[(10, 20)]).split_at(21, 2).is_none());
        assert!(owned(&[]).split_at(5, 2).is_none());
    }

    #[test]
    fn containment_and_overlap_follow_the_inclusive_ranges() {
        let o = owned(&[(5, 9), (20, 20)]);
        assert!(o.contains(5) && o.contains(9) && o.contains(20));
        assert!(!o.contains(4) && !o.contains(10) && !o.contains(21));
        assert!(o.overlaps(&[(0, 5)]) && o.overlaps(&[(20, 30)]));
        assert!(!o.overlaps(&[(10, 19)]) && !o.overlaps(&[]));
        assert!(o.has_slots_from(20) && !o.has_slots_from(21));
    }

    #[test]
    fn every_clone_of_the_published_slots_sees_the_last_ranges() {
        let published = PublishedSlots::new(vec![(0, 10)]);
        let reader = published.clone();
        assert!(reader.contains(10) && !reader.contains(11));
        published.publish(vec![(0, 4)]);
        assert_eq!(reader.get(), vec![(0, 4)]);
    }
}
