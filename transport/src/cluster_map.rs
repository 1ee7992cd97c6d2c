//! The live cluster map: which hosts are members (address, state, incarnation) and which shards
//! exist (slot ranges, replicas with their Raft role), each stamped with an epoch.
//!
//! `cluster.toml` describes day 0 only; after bootstrap the meta Raft group replicates this map
//! and every host and client routes by it. That makes three guarantees matter:
//! - **Same input, same map.** It is pure data: every transition is a deterministic function
//!   of the map and its arguments, with no clock, randomness or I/O, so every meta replica that
//!   applies the same log holds the same map.
//! - **Idempotent transitions.** Each change (in `change.rs`) either applies, or is already in
//!   effect and then changes nothing, not even the epoch, or is refused with a [`MapError`]
//!   that names the host or shard and why. A command re-run after a crash halfway is harmless.
//! - **Checked invariants.** [`ClusterMap::validate`] states what every map satisfies (slots
//!   covered exactly once, replicas only on member hosts, at least one voter per shard, no
//!   epoch ahead of the map's); deserializing runs it, so a corrupt map is never used.
//!
//! Epochs: the map's epoch advances by one with every change; a shard's epoch is the map epoch
//! at which that shard last changed, so a client can tell a stale route from a fresh one.
//! Lookups on the request path ([`ClusterMap::shard_of_slot`]) use an index of slot ranges
//! derived from the shards, rebuilt on every deserialize, never stored.

mod change;
mod error;
mod in_flight;
mod leaders;
mod rebalance;
mod splits;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::layout::Layout;
use crate::slot::{slot_range, Slot, SLOT_COUNT};
use crate::wire::{HostId, ShardId};

pub use error::MapError;

/// The meta group's shard id: a Raft group like any shard, owning no slots, whose state
/// machine holds this map (under [`MAP_KEY`]).
pub const META_SHARD: ShardId = 0;

/// The meta group's key holding the encoded map; absent until the first change, when the
/// map is [`ClusterMap::day0`].
pub const MAP_KEY: &[u8] = b"cluster-map";
pub use rebalance::Move;
pub use splits::Split;

/// Where a host is in its membership life. Ids move forward only: joining -> active ->
/// draining -> removed (draining may also start from joining), and a removed id never returns.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Added to the map, may receive learners, not yet a target for rebalancing.
    Joining,
    /// A full member: holds replicas and is a rebalancing target.
    Active,
    /// Being emptied: its replicas are moved elsewhere first by the planner.
    Draining,
    /// Gone for good; holds nothing, and its id is never reused.
    Removed,
}

impl HostState {
    /// The lowercase name used in messages, `status` and serialized maps.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Joining => "joining",
            HostState::Active => "active",
            HostState::Draining => "draining",
            HostState::Removed => "removed",
        }
    }
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member host.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// QUIC address, `host:port` as written in cluster.toml.
    pub addr: String,
    /// Membership state.
    pub state: HostState,
    /// Random id of the host's data dir; 0 = not yet known. Raft traffic is accepted only from
    /// the incarnation listed here, so a host that lost its disk cannot vote with an empty log.
    pub incarnation: u64,
}

/// The Raft role of one replica.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaRole {
    /// Counts for quorum.
    Voter,
    /// Receives the log but never votes: a replica catching up.
    Learner,
}

impl ReplicaRole {
    /// The lowercase name used in messages and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaRole::Voter => "voter",
            ReplicaRole::Learner => "learner",
        }
    }
}

/// One shard (Raft group).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ShardEntry {
    /// The slots it owns as inclusive `(first, last)` ranges, sorted. Empty for a group that
    /// owns no keys.
    pub slots: Vec<(Slot, Slot)>,
    /// Its replicas by host; one per host at most, by construction.
    pub replicas: BTreeMap<HostId, ReplicaRole>,
    /// The map epoch at which this shard last changed.
    pub epoch: u64,
}

impl ShardEntry {
    /// Hosts whose replica votes, ascending.
    pub fn voters(&self) -> impl Iterator<Item = HostId> + '_ {
        self.with_role(ReplicaRole::Voter)
    }

    /// Hosts whose replica is a learner, ascending.
    pub fn learners(&self) -> impl Iterator<Item = HostId> + '_ {
        self.with_role(ReplicaRole::Learner)
    }

    fn with_role(&self, role: ReplicaRole) -> impl Iterator<Item = HostId> + '_ {
        self.replicas
            .iter()
            .filter(move |(_, r)| **r == role)
            .map(|(h, _)| *h)
    }
}

/// See the module docs. Fields are private so that no change bypasses the transitions and
/// their invariants; read them through the accessors.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(try_from = "MapRecord")]
pub struct ClusterMap {
    epoch: u64,
    hosts: BTreeMap<HostId, HostEntry>,
    shards: BTreeMap<ShardId, ShardEntry>,
    /// An operator asked for replicas to be spread evenly (`shardkv rebalance`); the balancer
    /// clears it once nothing is left to move.
    rebalance: bool,
    /// Replica moves under way, by shard (one per shard at most): a move records itself here
    /// when it places its learner and ends when the map records its outcome, so whoever
    /// carries moves out (the balancer, or a re-run command) finds and finishes an
    /// interrupted one.
    moving: BTreeMap<ShardId, Move>,
    /// Shard splits under way, by parent shard (one per shard at most): recorded before the
    /// split is proposed to the parent's log and cleared when the map shows the new shard, so
    /// an interrupted split is found and finished like a move.
    splitting: BTreeMap<ShardId, Split>,
    /// `(first, last, shard)` for every slot range, sorted by `first`; derived from `shards`.
    #[serde(skip)]
    slot_index: Vec<(Slot, Slot, ShardId)>,
}

/// The serialized form of a [`ClusterMap`] (its fields in the same order, without the index),
/// turned into a map only through [`ClusterMap::validate`].
#[derive(Deserialize)]
struct MapRecord {
    epoch: u64,
    hosts: BTreeMap<HostId, HostEntry>,
    shards: BTreeMap<ShardId, ShardEntry>,
    rebalance: bool,
    moving: BTreeMap<ShardId, Move>,
    splitting: BTreeMap<ShardId, Split>,
}

impl TryFrom<MapRecord> for ClusterMap {
    type Error = MapError;

    fn try_from(record: MapRecord) -> Result<Self, MapError> {
        let mut map = ClusterMap::checked(record.epoch, record.hosts, record.shards)?;
        map.rebalance = record.rebalance;
        map.moving = record.moving;
        map.splitting = record.splitting;
        map.validate()?;
        Ok(map)
    }
}

/// A map as the second version stored it, before splits under way were recorded: still
/// read, as one with no split under way.
#[derive(Deserialize)]
struct MapRecordV2 {
    epoch: u64,
    hosts: BTreeMap<HostId, HostEntry>,
    shards: BTreeMap<ShardId, ShardEntry>,
    rebalance: bool,
    moving: BTreeMap<ShardId, Move>,
}

/// A map as the first version stored it, before rebalance requests and moves in flight were
/// recorded: still read, so a cluster's stored map survives the upgrade.
#[derive(Deserialize)]
struct MapRecordV1 {
    epoch: u64,
    hosts: BTreeMap<HostId, HostEntry>,
    shards: BTreeMap<ShardId, ShardEntry>,
}

impl ClusterMap {
    /// The epoch of every day-0 map.
    pub const DAY0_EPOCH: u64 = 1;

    /// The map at bootstrap, from the layout every host stored: shard `s` of `layout.shards`
    /// owns [`slot_range`]`(s, shards)`, its placed hosts are its voters, every placed host is
    /// active with its incarnation not yet known, the meta group ([`META_SHARD`], no slots)
    /// is on [`Layout::meta_hosts`], and everything is at epoch 1.
    ///
    /// Membership comes from the placement only, never from `hosts`, which is an address book
    /// (cluster.toml's `[[host]]` entries): every host derives the same day-0 map however many
    /// entries were appended since, and an appended host becomes a member by
    /// [`ClusterMap::add_host`] only.
    pub fn day0(layout: &Layout, hosts: &[(HostId, String)]) -> Result<Self, MapError> {
        if layout.shards == 0 || layout.shards > u32::from(SLOT_COUNT) {
            return Err(MapError::BadShardCount {
                shards: layout.shards,
            });
        }
        let mut members = BTreeMap::new();
        let mut shards = BTreeMap::new();
        for (shard, placed) in &layout.placement {
            if !(1..=layout.shards).contains(shard) {
                return Err(MapError::ShardOutOfLayout {
                    shard: *shard,
                    shards: layout.shards,
                });
            }
            let mut replicas = BTreeMap::new();
            for &host in placed {
                let Some((_, addr)) = hosts.iter().find(|(id, _)| *id == host) else {
                    return Err(MapError::NoAddress { host });
                };
                if replicas.insert(host, ReplicaRole::Voter).is_some() {
                    return Err(MapError::DuplicateReplica {
                        shard: *shard,
                        host,
                    });
                }
                members.insert(
                    host,
                    HostEntry {
                        addr: addr.clone(),
                        state: HostState::Active,
                        incarnation: 0,
                    },
                );
            }
            let entry = ShardEntry {
                slots: vec![slot_range(*shard, layout.shards)],
                replicas,
                epoch: Self::DAY0_EPOCH,
            };
            if shards.insert(*shard, entry).is_some() {
                return Err(MapError::DuplicateShard { shard: *shard });
            }
        }
        let meta = ShardEntry {
            slots: Vec::new(),
            replicas: layout
                .meta_hosts()
                .into_iter()
                .map(|h| (h, ReplicaRole::Voter))
                .collect(),
            epoch: Self::DAY0_EPOCH,
        };
        shards.insert(META_SHARD, meta);
        ClusterMap::checked(Self::DAY0_EPOCH, members, shards)
    }

    /// Builds the index and checks every invariant.
    fn checked(
        epoch: u64,
        hosts: BTreeMap<HostId, HostEntry>,
        shards: BTreeMap<ShardId, ShardEntry>,
    ) -> Result<Self, MapError> {
        let mut map = ClusterMap {
            epoch,
            hosts,
            shards,
            rebalance: false,
            moving: BTreeMap::new(),
            splitting: BTreeMap::new(),
            slot_index: Vec::new(),
        };
        map.rebuild_index();
        map.validate()?;
        Ok(map)
    }

    fn rebuild_index(&mut self) {
        self.slot_index = self
            .shards
            .iter()
            .flat_map(|(id, s)| s.slots.iter().map(|&(first, last)| (first, last, *id)))
            .collect();
        self.slot_index.sort_unstable();
    }

    /// Checks the invariants every map satisfies: slot ranges well formed, disjoint and
    /// covering `0..SLOT_COUNT` exactly once; every replica on a host that exists and is not
    /// removed; every shard with at least one voter; no host id 0; no epoch ahead of the
    /// map's, and the map's at least 1; every recorded move and split fits the map. The first
    /// violation found is returned.
    pub fn validate(&self) -> Result<(), MapError> {
        if self.epoch == 0 {
            return Err(MapError::ZeroEpoch);
        }
        if self.hosts.contains_key(&0) {
            return Err(MapError::ReservedHostId);
        }
        let mut next: u32 = 0;
        for &(first, last, shard) in &self.slot_index {
            if first > last || u32::from(last) >= u32::from(SLOT_COUNT) {
                return Err(MapError::BadSlotRange { shard, first, last });
            }
            if u32::from(first) < next {
                return Err(MapError::SlotOwnedTwice { slot: first });
            }
            if u32::from(first) > next {
                return Err(MapError::SlotUnowned { slot: next as Slot });
            }
            next = u32::from(last) + 1;
        }
        if next < u32::from(SLOT_COUNT) {
            return Err(MapError::SlotUnowned { slot: next as Slot });
        }
        for (&shard, entry) in &self.shards {
            if entry.epoch > self.epoch {
                return Err(MapError::EpochAhead {
                    shard,
                    epoch: entry.epoch,
                    map_epoch: self.epoch,
                });
            }
            for &host in entry.replicas.keys() {
                match self.hosts.get(&host) {
                    None => return Err(MapError::UnknownHost { host }),
                    Some(h) if h.state == HostState::Removed => {
                        return Err(MapError::ReplicaOnRemovedHost { shard, host })
                    }
                    Some(_) => {}
                }
            }
            if entry.voters().next().is_none() {
                return Err(MapError::NoVoter { shard });
            }
        }
        for (&shard, m) in &self.moving {
            let holds = |h| self.replicas_of(shard).is_some_and(|r| r.contains_key(&h));
            if m.shard != shard || !holds(m.to) {
                return Err(MapError::BadMove { shard, record: *m });
            }
        }
        for (&parent, split) in &self.splitting {
            self.check_split(parent, split)?;
        }
        Ok(())
    }

    /// The map as the meta group stores it.
    pub fn encode(&self) -> Vec<u8> {
        // ok: encoding into a Vec fails only on sequences of unknown length (none here).
        postcard::to_allocvec(self)
            .expect("a map always encodes: postcard fails only on sequences of unknown length, which derived serde never produces")
    }

    /// A map the meta group stored; checked like every deserialized map. A map an earlier
    /// version stored (without the fields added since) is read too, as one with no split under
    /// way (and, from the first version, no rebalance asked for and no moves under way): its
    /// bytes end where the newer fields would start, so they never decode as a newer map by
    /// mistake.
    pub fn decode(bytes: &[u8]) -> Result<Self, MapError> {
        let undecodable = |e: postcard::Error| MapError::Undecodable {
            detail: e.to_string(),
        };
        match postcard::from_bytes::<ClusterMap>(bytes) {
            Ok(map) => Ok(map),
            Err(postcard::Error::DeserializeUnexpectedEnd) => {
                match postcard::from_bytes::<MapRecordV2>(bytes) {
                    Ok(v2) => ClusterMap::try_from(MapRecord {
                        epoch: v2.epoch,
                        hosts: v2.hosts,
                        shards: v2.shards,
                        rebalance: v2.rebalance,
                        moving: v2.moving,
                        splitting: BTreeMap::new(),
                    }),
                    Err(postcard::Error::DeserializeUnexpectedEnd) => {
                        let v1: MapRecordV1 = postcard::from_bytes(bytes).map_err(undecodable)?;
                        ClusterMap::checked(v1.epoch, v1.hosts, v1.shards)
                    }
                    Err(e) => Err(undecodable(e)),
                }
            }
            Err(e) => Err(undecodable(e)),
        }
    }

    /// The map's epoch: how many changes it has seen since day 0, plus one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Every host ever added, removed ones included, by id.
    pub fn hosts(&self) -> &BTreeMap<HostId, HostEntry> {
        &self.hosts
    }

    /// Every shard, by id.
    pub fn shards(&self) -> &BTreeMap<ShardId, ShardEntry> {
        &self.shards
    }

    /// One host, if it was ever added.
    pub fn host(&self, id: HostId) -> Option<&HostEntry> {
        self.hosts.get(&id)
    }

    /// One shard, if it exists.
    pub fn shard(&self, id: ShardId) -> Option<&ShardEntry> {
        self.shards.get(&id)
    }

    /// The shard that owns `slot`: a binary search over the slot ranges. `None` only for a
    /// slot `>= SLOT_COUNT`.
    pub fn shard_of_slot(&self, slot: Slot) -> Option<ShardId> {
        let after = self
            .slot_index
            .partition_point(|&(first, _, _)| first <= slot);
        let &(_, last, shard) = self.slot_index.get(after.checked_sub(1)?)?;
        (slot <= last).then_some(shard)
    }

    /// Whether an operator asked for a rebalance that is not finished yet.
    pub fn rebalance_requested(&self) -> bool {
        self.rebalance
    }

    /// The replica moves under way, by shard.
    pub fn moves_in_flight(&self) -> &BTreeMap<ShardId, Move> {
        &self.moving
    }

    /// The replicas of `shard` with their roles; `None` for an unknown shard.
    pub fn replicas_of(&self, shard: ShardId) -> Option<&BTreeMap<HostId, ReplicaRole>> {
        self.shards.get(&shard).map(|s| &s.replicas)
    }

    /// The voting replicas of `shard`, ascending; none for an unknown shard.
    pub fn voters_of(&self, shard: ShardId) -> impl Iterator<Item = HostId> + '_ {
        self.shards.get(&shard).into_iter().flat_map(|s| s.voters())
    }

    /// The shards with a replica on `host`, ascending.
    pub fn shards_of_host(&self, host: HostId) -> impl Iterator<Item = ShardId> + '_ {
        self.shards
            .iter()
            .filter(move |(_, s)| s.replicas.contains_key(&host))
            .map(|(id, _)| *id)
    }
}
