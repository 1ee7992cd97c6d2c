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
mod tests {
    use super::*;
    use crate::cluster_map::{HostEntry, Move};
    use crate::layout::Layout;
    use crate::slot::{slot_range, SLOT_COUNT};
    use std::collections::BTreeMap;

    const REPLICAS: u32 = 3;

    /// Three shards on hosts 1..=3 (the meta group too), and `extra` hosts 4.. active with
    /// no replica.
    fn map(shards: u32, extra: u64) -> ClusterMap {
        let placement = (1..=shards).map(|s| (s, vec![1, 2, 3])).collect();
        let layout = Layout {
            shards,
            replicas: REPLICAS,
            pins: vec![],
            placement,
        };
        let addrs: Vec<(HostId, String)> = (1..=3)
            .map(|h| (h, format!("127.0.0.1:71{h:02}")))
            .collect();
        let mut map = ClusterMap::day0(&layout, &addrs).expect("day-0 map");
        for h in 4..4 + extra {
            map.add_host(h, &format!("127.0.0.1:71{h:02}"))
                .expect("add");
            map.activate_host(h, 40 + h).expect("activate");
        }
        map
    }

    fn split(map: &mut ClusterMap, parent: ShardId) -> ShardId {
        map.begin_split(parent).expect("begin");
        let child = map.split_of(parent).expect("recorded").child;
        map.finish_split(parent, child).expect("finish");
        child
    }

    #[test]
    fn a_split_is_recorded_once_with_the_next_id_the_middle_slot_and_the_parents_voters() {
        let mut map = map(3, 0);
        let before = map.epoch();
        map.begin_split(2).expect("begin");
        assert_eq!(map.epoch(), before + 1);
        let (first, last) = slot_range(2, 3);
        let middle = first + (last - first + 1) / 2;
        let recorded = Split {
            child: 4,
            at: middle,
            voters: vec![1, 2, 3],
            epoch: before + 1,
        };
        assert_eq!(map.split_of(2), Some(&recorded));
        let again = map.clone();
        map.begin_split(2).expect("again");
        assert_eq!(
            map, again,
            "a re-run changes nothing, not even the child's id"
        );
        assert_eq!(
            map.shard(2).map(|s| s.slots.clone()),
            Some(vec![(first, last)])
        );
        let decoded = ClusterMap::decode(&map.encode()).expect("decode");
        assert_eq!(decoded, map);
        assert_eq!(decoded.splits().len(), 1);
    }

    #[test]
    fn finishing_a_split_hands_the_upper_half_to_the_child_and_every_slot_keeps_one_owner() {
        let mut map = map(3, 0);
        map.begin_split(2).expect("begin");
        let Split { child, at, .. } = map.split_of(2).cloned().expect("recorded");
        let before = map.epoch();
        map.finish_split(2, child).expect("finish");
        assert_eq!(map.epoch(), before + 1);
        map.validate().expect("a valid map");
        let (first, last) = slot_range(2, 3);
        let parent = map.shard(2).expect("parent");
        let new = map.shard(child).expect("child");
        assert_eq!(parent.slots, vec![(first, at - 1)]);
        assert_eq!(new.slots, vec![(at, last)]);
        assert_eq!((parent.epoch, new.epoch), (map.epoch(), map.epoch()));
        assert_eq!(map.voters_of(child).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(new.learners().count(), 0);
        assert!(map.splits().is_empty());
        for slot in 0..SLOT_COUNT {
            let expected = match slot {
                s if (first..at).contains(&s) => 2,
                s if (at..=last).contains(&s) => child,
                s => crate::slot::shard_of_slot(s, 3),
            };
            assert_eq!(map.shard_of_slot(slot), Some(expected), "slot {slot}");
        }
        let done = map.clone();
        map.finish_split(2, child).expect("again");
        assert_eq!(map, done, "a re-run changes nothing");
    }

    #[test]
    fn finishing_again_after_the_next_split_began_leaves_the_next_one_alone() {
        let mut map = map(1, 0);
        let first = split(&mut map, 1);
        map.begin_split(1).expect("the next split");
        let next = map.split_of(1).expect("recorded").child;
        assert!(next > first, "ids are never reused: {first}, {next}");
        let before = map.clone();
        map.finish_split(1, first).expect("the first is done");
        assert_eq!(map, before);
        assert_eq!(
            map.finish_split(1, next + 1),
            Err(MapError::SplitInFlight {
                shard: 1,
                child: next
            })
        );
    }

    #[test]
    fn finishing_a_split_never_recorded_is_refused() {
        let mut map = map(2, 0);
        assert_eq!(
            map.finish_split(1, 3),
            Err(MapError::NoSplit { shard: 1, child: 3 })
        );
        assert_eq!(
            map.finish_split(9, 3),
            Err(MapError::UnknownShard { shard: 9 })
        );
    }

    #[test]
    fn an_aborted_split_leaves_the_shard_whole_and_a_re_run_changes_nothing() {
        let start = map(2, 0);
        let mut map = start.clone();
        map.begin_split(1).expect("begin");
        let child = map.split_of(1).expect("recorded").child;
        assert_eq!(
            map.abort_split(1, child + 1),
            Err(MapError::SplitInFlight { shard: 1, child })
        );
        map.abort_split(1, child).expect("abort");
        assert_eq!(map.shards(), start.shards());
        assert!(map.splits().is_empty());
        assert_eq!(map.epoch(), start.epoch() + 2);
        let aborted = map.clone();
        map.abort_split(1, child).expect("again");
        assert_eq!(map, aborted);
    }

    #[test]
    fn child_ids_are_above_every_shard_and_every_recorded_split() {
        let mut map = map(3, 0);
        map.begin_split(1).expect("1");
        map.begin_split(3).expect("3");
        assert_eq!(map.split_of(1).map(|s| s.child), Some(4));
        assert_eq!(map.split_of(3).map(|s| s.child), Some(5));
        map.finish_split(3, 5).expect("3 first");
        map.finish_split(1, 4).expect("then 1");
        map.validate().expect("valid");
        assert_eq!(split(&mut map, 4), 6, "a child splits like any shard");
        assert_eq!(map.shards().len(), 7, "meta, 1..=6");
    }

    #[test]
    fn a_shard_splits_down_to_one_slot_per_half_and_no_further() {
        let mut map = map(2, 0);
        let mut shard = 1;
        for _ in 0..16 {
            let slots = slot_count(&map.shard(shard).expect("shard").slots);
            if slots < 2 {
                break;
            }
            shard = split(&mut map, shard);
        }
        assert_eq!(map.shard(shard).map(|s| s.slots.len()), Some(1));
        assert_eq!(
            map.begin_split(shard),
            Err(MapError::TooFewSlotsToSplit { shard, slots: 1 })
        );
        map.validate().expect("every slot still owned once");
    }

    #[test]
    fn the_meta_group_an_unknown_shard_and_a_shard_in_the_middle_of_a_move_are_not_split() {
        let mut map = map(2, 1);
        assert_eq!(map.begin_split(META_SHARD), Err(MapError::SplitOfMeta));
        assert_eq!(map.begin_split(7), Err(MapError::UnknownShard { shard: 7 }));
        let m = Move {
            shard: 1,
            from: 1,
            to: 4,
        };
        map.begin_move(m).expect("move");
        assert_eq!(
            map.begin_split(1),
            Err(MapError::MoveInFlight {
                shard: 1,
                from: 1,
                to: 4
            })
        );
        map.add_learner(2, 4).expect("learner");
        assert_eq!(
            map.begin_split(2),
            Err(MapError::SplitWithLearner { shard: 2, host: 4 })
        );
        let e = map.begin_split(META_SHARD).expect_err("meta");
        assert!(e.to_string().contains("meta group"), "{e}");
    }

    #[test]
    fn a_splitting_shard_is_neither_moved_nor_planned_for() {
        let mut map = map(3, 1);
        map.request_rebalance().expect("ask");
        let planned = map.pending_moves(REPLICAS);
        let shard = planned
            .iter()
            .map(|m| m.shard)
            .find(|s| *s != META_SHARD)
            .expect("a data shard is planned to move onto host 4");
        map.begin_split(shard).expect("split");
        let m = Move {
            shard,
            from: 1,
            to: 4,
        };
        let e = map.begin_move(m).expect_err("refused");
        assert_eq!(e, MapError::SplitInFlight { shard, child: 4 });
        assert!(e.to_string().contains("shardkv shard split"), "{e}");
        assert!(map.pending_moves(REPLICAS).iter().all(|m| m.shard != shard));
    }

    #[test]
    fn rebalancing_onto_a_new_host_spreads_the_new_shards_replicas_and_leaders() {
        let mut map = map(1, 0);
        let first = split(&mut map, 1);
        let second = split(&mut map, 1);
        map.add_host(4, "127.0.0.1:7104").expect("add");
        map.activate_host(4, 44).expect("activate");
        map.request_rebalance().expect("ask");
        let moves = map.pending_moves(REPLICAS);
        assert_eq!(moves.len(), 3, "12 replicas over 4 hosts: {moves:?}");
        assert!(
            moves.iter().any(|m| m.shard == first || m.shard == second),
            "{moves:?}"
        );
        for m in &moves {
            map.begin_move(*m).expect("begin");
            map.finish_move(m.shard, m.from, m.to, REPLICAS)
                .expect("finish");
        }
        let loads: Vec<usize> = (1..=4).map(|h| map.shards_of_host(h).count()).collect();
        assert_eq!(loads, [3, 3, 3, 3]);
        let leaders = map.preferred_leaders();
        let mut led: BTreeMap<HostId, usize> = BTreeMap::new();
        for h in leaders.values() {
            *led.entry(*h).or_default() += 1;
        }
        assert_eq!(led.len(), 4, "4 groups, one leader per host: {led:?}");
    }

    #[test]
    fn validate_refuses_a_split_record_that_does_not_fit_the_map() {
        let broken = |edit: &dyn Fn(&mut Split)| {
            let mut map = map(3, 0);
            map.begin_split(1).expect("begin");
            let record = map.splitting.get_mut(&1).expect("recorded");
            edit(record);
            map.validate().expect_err("a bad record")
        };
        let (first, _) = slot_range(1, 3);
        let (second, _) = slot_range(2, 3);
        let why = |e: MapError| match e {
            MapError::BadSplit { why, .. } => why,
            other => panic!("not a bad split: {other:?}"),
        };
        assert!(why(broken(&|s| s.at = first)).contains("strictly inside"));
        assert!(why(broken(&|s| s.at = second)).contains("strictly inside"));
        assert!(why(broken(&|s| s.child = 2)).contains("taken"));
        assert!(why(broken(&|s| s.voters.clear())).contains("no voter"));
        assert!(why(broken(&|s| s.epoch += 1)).contains("ahead"));
        let mut map = map(3, 0);
        map.splitting.insert(
            9,
            Split {
                child: 5,
                at: 1,
                voters: vec![1],
                epoch: 1,
            },
        );
        assert!(why(map.validate().expect_err("no parent")).contains("no such shard"));
    }

    #[test]
    fn a_map_stored_before_splits_were_recorded_still_decodes() {
        #[derive(serde::Serialize)]
        struct V2<'a> {
            epoch: u64,
            hosts: &'a BTreeMap<HostId, HostEntry>,
            shards: &'a BTreeMap<ShardId, ShardEntry>,
            rebalance: bool,
            moving: &'a BTreeMap<ShardId, Move>,
        }
        let mut map = map(2, 1);
        map.request_rebalance().expect("ask");
        map.begin_move(Move {
            shard: 1,
            from: 1,
            to: 4,
        })
        .expect("move");
        let v2 = postcard::to_allocvec(&V2 {
            epoch: map.epoch(),
            hosts: map.hosts(),
            shards: map.shards(),
            rebalance: map.rebalance_requested(),
            moving: map.moves_in_flight(),
        })
        .expect("encode");
        assert_eq!(ClusterMap::decode(&v2).expect("decode"), map);
    }

    #[test]
    fn halves_cut_ranges_at_the_slot() {
        assert_eq!(halves(&[(0, 9)], 5), (vec![(0, 4)], vec![(5, 9)]));
        assert_eq!(halves(&[(0, 3), (8, 9)], 8), (vec![(0, 3)], vec![(8, 9)]));
        assert_eq!(nth_slot(&[(0, 3), (8, 9)], 4), Some(8));
        assert_eq!(nth_slot(&[(0, 3)], 4), None);
    }
}
