//! The decisions of one request's retry loop, apart from its I/O: given what an attempt
//! brought back, which host to ask next, which leader to remember for which shard, whether the
//! route needs a newer map, and how long to wait first. Plain state, so that the rules are
//! unit tested without hosts; [`crate::Client`] sends, sleeps and refreshes as told.
//!
//! Rules:
//! - **A leader is remembered under the shard that named it.** Hosts route a key by its slot
//!   to the local replica that owns it, so after a split a request routed to the parent by an
//!   older map is answered by the child. A hint or a success is recorded under the shard the
//!   reply names (for a success, the shard the host asked was chosen for), never under the
//!   routed shard in its stead: the parent's leader stays cached for the parent's keys.
//! - **A shard that gave up the key's slot is retried at once, then with a growing pause.**
//!   `WrongShard { epoch }` applied nothing, so the same request (same seq) goes again: at once
//!   to the same host, which has applied the split and routes the key to the child's replica,
//!   then after [`SPLIT_WAIT_MIN`] doubling to [`SPLIT_WAIT_MAX`] until a map newer than
//!   `epoch` routes the key (the loop retries at once when one arrives).
//! - **Hints are followed at once, a few in a row.** Hosts pointing at each other (stale views
//!   during an election, maps that disagree) are not asked in a tight loop: after
//!   [`HOPS_IN_A_ROW_MAX`] hints the loop pauses, [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`].

use std::time::Duration;

use shardkv_transport::wire::Response;
use shardkv_transport::{HostId, ShardId};

use crate::client::final_error;
use crate::route::Route;
use crate::ClientError;

/// The first pause between attempts that found no leader or no answer.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause between attempts; a request waits at most this long past a recovery.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// The pause before the second retry after `WrongShard` (the first goes at once).
pub(crate) const SPLIT_WAIT_MIN: Duration = Duration::from_millis(20);
/// The longest pause between retries after `WrongShard`, while no map routes the key anew.
pub(crate) const SPLIT_WAIT_MAX: Duration = Duration::from_millis(500);
/// Hints followed at once in a row before a pause.
const HOPS_IN_A_ROW_MAX: u32 = 2;

/// Whether the next attempt needs a newer map first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// The route is as good as any known.
    No,
    /// The map is stale, but the next attempt can go without a newer one: refresh in the
    /// background.
    Background,
    /// The map is stale and where to go next depends on it: refresh (bounded) first.
    Wait,
}

/// What to do before the next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// A leader a reply named: `(shard, host)`.
    pub remember: Option<(ShardId, HostId)>,
    pub refresh: Refresh,
    /// How long to wait before the next attempt; zero: at once.
    pub pause: Duration,
}

/// What one reply means for the request.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The answer to return; `leader` is `(shard, host)` to remember.
    Done {
        resp: Response,
        leader: (ShardId, HostId),
    },
    /// A final error.
    Fail(ClientError),
    /// Try again as the step says.
    Again(Step),
}

/// The retry state of one request.
#[derive(Debug)]
pub(crate) struct Retry {
    /// The key's route by the newest map the request routes by.
    route: Route,
    /// The host the next attempt goes to.
    target: HostId,
    /// The shard `target` was chosen for: the routed shard, or the shard a hint named.
    target_shard: ShardId,
    /// Where in `route.candidates` the rotation stands.
    rotation: usize,
    /// Hints followed at once in a row.
    hops: u32,
    backoff: Duration,
    split_wait: Duration,
    /// The highest epoch as of which a shard said it gave up the key's slot: a map of this
    /// epoch or older routes the key to a shard that does not own it.
    gave_up_at: Option<u64>,
    /// Why the last attempt failed, for the timeout error.
    last: String,
}

impl Retry {
    /// The retry state of a request whose key routes by `route`, starting at the shard's
    /// cached leader if there is one, else at its first candidate.
    pub(crate) fn new(route: Route, cached_leader: Option<HostId>) -> Retry {
        let target = cached_leader.unwrap_or(route.candidates[0]);
        Retry {
            rotation: route.position(target).unwrap_or(0),
            target,
            target_shard: route.shard,
            route,
            hops: 0,
            backoff: BACKOFF_MIN,
            split_wait: Duration::ZERO,
            gave_up_at: None,
            last: String::from("no attempt made"),
        }
    }

    /// The host the next attempt goes to.
    pub(crate) fn target(&self) -> HostId {
        self.target
    }

    /// The shard the key routes to by the map the request routes by.
    pub(crate) fn shard(&self) -> ShardId {
        self.route.shard
    }

    /// Why the last attempt failed.
    pub(crate) fn last(&self) -> &str {
        &self.last
    }

    /// Why the last attempt failed, for the timeout error.
    pub(crate) fn into_last(self) -> String {
        self.last
    }

    /// Whether a map of `epoch` may route the key: not one as of which (or before which) a
    /// shard said it gave the key's slot up.
    pub(crate) fn routable_by(&self, epoch: u64) -> bool {
        self.gave_up_at.is_none_or(|gave_up| epoch > gave_up)
    }

    /// Routes by `route` from a newer map from now on. If the key's shard changed (a split)
    /// and the next attempt was not already going to that shard's leader by a hint, it goes
    /// to the new shard's cached leader, else to the same host if it holds a replica, else to
    /// the first candidate.
    pub(crate) fn reroute(&mut self, route: Route, cached_leader: Option<HostId>) {
        if route.shard != self.route.shard {
            if self.target_shard != route.shard {
                self.target = cached_leader
                    .filter(|h| route.lists(*h))
                    .or(Some(self.target).filter(|h| route.lists(*h)))
                    .unwrap_or(route.candidates[0]);
            }
            self.target_shard = route.shard;
            self.split_wait = Duration::ZERO;
        }
        self.rotation = route.position(self.target).unwrap_or(0);
        self.route = route;
    }

    /// The attempt got no answer (`why`): next candidate, after a pause.
    pub(crate) fn on_lost(&mut self, why: String) -> Step {
        self.last = why;
        self.rotate(Refresh::No)
    }

    /// What `resp`, the answer of the target, means.
    pub(crate) fn on_reply(&mut self, resp: Response) -> Outcome {
        let target = self.target;
        // `LeaderLost` (a write whose leader stepped down before it committed) is retried like
        // `NotLeader`, which the session makes safe: a retry of an applied write is recognised.
        match resp {
            Response::Value(_)
            | Response::Ok
            | Response::CasOk
            | Response::CasFailed { .. }
            | Response::Updated(_)
            | Response::Values(_) => Outcome::Done {
                resp,
                leader: (self.target_shard, target),
            },
            Response::NotLeader {
                shard,
                leader: Some(l),
            }
            | Response::LeaderLost {
                shard,
                leader: Some(l),
            } if l != target => {
                self.last = format!("host {target} is not the leader of shard {shard}");
                let refresh = if shard != self.route.shard {
                    // The host routed the key to another shard than the map did.
                    Refresh::Background
                } else if !self.route.lists(l) {
                    // The shard's leader is a replica the map does not show.
                    Refresh::Wait
                } else {
                    Refresh::No
                };
                self.target = l;
                self.target_shard = shard;
                self.hops += 1;
                let pause = if self.hops <= HOPS_IN_A_ROW_MAX {
                    Duration::ZERO
                } else {
                    self.hops = 0;
                    self.rotation = self.route.position(l).unwrap_or(self.rotation);
                    self.grow_backoff()
                };
                Outcome::Again(Step {
                    remember: Some((shard, l)),
                    refresh,
                    pause,
                })
            }
            Response::NotLeader { shard, .. } | Response::LeaderLost { shard, .. } => {
                self.last = format!("shard {shard} has no leader yet");
                let refresh = if shard != self.route.shard {
                    Refresh::Background
                } else {
                    Refresh::No
                };
                Outcome::Again(self.rotate(refresh))
            }
            Response::NoReplicaHere { shard, hosts } => {
                self.last = format!("host {target} holds no replica of shard {shard}");
                // The route is stale: the replica moved away. Follow a hint at once, a few
                // times in a row at most: hosts whose maps disagree must not bounce the
                // request between them without a pause.
                match hosts.iter().copied().find(|h| *h != target) {
                    Some(h) if self.hops < HOPS_IN_A_ROW_MAX => {
                        self.hops += 1;
                        self.target = h;
                        self.target_shard = shard;
                        Outcome::Again(Step {
                            remember: None,
                            refresh: Refresh::Wait,
                            pause: Duration::ZERO,
                        })
                    }
                    _ => {
                        self.hops = 0;
                        Outcome::Again(self.rotate(Refresh::Wait))
                    }
                }
            }
            Response::Unavailable(why) => {
                self.last = format!("shard {}: {why}", self.route.shard);
                Outcome::Again(self.rotate(Refresh::No))
            }
            Response::WrongShard { shard, epoch } => {
                self.last = format!("shard {shard} gave up the key's slot at map epoch {epoch}");
                self.gave_up_at = self.gave_up_at.max(Some(epoch));
                let pause = self.split_wait;
                self.split_wait = (self.split_wait * 2).clamp(SPLIT_WAIT_MIN, SPLIT_WAIT_MAX);
                Outcome::Again(Step {
                    remember: None,
                    refresh: Refresh::Background,
                    pause,
                })
            }
            // A status reply to a data request would be a host bug: final.
            other @ (Response::Status(_)
            | Response::TooLarge { .. }
            | Response::Invalid(_)
            | Response::Internal(_)) => Outcome::Fail(final_error(other)),
        }
    }

    /// The next candidate of the route, after a pause that doubles each time.
    fn rotate(&mut self, refresh: Refresh) -> Step {
        self.rotation = (self.rotation + 1) % self.route.candidates.len();
        self.target = self.route.candidates[self.rotation];
        self.target_shard = self.route.shard;
        Step {
            remember: None,
            refresh,
            pause: self.grow_backoff(),
        }
    }

    /// The pause to take now; the next one is twice as long, up to [`BACKOFF_MAX`].
    fn grow_backoff(&mut self) -> Duration {
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        pause
    }
}

#[cfg(test)]
mod tests;
