//! ReplicaActor: one shard's Raft replica on this host, driving a raft-rs `RawNode`.
//!
//! It ticks on a timer, steps inbound messages, turns client writes into proposals and
//! linearizable reads into ReadIndex rounds, and handles `Ready` in the order the protocol's
//! safety rules demand (`ready.rs`). The state machine lives in the shard's ShardActor:
//! committed entries go there, so consensus and apply overlap.
//!
//! The actor is a struct of typed parts, each a plain type with its own tests:
//! [`reads::ReadQueue`] (ReadIndex rounds), [`lease::Lease`] (lease reads),
//! [`persist::PersistPipeline`] (Ready batches on their way to disk),
//! [`placement::LeaderPlacement`] (hand-back, shutdown and slow-disk hand-off),
//! [`placement::SlowDisk`] (whether this host's disk keeps up),
//! [`snapshots::SnapshotFiles`] (snapshot files in and out) and
//! [`votes::StartupVoteRefusal`]; [`hibernate::Hibernation`] stops its clock while the group is
//! idle (`idle.rs` is the actor's side of it). Message handlers are in `handlers.rs`, client requests in
//! `requests.rs`, leadership moved on request in `transfer.rs`, stopping a replica while the
//! host runs on in `stop.rs`.

mod handlers;
pub mod hibernate;
mod idle;
pub mod lease;
pub mod membership;
pub mod persist;
pub mod placement;
pub mod reads;
mod ready;
mod requests;
pub mod snapshots;
pub mod stop;
pub mod transfer;
pub mod votes;

use std::time::{Duration, Instant};

use actix::prelude::*;
use raft::{RawNode, StateRole};
use shardkv_transport::wire::Response;
use shardkv_transport::{HostId, ShardId};
use tracing::debug;

use crate::fatal::{Fatal, FatalReporter};
use crate::messages::{
    ApplyEntries, AwaitApply, FailWaiters, InstallSnapshot, PersistLog, ReadAt, SnapshotReport,
};
use crate::peer::links::PeerLinks;
use crate::raft_storage::LmdbRaftStorage;
use crate::shard::{AppliedIndex, PublishedSlots};
use hibernate::Hibernation;
use lease::{lease_for, Lease};
use persist::PersistPipeline;
pub(crate) use persist::PERSISTS_IN_FLIGHT_MAX;
use placement::{LeaderPlacement, SlowDisk};
use reads::ReadQueue;
use snapshots::SnapshotFiles;
use votes::StartupVoteRefusal;

/// Entry bytes a shard's leader holds proposed but not yet committed (raft-rs'
/// `max_uncommitted_size`): further proposals are refused (the client retries) until commits
/// catch up, so clients writing faster than a quorum persists cannot grow the leader's log in
/// memory without bound. Hundreds of ordinary writes fit; raft-rs always admits a proposal
/// when nothing is uncommitted, so one at the value ceiling still gets through.
pub const UNCOMMITTED_BYTES_PER_SHARD_MAX: u64 = 64 << 20;

/// Appends a leader sends a follower without hearing back (raft-rs' `max_inflight_msgs`).
/// Together they hold at most half of what the queue to a peer admits, so a follower catching
/// up (after a stall, a restart) gets every append the leader sends it, with room left for a
/// second shard's and for heartbeats. At 256 (up to 256 MiB in flight, four times what the
/// queue admits, so most of it was dropped and sent again) a host resumed 256 MiB behind
/// did not catch up within 30 s and the healthy hosts held elections every few seconds;
/// at 32 it catches up and nobody holds an election (tests/stalled_peer.rs).
pub const INFLIGHT_APPENDS_PER_FOLLOWER_MAX: usize = 32;
const _: () = assert!(
    INFLIGHT_APPENDS_PER_FOLLOWER_MAX * shardkv_transport::wire::RAFT_ENTRIES_BYTES_PER_MESSAGE_MAX
        <= crate::peer::queue::QUEUE_BYTES_MAX / 2
);

/// Timing and limits of one replica.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// How long a request may wait for commit/apply before the client is told to retry.
    pub request_timeout: Duration,
    /// The host that should lead this shard when healthy (None: whoever wins elections).
    pub preferred_leader: Option<HostId>,
    /// The host's value limit, which an update's append must keep to; it goes into the
    /// update's log entry (see [`crate::shard::Action::Update`]).
    pub value_bytes_max: u64,
    /// Whether the group may sleep while idle (see [`hibernate`]).
    pub hibernate: bool,
}

impl ReplicaSettings {
    /// The base election timeout in real time.
    fn election_timeout(&self) -> Duration {
        self.tick * u32::try_from(self.election_ticks).unwrap_or(u32::MAX)
    }
}

/// Where a replica sends things; handed over by the daemon.
pub struct ReplicaLinks {
    pub storage: Recipient<PersistLog>,
    pub apply: Recipient<ApplyEntries>,
    pub await_apply: Recipient<AwaitApply>,
    pub read_at: Recipient<ReadAt>,
    pub fail_waiters: Recipient<FailWaiters>,
    pub install: Recipient<InstallSnapshot>,
    /// The host's outbound links, shared with every replica and kept in step with the live
    /// map (a replica change may add any member host).
    pub peers: PeerLinks,
    /// Where a fatal error goes: the host stops rather than run without this replica.
    pub fatal: FatalReporter,
    /// The index the shard's state machine has applied (for status).
    pub applied: AppliedIndex,
    /// The slots the shard's state machine owns durably (for status).
    pub slots: PublishedSlots,
}

/// The actor; see the module docs.
pub struct ReplicaActor {
    shard: ShardId,
    host: HostId,
    node: RawNode<LmdbRaftStorage>,
    links: ReplicaLinks,
    settings: ReplicaSettings,
    reads: ReadQueue,
    lease: Lease,
    persist: PersistPipeline,
    placement: LeaderPlacement,
    disk: SlowDisk,
    snapshots: SnapshotFiles,
    votes: StartupVoteRefusal,
    /// The leader and role as of the last Ready (to log changes and fail what only a leader
    /// could finish).
    leader: u64,
    role: StateRole,
    /// A drive is queued behind the messages already in the mailbox.
    drive_scheduled: bool,
    /// This actor, for snapshot reports from the PeerActors.
    me: Option<Recipient<SnapshotReport>>,
    /// The stored configuration holds every change up to here (the durable applied index at
    /// start, then each change applied): raft-rs re-delivers entries after a restart, and a
    /// change must not be applied twice.
    conf_applied_through: u64,
    /// The replica change proposed here and not yet committed (one at a time).
    change_waiter: Option<membership::ChangeWaiter>,
    hibernation: Hibernation,
    /// The running Raft clock; `None` while hibernating.
    ticks: Option<SpawnHandle>,
    /// Counts this replica's ticks (`shardkv_raft_ticks_total`).
    ticks_counter: prometheus_client::metrics::counter::Counter,
}

impl ReplicaActor {
    /// Builds the replica over its storage. `applied` is the durable apply index, so raft-rs
    /// hands over only entries the state machine has not applied yet.
    pub fn new(
        shard: ShardId,
        host: HostId,
        storage: LmdbRaftStorage,
        applied: u64,
        settings: ReplicaSettings,
        links: ReplicaLinks,
        logger: &slog::Logger,
    ) -> Result<Self, crate::error::ActorError> {
        // Applied never exceeds the stored commit (raft-rs refuses to start otherwise); if a
        // crash left it so, re-deliver from the commit: the ShardActor skips what it applied.
        let stored_hs = storage.hard_state()?;
        let conf_applied_through = applied;
        let applied = applied.min(stored_hs.commit);
        let cfg = raft::Config {
            id: host,
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            applied,
            // The Raft frame limit is sized from this (see shardkv_transport::wire).
            max_size_per_msg: shardkv_transport::wire::RAFT_ENTRIES_BYTES_PER_MESSAGE_MAX as u64,
            max_inflight_msgs: INFLIGHT_APPENDS_PER_FOLLOWER_MAX,
            max_uncommitted_size: UNCOMMITTED_BYTES_PER_SHARD_MAX,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()
            .map_err(|e| crate::error::ActorError::Raft(e.to_string()))?;
        let logger = logger.new(slog::o!("shard" => shard, "host" => host));
        let node = RawNode::new(&cfg, storage, &logger)
            .map_err(|e| crate::error::ActorError::Raft(e.to_string()))?;
        let now = Instant::now();
        let election_timeout = settings.election_timeout();
        // A group quiet for an election timeout goes to sleep, if it may.
        let hibernation = Hibernation::new(settings.hibernate, settings.election_ticks);
        Ok(ReplicaActor {
            shard,
            host,
            node,
            links,
            reads: ReadQueue::default(),
            lease: Lease::new(lease_for(settings.tick, settings.election_ticks)),
            persist: PersistPipeline::new(stored_hs),
            placement: LeaderPlacement::new(host, settings.preferred_leader, election_timeout, now),
            disk: SlowDisk::new(election_timeout),
            snapshots: SnapshotFiles::default(),
            votes: StartupVoteRefusal::until(now + election_timeout),
            settings,
            leader: 0,
            role: StateRole::Follower,
            drive_scheduled: false,
            me: None,
            conf_applied_through,
            change_waiter: None,
            hibernation,
            ticks: None,
            ticks_counter: crate::metrics::metrics()
                .raft_ticks
                .get_or_create(&crate::metrics::ShardLabels { shard })
                .clone(),
        })
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    fn not_leader(&self) -> Response {
        let leader = self.node.raft.leader_id;
        Response::NotLeader {
            shard: self.shard,
            leader: (leader != 0 && leader != self.host).then_some(leader),
        }
    }

    /// The one way a replica ends on a fatal error (its storage or state machine failed, or
    /// what it was about to write cannot be encoded): stop the actor and tell the daemon,
    /// which stops the host. A host running on without one of its replicas would look
    /// healthy while that shard had one replica fewer.
    fn stop_fatally(&self, ctx: &mut Context<Self>, what: &str, error: &dyn std::fmt::Display) {
        ctx.stop();
        self.links.fatal.report(Fatal {
            shard: Some(self.shard),
            reason: format!("{what}: {error}"),
        });
    }
}

impl Actor for ReplicaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::MAILBOX_CAPACITY);
        self.me = Some(ctx.address().recipient());
        self.start_ticking(ctx);
        self.watch_lost_links(ctx);
        // A single-replica group elects itself at once instead of waiting a timeout.
        if self.node.raft.prs().conf().voters().ids().len() == 1 {
            let _ = self.node.campaign();
        }
        self.schedule_drive(ctx);
        debug!(shard = self.shard, host = self.host, "replica started");
    }
}

/// Internal: one Raft tick is due.
struct Tick;

impl StreamHandler<Tick> for ReplicaActor {
    fn handle(&mut self, _: Tick, ctx: &mut Self::Context) {
        self.ticks_counter.inc();
        self.node.tick();
        self.reads.expire(Instant::now());
        self.hand_away_from_slow_disk();
        self.balance_leadership();
        self.hibernate_tick(ctx);
        self.schedule_drive(ctx);
    }
}
