//! Work in flight recorded in the map: replica moves under way, and an operator's request to
//! rebalance. Recording them in the map, not in the memory of whoever carries them out, is
//! what lets a move interrupted by a crash (of the command, the balancer's host, or a shard's
//! leader) be found and finished by the next one to look, from any host.
//!
//! Like every transition (see `change.rs`): checked before anything changes, a no-op when
//! already in effect, one epoch per change.

use crate::wire::{HostId, ShardId};

use super::{ClusterMap, HostState, MapError, Move, ReplicaRole};

impl ClusterMap {
    /// Starts `m`: places a learner of `m.shard` on `m.to` (unless one is there) and records
    /// the move. Already recorded: nothing to do. Refused while another move of the shard is
    /// under way, while a split of the shard is (the split's new shard takes the voters it
    /// recorded), when `m.from` holds no replica of the shard, when `m.to` already votes in it,
    /// or when `m.to` cannot take a replica.
    pub fn begin_move(&mut self, m: Move) -> Result<(), MapError> {
        let shard = m.shard;
        match self.recorded(m) {
            Recorded::This => return Ok(()),
            Recorded::Other(other) => return Err(other),
            Recorded::Nothing => {}
        }
        if let Some(split) = self.splitting.get(&shard) {
            return Err(MapError::SplitInFlight {
                shard,
                child: split.child,
            });
        }
        let replicas = &self.known_shard(shard)?.replicas;
        if !replicas.contains_key(&m.from) {
            return Err(MapError::NotReplica {
                shard,
                host: m.from,
            });
        }
        match replicas.get(&m.to) {
            Some(ReplicaRole::Voter) => return Err(MapError::AlreadyVoter { shard, host: m.to }),
            Some(ReplicaRole::Learner) => {
                self.bump();
            }
            None => {
                let state = self.live_host(m.to)?.state;
                if !matches!(state, HostState::Joining | HostState::Active) {
                    return Err(MapError::WrongState {
                        host: m.to,
                        action: "move a replica to",
                        state,
                        needed: "joining or active",
                    });
                }
                self.set_role(shard, m.to, Some(ReplicaRole::Learner));
            }
        }
        self.moving.insert(shard, m);
        Ok(())
    }

    /// Records the outcome of a move whose Raft change is done: `to` votes, `from` is gone,
    /// and the move's record is cleared, in one change. Already so: nothing to do. Refused
    /// when another move of the shard is recorded (a re-run that comes after the shard moved
    /// on must not undo the next move), when `to` holds no replica of the shard, or when the
    /// shard would keep fewer than `min_voters` voters.
    pub fn finish_move(
        &mut self,
        shard: ShardId,
        from: HostId,
        to: HostId,
        min_voters: u32,
    ) -> Result<(), MapError> {
        let entry = self.known_shard(shard)?;
        let this = Move { shard, from, to };
        let to_role = entry.replicas.get(&to).copied();
        let done = to_role == Some(ReplicaRole::Voter) && !entry.replicas.contains_key(&from);
        match self.recorded(this) {
            Recorded::This => {}
            _ if done => return Ok(()),
            Recorded::Other(other) => return Err(other),
            Recorded::Nothing => {}
        }
        if to_role.is_none() {
            return Err(MapError::NotReplica { shard, host: to });
        }
        let voters_left = entry.voters().filter(|h| *h != from && *h != to).count() + 1;
        let min_voters = usize::try_from(min_voters).unwrap_or(usize::MAX).max(1);
        if voters_left < min_voters {
            return Err(MapError::TooFewVoters {
                shard,
                host: from,
                voters_left,
                min_voters,
            });
        }
        let epoch = self.bump();
        let entry = self.shard_entry_mut(shard);
        entry.replicas.insert(to, ReplicaRole::Voter);
        entry.replicas.remove(&from);
        entry.epoch = epoch;
        self.moving.remove(&shard);
        Ok(())
    }

    /// Rolls back the move of `shard` from `from` to `to` before its joint change: drops the
    /// learner it placed on `to` and the record, in one change, leaving the shard as it was.
    /// Not recorded and `to` holds no replica: nothing to do. Refused when another move of
    /// the shard is recorded, or when `to` is no learner (the move went past its joint change,
    /// and only finishing it leaves that configuration).
    pub fn abort_move(&mut self, shard: ShardId, from: HostId, to: HostId) -> Result<(), MapError> {
        let entry = self.known_shard(shard)?;
        let this = Move { shard, from, to };
        match self.recorded(this) {
            Recorded::This => {}
            Recorded::Other(other) => return Err(other),
            Recorded::Nothing if !entry.replicas.contains_key(&to) => return Ok(()),
            Recorded::Nothing => {}
        }
        if entry.replicas.get(&to) != Some(&ReplicaRole::Learner) {
            return Err(MapError::AlreadyVoter { shard, host: to });
        }
        self.set_role(shard, to, None);
        self.moving.remove(&shard);
        Ok(())
    }

    /// What the map records for `m`'s shard, seen from `m`.
    fn recorded(&self, m: Move) -> Recorded {
        match self.moving.get(&m.shard) {
            Some(recorded) if *recorded == m => Recorded::This,
            Some(other) => Recorded::Other(MapError::MoveInFlight {
                shard: m.shard,
                from: other.from,
                to: other.to,
            }),
            None => Recorded::Nothing,
        }
    }

    /// Records that an operator wants replicas spread evenly. Already asked: nothing to do.
    pub fn request_rebalance(&mut self) -> Result<(), MapError> {
        if !self.rebalance {
            self.bump();
            self.rebalance = true;
        }
        Ok(())
    }

    /// Clears the rebalance request once the balancer has nothing left to move. Not asked:
    /// nothing to do.
    pub fn finish_rebalance(&mut self) -> Result<(), MapError> {
        if self.rebalance {
            self.bump();
            self.rebalance = false;
        }
        Ok(())
    }
}

/// What the map records for a move's shard: that move, another one (as the refusal to give),
/// or none.
enum Recorded {
    This,
    Other(MapError),
    Nothing,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;

    const REPLICAS: u32 = 3;

    fn map_with_host_4() -> ClusterMap {
        let layout = Layout {
            shards: 2,
            replicas: REPLICAS,
            pins: vec![],
            placement: vec![(1, vec![1, 2, 3]), (2, vec![2, 3, 1])],
        };
        let addrs: Vec<(HostId, String)> =
            (1..=3).map(|h| (h, format!("127.0.0.1:710{h}"))).collect();
        let mut map = ClusterMap::day0(&layout, &addrs).expect("day-0 map");
        map.add_host(4, "127.0.0.1:7104").expect("add");
        map.activate_host(4, 44).expect("activate");
        map
    }

    const M: Move = Move {
        shard: 1,
        from: 1,
        to: 4,
    };

    #[test]
    fn a_move_places_a_learner_records_itself_once_and_survives_encoding() {
        let mut map = map_with_host_4();
        let before = map.epoch();
        map.begin_move(M).expect("begin");
        assert_eq!(map.epoch(), before + 1);
        let again = map.clone();
        map.begin_move(M).expect("again");
        assert_eq!(map, again, "a re-run changes nothing");
        assert_eq!(
            map.replicas_of(1).and_then(|r| r.get(&4)),
            Some(&ReplicaRole::Learner)
        );
        assert_eq!(map.moves_in_flight().get(&1), Some(&M));
        let decoded = ClusterMap::decode(&map.encode()).expect("decode");
        assert_eq!(decoded, map);
    }

    #[test]
    fn a_second_move_of_a_moving_shard_is_refused_and_names_the_first() {
        let mut map = map_with_host_4();
        map.begin_move(M).expect("begin");
        let other = Move { from: 2, ..M };
        let err = map.begin_move(other).expect_err("refused");
        assert_eq!(
            err,
            MapError::MoveInFlight {
                shard: 1,
                from: 1,
                to: 4
            }
        );
        assert!(
            err.to_string().contains("shardkv replica move 1 1 4"),
            "{err}"
        );
    }

    #[test]
    fn finishing_a_move_promotes_removes_and_clears_in_one_epoch() {
        let mut map = map_with_host_4();
        map.begin_move(M).expect("begin");
        let before = map.epoch();
        map.finish_move(1, 1, 4, REPLICAS).expect("finish");
        assert_eq!(map.epoch(), before + 1);
        let replicas = map.replicas_of(1).expect("shard");
        assert_eq!(replicas.get(&4), Some(&ReplicaRole::Voter));
        assert!(!replicas.contains_key(&1));
        assert!(map.moves_in_flight().is_empty());
        let done = map.clone();
        map.finish_move(1, 1, 4, REPLICAS).expect("again");
        assert_eq!(map, done, "a re-run changes nothing");
    }

    #[test]
    fn finishing_a_move_again_after_the_next_one_began_leaves_the_next_one_alone() {
        let mut map = map_with_host_4();
        map.begin_move(M).expect("begin");
        map.finish_move(1, 1, 4, REPLICAS).expect("finish");
        let back = Move {
            shard: 1,
            from: 2,
            to: 1,
        };
        map.begin_move(back).expect("the next move");
        let before = map.clone();
        let late = map.finish_move(1, 1, 4, REPLICAS);
        assert!(
            matches!(late, Err(MapError::MoveInFlight { from: 2, to: 1, .. })),
            "a late re-run of the first is refused, naming the next: {late:?}"
        );
        assert_eq!(map, before, "the next move's learner and record stay");
    }

    #[test]
    fn a_move_from_a_host_without_the_shard_or_onto_a_voter_is_refused() {
        let mut map = map_with_host_4();
        let from_4 = Move {
            from: 4,
            to: 1,
            ..M
        };
        assert!(matches!(
            map.begin_move(from_4),
            Err(MapError::NotReplica { .. })
        ));
        let onto_voter = Move { to: 2, ..M };
        assert!(matches!(
            map.begin_move(onto_voter),
            Err(MapError::AlreadyVoter { .. })
        ));
    }

    #[test]
    fn an_aborted_move_leaves_the_shard_as_it_was_and_a_re_run_changes_nothing() {
        let start = map_with_host_4();
        let mut map = start.clone();
        map.begin_move(M).expect("begin");
        map.abort_move(1, 1, 4).expect("abort");
        assert_eq!(map.replicas_of(1), start.replicas_of(1));
        assert!(map.moves_in_flight().is_empty());
        assert_eq!(map.epoch(), start.epoch() + 2);
        let aborted = map.clone();
        map.abort_move(1, 1, 4).expect("again");
        assert_eq!(map, aborted);
    }

    #[test]
    fn a_finished_move_cannot_be_aborted() {
        let mut map = map_with_host_4();
        map.begin_move(M).expect("begin");
        map.finish_move(1, 1, 4, REPLICAS).expect("finish");
        // Not recorded any more, and host 4 votes: it is no move to roll back.
        assert!(map.abort_move(1, 1, 4).is_err());
    }

    #[test]
    fn a_rebalance_request_is_recorded_once_and_cleared_once() {
        let mut map = map_with_host_4();
        let before = map.epoch();
        map.request_rebalance().expect("ask");
        map.request_rebalance().expect("ask again");
        assert!(map.rebalance_requested());
        assert_eq!(map.epoch(), before + 1);
        let decoded = ClusterMap::decode(&map.encode()).expect("decode");
        assert!(decoded.rebalance_requested());
        map.finish_rebalance().expect("done");
        map.finish_rebalance().expect("done again");
        assert!(!map.rebalance_requested());
        assert_eq!(map.epoch(), before + 2);
    }

    #[test]
    fn a_map_stored_by_the_first_version_still_decodes() {
        #[derive(serde::Serialize)]
        struct V1<'a> {
            epoch: u64,
            hosts: &'a std::collections::BTreeMap<HostId, super::super::HostEntry>,
            shards: &'a std::collections::BTreeMap<ShardId, super::super::ShardEntry>,
        }
        let map = map_with_host_4();
        let v1 = postcard::to_allocvec(&V1 {
            epoch: map.epoch(),
            hosts: map.hosts(),
            shards: map.shards(),
        })
        .expect("encode");
        assert_eq!(ClusterMap::decode(&v1).expect("decode"), map);
    }
}
