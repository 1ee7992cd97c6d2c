//! The sequential specification: one register per key, and events compiled against it.
//!
//! Values are interned to small integers per key so the search can hash and copy states in
//! O(1); the model itself is the four-line [`Step::apply`].

use std::collections::HashMap;

use crate::history::{Event, Op, Outcome};

/// A register value interned per key; [`ABSENT`] is the absent key.
pub(crate) type ValueId = u32;

/// The id of "no value".
pub(crate) const ABSENT: ValueId = 0;

/// Interns the values seen on one key so states compare and hash as integers.
#[derive(Debug, Default)]
pub(crate) struct Values {
    ids: HashMap<Vec<u8>, ValueId>,
    values: Vec<Vec<u8>>,
}

impl Values {
    /// The id of `value`, allocating one on first sight.
    pub(crate) fn intern(&mut self, value: Option<&[u8]>) -> ValueId {
        let Some(bytes) = value else {
            return ABSENT;
        };
        if let Some(&id) = self.ids.get(bytes) {
            return id;
        }
        self.values.push(bytes.to_vec());
        // Ids are 1-based; a key with 4 billion distinct values is far beyond any test.
        let id = ValueId::try_from(self.values.len()).unwrap_or(ValueId::MAX);
        self.ids.insert(bytes.to_vec(), id);
        id
    }

    /// The bytes behind `id`; `None` for [`ABSENT`].
    pub(crate) fn get(&self, id: ValueId) -> Option<&[u8]> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.values.get(index).map(Vec::as_slice)
    }
}

/// What one operation does to (and demands of) the register, outcome included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A Get that returned this value: the register must hold it.
    Read(ValueId),
    /// A Put or Delete, acknowledged or unknown: always possible, sets the value.
    Write(ValueId),
    /// A Cas that succeeded: the register must hold `expected`; it then holds `new`.
    CasOk { expected: ValueId, new: ValueId },
    /// A Cas that failed reporting `observed`: the register must hold `observed`, and
    /// `observed` must differ from `expected`; nothing changes.
    CasFailed {
        expected: ValueId,
        observed: ValueId,
    },
    /// A Cas with unknown outcome: swaps if the register holds `expected`, else no effect.
    CasUnknown { expected: ValueId, new: ValueId },
}

impl Step {
    /// The register after this step from `state`, or `None` if the step cannot happen there.
    pub(crate) fn apply(self, state: ValueId) -> Option<ValueId> {
        match self {
            Step::Read(value) => (state == value).then_some(state),
            Step::Write(value) => Some(value),
            Step::CasOk { expected, new } => (state == expected).then_some(new),
            Step::CasFailed { expected, observed } => {
                (state == observed && state != expected).then_some(state)
            }
            Step::CasUnknown { expected, new } => Some(if state == expected { new } else { state }),
        }
    }

    /// The value this step may store, if it can change the register at all (a CAS whose new
    /// value equals its expected one never does).
    pub(crate) fn written(self) -> Option<ValueId> {
        match self {
            Step::Write(value) => Some(value),
            Step::CasOk { expected, new } | Step::CasUnknown { expected, new } => {
                (new != expected).then_some(new)
            }
            Step::Read(_) | Step::CasFailed { .. } => None,
        }
    }

    /// The value this step requires the register to hold (or tests it against), if any.
    ///
    /// The shrinker may drop a write only if no remaining step mentions the value it wrote;
    /// see `shrink.rs` for why that keeps a shrunk violation a real one.
    pub(crate) fn mentioned(self) -> Option<ValueId> {
        match self {
            Step::Read(value) => Some(value),
            Step::CasOk { expected, .. } | Step::CasUnknown { expected, .. } => Some(expected),
            Step::CasFailed { observed, .. } => Some(observed),
            Step::Write(_) => None,
        }
    }
}

/// One operation of one key, ready for the search.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyOp {
    /// What it does to the register.
    pub(crate) step: Step,
    /// Earliest instant it can take effect.
    pub(crate) invoke: u64,
    /// Latest instant it can take effect; `None` for unknown writes, which may take effect at
    /// any later instant or never.
    pub(crate) complete: Option<u64>,
    /// Index of the originating event in the key's event list.
    pub(crate) event: usize,
}

/// Why an event cannot be checked: the history, not the store, is wrong.
#[derive(Debug)]
pub(crate) struct MalformedEvent {
    pub(crate) reason: &'static str,
}

/// Compiles one event against `values`; `Ok(None)` for events that carry no information
/// (a Get with unknown outcome).
pub(crate) fn compile(
    event: &Event,
    index: usize,
    values: &mut Values,
) -> Result<Option<KeyOp>, MalformedEvent> {
    let malformed = |reason| Err(MalformedEvent { reason });
    let step = match (&event.op, &event.outcome) {
        (Op::Get, Outcome::Unknown) => return Ok(None),
        (Op::Get, Outcome::Read(value)) => Step::Read(values.intern(value.as_deref())),
        (Op::Put(value), Outcome::Written | Outcome::Unknown) => {
            Step::Write(values.intern(Some(value)))
        }
        (Op::Delete, Outcome::Written | Outcome::Unknown) => Step::Write(ABSENT),
        (Op::Cas { expected, new }, outcome) => {
            let expected = values.intern(expected.as_deref());
            let new = values.intern(new.as_deref());
            match outcome {
                Outcome::CasOk => Step::CasOk { expected, new },
                Outcome::CasFailed(observed) => Step::CasFailed {
                    expected,
                    observed: values.intern(observed.as_deref()),
                },
                Outcome::Unknown => Step::CasUnknown { expected, new },
                Outcome::Read(_) | Outcome::Written => {
                    return malformed("a Cas must complete with CasOk, CasFailed or Unknown")
                }
            }
        }
        (Op::Get, _) => return malformed("a Get must complete with Read or Unknown"),
        (Op::Put(_) | Op::Delete, _) => {
            return malformed("a Put or Delete must complete with Written or Unknown")
        }
    };
    let complete = if event.outcome == Outcome::Unknown {
        None
    } else {
        match event.complete {
            None => return malformed("an event with a known outcome needs a complete time"),
            Some(complete) if complete < event.invoke => {
                return malformed("complete time is before invoke time")
            }
            Some(complete) => Some(complete),
        }
    };
    Ok(Some(KeyOp {
        step,
        invoke: event.invoke,
        complete,
        event: index,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_failed_must_observe_the_state_and_differ_from_expected() {
        let failed = Step::CasFailed {
            expected: 1,
            observed: 2,
        };
        assert_eq!(failed.apply(2), Some(2));
        assert_eq!(failed.apply(1), None);
        let impossible = Step::CasFailed {
            expected: 2,
            observed: 2,
        };
        assert_eq!(impossible.apply(2), None);
    }

    #[test]
    fn unknown_cas_swaps_only_on_match() {
        let cas = Step::CasUnknown {
            expected: 1,
            new: ABSENT,
        };
        assert_eq!(cas.apply(1), Some(ABSENT));
        assert_eq!(cas.apply(3), Some(3));
    }

    #[test]
    fn values_intern_absent_as_zero_and_round_trip() {
        let mut values = Values::default();
        assert_eq!(values.intern(None), ABSENT);
        let a = values.intern(Some(b"a"));
        assert_eq!(values.intern(Some(b"a")), a);
        assert_ne!(a, ABSENT);
        assert_eq!(values.get(a), Some(&b"a"[..]));
        assert_eq!(values.get(ABSENT), None);
    }
}
