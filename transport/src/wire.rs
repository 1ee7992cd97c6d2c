//! The messages that cross the wire, between clients and hosts and between hosts.
//!
//! Every payload is postcard inside a frame (see [`crate::frame`]). Raft messages travel as
//! raft-rs protobuf bytes inside [`RaftBatch`], decoded only after the sender's host identity
//! has been checked against its certificate.

use serde::{Deserialize, Serialize};

use crate::layout::Layout;

mod limits;
mod update;
pub use limits::{check_limits, GET_MANY_KEYS_MAX, UPDATE_KEYS_MAX};
pub use update::{
    Change, Condition, KeyUpdate, UpdateOutcome, UPDATE_NOT_AN_INTEGER, UPDATE_OVERFLOW,
};

/// A host's id in `cluster.toml` (Raft reserves 0, so ids start at 1).
pub type HostId = u64;
/// A shard's id, 1-based.
pub type ShardId = u32;

/// Longest key accepted: LMDB's limit is 511 bytes and the schema prefixes keys.
pub const KEY_BYTES_MAX: usize = 480;
/// Largest value when `cluster.max_value_bytes` is not set (1 MiB).
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Highest `cluster.max_value_bytes` accepted (64 MiB): a value rides whole in one Raft entry
/// and one frame.
pub const VALUE_BYTES_MAX_CEILING: usize = 64 << 20;
/// Bytes any framing may add around the key and values of one request, one Raft entry or one
/// Raft message: postcard and protobuf tags and varints, ids, terms, indexes. The real figure
/// is tens of bytes; a generous bound costs nothing, one too small would refuse a legal request.
pub const ENVELOPE_BYTES_MAX: usize = 4096;

/// Largest request frame a host reads when values are capped at `value_bytes_max`: a CAS
/// carries two values (expected and new) and a key. Anything longer cannot be a legal request,
/// so it is refused from its length prefix, before a byte of it is buffered.
pub const fn request_frame_bytes_max(value_bytes_max: usize) -> usize {
    2 * value_bytes_max + KEY_BYTES_MAX + ENVELOPE_BYTES_MAX
}

/// Largest reply frame: one value (a read, or the current value of a failed CAS) at the
/// ceiling, or the values of a multi-key read bounded like one (with
/// [`REPLY_BYTES_PER_VALUE`] each). A host's status (about 60 bytes per replica, at most `SHARDS_PER_HOST_MAX`
/// replicas) is far smaller.
pub const RESPONSE_FRAME_BYTES_MAX: usize = VALUE_BYTES_MAX_CEILING + ENVELOPE_BYTES_MAX;

/// Entry bytes in one Raft append message (raft-rs' `max_size_per_msg`). Small, so batches of
/// ordinary entries stay far below the frame limit and a follower catching up receives its
/// backlog in many small steps. raft-rs always sends at least one entry, so an entry larger
/// than this travels alone; [`RAFT_MESSAGE_BYTES_MAX`] is sized for that.
pub const RAFT_ENTRIES_BYTES_PER_MESSAGE_MAX: usize = 1 << 20;

/// Largest Raft message (protobuf): an append of entries up to
/// [`RAFT_ENTRIES_BYTES_PER_MESSAGE_MAX`], or of one entry holding the largest command (a
/// maximal request plus the command's and the entry's fields), plus the message's own fields.
pub const RAFT_MESSAGE_BYTES_MAX: usize = {
    let one_entry = request_frame_bytes_max(VALUE_BYTES_MAX_CEILING) + ENVELOPE_BYTES_MAX;
    let entries = if one_entry > RAFT_ENTRIES_BYTES_PER_MESSAGE_MAX {
        one_entry
    } else {
        RAFT_ENTRIES_BYTES_PER_MESSAGE_MAX
    };
    entries + ENVELOPE_BYTES_MAX
};

/// Bytes a [`RaftEnvelope`] adds to a batch frame around its message at most: the shard id and
/// the message length as postcard varints (5 and 10 bytes at most).
pub const RAFT_ENVELOPE_PREFIX_BYTES_MAX: usize = 16;
/// Bytes a [`RaftBatch`] frame adds around its envelopes at most: the sender's incarnation
/// and the message count as postcard varints (10 bytes each at most).
pub const RAFT_BATCH_PREFIX_BYTES_MAX: usize = 24;

/// Frame limit for a batch of Raft messages: a batch holding one maximal message must fit, as
/// a sender cannot split a message. Senders cut batches so that every frame fits (see
/// [`RaftEnvelope::framed_bytes_max`]).
pub const RAFT_FRAME_BYTES_MAX: usize =
    RAFT_MESSAGE_BYTES_MAX + RAFT_ENVELOPE_PREFIX_BYTES_MAX + RAFT_BATCH_PREFIX_BYTES_MAX;

const _: () =
    assert!(request_frame_bytes_max(VALUE_BYTES_MAX_CEILING) <= crate::frame::FRAME_BYTES_MAX);
const _: () = assert!(RESPONSE_FRAME_BYTES_MAX <= crate::frame::FRAME_BYTES_MAX);
const _: () = assert!(RAFT_FRAME_BYTES_MAX <= crate::frame::FRAME_BYTES_MAX);

/// How a read is served.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Linearizable: the leader confirms its leadership with a quorum (ReadIndex) first.
    #[default]
    Linearizable,
    /// Served by any replica from what it has applied; may be behind.
    Stale,
    /// Served by the leader from its own state while its leadership lease holds (no quorum
    /// round); falls back to ReadIndex when the lease has lapsed. Linearizable as long as
    /// clocks on the hosts advance at about the same rate.
    Lease,
}

/// A client's operation on one key; every variant is routed by its key to one shard.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read the value of `key`.
    Get {
        #[serde(with = "crate::bytes::vec")]
        key: Vec<u8>,
        consistency: ReadConsistency,
    },
    /// Set `key` to `value`.
    Put {
        #[serde(with = "crate::bytes::vec")]
        key: Vec<u8>,
        #[serde(with = "crate::bytes::vec")]
        value: Vec<u8>,
    },
    /// Remove `key` (succeeds whether or not it existed).
    Delete {
        #[serde(with = "crate::bytes::vec")]
        key: Vec<u8>,
    },
    /// Compare-and-swap: if the current value equals `expected` (`None`: the key is absent),
    /// set it to `new` (`None`: delete it). Covers create-if-absent and delete-if-equal.
    Cas {
        #[serde(with = "crate::bytes::vec")]
        key: Vec<u8>,
        #[serde(with = "crate::bytes::option")]
        expected: Option<Vec<u8>>,
        #[serde(with = "crate::bytes::option")]
        new: Option<Vec<u8>>,
    },
    /// Change one or more keys of one slot atomically, in order (see [`KeyUpdate`]);
    /// answered [`Response::Updated`]. Keys of different slots are refused as invalid.
    Update(Vec<KeyUpdate>),
    /// Read several keys of one slot at one applied state (Redis' `MGET`), answered
    /// [`Response::Values`] in the keys' order. Keys of different slots are refused.
    GetMany {
        keys: Vec<Vec<u8>>,
        consistency: ReadConsistency,
    },
}

/// A request addressed to one host rather than routed by key. The transport answers it
/// without it ever reaching a shard, so data paths never see one.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// Report this host's replicas (answered with [`Response::Status`]); any certificate of
    /// the cluster may ask.
    Status,
    /// Change the replicas of `shard` by one Raft configuration change, proposed by the
    /// shard's leader on this host (others answer `NotLeader`). Answered `Ok` once the change
    /// is committed and in effect there. Several changes at once enter a joint configuration,
    /// which stays until a request with no changes leaves it: membership moves go learner
    /// first, then one joint change, then the explicit leave.
    ChangeReplicas {
        shard: ShardId,
        changes: Vec<ReplicaChange>,
    },
    /// Read or change the live cluster map, held by the meta group's leader.
    Map(MapRequest),
    /// Hand the leadership of `shard` to voter `to`, from the shard's leader on this host
    /// (others answer `NotLeader`; `to` already leading is `Ok`; a `to` that is not a voter
    /// is `Invalid`). Answered `Ok` once the transfer is started: it completes within an
    /// election timeout or not at all, so the caller polls the shard's status to see it.
    TransferLeader { shard: ShardId, to: HostId },
    /// Split `shard` as `split` says (see `shardkv shard split`). Proposed by the shard's
    /// leader on this host (others answer `NotLeader`); answered `Ok` once applied there, also
    /// when the shard already owns no slot `>= split.at` (a re-run after a crash). Host
    /// certificates only.
    SplitShard { shard: ShardId, split: SplitSpec },
    /// Tests only: inject faults into this host's transport. Accepted only from a host
    /// certificate; compiled in only with the `fault-injection` feature, so a release host
    /// cannot even decode it.
    #[cfg(all(feature = "fault-injection", debug_assertions))]
    Fault(FaultSpec),
}

/// What [`AdminRequest::Map`] asks of the meta group.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MapRequest {
    /// The encoded map (a linearizable read): `Response::Value(Some(bytes))`, or
    /// `Value(None)` while the map is still the day-0 one, never written.
    Read,
    /// Replace the encoded map `expected` (`None`: never written) by `new`, if it still is
    /// the stored one: `CasOk`, or `CasFailed` with the current one. `new` must be a valid
    /// map with a higher epoch. Host certificates only.
    Cas {
        #[serde(with = "crate::bytes::option")]
        expected: Option<Vec<u8>>,
        #[serde(with = "crate::bytes::vec")]
        new: Vec<u8>,
    },
    /// The encoded map this host routes by (`Response::Value(Some(bytes))`), answered by the
    /// host itself without a Raft round, so it is cheap and any certificate of the cluster may
    /// ask. It may be stale: a host takes a newer map only when its watcher reads one from the
    /// meta group. Epochs order maps (a later map always has a higher one), so a caller that
    /// asks several hosts keeps the highest epoch it has seen and never goes back to a lower.
    Current,
}

/// A split of one shard, as recorded in the cluster map and proposed to the shard's log: at
/// the index where it is applied, every replica of the shard hands the slots `>= at` to the
/// new shard `child`, whose Raft group starts with `voters` on the same hosts (each of them
/// holding the rows already) and a copy of the shard's client sessions.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SplitSpec {
    pub child: ShardId,
    pub at: crate::slot::Slot,
    pub voters: Vec<HostId>,
    /// The map epoch that records the split: both shards' ownership dates from it, and a
    /// request the parent refuses afterwards names it (`Response::WrongShard`).
    pub epoch: u64,
}

/// One replica's part in [`AdminRequest::ChangeReplicas`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaChange {
    pub host: HostId,
    pub to: ReplicaTarget,
}

/// What a replica becomes in a configuration change.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaTarget {
    /// Votes and counts toward quorums (a learner is promoted by this).
    Voter,
    /// Receives the log but never votes (a voter is demoted by this).
    Learner,
    /// Leaves the group.
    Removed,
}

/// Faults a test can switch on in one host (see [`AdminRequest::Fault`]).
#[cfg(all(feature = "fault-injection", debug_assertions))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct FaultSpec {
    /// Drop all Raft traffic to and from these hosts (a partition), replacing earlier ones.
    pub partition_from: Vec<HostId>,
    /// Apply the next this-many client writes but drop their replies (lost acknowledgements).
    pub drop_replies: u32,
    /// Make every write-ahead log sync of this host take this many milliseconds longer (a
    /// slow disk: an fsync of seconds); 0 for none.
    pub commit_delay_ms: u64,
    /// LMDB commits nothing while set (but for the drain when the host stops), as behind a
    /// disk too slow for the B-tree writes: whatever is acknowledged meanwhile is in the
    /// write-ahead log only, so a crash then needs the replay to keep it. Not for long: a
    /// shard stops applying once its applied batches waiting for LMDB reach their bound, and
    /// writes that wait on LMDB (control writes, snapshot loads) wait until it is cleared.
    pub hold_lmdb: bool,
    /// Abort the host's process the next time its write path reaches this point (a crash at
    /// that step, as kill -9 would leave the disk).
    pub crash_at: Option<CrashPoint>,
}

/// A step of a host's write path where [`FaultSpec::crash_at`] can crash it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// A write-ahead log group is synced; nobody has heard yet that it is durable.
    LogSynced,
    /// An LMDB commit returned; nobody has heard yet that LMDB holds it, and the log
    /// segments it made releasable are still there.
    LmdbCommitted,
    /// A snapshot load (a lagging replica's install) is committed to LMDB and synced; the
    /// replica has not heard yet, so it has not moved its state past the snapshot.
    SnapshotLoaded,
}

/// One replica as its host reports it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub shard: ShardId,
    pub term: u64,
    pub leader: Option<HostId>,
    pub is_leader: bool,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    /// The configuration in effect here: voters (of the incoming configuration while joint).
    pub voters: Vec<HostId>,
    /// Voters of the outgoing configuration while joint; empty otherwise.
    pub voters_outgoing: Vec<HostId>,
    pub learners: Vec<HostId>,
    /// On the leader: how far each other replica's log is known to match (to tell when a
    /// learner has caught up); empty elsewhere.
    pub matched: Vec<(HostId, u64)>,
    /// The slots this replica's state machine owns (durably), inclusive `(first, last)`
    /// ranges; empty for the meta group and for a joining replica before its snapshot.
    pub slots: Vec<(crate::slot::Slot, crate::slot::Slot)>,
}

/// A host's answer to [`AdminRequest::Status`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub host: HostId,
    pub cluster: String,
    pub version: String,
    pub replicas: Vec<ReplicaInfo>,
    /// The layout this host's data dir was bootstrapped with (clients route by it).
    pub layout: Layout,
    /// The epoch of the cluster map this host routes by.
    pub map_epoch: u64,
    /// This host's data dir incarnation (see `RaftBatch::incarnation`).
    pub incarnation: u64,
    /// The incarnation this host has recorded for each peer it has heard from.
    pub peer_incarnations: Vec<(HostId, u64)>,
}

impl Op {
    /// The key the operation touches; it decides the shard.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Get { key, .. }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Cas { key, .. } => key,
            Op::Update(updates) => updates.first().map_or(&[][..], |u| &u.key[..]),
            Op::GetMany { keys, .. } => keys.first().map_or(&[][..], |k| &k[..]),
        }
    }

    /// Whether the operation changes state (and so goes through the Raft log).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Put { .. } | Op::Delete { .. } | Op::Cas { .. } | Op::Update(_)
        )
    }
}

/// A client request. Writes carry `(client_id, seq)` so that a retried write is applied once.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Random per client process; identifies its session.
    pub client_id: u64,
    /// Increases by one per write of this client; retries reuse it.
    pub seq: u64,
    /// What to do.
    pub op: Op,
}

/// What a client sends on a request stream: a data request, routed by key to a shard, or an
/// admin request, answered by the host itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RequestFrame {
    /// Read or write one key.
    Data(Request),
    /// Ask the host itself.
    Admin(AdminRequest),
}

/// The answer to a [`RequestFrame`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Result of a `Get`: the value, or `None` if the key is absent.
    Value(#[serde(with = "crate::bytes::option")] Option<Vec<u8>>),
    /// A write was committed by a majority and applied.
    Ok,
    /// A CAS found the expected value and swapped it.
    CasOk,
    /// A CAS found another value (here: the current one) and changed nothing.
    CasFailed {
        #[serde(with = "crate::bytes::option")]
        current: Option<Vec<u8>>,
    },
    /// The answer to [`AdminRequest::Status`].
    Status(Box<HostStatus>),
    /// This host's replica of the shard is not the leader; try `leader` if known.
    NotLeader {
        shard: ShardId,
        leader: Option<HostId>,
    },
    /// This host holds no replica of the shard; these hosts do.
    NoReplicaHere { shard: ShardId, hosts: Vec<HostId> },
    /// Key or value over its limit.
    TooLarge {
        what: LimitKind,
        len: usize,
        limit: usize,
    },
    /// The request was malformed (e.g. empty key).
    Invalid(String),
    /// The shard could not serve the request in time (no quorum, election under way).
    Unavailable(String),
    /// A bug or a local fault on the host; the message says which.
    Internal(String),
    /// `shard` no longer owns the key's slot: it split (or the slot moved) as of map `epoch`,
    /// so a map with a later epoch routes the key elsewhere. Nothing was applied.
    WrongShard { shard: ShardId, epoch: u64 },
    /// An [`Op::Update`] was applied: one outcome per key, in order.
    Updated(Vec<UpdateOutcome>),
    /// The values of an [`Op::GetMany`], in its keys' order.
    Values(Vec<ReadValue>),
    /// The write was proposed, then this replica lost its leadership before the write
    /// committed: it may still commit under the next leader (`leader`, if known), or not.
    /// A client with a session retries safely (its retry is recognised); one without must
    /// not assume either outcome. (A write refused before it was proposed is `NotLeader`.)
    LeaderLost {
        shard: ShardId,
        leader: Option<HostId>,
    },
}

/// Bytes a [`Response::Values`] spends per value beyond the value's own (an option tag and
/// a length), counted against its bound so the reply fits a response frame.
pub const REPLY_BYTES_PER_VALUE: usize = 8;

/// One value of a [`Response::Values`] (`None`: the key has no value).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReadValue(#[serde(with = "crate::bytes::option")] pub Option<Vec<u8>>);

/// Which limit a request exceeded.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Key,
    Value,
    /// A whole request frame (a value at the host's limit plus what surrounds it).
    Request,
    /// A reply of several values (an [`Op::GetMany`]), bounded like one value.
    Reply,
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitKind::Key => f.write_str("key"),
            LimitKind::Value => f.write_str("value"),
            LimitKind::Request => f.write_str("request"),
            LimitKind::Reply => f.write_str("reply"),
        }
    }
}

/// One Raft message of one shard, as raft-rs protobuf bytes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RaftEnvelope {
    /// Which Raft group.
    pub shard: ShardId,
    /// `raft::eraftpb::Message` in protobuf encoding.
    #[serde(with = "crate::bytes::vec")]
    pub message: Vec<u8>,
}

/// The first frame of every host-to-host unidirectional stream: what the stream carries.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum StreamHeader {
    /// [`RaftBatch`] frames follow, for as long as the connection lives.
    Raft,
    /// One snapshot of one shard follows as [`SnapshotFrame`]s.
    Snapshot {
        shard: ShardId,
        /// The sender's data dir incarnation, checked like a [`RaftBatch`]'s.
        incarnation: u64,
        /// The `MsgSnapshot` (protobuf) it belongs to; delivered once the data has arrived.
        #[serde(with = "crate::bytes::vec")]
        message: Vec<u8>,
        /// Size of the data that follows, checked on arrival.
        bytes: u64,
    },
}

/// A piece of a snapshot stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum SnapshotFrame {
    /// The next bytes of the snapshot file.
    Chunk(#[serde(with = "crate::bytes::vec")] Vec<u8>),
    /// Everything was sent.
    End,
}

/// Snapshot bytes per frame.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

impl RaftEnvelope {
    /// Bytes this envelope takes in a [`RaftBatch`] frame at most; a batch frame's payload is
    /// at most [`RAFT_BATCH_PREFIX_BYTES_MAX`] plus this for each of its envelopes.
    pub fn framed_bytes_max(&self) -> usize {
        self.message.len() + RAFT_ENVELOPE_PREFIX_BYTES_MAX
    }
}

/// The frame on a host-to-host Raft stream: every message bound for one host since the last
/// flush, across all shards.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct RaftBatch {
    /// The sender's data dir incarnation: a random number drawn when its data dir was created.
    /// A peer that has recorded another one for this host drops the batch, so a host that lost
    /// its disk never votes or counts toward a quorum with what it forgot.
    pub incarnation: u64,
    /// Messages in send order.
    pub messages: Vec<RaftEnvelope>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_frame_is_no_larger_than_its_envelopes_framed_bytes_max() {
        let batch = RaftBatch {
            // The largest varint an incarnation can take.
            incarnation: u64::MAX,
            messages: vec![
                RaftEnvelope {
                    shard: u32::MAX,
                    message: vec![1; 300],
                },
                RaftEnvelope {
                    shard: 1,
                    message: vec![],
                },
                RaftEnvelope {
                    shard: 70_000,
                    message: vec![2; 1 << 20],
                },
            ],
        };
        let payload = crate::frame::encode(&batch).unwrap().len() - 4;
        let bound = RAFT_BATCH_PREFIX_BYTES_MAX
            + batch
                .messages
                .iter()
                .map(RaftEnvelope::framed_bytes_max)
                .sum::<usize>();
        assert!(payload <= bound, "{payload} > {bound}");
    }

    #[test]
    fn the_largest_multi_key_reply_fits_its_response_frame() {
        // The most values, together at the bound the shard answers TooLarge past.
        let each = VALUE_BYTES_MAX_CEILING / GET_MANY_KEYS_MAX - REPLY_BYTES_PER_VALUE;
        let values = vec![ReadValue(Some(vec![7; each])); GET_MANY_KEYS_MAX];
        let frame = crate::frame::encode(&Response::Values(values)).expect("encodes");
        assert!(frame.len() - 4 <= RESPONSE_FRAME_BYTES_MAX);
    }

    #[test]
    fn a_cas_of_two_values_at_the_ceiling_fits_its_request_frame() {
        let value = vec![7u8; VALUE_BYTES_MAX_CEILING];
        let req = RequestFrame::Data(Request {
            client_id: u64::MAX,
            seq: u64::MAX,
            op: Op::Cas {
                key: vec![b'k'; KEY_BYTES_MAX],
                expected: Some(value.clone()),
                new: Some(value),
            },
        });
        let frame = crate::frame::encode(&req).expect("the largest request encodes");
        assert!(frame.len() - 4 <= request_frame_bytes_max(VALUE_BYTES_MAX_CEILING));
    }
}
