//! The rebalancing planner: which replicas to move so that every active host carries the same
//! number of replicas, give or take one, and no draining host carries any.
//!
//! It only plans. The balancer (`src/balancer.rs`) carries the moves out one by one through the
//! meta group and the shards' conf changes, and runs the planner again after each: because the
//! plan is a pure function of the map, a crash leaves nothing to remember but the move under
//! way, which the map records.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::wire::{HostId, ShardId};

use super::{ClusterMap, HostState, META_SHARD};

/// One replica move: add `to` as a learner of `shard`, let it catch up, promote it and remove
/// `from` in one joint change, then leave the joint configuration.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Move {
    /// The shard whose replica moves.
    pub shard: ShardId,
    /// The host giving up its replica.
    pub from: HostId,
    /// The host receiving it; never one that already holds a replica of `shard`.
    pub to: HostId,
}

impl ClusterMap {
    /// The moves that spread replicas evenly over the active hosts, in the order to carry them
    /// out, each planned on the map as the moves before it leave it. Guarantees:
    /// - replicas on draining hosts move first, each to the least loaded active host that does
    ///   not hold the shard (lowest id on a tie);
    /// - then, while some active host holds at least two more replicas than another, one
    ///   replica moves from the fullest to the emptiest that can take it: every move narrows
    ///   the gap, so no move is wasted, and none is planned for a map already even;
    /// - no host ever gets two replicas of one shard;
    /// - deterministic: the same map gives the same plan on every host.
    ///
    /// Only settled shards move: those with exactly `replicas` replicas (the meta group: as
    /// many as it has), all voters, and no move or split recorded (a split's new shard starts
    /// on the voters the split recorded, which a move would change under it). A shard with a
    /// learner or an extra or missing replica is in the middle of a move (or a `host replace`)
    /// and is planned for once that finishes. Hosts that are joining take no replicas until they are active.
    pub fn plan_rebalance(&self, replicas: u32) -> Vec<Move> {
        let replicas = usize::try_from(replicas).unwrap_or(usize::MAX);
        let mut load: BTreeMap<HostId, usize> = self
            .hosts
            .iter()
            .filter(|(_, h)| h.state == HostState::Active)
            .map(|(id, _)| (*id, 0))
            .collect();
        if load.is_empty() {
            return Vec::new();
        }
        for host in self.shards.values().flat_map(|s| s.replicas.keys()) {
            if let Some(n) = load.get_mut(host) {
                *n += 1;
            }
        }
        let mut settled: BTreeMap<ShardId, BTreeSet<HostId>> = self
            .shards
            .iter()
            .filter(|(id, s)| {
                // The meta group keeps its own size (at most `META_REPLICAS`).
                (**id == META_SHARD || s.replicas.len() == replicas)
                    && s.learners().next().is_none()
                    && !self.moving.contains_key(id)
                    && !self.splitting.contains_key(id)
            })
            .map(|(id, s)| (*id, s.replicas.keys().copied().collect()))
            .collect();

        let mut moves = Vec::new();
        for (&shard, holders) in &mut settled {
            let draining: Vec<HostId> = holders
                .iter()
                .copied()
                .filter(|h| self.host(*h).map(|e| e.state) == Some(HostState::Draining))
                .collect();
            for from in draining {
                let emptiest = load
                    .iter()
                    .filter(|(h, _)| !holders.contains(h))
                    .min_by_key(|(h, n)| (**n, **h))
                    .map(|(h, _)| *h);
                let Some(to) = emptiest else {
                    continue;
                };
                holders.remove(&from);
                holders.insert(to);
                *load.entry(to).or_default() += 1;
                moves.push(Move { shard, from, to });
            }
        }

        // Each balancing move lowers the sum of squared loads by at least 2, so the loop ends
        // within (total replicas)^2 / 2 rounds; the bound only makes that explicit.
        let total: usize = load.values().sum();
        for _ in 0..=total * total / 2 {
            let Some(step) = next_balancing_move(&load, &settled) else {
                break;
            };
            if let Some(holders) = settled.get_mut(&step.shard) {
                holders.remove(&step.from);
                holders.insert(step.to);
            }
            *load.entry(step.from).or_default() -= 1;
            *load.entry(step.to).or_default() += 1;
            moves.push(step);
        }
        moves
    }
}

impl ClusterMap {
    /// The moves to carry out now, in order: every planned move off a draining host, and, once
    /// an operator asked for a rebalance, the rest of [`ClusterMap::plan_rebalance`]. Without
    /// a request nothing else moves: the operator decides when data moves (a day-0 layout an
    /// operator pinned is uneven on purpose), except off a host being removed.
    pub fn pending_moves(&self, replicas: u32) -> Vec<Move> {
        let plan = self.plan_rebalance(replicas);
        if self.rebalance {
            return plan;
        }
        plan.into_iter()
            .filter(|m| self.host(m.from).map(|h| h.state) == Some(HostState::Draining))
            .collect()
    }
}

/// A move from the fullest host to the emptiest one that can take a replica from it, among
/// pairs whose loads differ by two or more; `None` when the loads are even.
fn next_balancing_move(
    load: &BTreeMap<HostId, usize>,
    settled: &BTreeMap<ShardId, BTreeSet<HostId>>,
) -> Option<Move> {
    let mut fullest: Vec<(HostId, usize)> = load.iter().map(|(h, n)| (*h, *n)).collect();
    fullest.sort_by_key(|&(h, n)| (Reverse(n), h));
    let mut emptiest = fullest.clone();
    emptiest.sort_by_key(|&(h, n)| (n, h));
    for &(from, from_load) in &fullest {
        for &(to, to_load) in &emptiest {
            if from_load < to_load + 2 {
                break;
            }
            let movable = settled
                .iter()
                .find(|(_, holders)| holders.contains(&from) && !holders.contains(&to));
            if let Some((&shard, _)) = movable {
                return Some(Move { shard, from, to });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;

    const REPLICAS: u32 = 3;

    /// Three shards, three replicas each, on hosts 1..=3.
    fn three_hosts() -> ClusterMap {
        let layout = Layout {
            shards: 3,
            replicas: REPLICAS,
            pins: vec![],
            placement: vec![(1, vec![1, 2, 3]), (2, vec![2, 3, 1]), (3, vec![3, 1, 2])],
        };
        let addrs: Vec<(HostId, String)> =
            (1..=3).map(|h| (h, format!("127.0.0.1:710{h}"))).collect();
        ClusterMap::day0(&layout, &addrs).expect("day-0 map")
    }

    fn with_active_host(mut map: ClusterMap, id: HostId) -> ClusterMap {
        map.add_host(id, &format!("127.0.0.1:710{id}"))
            .expect("add");
        map.activate_host(id, 40 + id).expect("activate");
        map
    }

    /// Carries the moves out the way `shardkv rebalance` does, on the map only.
    fn carry_out(map: &mut ClusterMap, moves: &[Move]) {
        for m in moves {
            map.add_learner(m.shard, m.to).expect("learner");
            map.promote(m.shard, m.to).expect("promote");
            map.remove_replica(m.shard, m.from, REPLICAS)
                .expect("remove old voter");
        }
        map.validate().expect("still a valid map");
    }

    fn loads(map: &ClusterMap) -> BTreeMap<HostId, usize> {
        map.hosts()
            .keys()
            .map(|&h| (h, map.shards_of_host(h).count()))
            .collect()
    }

    #[test]
    fn an_even_map_needs_no_moves() {
        assert_eq!(three_hosts().plan_rebalance(REPLICAS), vec![]);
    }

    #[test]
    fn growing_three_to_four_hosts_moves_three_replicas_onto_the_new_one() {
        let mut map = with_active_host(three_hosts(), 4);
        let moves = map.plan_rebalance(REPLICAS);
        // 3 shards and the meta group, 3 replicas each: 12 over 4 hosts, 3 each.
        assert_eq!(moves.len(), 3, "{moves:?}");
        assert!(moves.iter().all(|m| m.to == 4), "{moves:?}");
        assert_eq!(map.plan_rebalance(REPLICAS), moves, "deterministic");
        carry_out(&mut map, &moves);
        let loads = loads(&map);
        let (min, max) = (loads.values().min(), loads.values().max());
        assert_eq!((min, max), (Some(&3), Some(&3)), "{loads:?}");
        assert_eq!(map.plan_rebalance(REPLICAS), vec![], "balanced now");
    }

    #[test]
    fn a_draining_host_is_emptied_onto_the_others() {
        let mut map = with_active_host(three_hosts(), 4);
        let grow = map.plan_rebalance(REPLICAS);
        carry_out(&mut map, &grow);
        map.drain_host(1).expect("drain");
        let held = map.shards_of_host(1).count();
        let moves = map.plan_rebalance(REPLICAS);
        assert_eq!(moves.len(), held, "only host 1's replicas move: {moves:?}");
        assert!(moves.iter().all(|m| m.from == 1 && m.to != 1), "{moves:?}");
        carry_out(&mut map, &moves);
        assert_eq!(map.shards_of_host(1).count(), 0);
        let loads = loads(&map);
        assert!([2, 3, 4].iter().all(|h| loads[h] == 4), "{loads:?}");
        map.remove_host(1).expect("empty host leaves");
        assert_eq!(map.plan_rebalance(REPLICAS), vec![]);
    }

    #[test]
    fn a_drain_without_a_free_host_plans_nothing_for_it() {
        // Three hosts and three replicas: there is nowhere to put host 1's replicas.
        let mut map = three_hosts();
        map.drain_host(1).expect("drain");
        assert_eq!(map.plan_rebalance(REPLICAS), vec![]);
    }

    #[test]
    fn shards_in_the_middle_of_a_move_are_left_alone() {
        let mut map = with_active_host(three_hosts(), 4);
        map.add_learner(1, 4).expect("learner");
        let moves = map.plan_rebalance(REPLICAS);
        assert!(moves.iter().all(|m| m.shard != 1), "{moves:?}");
        // 13 replicas (shard 1's learner on host 4 included): two moves onto host 4 leave
        // no two hosts more than one apart.
        assert_eq!(moves.len(), 2, "{moves:?}");
    }

    #[test]
    fn without_a_request_only_draining_hosts_are_emptied() {
        let mut map = with_active_host(three_hosts(), 4);
        assert_eq!(map.pending_moves(REPLICAS), vec![], "no request, no drain");
        map.request_rebalance().expect("ask");
        assert_eq!(map.pending_moves(REPLICAS), map.plan_rebalance(REPLICAS));
        map.finish_rebalance().expect("done");
        map.drain_host(1).expect("drain");
        let pending = map.pending_moves(REPLICAS);
        assert!(!pending.is_empty());
        assert!(pending.iter().all(|m| m.from == 1), "{pending:?}");
    }

    #[test]
    fn a_shard_with_a_recorded_move_is_not_planned_again() {
        let mut map = with_active_host(three_hosts(), 4);
        let first = map.plan_rebalance(REPLICAS)[0];
        map.begin_move(first).expect("begin");
        assert!(map
            .plan_rebalance(REPLICAS)
            .iter()
            .all(|m| m.shard != first.shard));
    }

    #[test]
    fn the_meta_group_is_planned_at_its_own_size() {
        // Five replicas per data shard, the meta group on three hosts: draining a meta host
        // still moves its meta replica.
        let layout = Layout {
            shards: 1,
            replicas: 5,
            pins: vec![],
            placement: vec![(1, vec![1, 2, 3, 4, 5])],
        };
        let addrs: Vec<(HostId, String)> =
            (1..=6).map(|h| (h, format!("127.0.0.1:710{h}"))).collect();
        let mut map = ClusterMap::day0(&layout, &addrs).expect("day-0 map");
        map.add_host(6, "127.0.0.1:7106").expect("add");
        map.activate_host(6, 46).expect("activate");
        map.drain_host(1).expect("drain");
        let moves = map.pending_moves(5);
        assert!(
            moves.iter().any(|m| m.shard == META_SHARD && m.from == 1),
            "{moves:?}"
        );
        assert!(
            moves.iter().any(|m| m.shard == 1 && m.from == 1),
            "{moves:?}"
        );
    }

    #[test]
    fn joining_hosts_take_no_replicas() {
        let mut map = three_hosts();
        map.add_host(4, "127.0.0.1:7104").expect("add");
        assert_eq!(map.plan_rebalance(REPLICAS), vec![]);
    }
}
