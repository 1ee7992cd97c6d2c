//! `shardkv replica move SHARD FROM TO`: one replica of a shard moved to another host while
//! the shard serves, learner first, one joint change, then the explicit leave.
//!
//! Every step looks at where the move stands (the live map, and the configuration the shard's
//! leader reports) before it acts, and is a no-op once done, so the command can be re-run
//! after a crash halfway and goes on from where it stopped:
//! 1. the map places a learner on TO and records the move (TO's map watcher starts an empty
//!    replica; whoever looks next finds the move under way);
//! 2. the shard's leader adds TO as a learner; it catches up (by snapshot if needed);
//! 3. leadership leaves FROM if FROM leads;
//! 4. one joint change promotes TO and removes FROM, then the leave;
//! 5. the map makes TO a voter, drops FROM and clears the record, in one change (FROM's
//!    watcher then deletes its copy, once its own configuration no longer lists it).
//!
//! The meta group (shard [`META_SHARD`]) moves the same way: clients and hosts find it on the
//! meta replicas of the newest map they know, and a host holding a meta replica starts
//! routing by the map that replica applied, so its voters admit each other after a restart
//! wherever they are. It keeps as many voters as it has.

use std::time::{Duration, Instant};

use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::wire::{ReplicaChange, ReplicaInfo, ReplicaTarget, Response};
use shardkv_transport::{ClusterMap, HostId, Move, ReplicaRole, ShardId};

use crate::client::{Client, ClientError};

/// How long each waiting step may take before the move gives up (it can be re-run).
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
/// A learner this close to the leader's commit index counts as caught up: under a write
/// load the index moves on while the learner follows it.
const CAUGHT_UP_SLACK: u64 = 64;

/// Why a move stopped. Re-running the command continues it.
#[derive(thiserror::Error, Debug)]
pub enum MoveError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Refused(String),
    #[error("timed out {what} after {STEP_TIMEOUT:?}; re-run the command to continue")]
    Timeout { what: String },
    /// The test hook [`stop_after`] stopped the move.
    #[error("stopped after step {step:?} (test hook); re-run the command to continue")]
    Stopped { step: Step },
}

/// The steps of a move after which the Raft group's configuration has changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// TO is a learner of the group.
    Learner,
    /// TO has caught up with the leader.
    CaughtUp,
    /// The group is in the joint configuration.
    Joint,
    /// The group has left it; the map does not show the move done yet.
    Left,
}

impl Step {
    /// The step's name, as the test hook takes it.
    pub fn name(self) -> &'static str {
        match self {
            Step::Learner => "learner",
            Step::CaughtUp => "caught-up",
            Step::Joint => "joint",
            Step::Left => "left",
        }
    }
}

/// Test hook, in builds with debug assertions only: `SHARDKV_TEST_MOVE_STOP_AFTER=<step name>`
/// stops the move right after that step, as if the command had crashed there, so a test can
/// kill hosts between steps and re-run the move.
fn stop_after(step: Step) -> Result<(), MoveError> {
    if cfg!(debug_assertions)
        && std::env::var("SHARDKV_TEST_MOVE_STOP_AFTER")
            .ok()
            .as_deref()
            == Some(step.name())
    {
        return Err(MoveError::Stopped { step });
    }
    Ok(())
}

/// Moves `shard`'s replica on `from` to `to`; `replicas` is the configured replica count
/// (a shard never goes below it). `say` reports each step.
pub async fn move_replica(
    admin: &Client,
    shard: ShardId,
    from: HostId,
    to: HostId,
    replicas: u32,
    say: &dyn Fn(&str),
) -> Result<(), MoveError> {
    if from == to {
        return Err(MoveError::Refused("FROM and TO are the same host".into()));
    }
    let map = admin.read_map().await?.map;
    let roles = map
        .replicas_of(shard)
        .ok_or_else(|| MoveError::Refused(format!("shard {shard} is not in the cluster map")))?;
    // The meta group has its own size (at most three voters), not the configured one.
    let replicas = if shard == META_SHARD {
        u32::try_from(map.voters_of(META_SHARD).count()).unwrap_or(u32::MAX)
    } else {
        replicas
    };
    match (roles.get(&from), roles.get(&to)) {
        (None, Some(ReplicaRole::Voter)) => {
            say("already moved");
            return Ok(());
        }
        (None, _) => {
            return Err(MoveError::Refused(format!(
                "host {from} holds no replica of shard {shard}"
            )))
        }
        (Some(_), Some(ReplicaRole::Voter)) => {
            return Err(MoveError::Refused(format!(
                "host {to} already holds a voting replica of shard {shard}: pick a host without one"
            )))
        }
        _ => {}
    }
    // The move must end in a map the rules accept (checked before Raft changes anything).
    let planned = Move { shard, from, to };
    let mut end = map.clone();
    end.begin_move(planned)
        .and_then(|()| end.finish_move(shard, from, to, replicas))
        .map_err(|e| MoveError::Refused(e.to_string()))?;

    say(&format!("placing a learner of shard {shard} on host {to}"));
    admin
        .change_map(|m: &mut ClusterMap| m.begin_move(planned))
        .await?;
    wait_for(&format!("host {to} to start its replica"), || async {
        Ok(replica_on(admin, to, shard).await.is_some())
    })
    .await?;

    let (_, leader) = wait_leader(admin, &map, shard, to).await?;
    if !lists(&leader, to) {
        say(&format!("adding host {to} as a learner"));
    }
    let learner = [target(to, ReplicaTarget::Learner)];
    change_until(admin, &map, shard, to, &learner, |l| lists(l, to)).await?;
    stop_after(Step::Learner)?;
    say(&format!("waiting for host {to} to catch up"));
    wait_caught_up(admin, &map, shard, to).await?;
    stop_after(Step::CaughtUp)?;

    let joint = [
        target(to, ReplicaTarget::Voter),
        target(from, ReplicaTarget::Removed),
    ];
    say(&format!(
        "promoting host {to} and removing host {from} (joint)"
    ));
    wait_for("the joint change", || async {
        let (host, leader) = wait_leader(admin, &map, shard, to).await?;
        if leader.voters.contains(&to) && !leader.voters.contains(&from) {
            return Ok(true);
        }
        if leader.voters_outgoing.is_empty() && host == from {
            // A leader cannot remove itself: hand leadership to another voter first.
            let other = leader.voters.iter().copied().find(|h| *h != from);
            if let Some(other) = other {
                let _ = admin.transfer_leader(from, shard, other).await;
            }
            return Ok(false);
        }
        if leader.voters_outgoing.is_empty() {
            let _ = change_once(admin, &map, shard, to, &joint).await;
        }
        Ok(false)
    })
    .await?;
    stop_after(Step::Joint)?;
    say("leaving the joint configuration");
    wait_for("the leave", || async {
        let (host, leader) = wait_leader(admin, &map, shard, to).await?;
        if leader.voters_outgoing.is_empty() {
            return Ok(true);
        }
        if !leader.voters.contains(&host) {
            // A leaving voter leads (it won an election while joint): hand leadership on.
            let _ = admin.transfer_leader(host, shard, to).await;
            return Ok(false);
        }
        // Refused by a leader elected since the poll above: the next poll sees who leads.
        match change_once(admin, &map, shard, to, &[]).await {
            Err(MoveError::Refused(_)) => Ok(false),
            other => other,
        }
    })
    .await?;
    stop_after(Step::Left)?;

    say("recording the move in the cluster map");
    admin
        .change_map(|m: &mut ClusterMap| m.finish_move(shard, from, to, replicas))
        .await?;
    say(&format!("waiting for host {from} to delete its copy"));
    let deleted = wait_for(&format!("host {from} to delete its copy"), || async {
        Ok(admin.host_status(from).await.is_ok() && replica_on(admin, from, shard).await.is_none())
    })
    .await;
    if deleted.is_err() {
        say(&format!(
            "host {from} has not deleted its copy yet (it is down?); it will once it is back"
        ));
    }
    say("done");
    Ok(())
}

/// Rolls back `shard`'s move from `from` to `to` before its joint change (see
/// [`ClusterMap::abort_move`]): the learner on `to` leaves the shard's Raft group, then the
/// map drops it and the record. For a move whose target died or is being removed. Refused
/// once the move is past its joint change (finishing it is then the only way out, and needs no
/// `to`). A re-run after an interruption continues; a re-run once done changes nothing.
pub async fn abort_move(
    admin: &Client,
    shard: ShardId,
    from: HostId,
    to: HostId,
    say: &dyn Fn(&str),
) -> Result<(), MoveError> {
    let map = admin.read_map().await?.map;
    let mut end = map.clone();
    end.abort_move(shard, from, to)
        .map_err(|e| MoveError::Refused(e.to_string()))?;
    if end == map {
        say("no such move under way");
        return Ok(());
    }
    say(&format!("taking host {to}'s learner out of shard {shard}"));
    wait_for("the learner's removal", || async {
        let (_, leader) = wait_leader(admin, &map, shard, from).await?;
        if leader.voters.contains(&to) || !leader.voters_outgoing.is_empty() {
            return Err(MoveError::Refused(format!(
                "the move of shard {shard} to host {to} is past its joint change: finish it \
                 with `shardkv replica move {shard} {from} {to}`"
            )));
        }
        if !lists(&leader, to) {
            return Ok(true);
        }
        // Sent only while `to` is a learner (checked just above), so a driver racing ahead
        // to the joint change makes this fail, never remove a voter.
        let removed = [target(to, ReplicaTarget::Removed)];
        match change_once(admin, &map, shard, from, &removed).await {
            Err(MoveError::Refused(_)) => Ok(false),
            other => other.map(|_| false),
        }
    })
    .await?;
    say("recording the rollback in the cluster map");
    admin
        .change_map(|m: &mut ClusterMap| m.abort_move(shard, from, to))
        .await?;
    say("aborted");
    Ok(())
}

pub(crate) fn target(host: HostId, to: ReplicaTarget) -> ReplicaChange {
    ReplicaChange { host, to }
}

/// Host `host`'s replica of `shard`, as it reports it.
pub(crate) async fn replica_on(
    admin: &Client,
    host: HostId,
    shard: ShardId,
) -> Option<ReplicaInfo> {
    let status = admin.host_status(host).await.ok()?;
    status.replicas.into_iter().find(|r| r.shard == shard)
}

/// The hosts to ask about `shard`: its replicas in `map`, and `extra`.
fn candidates(map: &ClusterMap, shard: ShardId, extra: HostId) -> Vec<HostId> {
    let mut hosts: Vec<HostId> = map
        .replicas_of(shard)
        .map(|r| r.keys().copied().collect())
        .unwrap_or_default();
    if !hosts.contains(&extra) {
        hosts.push(extra);
    }
    hosts
}

/// The replica leading `shard` now (of the highest term reported), and its host; asked of
/// every replica host once.
async fn find_leader(
    admin: &Client,
    map: &ClusterMap,
    shard: ShardId,
    extra: HostId,
) -> Option<(HostId, ReplicaInfo)> {
    let mut best: Option<(HostId, ReplicaInfo)> = None;
    for h in candidates(map, shard, extra) {
        if let Some(r) = replica_on(admin, h, shard).await {
            if r.is_leader && best.as_ref().is_none_or(|(_, b)| r.term > b.term) {
                best = Some((h, r));
            }
        }
    }
    best
}

/// Like [`find_leader`], waiting up to [`STEP_TIMEOUT`] for a leader.
pub(crate) async fn wait_leader(
    admin: &Client,
    map: &ClusterMap,
    shard: ShardId,
    extra: HostId,
) -> Result<(HostId, ReplicaInfo), MoveError> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(found) = find_leader(admin, map, shard, extra).await {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return Err(MoveError::Timeout {
                what: format!("finding the leader of shard {shard}"),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Asks the shard's leader once for `changes`: whether it answered `Ok`.
pub(crate) async fn change_once(
    admin: &Client,
    map: &ClusterMap,
    shard: ShardId,
    extra: HostId,
    changes: &[ReplicaChange],
) -> Result<bool, MoveError> {
    let Some((leader, _)) = find_leader(admin, map, shard, extra).await else {
        return Ok(false);
    };
    match admin
        .change_replicas(leader, shard, changes.to_vec())
        .await?
    {
        Response::Ok => Ok(true),
        Response::Invalid(why) => Err(MoveError::Refused(why)),
        _ => Ok(false),
    }
}

/// Asks the shard's leader for `changes` until `done` holds for the configuration the leader
/// reports, checked before every attempt: a request repeated after someone else (another
/// driver of the same move) took the group past it must not be applied again (a learner
/// change sent to a voter would demote it). A refusal is retried too (it may come from a
/// leader that has not seen what the next one will, e.g. a newer map), and is returned only
/// once the step times out.
pub(crate) async fn change_until(
    admin: &Client,
    map: &ClusterMap,
    shard: ShardId,
    extra: HostId,
    changes: &[ReplicaChange],
    done: impl Fn(&ReplicaInfo) -> bool,
) -> Result<(), MoveError> {
    let refused = std::cell::RefCell::new(None);
    let outcome = wait_for("the replica change", || async {
        let (_, leader) = wait_leader(admin, map, shard, extra).await?;
        if done(&leader) {
            return Ok(true);
        }
        match change_once(admin, map, shard, extra, changes).await {
            Err(MoveError::Refused(why)) => {
                *refused.borrow_mut() = Some(why);
                Ok(false)
            }
            // `Ok` means proposed; the next poll sees it applied.
            other => other.map(|_| false),
        }
    })
    .await;
    match (outcome, refused.into_inner()) {
        (Err(MoveError::Timeout { .. }), Some(why)) => Err(MoveError::Refused(why)),
        (outcome, _) => outcome,
    }
}

/// Whether `info`'s configuration lists `host` (incoming voter or learner).
pub(crate) fn lists(info: &ReplicaInfo, host: HostId) -> bool {
    info.voters.contains(&host) || info.learners.contains(&host)
}

/// Waits until `host`'s replica of `shard` has caught up with the leader (or votes already).
pub(crate) async fn wait_caught_up(
    admin: &Client,
    map: &ClusterMap,
    shard: ShardId,
    host: HostId,
) -> Result<(), MoveError> {
    wait_for(&format!("host {host} to catch up"), || async {
        let (_, leader) = wait_leader(admin, map, shard, host).await?;
        let matched = leader
            .matched
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, m)| *m);
        // `matched` 0 is a learner that has received nothing yet (it starts from a snapshot),
        // however small the log: it is not caught up.
        Ok(leader.voters.contains(&host)
            || matched.is_some_and(|m| m > 0 && m + CAUGHT_UP_SLACK >= leader.commit))
    })
    .await
}

/// Polls `done` until it answers true, or [`STEP_TIMEOUT`].
pub(crate) async fn wait_for<F, Fut>(what: &str, done: F) -> Result<(), MoveError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, MoveError>>,
{
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        match done().await {
            Ok(true) => return Ok(()),
            Err(e @ MoveError::Refused(_)) => return Err(e),
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(MoveError::Timeout {
                what: format!("waiting for {what}"),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
