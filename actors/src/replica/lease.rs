//! The leader's read lease: after a quorum confirmed its leadership, a leader may answer lease
//! reads from its own state for a while without asking the quorum again.
//!
//! Safe only because every follower that took part refuses to vote for someone else for at
//! least as long (check-quorum plus the start-up vote refusal in [`super::votes`]), and the
//! lease is derived from that window by [`lease_for`].

use std::time::{Duration, Instant};

/// How long a leader may serve lease reads after a quorum confirmed it. A follower that
/// acknowledged it refuses to vote for `election_ticks` of its ticks; ticks never catch up
/// after a stall but the first one after a reset may come at once and tokio lets a tick run
/// up to ~5 ms late without rescheduling, so the refusal lasts at least
/// `(election_ticks - 1) * tick - 5 ms` of real time. The lease is 4/5 of that, leaving a
/// fifth for the two hosts' clocks running at different rates.
pub fn lease_for(tick: Duration, election_ticks: usize) -> Duration {
    let ticks = u32::try_from(election_ticks.saturating_sub(1)).unwrap_or(u32::MAX);
    (tick
        .saturating_mul(ticks)
        .saturating_sub(Duration::from_millis(5)))
        * 4
        / 5
}

/// A leader's lease: renewed by every confirmed ReadIndex round, valid until it runs out,
/// suspended while leadership is handed away (the transferee campaigns at once, without
/// waiting for the followers' vote refusal to run out), reset on every role change.
#[derive(Debug)]
pub struct Lease {
    duration: Duration,
    until: Option<Instant>,
    suspended: bool,
}

impl Lease {
    /// A lease of `duration` per confirmation, not yet granted.
    pub fn new(duration: Duration) -> Self {
        Lease {
            duration,
            until: None,
            suspended: false,
        }
    }

    /// A quorum confirmed this leader for a round asked at `issued`: the lease runs until
    /// `issued + duration` (counted from the ask, not the answer: the followers' refusal
    /// started no earlier than that). Never shortens a lease already held.
    pub fn renew(&mut self, issued: Instant) {
        if self.suspended {
            return;
        }
        let until = issued + self.duration;
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
    }

    /// Whether lease reads may be served at `now`.
    pub fn valid(&self, now: Instant) -> bool {
        !self.suspended && self.until.is_some_and(|u| u > now)
    }

    /// Leadership is being handed away: no lease reads, and no renewal, until the next role
    /// change, even if raft-rs aborts the transfer. The transferee may still campaign on a
    /// `MsgTimeoutNow` it received (or receives late, after a partition heals), and such a
    /// campaign overrides the followers' vote refusal, so a lease granted after the abort
    /// could overlap a new leader. Reads meanwhile go through ReadIndex: a round slower, never
    /// unavailable.
    pub fn suspend(&mut self) {
        self.until = None;
        self.suspended = true;
    }

    /// The role changed: whatever was granted belonged to the old role.
    pub fn reset(&mut self) {
        self.until = None;
        self.suspended = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_lease_ends_before_any_follower_may_vote_again() {
        // The sample config: 100 ms ticks, 1 s election timeout.
        assert_eq!(lease_for(MS(100), 10), MS(716));
        for (tick, ticks) in [(MS(100), 3), (MS(1), 20), (MS(10), 3), (MS(250), 4)] {
            let window = tick * (ticks - 1) - MS(5);
            let lease = lease_for(tick, ticks as usize);
            assert!(
                lease < window && lease > Duration::ZERO,
                "{tick:?} x {ticks}: lease {lease:?}, window {window:?}"
            );
        }
        // Windows too short to be safe give no lease at all (reads fall back to ReadIndex).
        assert_eq!(lease_for(MS(2), 3), Duration::ZERO);
    }

    #[test]
    fn a_lease_runs_from_the_ask_for_its_duration() {
        let t0 = Instant::now();
        let mut lease = Lease::new(MS(100));
        assert!(!lease.valid(t0), "not granted before a confirmation");
        lease.renew(t0);
        assert!(lease.valid(t0 + MS(99)));
        assert!(!lease.valid(t0 + MS(100)));
    }

    #[test]
    fn a_late_confirmation_of_an_older_round_never_shortens_the_lease() {
        let t0 = Instant::now();
        let mut lease = Lease::new(MS(100));
        lease.renew(t0 + MS(50));
        lease.renew(t0);
        assert!(lease.valid(t0 + MS(120)));
    }

    #[test]
    fn a_suspended_lease_is_invalid_and_not_renewed_until_reset() {
        let t0 = Instant::now();
        let mut lease = Lease::new(MS(100));
        lease.renew(t0);
        lease.suspend();
        assert!(!lease.valid(t0));
        lease.renew(t0);
        assert!(!lease.valid(t0), "renewal ignored while handing over");
        lease.reset();
        assert!(!lease.valid(t0), "a reset grants nothing");
        lease.renew(t0);
        assert!(lease.valid(t0));
    }
}
