//! Shard splits as the map records them: a shard's upper half of slots handed to a new shard
//! on the same hosts, in two changes of the map around one entry in the shard's own log.
//!
//! 1. [`ClusterMap::begin_split`] records the split (the new shard's id, the first slot it
//!    takes, and its voters): from then on whoever looks at the map (a re-run of
//!    `shardkv shard split`, the balancer after a crash) finds the split and can finish it.
//! 2. The shard's leader proposes the split to the shard's log (the driver in `src/splits.rs`);
//!    at that index every replica hands the slots `>= at` to the new shard's replica on its host.
//! 3. [`ClusterMap::finish_split`] makes the map say so: the parent keeps the slots below
//!    `at`, the child owns the rest with the recorded voters, the record goes, in one change.
//!
//! The child's id and `at` are fixed when the split is recorded, so every re-run proposes the
//! same split. Like every transition (see `change.rs`): checked before anything changes, a
//! no-op when already in effect, one epoch per change.

use serde::{Deserialize, Serialize};

use crate::slot::Slot;
use crate::wire::{HostId, ShardId, SplitSpec};

use super::{ClusterMap, MapError, ReplicaRole, ShardEntry, META_SHARD};

/// A split under way, recorded under its parent shard: the parent's slots `>= at` go to the
/// new shard `child`, whose replicas are `voters`, all voting, on the hosts of the parent's
/// voters when the split was recorded. Fixed when recorded, so every re-run proposes it alike.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The new shard's id: above every shard id in the map (and in its records) when recorded,
    /// so never the id of a shard that exists or existed.
    pub child: ShardId,
    /// The first slot the child takes; strictly inside the parent's slots, so both halves
    /// own at least one slot.
    pub at: Slot,
    /// The child's voters, ascending: the parent's voters when the split was recorded.
    pub voters: Vec<HostId>,
    /// The map epoch that recorded the split: what every proposal of it carries (see
    /// [`Split::spec`]), so the parent's log gets the same split from whoever drives it.
    pub epoch: u64,
}

impl Split {
    /// The split as the parent's leader is asked to propose it.
    pub fn spec(&self) -> SplitSpec {
        SplitSpec {
            child: self.child,
            at: self.at,
            voters: self.voters.clone(),
            epoch: self.epoch,
        }
    }
}

impl ClusterMap {
    /// Records a split of `parent` (see [`Split`]): its child is one above the highest shard
    /// id in the map and in its split records, `at` is the first slot of the upper half of the
    /// parent's slots (taken in order), and the child's voters are the parent's. Already
    /// recorded for `parent`: nothing to do (the same child). Refused for the meta group, an
    /// unknown shard, a shard with fewer than two slots, and a shard with a move under way or
    /// a learner (its voters are about to change).
    pub fn begin_split(&mut self, parent: ShardId) -> Result<(), MapError> {
        if parent == META_SHARD {
            return Err(MapError::SplitOfMeta);
        }
        let entry = self.known_shard(parent)?;
        if self.splitting.contains_key(&parent) {
            return Ok(());
        }
        if let Some(m) = self.moving.get(&parent) {
            return Err(MapError::MoveInFlight {
                shard: parent,
                from: m.from,
                to: m.to,
            });
        }
        if let Some(host) = entry.learners().next() {
            return Err(MapError::SplitWithLearner {
                shard: parent,
                host,
            });
        }
        let slots = slot_count(&entry.slots);
        let Some(at) = nth_slot(&entry.slots, slots / 2).filter(|_| slots >= 2) else {
            return Err(MapError::TooFewSlotsToSplit {
                shard: parent,
                slots,
            });
        };
        let mut split = Split {
            child: self.next_shard_id(),
            at,
            voters: entry.voters().collect(),
            epoch: 0,
        };
        split.epoch = self.bump();
        self.splitting.insert(parent, split);
        Ok(())
    }

    /// Records that `parent`'s split into `child` is applied: the parent keeps its slots below
    /// the recorded `at`, `child` owns the rest with the recorded voters as voting replicas,
    /// both are stamped with the new epoch, and the record goes, in one change. `child` already
    /// in the map: nothing to do (finished before). Refused when another split of `parent` is
    /// recorded, or none and `child` does not exist.
    pub fn finish_split(&mut self, parent: ShardId, child: ShardId) -> Result<(), MapError> {
        self.known_shard(parent)?;
        let split = match self.splitting.get(&parent) {
            Some(split) if split.child == child => split.clone(),
            _ if self.shards.contains_key(&child) => return Ok(()),
            Some(other) => {
                return Err(MapError::SplitInFlight {
                    shard: parent,
                    child: other.child,
                })
            }
            None => {
                return Err(MapError::NoSplit {
                    shard: parent,
                    child,
                })
            }
        };
        for &host in &split.voters {
            self.live_host(host)?;
        }
        let epoch = self.bump();
        let entry = self.shard_entry_mut(parent);
        let (lower, upper) = halves(&entry.slots, split.at);
        entry.slots = lower;
        entry.epoch = epoch;
        let child_entry = ShardEntry {
            slots: upper,
            replicas: split
                .voters
                .iter()
                .map(|h| (*h, ReplicaRole::Voter))
                .collect(),
            epoch,
        };
        self.shards.insert(child, child_entry);
        self.splitting.remove(&parent);
        self.rebuild_index();
        Ok(())
    }

    /// Drops the record of `parent`'s split into `child`, for a split the shard refused to
    /// apply (its replicas disagree with the map about its slots, or cannot split at all): the
    /// shard keeps every slot, and may be moved or split again. Not recorded: nothing to do.
    /// Refused when another split of `parent` is recorded.
    pub fn abort_split(&mut self, parent: ShardId, child: ShardId) -> Result<(), MapError> {
        match self.splitting.get(&parent) {
            None => Ok(()),
            Some(split) if split.child == child => {
                self.bump();
                self.splitting.remove(&parent);
                Ok(())
            }
            Some(other) => Err(MapError::SplitInFlight {
                shard: parent,
                child: other.child,
            }),
        }
    }

    /// The split of `parent` under way, if one is recorded.
    pub fn split_of(&self, parent: ShardId) -> Option<&Split> {
        self.splitting.get(&parent)
    }

    /// The splits under way, by parent shard.
    pub fn splits(&self) -> &std::collections::BTreeMap<ShardId, Split> {
        &self.splitting
    }

    /// One above every shard id in the map and in its split records: shards are never
    /// deleted, so no id of a shard that ever existed is handed out again (an aborted split's
    /// id may be, its shard never having existed).
    fn next_shard_id(&self) -> ShardId {
        let shards = self.shards.keys().copied();
        let children = self.splitting.values().map(|s| s.child);
        shards.chain(children).max().map_or(1, |id| id + 1)
    }

    /// Checks a recorded split against the map: its parent exists and owns `at` with at least
    /// one of its slots below it, and its child id belongs to no shard and no other record.
    pub(super) fn check_split(&self, parent: ShardId, split: &Split) -> Result<(), MapError> {
        let bad = |why: &'static str| MapError::BadSplit {
            shard: parent,
            record: split.clone(),
            why,
        };
        let entry = self.shards.get(&parent).ok_or(bad("no such shard"))?;
        let (lower, upper) = halves(&entry.slots, split.at);
        if lower.is_empty() || upper.first().map(|r| r.0) != Some(split.at) {
            return Err(bad("its slot is not strictly inside the shard's slots"));
        }
        if self.shards.contains_key(&split.child) {
            return Err(bad("its new shard's id is taken"));
        }
        let same_child = self.splitting.values().filter(|s| s.child == split.child);
        if same_child.count() > 1 {
            return Err(bad("another split records the same new shard"));
        }
        if split.voters.is_empty() {
            return Err(bad("it has no voter"));
        }
        if split.epoch > self.epoch {
            return Err(bad("its epoch is ahead of the map's"));
        }
        Ok(())
    }
}

/// Inclusive `(first, last)` slot ranges, as a shard lists them.
type SlotRanges = Vec<(Slot, Slot)>;

/// How many slots `ranges` hold.
fn slot_count(ranges: &[(Slot, Slot)]) -> u32 {
    ranges
        .iter()
        .map(|&(first, last)| u32::from(last) - u32::from(first) + 1)
        .sum()
}

/// The slot at position `n` (from 0) when the slots of `ranges` are listed in order.
fn nth_slot(ranges: &[(Slot, Slot)], mut n: u32) -> Option<Slot> {
    for &(first, last) in ranges {
        let len = u32::from(last) - u32::from(first) + 1;
        if n < len {
            return Slot::try_from(u32::from(first) + n).ok();
        }
        n -= len;
    }
    None
}

/// `ranges` cut at `at`: the parts below it, and the parts from it on.
fn halves(ranges: &[(Slot, Slot)], at: Slot) -> (SlotRanges, SlotRanges) {
    let mut lower = Vec::new();
    let mut upper = Vec::new();
    for &(first, last) in ranges {
        if last < at {
            lower.push((first, last));
        } else if first >= at {
            upper.push((first, last));
        } else {
            lower.push((first, at - 1));
            upper.push((at, last));
        }
    }
    (lower, upper)
}

#[cfg(test)]
mod tests;
