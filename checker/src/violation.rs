//! What the checker reports, and how it reads to a person debugging the store.

use std::fmt;

use crate::history::{Event, Op, Outcome};
use crate::search::LimitHit;

/// A proof that the store misbehaved on one key: a small set of that key's events that no
/// order of one-at-a-time register operations can explain.
///
/// Guarantee: `events` is a sub-history of the recorded history that is itself not
/// linearizable, and it was shrunk only in ways that cannot invent a violation, so the full
/// history is not linearizable either (see `shrink.rs`). Events are in invoke order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key whose history is not linearizable.
    pub key: Vec<u8>,
    /// The key's value before the first event (`None` = absent).
    pub initial: Option<Vec<u8>>,
    /// The offending events, in invoke order; `Display` numbers them #1, #2, ...
    pub events: Vec<Event>,
    /// Where the search got stuck, in terms of the numbered events.
    pub explanation: String,
}

/// Why a history did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// The store returned results no linearizable store could: a bug.
    NotLinearizable(Violation),
    /// The search hit its budget on `key` before deciding; the history was not verified.
    /// Raise the budget with [`crate::check_with_budget`], or record fewer concurrent or unknown
    /// operations per key.
    Inconclusive {
        /// The first key (in byte order) that could not be decided.
        key: Vec<u8>,
        /// Which limit stopped the search.
        limit: LimitHit,
    },
    /// The history itself is inconsistent (e.g. a Get completed with `Written`): a bug in the
    /// test's recording, not in the store. Fix the recording and check again.
    Malformed {
        /// The offending event.
        event: Box<Event>,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = self.events.iter().map(|e| e.invoke).min().unwrap_or(0);
        writeln!(
            f,
            "key {} is not linearizable: {} events, register starts {}, times relative to the first invoke",
            Bytes(&self.key),
            self.events.len(),
            Value(self.initial.as_deref()),
        )?;
        for (number, event) in self.events.iter().enumerate() {
            writeln!(f, "  {}", Line(number + 1, event, origin))?;
        }
        write!(f, "{}", self.explanation)
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::NotLinearizable(violation) => violation.fmt(f),
            CheckError::Inconclusive { key, limit } => {
                let limit = match limit {
                    LimitHit::Steps(steps) => format!("{steps} search steps"),
                    LimitHit::CacheBytes(bytes) => format!("{} MiB of memo table", bytes >> 20),
                };
                write!(
                    f,
                    "key {} could not be checked within {limit}; nothing was proven for it. \
                     Raise the budget or record fewer concurrent or unknown operations per key",
                    Bytes(key)
                )
            }
            CheckError::Malformed { event, reason } => write!(
                f,
                "malformed history: {reason}; fix the recording. Event: {}",
                Line(0, event, 0)
            ),
        }
    }
}

impl std::error::Error for Violation {}
impl std::error::Error for CheckError {}

/// One event as a report line: number, client, operation, interval, outcome.
pub(crate) struct Line<'a>(pub(crate) usize, pub(crate) &'a Event, pub(crate) u64);

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Line(number, event, origin) = *self;
        let op = OpText(&event.op).to_string();
        let start = Nanos(event.invoke.saturating_sub(origin)).to_string();
        let end = match (&event.outcome, event.complete) {
            (_, None) => "never".to_string(),
            (Outcome::Unknown, Some(t)) => format!("{} (gave up)", Nanos(t.saturating_sub(origin))),
            (_, Some(t)) => Nanos(t.saturating_sub(origin)).to_string(),
        };
        if number > 0 {
            write!(f, "#{number:<3} ")?;
        }
        write!(
            f,
            "client {:<3} {op:<28} {start:>10} .. {end:<10} -> {}",
            event.client,
            OutcomeText(&event.outcome)
        )
    }
}

/// An operation as text, e.g. `put "v"` or `cas "a" -> absent`.
pub(crate) struct OpText<'a>(pub(crate) &'a Op);

impl fmt::Display for OpText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Op::Get => write!(f, "get"),
            Op::Put(value) => write!(f, "put {}", Bytes(value)),
            Op::Delete => write!(f, "delete"),
            Op::Cas { expected, new } => write!(
                f,
                "cas {} -> {}",
                Value(expected.as_deref()),
                Value(new.as_deref())
            ),
        }
    }
}

/// An outcome as text, e.g. `returned "v"` or `unknown`.
pub(crate) struct OutcomeText<'a>(pub(crate) &'a Outcome);

impl fmt::Display for OutcomeText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Outcome::Read(value) => write!(f, "returned {}", Value(value.as_deref())),
            Outcome::Written => write!(f, "ok"),
            Outcome::CasOk => write!(f, "swapped"),
            Outcome::CasFailed(value) => {
                write!(f, "failed, current {}", Value(value.as_deref()))
            }
            Outcome::Unknown => write!(f, "unknown"),
        }
    }
}

/// A register value: `absent` or its bytes.
pub(crate) struct Value<'a>(pub(crate) Option<&'a [u8]>);

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => write!(f, "absent"),
            Some(bytes) => Bytes(bytes).fmt(f),
        }
    }
}

/// Bytes as a quoted string if printable ASCII, else hex; long values are cut.
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

/// Longest value printed in full; enough to tell test values apart.
const SHOWN_BYTES_MAX: usize = 48;

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(SHOWN_BYTES_MAX)];
        let cut = if shown.len() < self.0.len() {
            format!("...({} bytes)", self.0.len())
        } else {
            String::new()
        };
        if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            write!(f, "\"{}{cut}\"", shown.escape_ascii())
        } else {
            write!(f, "0x")?;
            for byte in shown {
                write!(f, "{byte:02x}")?;
            }
            write!(f, "{cut}")
        }
    }
}

/// A duration in nanoseconds with a readable unit, e.g. `+1.250ms`.
pub(crate) struct Nanos(pub(crate) u64);

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        // Precision loss above 2^53 ns (104 days) is irrelevant for display.
        let x = n as f64;
        match n {
            0..=999 => write!(f, "+{n}ns"),
            1_000..=999_999 => write!(f, "+{:.3}us", x / 1e3),
            1_000_000..=999_999_999 => write!(f, "+{:.3}ms", x / 1e6),
            _ => write!(f, "+{:.3}s", x / 1e9),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_print_as_text_or_hex() {
        assert_eq!(Bytes(b"a b").to_string(), "\"a b\"");
        assert_eq!(Bytes(b"q\"").to_string(), "\"q\\\"\"");
        assert_eq!(Bytes(&[0, 255]).to_string(), "0x00ff");
        assert_eq!(Value(None).to_string(), "absent");
        let long = vec![b'x'; 100];
        assert!(Bytes(&long).to_string().ends_with("...(100 bytes)\""));
    }

    #[test]
    fn nanos_pick_a_unit() {
        assert_eq!(Nanos(5).to_string(), "+5ns");
        assert_eq!(Nanos(1_500).to_string(), "+1.500us");
        assert_eq!(Nanos(2_000_000).to_string(), "+2.000ms");
        assert_eq!(Nanos(3_000_000_000).to_string(), "+3.000s");
    }
}
