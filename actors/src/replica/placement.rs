//! Where leadership should be: handing it back to the shard's preferred host, handing it
//! away before a graceful stop, and handing it away from a host whose disk is slow.
//!
//! Leaders spread over the hosts only if each shard's leadership returns to its preferred
//! host (the first of its placement) once that host is back and caught up. A leader hands
//! committed entries to its state machine only once they are on its own disk (raft-rs'
//! rule), so a leader whose fsync takes seconds makes every write to its shard take seconds
//! although its followers commit at once: such a leader hands over to an up-to-date
//! follower ([`LeaderPlacement::slow_disk_handoff`]), and a host whose disk is or was lately
//! slow does not take leadership ([`SlowDisk::is_slow`]), so a hand-back does not return it
//! there. Every decision is taken here from plain facts the replica reads off raft-rs and
//! its persist pipeline, so they can be tested without a Raft group.

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
    /// When this replica last handed its leadership away because its disk was slow.
    slow_disk_handoff_at: Option<Instant>,
    /// When this replica last handed leadership back to the preferred host.
    handed_back_at: Option<Instant>,
    /// Hand-backs in a row after which leadership soon came back here (the preferred host
    /// could not hold it: say it is busy catching a peer up and its heartbeats are late):
    /// each doubles the settling interval before the next, up to [`HAND_BACK_BACKOFF_MAX`].
    bounced: u32,
}

/// Most doublings of the settling interval after hand-backs that bounced (2^5 = 32 times).
const HAND_BACK_BACKOFF_MAX: u32 = 5;
/// A leadership that returns within this many settling intervals of a hand-back bounced.
const BOUNCE_WINDOW: u32 = 10;

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
            slow_disk_handoff_at: None,
            handed_back_at: None,
            bounced: 0,
        }
    }

    /// The replica's role changed at `now` (to leader if `leads`): the settling interval
    /// starts over, and a leadership that came back soon after a hand-back counts as bounced.
    pub fn role_changed(&mut self, now: Instant, leads: bool) {
        self.settled_at = now;
        if !leads {
            return;
        }
        let window = self.settle * BOUNCE_WINDOW;
        match self.handed_back_at {
            Some(at) if now.saturating_duration_since(at) < window => {
                self.bounced = (self.bounced + 1).min(HAND_BACK_BACKOFF_MAX);
            }
            _ => self.bounced = 0,
        }
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
            || now.saturating_duration_since(self.settled_at) < self.settle * (1 << self.bounced)
        {
            return None;
        }
        let caught_up = preferred.is_some_and(|p| p.recent_active && p.matched == last_index);
        if !caught_up {
            return None;
        }
        self.settled_at = now;
        self.handed_back_at = Some(now);
        Some(self.preferred)
    }

    /// The host preferred to lead this shard.
    pub fn preferred(&self) -> HostId {
        self.preferred
    }

    /// Makes `host` the preferred one; whether that changed anything.
    pub fn set_preferred(&mut self, host: HostId) -> bool {
        std::mem::replace(&mut self.preferred, host) != host
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

impl LeaderPlacement {
    /// Whether a leader whose disk is behind (`disk_behind`: see [`SlowDisk::is_behind`])
    /// should hand its leadership away now, and to whom: the most up-to-date active follower.
    /// None while a transfer is pending or a stop is handing over, and after an attempt none
    /// for as long as a slow disk is remembered ([`SLOW_DISK_MEMORY_ELECTION_TIMEOUTS`]):
    /// raft-rs refuses proposals while a transfer is pending (up to an election timeout),
    /// and when every host's disk is slow each transfer is refused, so retrying sooner would
    /// refuse writes for a large share of the time.
    pub fn slow_disk_handoff(
        &mut self,
        now: Instant,
        disk_behind: bool,
        transfer_pending: bool,
        followers: impl IntoIterator<Item = FollowerProgress>,
    ) -> Option<HostId> {
        let tried_lately = self.slow_disk_handoff_at.is_some_and(|at| {
            now.saturating_duration_since(at) < self.patience * SLOW_DISK_MEMORY_ELECTION_TIMEOUTS
        });
        if !disk_behind || transfer_pending || tried_lately || self.handoff_at.is_some() {
            return None;
        }
        let to = best_transferee(self.me, followers)?;
        self.slow_disk_handoff_at = Some(now);
        self.settled_at = now;
        Some(to)
    }
}

/// How long a slow persist keeps this host's disk counted as slow after it finished, in
/// election timeouts: long enough that a disk slow on every fsync, with idle spells between
/// them, does not get leadership back between two slow fsyncs.
pub const SLOW_DISK_MEMORY_ELECTION_TIMEOUTS: u32 = 10;

/// What this replica's own persists say about the host's disk. A persist slower than an
/// election timeout delays writes to a shard this host leads by more than a leader change
/// costs, so past that the disk counts as slow.
#[derive(Debug)]
pub struct SlowDisk {
    threshold: Duration,
    memory: Duration,
    /// When a persist last finished slower than the threshold.
    slow_at: Option<Instant>,
}

impl SlowDisk {
    /// A disk watch with the threshold at one `election_timeout`.
    pub fn new(election_timeout: Duration) -> Self {
        SlowDisk {
            threshold: election_timeout,
            memory: election_timeout * SLOW_DISK_MEMORY_ELECTION_TIMEOUTS,
            slow_at: None,
        }
    }

    /// A persist finished at `now` after `took`.
    pub fn persisted(&mut self, now: Instant, took: Duration) {
        if took > self.threshold {
            self.slow_at = Some(now);
        }
    }

    /// Whether the disk is behind now: the oldest persist on its way (sent at
    /// `outstanding_since`) has been waiting longer than the threshold.
    pub fn is_behind(&self, now: Instant, outstanding_since: Option<Instant>) -> bool {
        outstanding_since.is_some_and(|at| now.saturating_duration_since(at) > self.threshold)
    }

    /// Whether the disk is behind now or was lately: such a host should not take leadership.
    pub fn is_slow(&self, now: Instant, outstanding_since: Option<Instant>) -> bool {
        self.is_behind(now, outstanding_since)
            || self
                .slow_at
                .is_some_and(|at| now.saturating_duration_since(at) < self.memory)
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
        p.role_changed(t0 + 2 * TIMEOUT, false);
        let pref = Some(progress(2, true, 10));
        assert_eq!(p.hand_back(t0 + 3 * TIMEOUT, false, pref, 10), None);
        assert_eq!(p.hand_back(t0 + 4 * TIMEOUT, false, pref, 10), Some(2));
    }

    #[test]
    fn a_hand_back_that_bounces_doubles_the_wait_before_the_next() {
        let t0 = Instant::now();
        let settle = 2 * TIMEOUT;
        let mut p = LeaderPlacement::new(1, Some(2), TIMEOUT, t0);
        let pref = Some(progress(2, true, 10));
        assert_eq!(p.hand_back(t0 + settle, false, pref, 10), Some(2));
        // Leadership comes back at once: the next hand-back waits twice as long.
        let back = t0 + settle + TIMEOUT;
        p.role_changed(back, false);
        p.role_changed(back, true);
        assert_eq!(p.hand_back(back + settle, false, pref, 10), None);
        assert_eq!(p.hand_back(back + 2 * settle, false, pref, 10), Some(2));
        // Once it stays away long enough, the next return starts from the normal interval.
        let much_later = back + 2 * settle + settle * (BOUNCE_WINDOW + 1);
        p.role_changed(much_later, true);
        assert_eq!(p.hand_back(much_later + settle, false, pref, 10), Some(2));
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
    fn a_leader_whose_disk_is_behind_hands_over_to_the_most_caught_up_follower() {
        let t0 = Instant::now();
        let mut p = LeaderPlacement::new(3, Some(3), TIMEOUT, t0);
        let followers = [progress(1, true, 40), progress(2, true, 42)];
        assert_eq!(
            p.slow_disk_handoff(t0, false, false, followers),
            None,
            "disk keeps up"
        );
        assert_eq!(
            p.slow_disk_handoff(t0, true, true, followers),
            None,
            "transfer pending"
        );
        assert_eq!(p.slow_disk_handoff(t0, true, false, followers), Some(2));
        let gap = TIMEOUT * SLOW_DISK_MEMORY_ELECTION_TIMEOUTS;
        assert_eq!(
            p.slow_disk_handoff(t0 + gap - TIMEOUT, true, false, followers),
            None,
            "no retry while a slow disk is remembered"
        );
        assert_eq!(
            p.slow_disk_handoff(t0 + gap, true, false, followers),
            Some(2)
        );
        let inactive = [progress(1, false, 40)];
        assert_eq!(
            p.slow_disk_handoff(t0 + 3 * gap, true, false, inactive),
            None,
            "nobody to hand over to"
        );
    }

    #[test]
    fn no_slow_disk_hand_off_while_a_stop_hands_over() {
        let t0 = Instant::now();
        let mut p = LeaderPlacement::new(3, None, TIMEOUT, t0);
        assert_eq!(p.shutdown_handoff(t0), ShutdownHandoff::Begin);
        assert_eq!(
            p.slow_disk_handoff(t0, true, false, [progress(1, true, 5)]),
            None
        );
    }

    #[test]
    fn a_persist_outstanding_past_an_election_timeout_makes_the_disk_behind() {
        let t0 = Instant::now();
        let disk = SlowDisk::new(TIMEOUT);
        assert!(
            !disk.is_behind(t0 + 10 * TIMEOUT, None),
            "nothing outstanding"
        );
        assert!(!disk.is_behind(t0 + TIMEOUT, Some(t0)));
        assert!(disk.is_behind(t0 + TIMEOUT * 2, Some(t0)));
        assert!(disk.is_slow(t0 + TIMEOUT * 2, Some(t0)));
    }

    #[test]
    fn a_slow_persist_keeps_the_disk_slow_for_a_while_after_it_finished() {
        let t0 = Instant::now();
        let mut disk = SlowDisk::new(TIMEOUT);
        disk.persisted(t0, TIMEOUT / 2);
        assert!(!disk.is_slow(t0, None), "a fast persist");
        disk.persisted(t0, TIMEOUT * 4);
        assert!(disk.is_slow(t0 + TIMEOUT, None));
        assert!(!disk.is_behind(t0 + TIMEOUT, None), "but not behind now");
        let memory = TIMEOUT * SLOW_DISK_MEMORY_ELECTION_TIMEOUTS;
        assert!(disk.is_slow(t0 + memory - TIMEOUT, None));
        assert!(
            !disk.is_slow(t0 + memory, None),
            "forgotten once fast again"
        );
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
