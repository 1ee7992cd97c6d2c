//! Why a cluster map change was refused or a map is invalid. Each message names the host or
//! shard, the reason, and where there is one, what to do instead.

use crate::slot::Slot;
use crate::wire::{HostId, ShardId};

use super::HostState;

/// See the module docs. A refused change leaves the map exactly as it was.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    /// A recorded move that does not fit the map: its shard key differs from the move's, or
    /// its target holds no replica of the shard.
    #[error("shard {shard}: the recorded move {record:?} does not fit the map (its target must hold a replica of the shard)")]
    BadMove {
        /// The shard the record is filed under.
        shard: ShardId,
        /// The record.
        record: super::Move,
    },
    /// Another move of the shard is under way.
    #[error("shard {shard} is already moving from host {from} to host {to}; run `shardkv replica move {shard} {from} {to}` to finish it first")]
    MoveInFlight {
        /// The shard.
        shard: ShardId,
        /// The host it moves from.
        from: HostId,
        /// The host it moves to.
        to: HostId,
    },
    /// A recorded split that does not fit the map.
    #[error("shard {shard}: the recorded split {record:?} does not fit the map: {why}")]
    BadSplit {
        /// The parent shard the record is filed under.
        shard: ShardId,
        /// The record.
        record: super::Split,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Another split of the shard is under way (or a move was asked of a splitting shard).
    #[error("shard {shard} is splitting into shard {child}; run `shardkv shard split {shard}` to finish that first")]
    SplitInFlight {
        /// The parent shard.
        shard: ShardId,
        /// The new shard the recorded split creates.
        child: ShardId,
    },
    /// No split of the shard into this child is recorded, and the child does not exist.
    #[error("no split of shard {shard} into shard {child} is recorded; start one with `shardkv shard split {shard}`")]
    NoSplit {
        /// The parent shard.
        shard: ShardId,
        /// The new shard asked for.
        child: ShardId,
    },
    /// The meta group owns no slots, so there is nothing to split.
    #[error("shard 0 is the meta group: it owns no slots and cannot be split")]
    SplitOfMeta,
    /// The shard owns too few slots for both halves to own one.
    #[error("shard {shard} owns {slots} slot(s); a split needs at least 2")]
    TooFewSlotsToSplit {
        /// The shard.
        shard: ShardId,
        /// How many slots it owns.
        slots: u32,
    },
    /// The shard has a learner (a move or a `host replace` under way): its voters are about
    /// to change, and the new shard would start with a stale set.
    #[error("shard {shard} has a learner on host {host} (a move or a host replace is under way); split it once that finishes")]
    SplitWithLearner {
        /// The shard.
        shard: ShardId,
        /// The learner's host.
        host: HostId,
    },
    /// Stored or sent bytes are not a map (or a map that breaks an invariant).
    #[error("not a valid cluster map: {detail}")]
    Undecodable {
        /// The decoder's reason.
        detail: String,
    },
    /// No host with this id was ever added.
    #[error("host {host} is not in the cluster map; add it with `shardkv host add {host}`")]
    UnknownHost {
        /// The host.
        host: HostId,
    },
    /// No shard with this id exists.
    #[error("shard {shard} is not in the cluster map")]
    UnknownShard {
        /// The shard.
        shard: ShardId,
    },
    /// Host id 0 is reserved (Raft uses it for "none").
    #[error("host id 0 is reserved; give the host an id of 1 or more")]
    ReservedHostId,
    /// The id belonged to a host that was removed; ids are never reused, so a stale peer
    /// with that id can never be mistaken for the new machine.
    #[error("host {host} was removed and its id is never reused; give the new machine another id in cluster.toml")]
    IdRetired {
        /// The host.
        host: HostId,
    },
    /// The host is already in the map under another address.
    #[error("host {host} is already in the cluster map at {known}, not {requested}")]
    AddrMismatch {
        /// The host.
        host: HostId,
        /// Its address in the map.
        known: String,
        /// The address asked for.
        requested: String,
    },
    /// Another member already has this address.
    #[error("address {addr} of host {host} is already used by host {other}")]
    AddrInUse {
        /// The address.
        addr: String,
        /// The host being added.
        host: HostId,
        /// The member that has it.
        other: HostId,
    },
    /// The change needs the host in another state.
    #[error("cannot {action} host {host}: it is {state}, and this needs it {needed}")]
    WrongState {
        /// The host.
        host: HostId,
        /// What was attempted, e.g. "activate".
        action: &'static str,
        /// Its current state.
        state: HostState,
        /// The state(s) the change accepts, in words.
        needed: &'static str,
    },
    /// Incarnation 0 means "unknown" and cannot be assigned.
    #[error("host {host}: incarnation 0 means unknown and cannot be assigned")]
    ZeroIncarnation {
        /// The host.
        host: HostId,
    },
    /// The host's data dir has another incarnation than the map lists: it is not the data
    /// the replicas on record were acknowledged from.
    #[error("host {host} has incarnation {known} in the cluster map, not {given}; a host whose data dir was lost or replaced must be re-added with `shardkv host replace {host}`")]
    IncarnationMismatch {
        /// The host.
        host: HostId,
        /// The incarnation in the map.
        known: u64,
        /// The one offered.
        given: u64,
    },
    /// The host still holds replicas, so removing it would lose them.
    #[error("host {host} still holds replicas of shards {shards:?}; move them first (`shardkv host remove {host}` drains it)")]
    HoldsReplicas {
        /// The host.
        host: HostId,
        /// The shards it holds replicas of.
        shards: Vec<ShardId>,
    },
    /// A replica's host already votes in the shard.
    #[error("host {host} is already a voter of shard {shard}")]
    AlreadyVoter {
        /// The shard.
        shard: ShardId,
        /// The host.
        host: HostId,
    },
    /// The host holds no replica of the shard.
    #[error("host {host} holds no replica of shard {shard}; add it as a learner first")]
    NotReplica {
        /// The shard.
        shard: ShardId,
        /// The host.
        host: HostId,
    },
    /// Removing the replica would leave the shard with fewer voters than configured.
    #[error("removing host {host} from shard {shard} would leave {voters_left} voter(s), fewer than {min_voters}; add and promote another replica first")]
    TooFewVoters {
        /// The shard.
        shard: ShardId,
        /// The host whose replica was to go.
        host: HostId,
        /// Voters the shard would keep.
        voters_left: usize,
        /// The least allowed (the configured replica count, and never below 1).
        min_voters: usize,
    },
    /// Demoting the host's replicas would leave a shard without any voter.
    #[error("host {host} is the only voter of shard {shard}: its acknowledged writes are gone with the disk, and no other replica can bring them back")]
    LastVoter {
        /// The shard.
        shard: ShardId,
        /// The host.
        host: HostId,
    },
    /// The layout's shard count is outside `1..=16384`.
    #[error("a layout of {shards} shards: shards must be 1..=16384")]
    BadShardCount {
        /// The count.
        shards: u32,
    },
    /// A placement entry names a shard the layout does not have.
    #[error("the layout places shard {shard}, but it has shards 1..={shards}")]
    ShardOutOfLayout {
        /// The shard.
        shard: ShardId,
        /// The layout's shard count.
        shards: u32,
    },
    /// A placement entry appears twice.
    #[error("the layout places shard {shard} twice")]
    DuplicateShard {
        /// The shard.
        shard: ShardId,
    },
    /// A shard is placed twice on one host.
    #[error("the layout places shard {shard} twice on host {host}")]
    DuplicateReplica {
        /// The shard.
        shard: ShardId,
        /// The host.
        host: HostId,
    },
    /// A placed host has no address in the host list given.
    #[error("host {host} holds replicas in the layout but has no [[host]] entry with an address")]
    NoAddress {
        /// The host.
        host: HostId,
    },
    /// The map's epoch is 0; maps start at 1.
    #[error("the cluster map has epoch 0; every map starts at epoch 1")]
    ZeroEpoch,
    /// A slot range is empty, reversed or beyond the last slot.
    #[error(
        "shard {shard} has slot range {first}..={last}, which is not within 0..=16383 in order"
    )]
    BadSlotRange {
        /// The shard.
        shard: ShardId,
        /// First slot of the range.
        first: Slot,
        /// Last slot of the range.
        last: Slot,
    },
    /// Two ranges share a slot.
    #[error("slot {slot} is owned by two shards")]
    SlotOwnedTwice {
        /// The first slot found twice.
        slot: Slot,
    },
    /// No range has this slot.
    #[error("slot {slot} is owned by no shard")]
    SlotUnowned {
        /// The first slot found without an owner.
        slot: Slot,
    },
    /// A removed host still holds a replica.
    #[error("shard {shard} has a replica on host {host}, which was removed")]
    ReplicaOnRemovedHost {
        /// The shard.
        shard: ShardId,
        /// The host.
        host: HostId,
    },
    /// A shard has no voter, so its Raft group cannot make progress.
    #[error("shard {shard} has no voter")]
    NoVoter {
        /// The shard.
        shard: ShardId,
    },
    /// A shard's epoch is ahead of the map's.
    #[error("shard {shard} has epoch {epoch}, ahead of the map's {map_epoch}")]
    EpochAhead {
        /// The shard.
        shard: ShardId,
        /// Its epoch.
        epoch: u64,
        /// The map's.
        map_epoch: u64,
    },
}
