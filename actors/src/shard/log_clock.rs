//! The log clock: the shard's elapsed time, derived from the log alone, that idle client
//! sessions expire by.
//!
//! A leader stamps each command it proposes with its own clock, and every replica turns those
//! stamps into log time by one rule: within a term (one leader, one clock) the log clock
//! advances by how much the stamps advanced; at a term change it does not move, the new
//! term's first command only anchors the new leader's clock. So a leader's clock offset never
//! matters, only its rate: a leader whose clock is hours ahead or behind moves log time by
//! exactly the durations it measured while leading. The log clock never decreases.
//!
//! Log time runs no faster than the leaders' clocks and may run slower (time between the
//! last command of a term and the first of the next is not counted): sessions then live
//! longer, never shorter. Being a function of the committed entries only, and stored with
//! the applied index (and in snapshots), it is the same on every replica at the same index,
//! for replicas that ran this version from the same point. Across the upgrade that introduced
//! it, each replica starts its clock at zero where it was upgraded, so until the sessions of
//! that time have expired replicas may judge them at different ages (sessions ahead of the
//! clock are re-stamped to "now": they live longer, never shorter).

use std::sync::OnceLock;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The shard's log time and where the current term's leader clock stands; see the module
/// docs. Change it only through [`LogClock::observe`]; the fields are public for storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogClock {
    /// Log time in ms: the durations measured by leaders within their terms, summed.
    pub now_ms: u64,
    /// The term of the last command applied and the highest stamp seen in that term; `None`
    /// before the first command.
    pub anchor: Option<ClockAnchor>,
}

/// The leader clock a [`LogClock`] measures the current term by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockAnchor {
    /// The term whose leader stamped `stamp_ms`.
    pub term: u64,
    /// The highest stamp of that term's commands applied so far.
    pub stamp_ms: u64,
}

impl LogClock {
    /// Takes in a command of `term` that its leader stamped `stamp_ms`, and returns whether
    /// the clock changed (so it must be stored).
    ///
    /// In the anchored term the clock advances by how far the stamp is past the highest one
    /// seen: a leader clock stepping back is not counted, and the same interval is never
    /// counted twice. A command of another term re-anchors without advancing.
    pub fn observe(&mut self, term: u64, stamp_ms: u64) -> bool {
        match &mut self.anchor {
            Some(anchor) if anchor.term == term => {
                if stamp_ms <= anchor.stamp_ms {
                    return false;
                }
                self.now_ms = self.now_ms.saturating_add(stamp_ms - anchor.stamp_ms);
                anchor.stamp_ms = stamp_ms;
            }
            _ => self.anchor = Some(ClockAnchor { term, stamp_ms }),
        }
        true
    }
}

/// The stamp a leader puts on a command it proposes: its monotonic clock in ms, from an
/// origin fixed when the process first asks. Only differences between stamps of one term
/// carry meaning (see [`LogClock`]), and a term's stamps all come from one leader process
/// (a restarted host leads again only in a new term), so a monotonic clock suffices and
/// wall-clock steps (NTP, an operator's `date`) cannot move log time.
pub fn leader_stamp_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let elapsed = ORIGIN.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60 * 1000;

    /// A clock after the commands `(term, stamp)` in log order.
    fn after(commands: &[(u64, u64)]) -> LogClock {
        let mut clock = LogClock::default();
        for (term, stamp) in commands {
            clock.observe(*term, *stamp);
        }
        clock
    }

    #[test]
    fn the_first_command_anchors_without_advancing() {
        let mut clock = LogClock::default();
        assert!(clock.observe(3, 1_700_000_000_000), "anchoring is a change");
        assert_eq!(clock.now_ms, 0);
        assert_eq!(
            clock.anchor,
            Some(ClockAnchor {
                term: 3,
                stamp_ms: 1_700_000_000_000
            })
        );
    }

    #[test]
    fn within_a_term_the_clock_advances_by_the_leaders_measured_durations() {
        let clock = after(&[(1, 1000), (1, 1500), (1, 1500 + 2 * MIN)]);
        assert_eq!(clock.now_ms, 500 + 2 * MIN);
    }

    #[test]
    fn a_leader_eleven_minutes_ahead_moves_log_time_only_by_what_it_measured() {
        let t = 5 * MIN;
        // Leader of term 1 has the true time; leader of term 2 is 11 minutes ahead.
        let clock = after(&[
            (1, t),
            (1, t + 1000),
            (2, t + 11 * MIN + 1200),
            (2, t + 11 * MIN + 1700),
        ]);
        assert_eq!(clock.now_ms, 1000 + 500);
    }

    #[test]
    fn a_leader_behind_loses_no_log_time_and_never_turns_it_back() {
        let t = 60 * MIN;
        let clock = after(&[(1, t), (1, t + MIN), (2, t - 30 * MIN), (2, t - 29 * MIN)]);
        assert_eq!(clock.now_ms, 2 * MIN);
    }

    #[test]
    fn a_leader_clock_stepping_back_stalls_the_clock_until_it_is_past_its_high_point() {
        let mut clock = after(&[(1, 10_000), (1, 12_000)]);
        assert!(
            !clock.observe(1, 11_000),
            "a stamp behind the high point changes nothing"
        );
        assert_eq!(clock.now_ms, 2000);
        clock.observe(1, 12_500);
        assert_eq!(
            clock.now_ms, 2500,
            "only the time past the high point counts"
        );
    }

    #[test]
    fn a_term_change_only_anchors_and_the_clock_never_decreases() {
        let mut clock = after(&[(1, 0), (1, 7 * MIN)]);
        let mut last = clock.now_ms;
        for (term, stamp) in [(2, u64::MAX), (2, u64::MAX), (3, 0), (3, 5), (5, 3), (5, 1)] {
            clock.observe(term, stamp);
            assert!(clock.now_ms >= last, "term {term} stamp {stamp}");
            last = clock.now_ms;
        }
        assert_eq!(clock.now_ms, 7 * MIN + 5);
    }

    #[test]
    fn log_time_saturates_instead_of_overflowing() {
        let clock = after(&[(1, 0), (1, u64::MAX), (2, 0), (2, u64::MAX)]);
        assert_eq!(clock.now_ms, u64::MAX);
    }

    #[test]
    fn leader_stamps_never_decrease() {
        let first = leader_stamp_ms();
        let second = leader_stamp_ms();
        assert!(second >= first);
    }
}
