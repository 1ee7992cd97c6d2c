//! Unit tests of the cluster map: day 0 from a layout, lookups, serde, the invariants, and each
//! transition's effect, idempotence and refusals.

use super::*;

const REPLICAS: u32 = 3;

fn addrs(ids: impl IntoIterator<Item = HostId>) -> Vec<(HostId, String)> {
    ids.into_iter()
        .map(|h| (h, format!("127.0.0.1:71{h:02}")))
        .collect()
}

fn layout(shards: u32, placement: Vec<(ShardId, Vec<HostId>)>) -> Layout {
    Layout {
        shards,
        replicas: REPLICAS,
        pins: vec![],
        placement,
    }
}

/// Three shards, three replicas each, on hosts 1..=3.
fn day0() -> ClusterMap {
    let placement = vec![(1, vec![1, 2, 3]), (2, vec![2, 3, 1]), (3, vec![3, 1, 2])];
    ClusterMap::day0(&layout(3, placement), &addrs(1..=5)).expect("day-0 map")
}

/// `day0` plus host 4, active with incarnation 44.
fn with_host_4() -> ClusterMap {
    let mut map = day0();
    map.add_host(4, "127.0.0.1:7104").expect("add");
    map.activate_host(4, 44).expect("activate");
    map
}

/// Asserts that `change` succeeds, then that applying it again is Ok and changes nothing.
fn twice(map: &mut ClusterMap, change: impl Fn(&mut ClusterMap) -> Result<(), MapError>) {
    let before = map.epoch();
    change(map).expect("first application");
    assert_eq!(
        map.epoch(),
        before + 1,
        "a change advances the epoch by one"
    );
    let after = map.clone();
    change(map).expect("second application");
    assert_eq!(*map, after, "applying a change twice changes nothing");
    map.validate().expect("the change keeps the invariants");
}

#[test]
fn day0_follows_the_layout_with_every_placed_host_active_and_all_voters() {
    let map = day0();
    assert_eq!(map.epoch(), 1);
    assert_eq!(
        map.hosts().keys().copied().collect::<Vec<_>>(),
        [1, 2, 3],
        "unplaced [[host]] entries are not members"
    );
    for entry in map.hosts().values() {
        assert_eq!(entry.state, HostState::Active);
        assert_eq!(entry.incarnation, 0);
    }
    assert_eq!(map.host(2).map(|h| h.addr.as_str()), Some("127.0.0.1:7102"));
    for shard in 1..=3 {
        let entry = map.shard(shard).expect("shard");
        assert_eq!(entry.slots, vec![slot_range(shard, 3)]);
        assert_eq!(entry.epoch, 1);
        assert_eq!(map.voters_of(shard).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(entry.learners().count(), 0);
    }
}

#[test]
fn every_slot_maps_to_the_shard_the_layout_gives_it() {
    let map = day0();
    for slot in 0..SLOT_COUNT {
        assert_eq!(
            map.shard_of_slot(slot),
            Some(crate::slot::shard_of_slot(slot, 3)),
            "slot {slot}"
        );
    }
    assert_eq!(map.shard_of_slot(SLOT_COUNT), None);
}

#[test]
fn day0_refuses_a_placed_host_without_an_address_and_a_bad_layout() {
    let placement = vec![(1, vec![1, 2, 9])];
    let e = ClusterMap::day0(&layout(1, placement), &addrs(1..=3)).expect_err("no addr");
    assert_eq!(e, MapError::NoAddress { host: 9 });
    assert!(e.to_string().contains("host 9"), "{e}");

    let e = ClusterMap::day0(&layout(0, vec![]), &addrs(1..=3)).expect_err("0 shards");
    assert_eq!(e, MapError::BadShardCount { shards: 0 });
    let e = ClusterMap::day0(&layout(2, vec![(1, vec![1])]), &addrs(1..=3))
        .expect_err("shard 2 unplaced");
    assert!(matches!(e, MapError::SlotUnowned { .. }), "{e}");
    let e =
        ClusterMap::day0(&layout(1, vec![(1, vec![1, 1])]), &addrs(1..=3)).expect_err("host twice");
    assert_eq!(e, MapError::DuplicateReplica { shard: 1, host: 1 });
}

#[test]
fn a_map_survives_postcard_and_json_with_its_index_rebuilt() {
    let mut map = with_host_4();
    map.add_learner(2, 4).expect("learner");
    let bytes = postcard::to_stdvec(&map).expect("encode");
    let back: ClusterMap = postcard::from_bytes(&bytes).expect("decode");
    assert_eq!(back, map);
    assert_eq!(back.shard_of_slot(SLOT_COUNT - 1), Some(3));

    // `status --json` shows roles and states by their lowercase names.
    let json = serde_json::to_string(&map).expect("json");
    assert!(json.contains(r#""4":"learner""#), "{json}");
    assert!(json.contains(r#""state":"active""#), "{json}");
    let back: ClusterMap = serde_json::from_str(&json).expect("json back");
    assert_eq!(back, map);
}

#[test]
fn deserializing_an_invalid_map_is_refused() {
    let mut map = day0();
    map.shards.get_mut(&2).expect("shard 2").slots.clear();
    let bytes = postcard::to_stdvec(&map).expect("encode");
    assert!(postcard::from_bytes::<ClusterMap>(&bytes).is_err());
    let json = serde_json::to_string(&map).expect("encode");
    let e = serde_json::from_str::<ClusterMap>(&json).expect_err("slots of shard 2 unowned");
    assert!(e.to_string().contains("is owned by no shard"), "{e}");
}

#[test]
fn validate_names_each_broken_invariant() {
    let broken = |edit: &dyn Fn(&mut ClusterMap)| {
        let mut map = day0();
        edit(&mut map);
        map.rebuild_index();
        map.validate().expect_err("invariant broken")
    };
    let (first, last) = slot_range(2, 3);
    assert_eq!(
        broken(&|m| m.shards.get_mut(&1).expect("1").slots = vec![(0, first)]),
        MapError::SlotOwnedTwice { slot: first }
    );
    assert_eq!(
        broken(&|m| m.shards.get_mut(&2).expect("2").slots = vec![(first + 1, last)]),
        MapError::SlotUnowned { slot: first }
    );
    assert_eq!(
        broken(&|m| m.shards.get_mut(&3).expect("3").slots = vec![(last + 1, SLOT_COUNT)]),
        MapError::BadSlotRange {
            shard: 3,
            first: last + 1,
            last: SLOT_COUNT
        }
    );
    assert_eq!(
        broken(&|m| {
            m.shards
                .get_mut(&1)
                .expect("1")
                .replicas
                .insert(7, ReplicaRole::Learner);
        }),
        MapError::UnknownHost { host: 7 }
    );
    assert_eq!(
        broken(&|m| m.hosts.get_mut(&3).expect("3").state = HostState::Removed),
        MapError::ReplicaOnRemovedHost {
            shard: META_SHARD,
            host: 3
        }
    );
    assert_eq!(
        broken(&|m| m.shards.get_mut(&2).expect("2").epoch = 5),
        MapError::EpochAhead {
            shard: 2,
            epoch: 5,
            map_epoch: 1
        }
    );
    assert_eq!(
        broken(&|m| {
            let shard = m.shards.get_mut(&1).expect("1");
            shard
                .replicas
                .values_mut()
                .for_each(|r| *r = ReplicaRole::Learner);
        }),
        MapError::NoVoter { shard: 1 }
    );
}

#[test]
fn a_host_joins_then_becomes_active_and_each_step_is_idempotent() {
    let mut map = day0();
    twice(&mut map, |m| m.add_host(4, "127.0.0.1:7104"));
    assert_eq!(
        map.host(4),
        Some(&HostEntry {
            addr: "127.0.0.1:7104".into(),
            state: HostState::Joining,
            incarnation: 0
        })
    );
    twice(&mut map, |m| m.activate_host(4, 44));
    assert_eq!(
        map.host(4).map(|h| (h.state, h.incarnation)),
        Some((HostState::Active, 44))
    );
    assert!(
        map.shards().values().all(|s| s.epoch == 1),
        "host changes leave shard epochs alone"
    );
    // Re-running `host add` after the host became active is harmless too.
    let before = map.clone();
    map.add_host(4, "127.0.0.1:7104").expect("re-run");
    assert_eq!(map, before);
}

#[test]
fn add_host_refuses_a_retired_id_a_moved_host_and_a_taken_address() {
    let mut map = day0();
    map.add_host(4, "127.0.0.1:7104").expect("add");
    let e = map.add_host(4, "127.0.0.1:7999").expect_err("other addr");
    assert!(matches!(e, MapError::AddrMismatch { host: 4, .. }), "{e}");
    let e = map
        .add_host(5, "127.0.0.1:7101")
        .expect_err("host 1's addr");
    assert!(
        matches!(
            e,
            MapError::AddrInUse {
                host: 5,
                other: 1,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        map.add_host(0, "127.0.0.1:7000"),
        Err(MapError::ReservedHostId)
    );

    map.drain_host(4).expect("drain");
    map.remove_host(4).expect("remove");
    let e = map.add_host(4, "127.0.0.1:7104").expect_err("retired");
    assert_eq!(e, MapError::IdRetired { host: 4 });
    assert!(e.to_string().contains("never reused"), "{e}");
    map.add_host(6, "127.0.0.1:7104")
        .expect("a removed host's address may be used again");
}

#[test]
fn incarnations_are_set_once_and_a_different_one_needs_replace() {
    let mut map = day0();
    twice(&mut map, |m| m.set_incarnation(1, 11));
    let e = map.set_incarnation(1, 12).expect_err("changed");
    assert_eq!(
        e,
        MapError::IncarnationMismatch {
            host: 1,
            known: 11,
            given: 12
        }
    );
    assert!(e.to_string().contains("shardkv host replace 1"), "{e}");
    assert_eq!(
        map.set_incarnation(2, 0),
        Err(MapError::ZeroIncarnation { host: 2 })
    );
    map.add_host(4, "127.0.0.1:7104").expect("add");
    map.set_incarnation(4, 44).expect("joining host reports in");
    let e = map.activate_host(4, 45).expect_err("another data dir");
    assert!(matches!(e, MapError::IncarnationMismatch { .. }), "{e}");
    map.activate_host(4, 44).expect("same one");
}

#[test]
fn a_host_is_drained_then_removed_only_once_empty() {
    let mut map = with_host_4();
    let e = map.remove_host(1).expect_err("active");
    assert!(matches!(e, MapError::WrongState { host: 1, .. }), "{e}");
    assert!(e.to_string().contains("drain it first"), "{e}");
    twice(&mut map, |m| m.drain_host(1));
    let e = map.remove_host(1).expect_err("holds replicas");
    assert_eq!(
        e,
        MapError::HoldsReplicas {
            host: 1,
            shards: vec![META_SHARD, 1, 2, 3]
        }
    );
    for shard in [META_SHARD, 1, 2, 3] {
        map.add_learner(shard, 4).expect("learner");
        map.promote(shard, 4).expect("promote");
        map.remove_replica(shard, 1, REPLICAS).expect("leave");
    }
    twice(&mut map, |m| m.remove_host(1));
    assert_eq!(map.host(1).map(|h| h.state), Some(HostState::Removed));
    let e = map.drain_host(1).expect_err("removed");
    assert_eq!(e, MapError::IdRetired { host: 1 });
    let e = map.activate_host(1, 3).expect_err("removed");
    assert_eq!(e, MapError::IdRetired { host: 1 });
}

#[test]
fn a_draining_host_cannot_be_activated_or_take_replicas() {
    let mut map = with_host_4();
    map.drain_host(4).expect("drain");
    let e = map.activate_host(4, 44).expect_err("draining");
    assert!(matches!(e, MapError::WrongState { host: 4, .. }), "{e}");
    let e = map.add_learner(1, 4).expect_err("draining");
    assert!(e.to_string().contains("joining or active"), "{e}");
}

#[test]
fn a_replica_moves_learner_first_and_each_step_stamps_the_shard_epoch() {
    let mut map = with_host_4();
    twice(&mut map, |m| m.add_learner(2, 4));
    assert_eq!(
        map.replicas_of(2).and_then(|r| r.get(&4)),
        Some(&ReplicaRole::Learner)
    );
    assert_eq!(map.shard(2).map(|s| s.epoch), Some(map.epoch()));
    assert_eq!(map.voters_of(2).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        map.shard(1).map(|s| s.epoch),
        Some(1),
        "other shards untouched"
    );
    twice(&mut map, |m| m.promote(2, 4));
    assert_eq!(map.voters_of(2).collect::<Vec<_>>(), [1, 2, 3, 4]);
    twice(&mut map, |m| m.remove_replica(2, 1, REPLICAS));
    assert_eq!(map.voters_of(2).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(map.shard(2).map(|s| s.epoch), Some(map.epoch()));
    assert_eq!(
        map.shards_of_host(1).collect::<Vec<_>>(),
        [META_SHARD, 1, 3]
    );
}

#[test]
fn replica_changes_refuse_what_would_break_the_shard() {
    let mut map = with_host_4();
    assert_eq!(
        map.add_learner(1, 1),
        Err(MapError::AlreadyVoter { shard: 1, host: 1 })
    );
    assert_eq!(
        map.promote(1, 4),
        Err(MapError::NotReplica { shard: 1, host: 4 })
    );
    assert_eq!(
        map.add_learner(9, 4),
        Err(MapError::UnknownShard { shard: 9 })
    );
    assert_eq!(
        map.add_learner(1, 8),
        Err(MapError::UnknownHost { host: 8 })
    );
    let e = map
        .remove_replica(1, 1, REPLICAS)
        .expect_err("2 voters left");
    assert_eq!(
        e,
        MapError::TooFewVoters {
            shard: 1,
            host: 1,
            voters_left: 2,
            min_voters: 3
        }
    );
    assert!(e.to_string().contains("shard 1"), "{e}");
    // A learner can always go; the last voter never can.
    map.add_learner(1, 4).expect("learner");
    map.remove_replica(1, 4, REPLICAS).expect("learner leaves");
    map.remove_replica(1, 1, 1).expect("down to 2 voters");
    map.remove_replica(1, 2, 0).expect("down to 1 voter");
    let e = map.remove_replica(1, 3, 0).expect_err("last voter");
    assert!(
        matches!(e, MapError::TooFewVoters { voters_left: 0, .. }),
        "{e}"
    );
    // Removing what is not there is already done.
    let before = map.clone();
    map.remove_replica(1, 1, REPLICAS).expect("not a replica");
    assert_eq!(map, before);
}

#[test]
fn replacing_a_host_makes_every_replica_it_holds_a_learner() {
    let mut map = day0();
    map.set_incarnation(2, 22).expect("known");
    twice(&mut map, |m| m.replace_host(2, 23));
    assert_eq!(map.host(2).map(|h| h.incarnation), Some(23));
    for shard in 1..=3 {
        assert_eq!(
            map.replicas_of(shard).and_then(|r| r.get(&2)),
            Some(&ReplicaRole::Learner),
            "shard {shard}"
        );
        assert_eq!(map.shard(shard).map(|s| s.epoch), Some(map.epoch()));
        assert_eq!(map.voters_of(shard).collect::<Vec<_>>(), [1, 3]);
    }
    map.promote(1, 2).expect("caught up");
    assert_eq!(
        map.replace_host(2, 0),
        Err(MapError::ZeroIncarnation { host: 2 })
    );
}

#[test]
fn replacing_the_only_voter_of_a_shard_is_refused() {
    let single = layout(1, vec![(1, vec![1])]);
    let mut map = ClusterMap::day0(&single, &addrs(1..=1)).expect("map");
    let before = map.clone();
    let e = map.replace_host(1, 5).expect_err("only voter");
    // The meta group, on the one host too, is found first.
    assert_eq!(
        e,
        MapError::LastVoter {
            shard: META_SHARD,
            host: 1
        }
    );
    assert_eq!(map, before, "a refused change changes nothing");
}
