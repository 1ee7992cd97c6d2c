//! Where leadership should be: handing it back to the shard's preferred host, and handing it
//! away before a graceful stop.
//!
//! Leaders spread over the hosts only if each shard's leadership returns to its preferred
//! host (the first of its placement) once that host is back and caught up. Both decisions
//! are taken here from plain facts the replica reads off raft-rs, so they can be tested
//! without a Raft group.

use std::time::{Duration, Instant};

use shardkv_transport::HostId;

/// What a follower's progress says about it, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    pub host: HostId,
    /// Heard from within the last election timeout.
    pub recent_active: bool,
    /// Highest log index known to be on the follower.
    pub matched: u64,
}

/// What to do with a request to hand leadership away before a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownHandoff {
    /// First request: hand over now.
    Begin,
    /// Handed over recently; the transfer may still complete, keep waiting.
    Waiting,
    /// Handed over long enough ago that it will not complete: stop without it.
    GaveUp,
}

/// The leadership placement state of one replica.
#[derive(Debug)]
pub struct LeaderPlacement {
    me: HostId,
    preferred: HostId,
    /// Least time between two hand-backs, and after winning an election before one, so an
    /// election settles first and a flapping host cannot make leadership ping-pong.
    settle: Duration,
    /// How long a shutdown hand-off is worth waiting for.
    patience: Duration,
    /// When this replica last changed role or tried a hand-back.
    settled_at: Instant,
    /// When this replica tried to hand its leadership away for a stop.
    handoff_at: Option<Instant>,
}

impl LeaderPlacement {
    /// `preferred`: the host that should lead when healthy (None: whoever wins elections).
    /// `election_timeout` sets both the settling interval (twice it) and the shutdown
    /// patience (once).
    pub fn new(
        me: HostId,
        preferred: Option<HostId>,
        election_timeout: Duration,
        now: Instant,
    ) -> Self {
        LeaderPlacement {
            me,
            preferred: preferred.unwrap_or(me),
            settle: election_timeout * 2,
            patience: election_timeout,
            settled_at: now,
            handoff_at: None,
        }
    }

    /// The replica's role changed at `now`: the settling interval starts over.
    pub fn role_changed(&mut self, now: Instant) {
        self.settled_at = now;
    }

    /// Whether a leader should now hand leadership back to its preferred host, and to whom.
    /// `transfer_pending`: raft-rs is already transferring. `preferred`: that host's progress
    /// (None if it is not a voter), `last_index`: the leader's last log index. A hand-back
    /// restarts the settling interval.
    pub fn hand_back(
        &mut self,
        now: Instant,
        transfer_pending: bool,
        preferred: Option<FollowerProgress>,
        last_index: u64,
    ) -> Option<HostId> {
        if self.preferred == self.me
            || self.handoff_at.is_some()
            || transfer_pending
            || now.saturating_duration_since(self.settled_at) < self.settle
        {
            return None;
        }
        let caught_up = preferred.is_some_and(|p| p.recent_active && p.matched == last_index);
        if !caught_up {
            return None;
        }
        self.settled_at = now;
        Some(self.preferred)
    }

    /// The host preferred to lead this shard.
    pub fn preferred(&self) -> HostId {
        self.preferred
    }

    /// A stop asks a leader to hand over. Only one attempt per stop: when every host stops at
    /// once, peers would otherwise pass leadership back and forth.
    pub fn shutdown_handoff(&mut self, now: Instant) -> ShutdownHandoff {
        match self.handoff_at {
            None => {
                self.handoff_at = Some(now);
                ShutdownHandoff::Begin
            }
            Some(at) if now.saturating_duration_since(at) < self.patience => {
                ShutdownHandoff::Waiting
            }
            Some(_) => ShutdownHandoff::GaveUp,
        }
    }
}

/// The most up-to-date active follower (other than `me`): the best host to take over.
pub fn best_transferee(
    me: HostId,
    followers: impl IntoIterator<Item = FollowerProgress>,
) -> Option<HostId> {
    followers
        .into_iter()
        .filter(|p| p.host != me && p.recent_active)
        .max_by_key(|p| p.matched)
        .map(|p| p.host)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(500);

    fn progress(host: HostId, recent_active: bool, matched: u64) -> FollowerProgress {
        FollowerProgress {
            host,
            recent_active,
            matched,
        }
    }

    #[test]
    fn leadership_goes_back_to_a_caught_up_preferred_host_once_settled() {
        let t0 = Instant::now();
        let mut p = LeaderPlacement::new(1, Some(2), TIMEOUT, t0);
        let pref = Some(progress(2, true, 10));
        assert_eq!(p.hand_back(t0 + TIMEOUT, false, pref, 10), None, "settling");
        assert_eq!(p.hand_back(t0 + 2 * TIMEOUT, false, pref, 10), Some(2));
        assert_eq!(
            p.hand_back(t0 + 3 * TIMEOUT, false, pref, 10),
            None,
            "at most one hand-back per settling interval"
        );
    }

    #[test]
    fn no_hand_back_to_a_host_behind_inactive_or_already_leading() {
        let t0 = Instant::now();
        let later = t0 + 10 * TIMEOUT;
        let mut p = LeaderPlacement::new(1, Some(2), TIMEOUT, t0);
        assert_eq!(
            p.hand_back(later, false, Some(progress(2, true, 9)), 10),
            None
        );
        assert_eq!(
            p.hand_back(later, false, Some(progress(2, false, 10)), 10),
            None
        );
        assert_eq!(p.hand_back(later, false, None, 10), None);
        assert_eq!(
            p.hand_back(later, true, Some(progress(2, true, 10)), 10),
            None
        );
        let mut mine = LeaderPlacement::new(1, None, TIMEOUT, t0);
        assert_eq!(mine.preferred(), 1);
        assert_eq!(
            mine.hand_back(later, false, Some(progress(1, true, 10)), 10),
            None
        );
    }

    #[test]
    fn a_role_change_restarts_the_settling_interval() {
        let t0 = Instant::now();
        let mut p = LeaderPlacement::new(1, Some(2), TIMEOUT, t0);
        p.role_changed(t0 + 2 * TIMEOUT);
        let pref = Some(progress(2, true, 10));
        assert_eq!(p.hand_back(t0 + 3 * TIMEOUT, false, pref, 10), None);
        assert_eq!(p.hand_back(t0 + 4 * TIMEOUT, false, pref, 10), Some(2));
    }

    #[test]
    fn one_shutdown_hand_off_per_stop_and_no_hand_back_after_it() {
        let t0 = Instant::now();
        let mut p = LeaderPlacement::new(1, Some(2), TIMEOUT, t0);
        assert_eq!(p.shutdown_handoff(t0), ShutdownHandoff::Begin);
        assert_eq!(
            p.shutdown_handoff(t0 + TIMEOUT / 2),
            ShutdownHandoff::Waiting
        );
        assert_eq!(p.shutdown_handoff(t0 + TIMEOUT), ShutdownHandoff::GaveUp);
        let pref = Some(progress(2, true, 10));
        assert_eq!(p.hand_back(t0 + 10 * TIMEOUT, false, pref, 10), None);
    }

    #[test]
    fn the_best_transferee_is_the_most_caught_up_active_follower() {
        let followers = [
            progress(1, true, 50),
            progress(2, true, 40),
            progress(3, false, 45),
            progress(4, true, 42),
        ];
        assert_eq!(best_transferee(1, followers), Some(4));
        assert_eq!(best_transferee(1, [progress(1, true, 5)]), None);
    }
}
