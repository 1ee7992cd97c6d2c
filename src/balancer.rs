//! The balancer: carries out the replica moves the live map calls for, one at a time, from the
//! host that leads the meta group.
//!
//! What to move is a pure function of the map ([`ClusterMap::pending_moves`]): replicas off
//! draining hosts always, and the rest of the rebalancing plan once an operator asked for it
//! (`shardkv rebalance`). Every host runs a balancer, but only the meta group's leader acts, so
//! one host carries moves out at a time in the normal case; should two briefly overlap (the
//! meta group changed leader mid-move), each shard's move is still one recorded move and one
//! Raft change at a time (the map refuses a second move of a moving shard).
//!
//! A recorded move whose target is being removed, or that keeps failing (its target died), is
//! rolled back instead if it has not reached its joint change (see `moves::abort_move`).
//!
//! A move records itself in the map when it starts (see [`ClusterMap::begin_move`]), so a move
//! interrupted by a crash is finished by whichever host leads the meta group next, before
//! anything new is planned. A recorded move this balancer did not start is taken over only
//! once it has stayed recorded for [`TAKE_OVER_AFTER`]: it may be an operator's
//! `shardkv replica move` still at work (two drivers of one move are safe, every step being
//! idempotent, but they slow each other down). When nothing is left to move, the balancer
//! clears the request.
//!
//! Splits come first: a split recorded in the map (see `shardkv shard split`) that is still
//! recorded after [`SPLIT_TAKE_OVER_AFTER`] was left behind by a driver that stopped, and the
//! balancer finishes it (proposes it to the shard again, a no-op if applied, then records the
//! new shard) before any move. It never starts a split.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use shardkv_actors::router::{GetHostStatus, RouterActor};
use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::{ClusterMap, HostId, HostState, Move, ShardId, Split};
use tracing::{debug, error, info, warn};

use crate::certs::CLI_CLIENT;
use crate::client::{Client, ClientError, ClientSettings};
use crate::config::{ClusterConfig, HostConfig};
use crate::moves::{abort_move, move_replica, MoveError};
use crate::splits::{finish_recorded_split, SplitError};

/// How often the balancer looks at the map while nothing moves.
pub const BALANCE_EVERY: Duration = Duration::from_secs(1);
/// Failed attempts after which a recorded move before its joint change is rolled back: each
/// attempt waits up to a minute per step, so its target has been unreachable for minutes.
pub const ATTEMPTS_BEFORE_ROLLBACK: u32 = 3;
/// How long a move someone else recorded stays theirs: longer than any one step of a move
/// waits, so a driver that is alive has shown progress (or given up) by then.
pub const TAKE_OVER_AFTER: Duration = Duration::from_secs(90);
/// How long a split someone else recorded stays theirs: a live driver proposes it within a
/// round trip and records the new shard right after, so one still recorded after this was
/// left behind (each driver step is idempotent, so taking over a slow one is safe).
pub const SPLIT_TAKE_OVER_AFTER: Duration = Duration::from_secs(10);

/// See the module docs.
pub struct Balancer {
    host: HostId,
    admin: Client,
    router: Addr<RouterActor>,
    /// The configured replica count: no move leaves a shard with fewer voters.
    replicas: u32,
    /// Moves that were refused (logged once each, then skipped until this host restarts).
    refused: BTreeSet<Move>,
    /// Recorded moves, and since when this balancer has seen them recorded (the moves it
    /// started itself count as seen long ago: it takes them up again at once).
    seen: BTreeMap<Move, Instant>,
    /// Failed attempts in a row, per move (see [`Balancer::gives_up_on`]).
    failures: BTreeMap<Move, u32>,
    /// Recorded splits, and since when this balancer has seen them recorded.
    splits_seen: BTreeMap<(ShardId, ShardId), Instant>,
    /// Splits the shard refused (logged once each, then left to the operator until this host
    /// restarts).
    splits_refused: BTreeSet<(ShardId, ShardId)>,
}

impl Balancer {
    /// A balancer for host `me`, moving replicas with the host's own certificate.
    pub fn new(
        cfg: &ClusterConfig,
        me: &HostConfig,
        router: Addr<RouterActor>,
    ) -> Result<Self, ClientError> {
        let mut settings = ClientSettings::from_config(&cfg.cluster, CLI_CLIENT);
        settings.tls.cert = me.cert.clone();
        settings.tls.key = me.key.clone();
        Ok(Balancer {
            host: me.host.id,
            admin: Client::new(settings)?,
            router,
            replicas: cfg.cluster.replicas,
            refused: BTreeSet::new(),
            seen: BTreeMap::new(),
            failures: BTreeMap::new(),
            splits_seen: BTreeMap::new(),
            splits_refused: BTreeSet::new(),
        })
    }

    /// Runs the balancer on the host's actor system until the host stops.
    pub fn spawn(mut self) {
        actix::spawn(async move {
            loop {
                tokio::time::sleep(BALANCE_EVERY).await;
                if !self.leads_meta().await {
                    continue;
                }
                if let Err(why) = self.round().await {
                    debug!(host = self.host, %why, "balancer round not finished");
                }
            }
        });
    }

    /// Whether this host's replica of the meta group leads it.
    async fn leads_meta(&self) -> bool {
        let Ok(status) = self.router.send(GetHostStatus).await else {
            return false;
        };
        status
            .replicas
            .iter()
            .any(|r| r.shard == META_SHARD && r.is_leader)
    }

    /// One step: finish a split left behind, or finish a move under way, or start the next
    /// pending one, or clear a rebalance request with nothing left to move.
    async fn round(&mut self) -> Result<(), ClientError> {
        let map = self.admin.read_map().await?.map;
        let now = Instant::now();
        if let Some((parent, split)) = self.split_left_behind(&map, now) {
            self.finish_split(parent, &split).await;
            return Ok(());
        }
        let recorded: Vec<Move> = map.moves_in_flight().values().copied().collect();
        self.seen.retain(|m, _| recorded.contains(m));
        for m in &recorded {
            self.seen.entry(*m).or_insert(now);
        }
        let ours = |m: &Move, seen: &BTreeMap<Move, Instant>| {
            seen.get(m)
                .is_some_and(|at| now.saturating_duration_since(*at) >= TAKE_OVER_AFTER)
        };
        // Theirs until taken over, unless its target is leaving: then it can only roll back.
        let under_way = recorded
            .iter()
            .copied()
            .filter(|m| ours(m, &self.seen) || target_leaving(&map, *m));
        // A shard with a recorded move is never planned again (see `plan_rebalance`).
        let next = under_way
            .chain(map.pending_moves(self.replicas))
            .find(|m| !self.refused.contains(m));
        match next {
            Some(m) if recorded.contains(&m) && self.gives_up_on(&map, m) => {
                self.roll_back(m).await;
            }
            Some(m) => {
                let long_ago = now.checked_sub(TAKE_OVER_AFTER).unwrap_or(now);
                self.seen.insert(m, long_ago);
                self.carry_out(&map, m).await;
            }
            // Moves recorded by someone else still at work are not finished yet.
            None if map.rebalance_requested() && recorded.is_empty() => {
                if !self.refused.is_empty() {
                    error!(
                        refused = ?self.refused,
                        "rebalance finished with moves that were refused (see the errors above)"
                    );
                }
                self.admin.change_map(ClusterMap::finish_rebalance).await?;
                info!("rebalance done: nothing left to move");
            }
            None => {}
        }
        Ok(())
    }

    /// The first recorded split seen recorded for [`SPLIT_TAKE_OVER_AFTER`] and not refused.
    fn split_left_behind(&mut self, map: &ClusterMap, now: Instant) -> Option<(ShardId, Split)> {
        let recorded: BTreeSet<(ShardId, ShardId)> =
            map.splits().iter().map(|(p, s)| (*p, s.child)).collect();
        self.splits_seen.retain(|k, _| recorded.contains(k));
        for k in &recorded {
            self.splits_seen.entry(*k).or_insert(now);
        }
        let old = |k: &(ShardId, ShardId)| {
            self.splits_seen
                .get(k)
                .is_some_and(|at| now.saturating_duration_since(*at) >= SPLIT_TAKE_OVER_AFTER)
        };
        let (parent, _) = recorded
            .iter()
            .find(|k| old(k) && !self.splits_refused.contains(k))?;
        map.split_of(*parent).map(|s| (*parent, s.clone()))
    }

    async fn finish_split(&mut self, parent: ShardId, split: &Split) {
        let child = split.child;
        let say = |step: &str| info!(shard = parent, child, "split: {step}");
        info!(
            shard = parent,
            child,
            at = split.at,
            "finishing a split left behind"
        );
        match finish_recorded_split(&self.admin, parent, &say).await {
            Ok(_) => info!(shard = parent, child, "split finished"),
            Err(SplitError::Refused(why)) => {
                error!(shard = parent, child, %why, "split refused; not retried until this host restarts");
                self.splits_refused.insert((parent, child));
            }
            // A timeout or an unreachable host: taken up again next round.
            Err(e) => warn!(shard = parent, child, error = %e, "split interrupted; retrying"),
        }
    }

    /// Whether a recorded move is to be rolled back rather than finished: its target is being
    /// removed (or gone), or it failed [`ATTEMPTS_BEFORE_ROLLBACK`] times in a row (its target
    /// died). Only a move before its joint change rolls back; past it, finishing is tried on.
    fn gives_up_on(&self, map: &ClusterMap, m: Move) -> bool {
        let failing = self.failures.get(&m).copied().unwrap_or(0) >= ATTEMPTS_BEFORE_ROLLBACK;
        target_leaving(map, m) || failing
    }

    async fn roll_back(&mut self, m: Move) {
        let say = |step: &str| {
            info!(
                shard = m.shard,
                from = m.from,
                to = m.to,
                "rollback: {step}"
            )
        };
        warn!(
            shard = m.shard,
            from = m.from,
            to = m.to,
            "rolling a move back"
        );
        match abort_move(&self.admin, m.shard, m.from, m.to, &say).await {
            Ok(()) => {
                self.failures.remove(&m);
            }
            // Past its joint change: finish it instead, from the next round on.
            Err(MoveError::Refused(why)) => {
                warn!(shard = m.shard, %why, "cannot roll the move back; finishing it");
                self.failures.remove(&m);
            }
            Err(e) => warn!(shard = m.shard, error = %e, "rollback interrupted; retrying"),
        }
    }

    async fn carry_out(&mut self, map: &ClusterMap, m: Move) {
        let say = |step: &str| info!(shard = m.shard, from = m.from, to = m.to, "move: {step}");
        info!(
            shard = m.shard,
            from = m.from,
            to = m.to,
            epoch = map.epoch(),
            "moving a replica"
        );
        let outcome = move_replica(&self.admin, m.shard, m.from, m.to, self.replicas, &say).await;
        match &outcome {
            Err(MoveError::Timeout { .. } | MoveError::Client(_)) => {
                *self.failures.entry(m).or_default() += 1;
            }
            _ => {
                self.failures.remove(&m);
            }
        }
        match outcome {
            Ok(()) => {}
            Err(MoveError::Refused(why)) => {
                // Refused once recorded (a step of the Raft change): the record keeps the shard
                // out of every plan, so it is taken up again, not skipped.
                let recorded = match self.admin.read_map().await {
                    Ok(read) => read.map.moves_in_flight().get(&m.shard) == Some(&m),
                    Err(_) => true,
                };
                if recorded {
                    warn!(shard = m.shard, from = m.from, to = m.to, %why, "move step refused; retrying");
                } else {
                    error!(shard = m.shard, from = m.from, to = m.to, %why, "move refused; skipping it");
                    self.refused.insert(m);
                }
            }
            // A timeout or an unreachable host: the recorded move is taken up again next round.
            Err(e) => {
                warn!(shard = m.shard, from = m.from, to = m.to, error = %e, "move interrupted; retrying")
            }
        }
    }
}

/// Whether `m`'s target is being removed from the cluster (or gone from the map).
fn target_leaving(map: &ClusterMap, m: Move) -> bool {
    !matches!(
        map.host(m.to).map(|h| h.state),
        Some(HostState::Joining | HostState::Active)
    )
}
