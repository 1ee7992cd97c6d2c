//! Shrinks a key's non-linearizable history to a small core that is still a real violation.
//!
//! Dropping events naively can invent a violation: remove the Put that wrote "x" and a Get that
//! returned "x" becomes impossible. So the shrinker only drops a set of operations when doing so
//! cannot turn a linearizable history into a non-linearizable one:
//!
//! - reads, failed CASes and CASes that swap a value for itself, which never change the
//!   register, may always go;
//! - a write (Put, Delete, CAS, known or unknown) may go only if no remaining operation mentions
//!   the value it wrote (as a read result, a CAS's expected value or a failed CAS's observed value).
//!
//! Why that is sound: take any linearization of the full history and delete the dropped
//! operations. Every remaining operation that constrains the register reads a value it mentions;
//! the last write before it in the old order wrote that value, so that write is not a dropped one
//! and, by induction, still sets the same value. Unknown CASes that failed are simply skipped.
//! Hence if the core has no linearization, neither has the full history, and the core is what a
//! person needs to read to see the bug.
//!
//! Greedy delta debugging: try dropping chunks of half, a quarter, ... down to single operations,
//! keeping each drop that leaves a definite violation, until a pass of single drops changes
//! nothing or the shared step budget runs out (then the core is smaller, just not minimal). A
//! chunk is widened to its closure first: every remaining operation that mentions a value a
//! dropped write stored goes too (`cas absent -> "a"` and `cas "a" -> absent` can only leave
//! together).

use std::collections::HashMap;

use crate::model::{KeyOp, ValueId};
use crate::search::{search, Limits, Verdict};

/// Returns a subset of `ops` (kept in their order) that is still not linearizable.
///
/// `ops` must be a non-linearizable history; `shrink_steps_max` bounds the total search steps
/// spent over all attempts, so shrinking finishes in bounded time.
pub(crate) fn shrink(
    ops: &[KeyOp],
    initial: ValueId,
    limits: Limits,
    shrink_steps_max: u64,
) -> Vec<KeyOp> {
    let mut kept = ops.to_vec();
    let mut steps_left = shrink_steps_max;
    let mut chunk = (kept.len() / 2).max(1);
    loop {
        let mut dropped_any = false;
        let mut start = 0;
        while start < kept.len() {
            let end = (start + chunk).min(kept.len());
            let dropped = closure(&kept, start..end);
            let candidate: Vec<KeyOp> = kept
                .iter()
                .zip(&dropped)
                .filter(|(_, &drop)| !drop)
                .map(|(op, _)| *op)
                .collect();
            debug_assert!(may_drop(&kept, &dropped), "closure must be a sound drop");
            if steps_left == 0 {
                return kept;
            }
            let attempt = Limits {
                steps_max: limits.steps_max.min(steps_left),
                ..limits
            };
            let result = search(&candidate, initial, attempt);
            steps_left = steps_left.saturating_sub(result.steps);
            if matches!(result.verdict, Verdict::NotLinearizable(_)) {
                kept = candidate;
                dropped_any = true;
            } else {
                start = end;
            }
        }
        if chunk == 1 && !dropped_any {
            return kept;
        }
        chunk = (chunk / 2).max(1);
    }
}

/// Removes unknown writes that no remaining operation could ever observe, which leaves the
/// verdict unchanged and spares the search their 2^n placements.
///
/// An unknown write may never take effect, so dropping it cannot make a non-linearizable history
/// linearizable; and if no kept operation mentions the value it stored, dropping it cannot make a
/// linearizable history non-linearizable (module docs). Typical histories use unique values, so
/// most timed-out Puts are never read and vanish here.
pub(crate) fn drop_unobservable_unknown_writes(ops: Vec<KeyOp>) -> Vec<KeyOp> {
    // Start by dropping every unknown op; put back any whose stored value a kept op mentions,
    // until nothing changes (putting one back can make another observable).
    let mut dropped: Vec<bool> = ops.iter().map(|op| op.complete.is_none()).collect();
    loop {
        let mut mentioned: HashMap<ValueId, ()> = HashMap::new();
        for (op, _) in ops.iter().zip(&dropped).filter(|(_, &drop)| !drop) {
            if let Some(value) = op.step.mentioned() {
                mentioned.insert(value, ());
            }
        }
        let mut changed = false;
        for (op, drop) in ops.iter().zip(dropped.iter_mut()) {
            if *drop
                && op
                    .step
                    .written()
                    .is_some_and(|v| mentioned.contains_key(&v))
            {
                *drop = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    debug_assert!(may_drop(&ops, &dropped));
    ops.into_iter()
        .zip(dropped)
        .filter(|(_, drop)| !drop)
        .map(|(op, _)| op)
        .collect()
}

/// Marks `seed` and everything that must leave with it: operations mentioning a value that a
/// marked write stored, repeatedly, so that dropping the marked set is sound (module docs).
fn closure(ops: &[KeyOp], seed: std::ops::Range<usize>) -> Vec<bool> {
    let mut mentioners: HashMap<ValueId, Vec<usize>> = HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        if let Some(value) = op.step.mentioned() {
            mentioners.entry(value).or_default().push(index);
        }
    }
    let mut dropped = vec![false; ops.len()];
    let mut pending: Vec<usize> = seed.collect();
    while let Some(index) = pending.pop() {
        if std::mem::replace(&mut dropped[index], true) {
            continue;
        }
        if let Some(value) = ops[index].step.written() {
            // Each value's mentioners are queued once: the first write of it drains the list.
            pending.extend(mentioners.remove(&value).unwrap_or_default());
        }
    }
    dropped
}

/// True if no write marked in `dropped` stored a value that an unmarked operation mentions.
fn may_drop(ops: &[KeyOp], dropped: &[bool]) -> bool {
    let mut mentioned: HashMap<ValueId, usize> = HashMap::new();
    for (op, _) in ops.iter().zip(dropped).filter(|(_, &drop)| !drop) {
        if let Some(value) = op.step.mentioned() {
            *mentioned.entry(value).or_default() += 1;
        }
    }
    ops.iter()
        .zip(dropped)
        .filter(|(_, &drop)| drop)
        .all(|(op, _)| {
            op.step
                .written()
                .is_none_or(|value| !mentioned.contains_key(&value))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Step, ABSENT};

    const LIMITS: Limits = Limits {
        steps_max: 1_000_000,
        cache_bytes_max: 1 << 26,
    };

    fn op(step: Step, invoke: u64, complete: u64) -> KeyOp {
        KeyOp {
            step,
            invoke,
            complete: Some(complete),
            event: 0,
        }
    }

    #[test]
    fn keeps_the_write_a_remaining_read_depends_on() {
        // put 1, put 2, later read 1: stale. The core needs all three: without put 2 the read is
        // fine, and put 1 may not go because the read mentions its value.
        let ops = [
            op(Step::Write(1), 0, 1),
            op(Step::Write(3), 2, 3),
            op(Step::Read(3), 4, 5),
            op(Step::Write(2), 10, 11),
            op(Step::Read(2), 12, 13),
            op(Step::Read(1), 14, 15),
        ];
        let core = shrink(&ops, ABSENT, LIMITS, 1_000_000);
        let steps: Vec<Step> = core.iter().map(|op| op.step).collect();
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert!(steps.contains(&Step::Write(1)));
        assert!(steps.contains(&Step::Read(1)));
    }

    #[test]
    fn a_write_leaves_only_with_the_ops_that_mention_its_value() {
        let ops = [
            op(Step::Write(1), 0, 1),
            op(Step::Read(1), 2, 3),
            op(Step::Read(ABSENT), 4, 5),
        ];
        assert!(!may_drop(&ops, &[true, false, false]));
        assert_eq!(closure(&ops, 0..1), vec![true, true, false]);
        assert_eq!(closure(&ops, 1..2), vec![false, true, false]);
    }

    #[test]
    fn unknown_writes_nobody_reads_are_dropped_before_the_search() {
        let unknown = |step| KeyOp {
            step,
            invoke: 0,
            complete: None,
            event: 0,
        };
        let ops = vec![
            unknown(Step::Write(1)), // read below: kept
            unknown(Step::Write(2)), // only an unknown CAS expects 2...
            unknown(Step::CasUnknown {
                expected: 2,
                new: 3,
            }), // ...and 3 is read: both kept
            unknown(Step::Write(4)), // never mentioned: dropped
            op(Step::Read(1), 5, 6),
            op(Step::Read(3), 7, 8),
        ];
        let kept: Vec<Step> = drop_unobservable_unknown_writes(ops)
            .iter()
            .map(|op| op.step)
            .collect();
        assert_eq!(kept.len(), 5);
        assert!(!kept.contains(&Step::Write(4)));
    }

    #[test]
    fn chained_cases_leave_together() {
        let ops = [
            op(
                Step::CasOk {
                    expected: ABSENT,
                    new: 1,
                },
                0,
                1,
            ),
            op(
                Step::CasOk {
                    expected: 1,
                    new: ABSENT,
                },
                2,
                3,
            ),
            op(Step::Write(2), 4, 5),
        ];
        assert_eq!(closure(&ops, 0..1), vec![true, true, false]);
    }
}
