//! Which host should lead each shard: leaderships spread evenly over the hosts, derived from
//! the map alone, so every host computes the same answer and a replica can hand leadership
//! back to its shard's preferred host without asking anyone.
//!
//! A leader does the shard's disk writes first and answers its reads, so an even spread of
//! leaders is what spreads the load, and it must follow replicas as they move: a preferred
//! host fixed at day 0 would pull leadership back to a host that is being drained, or that no
//! longer holds the shard at all.

use std::collections::BTreeMap;

use crate::wire::{HostId, ShardId};

use super::{ClusterMap, HostState, META_SHARD};

impl ClusterMap {
    /// The preferred leader of every shard. Guarantees:
    /// - a preferred leader is a voter of its shard, on an active host, and not the host a
    ///   move of that shard is taking its replica from, whenever the shard has such a voter
    ///   (otherwise any voter, so a shard always has one);
    /// - shards are assigned in id order, data shards first and the meta group last, each to
    ///   the eligible voter leading the fewest shards so far (lowest id on a tie), so on a
    ///   day-0 map placed round-robin every data shard prefers the first host of its
    ///   placement, and no host leads more than one shard more than another could;
    /// - deterministic: the same map gives the same answer on every host.
    pub fn preferred_leaders(&self) -> BTreeMap<ShardId, HostId> {
        let mut led: BTreeMap<HostId, usize> = BTreeMap::new();
        let mut preferred = BTreeMap::new();
        let data = self.shards.keys().copied().filter(|s| *s != META_SHARD);
        let order = data.chain(self.shards.contains_key(&META_SHARD).then_some(META_SHARD));
        for shard in order {
            let entry = self.shard_entry(shard);
            let leaving = self.moving.get(&shard).map(|m| m.from);
            let eligible: Vec<HostId> = entry
                .voters()
                .filter(|h| Some(*h) != leaving)
                .filter(|h| self.host(*h).map(|e| e.state) == Some(HostState::Active))
                .collect();
            let candidates = if eligible.is_empty() {
                entry.voters().collect()
            } else {
                eligible
            };
            let pick = candidates
                .into_iter()
                .min_by_key(|h| (led.get(h).copied().unwrap_or(0), *h));
            if let Some(host) = pick {
                *led.entry(host).or_default() += 1;
                preferred.insert(shard, host);
            }
        }
        preferred
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_map::Move;
    use crate::layout::Layout;

    fn round_robin(hosts: u64, shards: u32) -> ClusterMap {
        let placement = (1..=shards)
            .map(|s| {
                let first = u64::from(s - 1) % hosts;
                (s, (0..3).map(|i| (first + i) % hosts + 1).collect())
            })
            .collect();
        let layout = Layout {
            shards,
            replicas: 3,
            pins: vec![],
            placement,
        };
        let addrs: Vec<(HostId, String)> = (1..=hosts)
            .map(|h| (h, format!("127.0.0.1:71{h:02}")))
            .collect();
        ClusterMap::day0(&layout, &addrs).expect("day-0 map")
    }

    #[test]
    fn on_a_round_robin_day0_map_each_shard_prefers_the_first_host_of_its_placement() {
        for (hosts, shards) in [(3, 3), (3, 6), (4, 3), (4, 2), (5, 7)] {
            let map = round_robin(hosts, shards);
            let preferred = map.preferred_leaders();
            for s in 1..=shards {
                let first = u64::from(s - 1) % hosts + 1;
                assert_eq!(
                    preferred[&s], first,
                    "{hosts} hosts, {shards} shards, shard {s}"
                );
            }
            let led = |h: HostId| preferred.values().filter(|p| **p == h).count();
            let meta = preferred[&META_SHARD];
            assert!((1..=3).contains(&meta), "the meta group is on hosts 1..=3");
            assert!((1..=3).all(|h| led(meta) <= led(h) + 1), "{preferred:?}");
        }
    }

    #[test]
    fn a_draining_host_and_the_source_of_a_move_are_not_preferred() {
        let mut map = round_robin(4, 3);
        map.drain_host(1).expect("drain");
        let preferred = map.preferred_leaders();
        assert!(preferred.values().all(|h| *h != 1), "{preferred:?}");

        let mut map = round_robin(4, 3);
        map.begin_move(Move {
            shard: 2,
            from: 2,
            to: 1,
        })
        .expect("move");
        assert_ne!(map.preferred_leaders()[&2], 2);
    }

    #[test]
    fn leaderships_spread_evenly_after_a_host_joins_and_takes_replicas() {
        let mut map = round_robin(3, 6);
        map.add_host(4, "127.0.0.1:7104").expect("add");
        map.activate_host(4, 44).expect("activate");
        map.request_rebalance().expect("ask");
        for m in map.pending_moves(3) {
            map.begin_move(m).expect("begin");
            map.finish_move(m.shard, m.from, m.to, 3).expect("finish");
        }
        let mut led: BTreeMap<HostId, usize> = BTreeMap::new();
        for h in map.preferred_leaders().values() {
            *led.entry(*h).or_default() += 1;
        }
        // 7 groups over 4 hosts: 1 or 2 each.
        assert_eq!(led.len(), 4, "{led:?}");
        assert!(led.values().all(|n| (1..=2).contains(n)), "{led:?}");
    }
}
