//! The entry points: split a history by key, search each key, shrink and explain a failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::{Event, History};
use crate::model::{compile, KeyOp, Step, ValueId, Values};
use crate::search::{search, Limits, Stuck, Verdict};
use crate::shrink::{drop_unobservable_unknown_writes, shrink};
use crate::violation::{CheckError, Nanos, OpText, OutcomeText, Value, Violation};

/// Search steps per key that [`check`] allows: decides histories of thousands of operations per
/// key at moderate concurrency in well under a second, yet bounds a pathological one.
pub const STEPS_MAX_DEFAULT: u64 = 10_000_000;

/// Memo-table bytes per key a search may use before it gives up as inconclusive.
pub const CACHE_BYTES_MAX: usize = 512 << 20;

/// Total search steps spent shrinking a violation; past it the report is smaller but maybe
/// not minimal.
pub const SHRINK_STEPS_MAX: u64 = 20_000_000;

/// Checks that `history` is linearizable with the default budget ([`STEPS_MAX_DEFAULT`]).
///
/// `Ok(())` is a proof: there is one order of all operations with known outcomes (and of some
/// of the unknown writes) that respects real time and register semantics on every key. A
/// budget overrun is reported as [`CheckError::Inconclusive`], never as a pass.
pub fn check(history: &History) -> Result<(), CheckError> {
    check_with_budget(history, STEPS_MAX_DEFAULT)
}

/// Like [`check`], with at most `steps_max` search steps per key.
///
/// Keys are independent registers (P-compositionality), so each is searched alone and a
/// violation on one key is found however many clean keys surround it. Keys are visited in byte
/// order, so results are reproducible. If one key is violated and another inconclusive, the
/// violation is reported: a definite bug is worth more than an undecided key.
pub fn check_with_budget(history: &History, steps_max: u64) -> Result<(), CheckError> {
    let limits = Limits {
        steps_max,
        cache_bytes_max: CACHE_BYTES_MAX,
    };
    let mut by_key: BTreeMap<&[u8], Vec<&Event>> = BTreeMap::new();
    for event in history.events() {
        by_key.entry(&event.key).or_default().push(event);
    }
    let mut keys = Vec::with_capacity(by_key.len());
    for (key, events) in by_key {
        keys.push(KeyHistory::compile(key, events, history.initial(key))?);
    }
    let mut inconclusive = None;
    for key in &keys {
        match search(&key.ops, key.initial, limits).verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable(_) => return Err(key.violation(limits)),
            Verdict::Inconclusive(limit) => {
                inconclusive.get_or_insert(CheckError::Inconclusive {
                    key: key.key.to_vec(),
                    limit,
                });
            }
        }
    }
    inconclusive.map_or(Ok(()), Err)
}

/// One key's events compiled for the search.
struct KeyHistory<'a> {
    key: &'a [u8],
    events: Vec<&'a Event>,
    initial: ValueId,
    values: Values,
    /// Sorted by invoke time, so every subset the shrinker tries searches in the same order.
    ops: Vec<KeyOp>,
}

impl<'a> KeyHistory<'a> {
    fn compile(
        key: &'a [u8],
        events: Vec<&'a Event>,
        initial: Option<&[u8]>,
    ) -> Result<Self, CheckError> {
        let mut values = Values::default();
        let initial = values.intern(initial);
        let mut ops = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            match compile(event, index, &mut values) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => {}
                Err(malformed) => {
                    return Err(CheckError::Malformed {
                        event: Box::new((*event).clone()),
                        reason: malformed.reason,
                    })
                }
            }
        }
        let mut ops = drop_unobservable_unknown_writes(ops);
        ops.sort_by_key(|op| (op.invoke, op.complete.unwrap_or(u64::MAX), op.event));
        Ok(Self {
            key,
            events,
            initial,
            values,
            ops,
        })
    }

    /// Shrinks this key's (non-linearizable) operations and explains the core.
    fn violation(&self, limits: Limits) -> CheckError {
        let core = shrink(&self.ops, self.initial, limits, SHRINK_STEPS_MAX);
        let explanation = match search(&core, self.initial, limits).verdict {
            Verdict::NotLinearizable(stuck) => self.explain(&core, &stuck),
            // Cannot happen: the shrinker keeps only sets it saw fail, and the search is
            // deterministic. Say what is known rather than guess.
            Verdict::Linearizable | Verdict::Inconclusive(_) => {
                "no order of these events is a legal register history".to_string()
            }
        };
        CheckError::NotLinearizable(Violation {
            key: self.key.to_vec(),
            initial: self.values.get(self.initial).map(<[u8]>::to_vec),
            events: core
                .iter()
                .map(|op| self.events[op.event].clone())
                .collect(),
            explanation,
        })
    }

    /// Says, in terms of the report's event numbers (`core` order, 1-based), how far the best
    /// attempt got and which event then could not take effect.
    fn explain(&self, core: &[KeyOp], stuck: &Stuck) -> String {
        let origin = core.iter().map(|op| op.invoke).min().unwrap_or(0);
        let value = |id| Value(self.values.get(id)).to_string();
        let mut text = String::from("No order of these events is a legal register history. ");
        if stuck.linearized.is_empty() {
            text.push_str("Not even the first step works: ");
        } else {
            let order: Vec<String> = stuck
                .linearized
                .iter()
                .map(|&i| format!("#{}", i + 1))
                .collect();
            let _ = write!(
                text,
                "The longest consistent order found is {} (the register then holds {}); after it, ",
                order.join(", "),
                value(stuck.state)
            );
        }
        let Some(blocked) = stuck.blocked else {
            text.push_str("nothing else can take effect.");
            return text;
        };
        let op = &core[blocked];
        let event = self.events[op.event];
        let _ = write!(
            text,
            "#{} ({} by client {}, {}) must take effect before it completed at {}, ",
            blocked + 1,
            OpText(&event.op),
            event.client,
            OutcomeText(&event.outcome),
            Nanos(op.complete.unwrap_or(0).saturating_sub(origin)),
        );
        let held = value(stuck.state);
        let _ = match op.step {
            _ if op.step.apply(stuck.state).is_some() => write!(
                text,
                "but every order in which it does leads to a contradiction later."
            ),
            Step::Read(_) => write!(text, "but the register holds {held}."),
            Step::CasOk { expected, .. } => write!(
                text,
                "but it swapped while the register holds {held}, not {}.",
                value(expected)
            ),
            Step::CasFailed { expected, observed } if expected == observed => write!(
                text,
                "but it reports failure while the current value it reports equals the expected one."
            ),
            Step::CasFailed { expected, .. } if expected == stuck.state => write!(
                text,
                "but the register holds the expected {held}, so it should have swapped."
            ),
            Step::CasFailed { .. } => write!(text, "but the register holds {held}."),
            Step::Write(_) | Step::CasUnknown { .. } => write!(text, "but it cannot."),
        };
        text
    }
}
