//! `shardkv shard split SHARD`: a shard's upper half of slots handed to a new shard on the
//! same hosts, while both serve; no data moves (rows are keyed by slot on every host).
//!
//! Every step is a no-op once done, and the split is recorded in the live map before anything
//! else happens, so the command (or the balancer, after a crash) can be re-run at any point
//! and goes on from where it stopped:
//! 1. the map records the split (the new shard's id, its first slot, its voters: see
//!    [`ClusterMap::begin_split`]);
//! 2. the shard's leader proposes it to the shard's log; at that index every replica hands
//!    the slots `>= at` to the new shard's replica on its host, which starts at once;
//! 3. the map shows the new shard and the parent's smaller range, and drops the record (see
//!    [`ClusterMap::finish_split`]); clients then route the upper half to the new shard.

use std::time::{Duration, Instant};

use shardkv_transport::wire::Response;
use shardkv_transport::{ClusterMap, HostId, ShardId, Split};

use crate::client::{Client, ClientError};
use crate::moves::replica_on;

/// How long the shard's leader is sought and asked to apply the split before the driver gives
/// up (it can be re-run): long enough for a few elections.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the driver waits for a majority of the new shard's voters to show its replica
/// before the map lists it anyway: a voter that is down catches up after the map changes.
const VOTERS_WAIT: Duration = Duration::from_secs(10);
/// Once a majority shows the new shard, how long the rest is waited for.
const MINORITY_GRACE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(200);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a split stopped. Re-running the command continues it.
#[derive(thiserror::Error, Debug)]
pub enum SplitError {
    /// The map or a host could not be reached, or refused our certificate.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The map or the shard's leader refused the split; re-running will not help (a split
    /// the shard refused is no longer recorded).
    #[error("{0}")]
    Refused(String),
    /// No leader of the shard applied the split in time.
    #[error("timed out {what} after {PROPOSE_TIMEOUT:?}; re-run the command to continue")]
    Timeout {
        /// What was waited for, and the last problem seen.
        what: String,
    },
    /// The test hook (see [`Step`]) stopped the split.
    #[error("stopped after step {step:?} (test hook); re-run the command to continue")]
    Stopped {
        /// The step after which it stopped.
        step: Step,
    },
}

/// The steps of a split after which it has gone further than the map shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The map records the split; the shard's log may not have it yet.
    Recorded,
    /// The shard's leader applied the split; the map does not list the new shard yet.
    Applied,
}

impl Step {
    /// The step's name, as the test hook takes it.
    pub fn name(self) -> &'static str {
        match self {
            Step::Recorded => "recorded",
            Step::Applied => "applied",
        }
    }
}

/// Test hook, in builds with debug assertions only: `SHARDKV_TEST_SPLIT_STOP_AFTER=<step name>`
/// stops the split right after that step, as if the command had crashed there, so a test can
/// kill hosts between steps and re-run the split.
fn stop_after(step: Step) -> Result<(), SplitError> {
    if cfg!(debug_assertions)
        && std::env::var("SHARDKV_TEST_SPLIT_STOP_AFTER")
            .ok()
            .as_deref()
            == Some(step.name())
    {
        return Err(SplitError::Stopped { step });
    }
    Ok(())
}

/// Splits `parent`: records the split in the map unless one is recorded already (then that
/// one is finished), has the shard apply it, and records the new shard. Answers the new
/// shard's id. `say` reports each step.
pub async fn split_shard(
    admin: &Client,
    parent: ShardId,
    say: &dyn Fn(&str),
) -> Result<ShardId, SplitError> {
    let read = admin.read_map().await?.map;
    if let Some(split) = read.split_of(parent) {
        say(&format!(
            "continuing the split into shard {} recorded earlier",
            split.child
        ));
    } else {
        // Refusals (unknown shard, meta group, too small...) before anything is written.
        let mut end = read.clone();
        end.begin_split(parent)
            .map_err(|e| SplitError::Refused(e.to_string()))?;
        say("recording the split in the cluster map");
    }
    let map = admin
        .change_map(|m: &mut ClusterMap| m.begin_split(parent))
        .await
        .map_err(refusal)?;
    let split = map
        .split_of(parent)
        .cloned()
        .ok_or_else(|| SplitError::Refused(format!("shard {parent}'s split was not recorded")))?;
    stop_after(Step::Recorded)?;
    carry_out(admin, parent, &split, say).await?;
    Ok(split.child)
}

/// Finishes the split of `parent` recorded in the map, if there is one (the balancer's way
/// out of a crashed driver): never records a new split. Answers the new shard's id, or `None`
/// when no split of `parent` is recorded.
pub async fn finish_recorded_split(
    admin: &Client,
    parent: ShardId,
    say: &dyn Fn(&str),
) -> Result<Option<ShardId>, SplitError> {
    let map = admin.read_map().await?.map;
    let Some(split) = map.split_of(parent).cloned() else {
        return Ok(None);
    };
    carry_out(admin, parent, &split, say).await?;
    Ok(Some(split.child))
}

/// Steps 2 and 3 of a recorded split.
async fn carry_out(
    admin: &Client,
    parent: ShardId,
    split: &Split,
    say: &dyn Fn(&str),
) -> Result<(), SplitError> {
    let child = split.child;
    say(&format!(
        "asking shard {parent}'s leader to hand slots {}.. to shard {child}",
        split.at
    ));
    match propose(admin, parent, split).await {
        Ok(()) => {}
        Err(e @ SplitError::Refused(_)) => {
            // The shard cannot apply it, so it never will: the record goes, the shard stays
            // whole (and can be moved or split again).
            admin
                .change_map(|m: &mut ClusterMap| m.abort_split(parent, child))
                .await
                .map_err(refusal)?;
            return Err(e);
        }
        Err(e) => return Err(e),
    }
    stop_after(Step::Applied)?;
    wait_for_voters(admin, split, say).await;
    say("recording the new shard in the cluster map");
    admin
        .change_map(|m: &mut ClusterMap| m.finish_split(parent, child))
        .await
        .map_err(refusal)?;
    Ok(())
}

/// Asks the parent's leader to apply `split` until it answers `Ok`: follows `NotLeader` hints,
/// tries each voter in turn, and backs off on elections and unreachable hosts, up to
/// [`PROPOSE_TIMEOUT`]. `Invalid` is final ([`SplitError::Refused`]: the shard will not apply
/// this split), and so is a refused certificate.
async fn propose(admin: &Client, parent: ShardId, split: &Split) -> Result<(), SplitError> {
    let spec = split.spec();
    let deadline = Instant::now() + PROPOSE_TIMEOUT;
    let mut backoff = BACKOFF_FIRST;
    let mut turn = 0usize;
    let mut hinted: Option<HostId> = None;
    let mut last = String::from("no voter asked yet");
    while Instant::now() < deadline {
        let host = match hinted.take() {
            Some(h) => h,
            None => {
                let next = split.voters.get(turn % split.voters.len().max(1));
                let Some(&h) = next else {
                    return Err(SplitError::Refused(format!(
                        "the split of shard {parent} records no voter"
                    )));
                };
                turn += 1;
                h
            }
        };
        match admin.split_shard(host, parent, spec.clone()).await {
            Ok(Response::Ok) => return Ok(()),
            Ok(Response::Invalid(why)) => {
                return Err(SplitError::Refused(format!(
                    "host {host} refused to split shard {parent}: {why}"
                )))
            }
            Err(e @ ClientError::Refused(_)) => return Err(SplitError::Client(e)),
            Ok(Response::NotLeader {
                leader: Some(l), ..
            }) if l != host => {
                last = format!("host {host} does not lead shard {parent}");
                hinted = Some(l);
                continue;
            }
            Ok(other) => last = format!("host {host} answered {other:?}"),
            Err(e) => last = format!("host {host}: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    Err(SplitError::Timeout {
        what: format!("applying the split of shard {parent} (last: {last})"),
    })
}

/// Waits up to [`VOTERS_WAIT`] for a majority of the new shard's voters to report its replica
/// (so the map lists a shard that can elect), and for all of them while the wait lasts; a
/// voter that is down or behind takes it up when it applies the split, so the wait is
/// bounded and only reported.
async fn wait_for_voters(admin: &Client, split: &Split, say: &dyn Fn(&str)) {
    let deadline = Instant::now() + VOTERS_WAIT;
    let majority = split.voters.len() / 2 + 1;
    let mut majority_since: Option<Instant> = None;
    loop {
        let mut missing = Vec::new();
        for &host in &split.voters {
            if replica_on(admin, host, split.child).await.is_none() {
                missing.push(host);
            }
        }
        if missing.is_empty() {
            return;
        }
        let shown = split.voters.len() - missing.len();
        let since = *majority_since.get_or_insert_with(Instant::now);
        if shown < majority {
            majority_since = None;
        } else if since.elapsed() >= MINORITY_GRACE {
            say(&format!(
                "hosts {missing:?} do not show shard {} yet (down or behind?); they take it up \
                 once they apply the split",
                split.child
            ));
            return;
        }
        if Instant::now() > deadline {
            say(&format!(
                "only {shown} of shard {}'s {} voters show it; recording it anyway (the others \
                 take it up once they apply the split)",
                split.child,
                split.voters.len()
            ));
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A map change the map refused is final; anything else is the client's error.
fn refusal(e: ClientError) -> SplitError {
    match e {
        ClientError::Invalid(why) => SplitError::Refused(why),
        other => SplitError::Client(other),
    }
}
