//! Unit tests of shard splits in the map: what is recorded, what finishing hands over, the
//! refusals, re-runs, and how a new shard is moved and led like any other.

use super::*;
use crate::cluster_map::{HostEntry, Move};
use crate::layout::Layout;
use crate::slot::{slot_range, SLOT_COUNT};
use std::collections::BTreeMap;

const REPLICAS: u32 = 3;

/// `shards` shards on hosts 1..=3 (the meta group too), and `extra` hosts 4.. active with
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
    let middle = first + (last - first).div_ceil(2);
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
