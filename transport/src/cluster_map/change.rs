//! The transitions of the cluster map, one method each, as the meta group applies them.
//!
//! Every method checks everything before it touches anything, so a refusal leaves the map as
//! it was; a change already in effect returns `Ok` and leaves even the epoch alone; a change
//! that applies advances the map epoch by exactly one and stamps every shard it touched with
//! the new epoch.

use crate::wire::{HostId, ShardId};

use super::{ClusterMap, HostEntry, HostState, MapError, ReplicaRole, ShardEntry};

impl ClusterMap {
    /// Adds host `id` at `addr` as [`HostState::Joining`], incarnation unknown. Already there at
    /// the same address (in any state but removed): nothing to do.
    pub fn add_host(&mut self, id: HostId, addr: &str) -> Result<(), MapError> {
        if id == 0 {
            return Err(MapError::ReservedHostId);
        }
        if let Some(known) = self.hosts.get(&id) {
            return match known.state {
                HostState::Removed => Err(MapError::IdRetired { host: id }),
                _ if known.addr != addr => Err(MapError::AddrMismatch {
                    host: id,
                    known: known.addr.clone(),
                    requested: addr.to_string(),
                }),
                _ => Ok(()),
            };
        }
        let taken = self
            .hosts
            .iter()
            .find(|(_, h)| h.state != HostState::Removed && h.addr == addr);
        if let Some((&other, _)) = taken {
            return Err(MapError::AddrInUse {
                addr: addr.to_string(),
                host: id,
                other,
            });
        }
        self.bump();
        self.hosts.insert(
            id,
            HostEntry {
                addr: addr.to_string(),
                state: HostState::Joining,
                incarnation: 0,
            },
        );
        Ok(())
    }

    /// Makes a joining host [`HostState::Active`] with the incarnation of its data dir. Already
    /// active with that incarnation: nothing to do.
    pub fn activate_host(&mut self, id: HostId, incarnation: u64) -> Result<(), MapError> {
        let host = self.live_host(id)?;
        check_incarnation(id, host.incarnation, incarnation)?;
        match host.state {
            HostState::Active => Ok(()),
            HostState::Joining => {
                self.bump();
                let host = self.host_entry_mut(id);
                host.state = HostState::Active;
                host.incarnation = incarnation;
                Ok(())
            }
            state => Err(MapError::WrongState {
                host: id,
                action: "activate",
                state,
                needed: "joining",
            }),
        }
    }

    /// Records the incarnation of a host whose incarnation is not yet known (a day-0 host or a
    /// joining one reporting in). The same one again: nothing to do. A different one is
    /// refused: a changed incarnation means a lost data dir, which is [`Self::replace_host`].
    pub fn set_incarnation(&mut self, id: HostId, incarnation: u64) -> Result<(), MapError> {
        let host = self.live_host(id)?;
        check_incarnation(id, host.incarnation, incarnation)?;
        if host.incarnation == incarnation {
            return Ok(());
        }
        self.bump();
        self.host_entry_mut(id).incarnation = incarnation;
        Ok(())
    }

    /// Marks a joining or active host [`HostState::Draining`]: the planner moves its replicas
    /// away first, and it receives no new ones. Already draining: nothing to do.
    pub fn drain_host(&mut self, id: HostId) -> Result<(), MapError> {
        match self.live_host(id)?.state {
            HostState::Draining => Ok(()),
            HostState::Joining | HostState::Active => {
                self.bump();
                self.host_entry_mut(id).state = HostState::Draining;
                Ok(())
            }
            HostState::Removed => Err(MapError::IdRetired { host: id }),
        }
    }

    /// Marks a draining (or never activated, joining) host [`HostState::Removed`], for good.
    /// Refused while it holds any replica. Already removed: nothing to do.
    pub fn remove_host(&mut self, id: HostId) -> Result<(), MapError> {
        let state = self
            .host(id)
            .ok_or(MapError::UnknownHost { host: id })?
            .state;
        match state {
            HostState::Removed => return Ok(()),
            HostState::Active => {
                return Err(MapError::WrongState {
                    host: id,
                    action: "remove",
                    state,
                    needed: "draining (drain it first)",
                })
            }
            HostState::Joining | HostState::Draining => {}
        }
        let shards: Vec<ShardId> = self.shards_of_host(id).collect();
        if !shards.is_empty() {
            return Err(MapError::HoldsReplicas { host: id, shards });
        }
        self.bump();
        self.host_entry_mut(id).state = HostState::Removed;
        Ok(())
    }

    /// Gives a host that lost its data dir its new incarnation and turns every replica it
    /// holds into a learner, so it never votes with a log that forgot what it acknowledged;
    /// each is promoted again once caught up. Already at that incarnation: nothing to do.
    /// Refused if the host is some shard's only voter.
    pub fn replace_host(&mut self, id: HostId, new_incarnation: u64) -> Result<(), MapError> {
        if new_incarnation == 0 {
            return Err(MapError::ZeroIncarnation { host: id });
        }
        if self.live_host(id)?.incarnation == new_incarnation {
            return Ok(());
        }
        let held: Vec<ShardId> = self.shards_of_host(id).collect();
        for &shard in &held {
            let entry = self.shard_entry(shard);
            if entry.voters().all(|v| v == id)
                && entry.replicas.get(&id) == Some(&ReplicaRole::Voter)
            {
                return Err(MapError::LastVoter { shard, host: id });
            }
        }
        let epoch = self.bump();
        self.host_entry_mut(id).incarnation = new_incarnation;
        for shard in held {
            let entry = self.shard_entry_mut(shard);
            entry.replicas.insert(id, ReplicaRole::Learner);
            entry.epoch = epoch;
        }
        Ok(())
    }

    /// Adds a learner of `shard` on `host`, which must be joining or active. Already a learner
    /// there: nothing to do; already a voter: refused.
    pub fn add_learner(&mut self, shard: ShardId, host: HostId) -> Result<(), MapError> {
        let state = self.live_host(host)?.state;
        let role = self.known_shard(shard)?.replicas.get(&host).copied();
        match role {
            Some(ReplicaRole::Learner) => return Ok(()),
            Some(ReplicaRole::Voter) => return Err(MapError::AlreadyVoter { shard, host }),
            None => {}
        }
        if !matches!(state, HostState::Joining | HostState::Active) {
            return Err(MapError::WrongState {
                host,
                action: "add a replica to",
                state,
                needed: "joining or active",
            });
        }
        self.set_role(shard, host, Some(ReplicaRole::Learner));
        Ok(())
    }

    /// Makes the learner of `shard` on `host` a voter. Already a voter: nothing to do.
    /// Refused when the host holds no replica of the shard or is draining.
    pub fn promote(&mut self, shard: ShardId, host: HostId) -> Result<(), MapError> {
        let state = self.live_host(host)?.state;
        match self.known_shard(shard)?.replicas.get(&host) {
            None => return Err(MapError::NotReplica { shard, host }),
            Some(ReplicaRole::Voter) => return Ok(()),
            Some(ReplicaRole::Learner) => {}
        }
        if !matches!(state, HostState::Joining | HostState::Active) {
            return Err(MapError::WrongState {
                host,
                action: "promote a replica on",
                state,
                needed: "joining or active",
            });
        }
        self.set_role(shard, host, Some(ReplicaRole::Voter));
        Ok(())
    }

    /// Removes the replica of `shard` on `host`. Not a replica there: nothing to do. Removing
    /// a voter is refused if the shard would keep fewer than `min_voters` voters (the
    /// configured replica count) or none at all.
    pub fn remove_replica(
        &mut self,
        shard: ShardId,
        host: HostId,
        min_voters: u32,
    ) -> Result<(), MapError> {
        let entry = self.known_shard(shard)?;
        match entry.replicas.get(&host) {
            None => return Ok(()),
            Some(ReplicaRole::Learner) => {}
            Some(ReplicaRole::Voter) => {
                let voters_left = entry.voters().count() - 1;
                let min_voters = usize::try_from(min_voters).unwrap_or(usize::MAX).max(1);
                if voters_left < min_voters {
                    return Err(MapError::TooFewVoters {
                        shard,
                        host,
                        voters_left,
                        min_voters,
                    });
                }
            }
        }
        self.set_role(shard, host, None);
        Ok(())
    }

    /// Advances the map epoch by one and returns it.
    pub(super) fn bump(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }

    /// Sets (or with `None` removes) one replica and stamps the shard with a new epoch.
    pub(super) fn set_role(&mut self, shard: ShardId, host: HostId, role: Option<ReplicaRole>) {
        let epoch = self.bump();
        let entry = self.shard_entry_mut(shard);
        match role {
            Some(role) => entry.replicas.insert(host, role),
            None => entry.replicas.remove(&host),
        };
        entry.epoch = epoch;
    }

    /// The host, refused when unknown or removed.
    pub(super) fn live_host(&self, id: HostId) -> Result<&HostEntry, MapError> {
        match self.hosts.get(&id) {
            None => Err(MapError::UnknownHost { host: id }),
            Some(h) if h.state == HostState::Removed => Err(MapError::IdRetired { host: id }),
            Some(h) => Ok(h),
        }
    }

    pub(super) fn known_shard(&self, shard: ShardId) -> Result<&ShardEntry, MapError> {
        self.shards
            .get(&shard)
            .ok_or(MapError::UnknownShard { shard })
    }

    fn host_entry_mut(&mut self, id: HostId) -> &mut HostEntry {
        // ok: every caller first looks the host up (`live_host(id)?`, or a host holding a
        // replica in the map), and no change in between removes it.
        self.hosts
            .get_mut(&id)
            .expect("callers check that the host exists before changing anything")
    }

    pub(super) fn shard_entry(&self, shard: ShardId) -> &ShardEntry {
        // ok: every caller passes a key of `self.shards` or a shard checked with
        // `known_shard`, and shards are never removed from a map.
        self.shards
            .get(&shard)
            .expect("callers pass shards found in the map")
    }

    pub(super) fn shard_entry_mut(&mut self, shard: ShardId) -> &mut ShardEntry {
        // ok: as `shard_entry`: callers pass only shards known to exist.
        self.shards
            .get_mut(&shard)
            .expect("callers check that the shard exists before changing anything")
    }
}

/// An incarnation offered for a host: never 0, and equal to the known one if that is known.
fn check_incarnation(host: HostId, known: u64, given: u64) -> Result<(), MapError> {
    if given == 0 {
        return Err(MapError::ZeroIncarnation { host });
    }
    if known != 0 && known != given {
        return Err(MapError::IncarnationMismatch { host, known, given });
    }
    Ok(())
}
