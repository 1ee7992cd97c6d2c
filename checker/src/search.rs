//! Wing & Gong's linearizability search with Lowe's memoization, as in Porcupine, for one key.
//!
//! Every operation contributes a *call* entry at its invoke time and, if its outcome is known, a
//! *return* entry at its complete time; entries sit in a doubly linked list in time order. The
//! search walks the list from the head: at a call it tries to make that operation the next one
//! to take effect (the model must accept it and the pair (set of operations taken effect, register
//! value) must be new), and if so removes ("lifts") the operation's entries and starts over from
//! the head. Reaching a return means that operation had to take effect already and nothing left
//! could: undo the last choice ("unlift") and try the next call after it. An empty stack at that
//! point proves no linearization exists.
//!
//! Unknown writes have no return entry (their return is at +infinity): they never force
//! backtracking and may stay unchosen forever, which models "took effect later, or never". The
//! search succeeds as soon as every known operation has taken effect.
//!
//! Bounded: at most `steps_max` loop iterations and `cache_bytes_max` bytes of memo table, after
//! which the answer is "inconclusive", never "linearizable".

use std::collections::HashSet;

use crate::model::{KeyOp, ValueId};

/// How much work one search may do before giving up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Loop iterations (each tries one entry or undoes one choice).
    pub(crate) steps_max: u64,
    /// Approximate bytes of the memo table of visited (set, value) pairs.
    pub(crate) cache_bytes_max: usize,
}

/// Which limit stopped a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    /// The search took this many steps without an answer.
    Steps(u64),
    /// The memo table reached this many bytes without an answer.
    CacheBytes(usize),
}

/// The furthest the search got before proving the history is not linearizable.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stuck {
    /// Operations (indices into the searched slice) in the order they took effect.
    pub(crate) linearized: Vec<usize>,
    /// The register value after them.
    pub(crate) state: ValueId,
    /// The operation whose completion came next and that could not take effect, if any.
    pub(crate) blocked: Option<usize>,
}

/// What one search proved.
#[derive(Clone, Debug)]
pub(crate) enum Verdict {
    Linearizable,
    NotLinearizable(Stuck),
    Inconclusive(LimitHit),
}

/// A search's verdict and the steps it took (the shrinker spends a shared step budget).
#[derive(Clone, Debug)]
pub(crate) struct SearchResult {
    pub(crate) verdict: Verdict,
    pub(crate) steps: u64,
}

/// Doubly linked list of entries, with a head and a tail sentinel, indexed by entry number.
struct Entries {
    /// For each entry: the operation it belongs to.
    op: Vec<usize>,
    /// For each entry: true for a call, false for a return.
    is_call: Vec<bool>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each operation: its call entry and, if known, its return entry.
    call_of: Vec<usize>,
    return_of: Vec<Option<usize>>,
    head: usize,
    tail: usize,
}

impl Entries {
    fn new(ops: &[KeyOp]) -> Self {
        // (time, 0 = call / 1 = return, op): calls sort before returns at equal times, so
        // touching intervals count as concurrent; that can only hide a violation, never invent one.
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (index, op) in ops.iter().enumerate() {
            order.push((op.invoke, 0, index));
            if let Some(complete) = op.complete {
                order.push((complete, 1, index));
            }
        }
        order.sort_unstable();
        let count = order.len();
        let (head, tail) = (count, count + 1);
        let mut entries = Entries {
            op: Vec::with_capacity(count),
            is_call: Vec::with_capacity(count),
            next: vec![tail; count + 2],
            prev: vec![head; count + 2],
            call_of: vec![0; ops.len()],
            return_of: vec![None; ops.len()],
            head,
            tail,
        };
        let mut previous = head;
        for (entry, &(_, kind, op)) in order.iter().enumerate() {
            entries.op.push(op);
            entries.is_call.push(kind == 0);
            if kind == 0 {
                entries.call_of[op] = entry;
            } else {
                entries.return_of[op] = Some(entry);
            }
            entries.next[previous] = entry;
            entries.prev[entry] = previous;
            previous = entry;
        }
        entries.next[previous] = tail;
        entries.prev[tail] = previous;
        entries
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    /// Re-inserts an entry; valid only in the reverse order of `unlink`s (dancing links).
    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        self.prev[next] = entry;
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        if let Some(ret) = self.return_of[op] {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(ret) = self.return_of[op] {
            self.relink(ret);
        }
        self.relink(self.call_of[op]);
    }
}

/// Set of operations as bits; the memo key together with the register value.
fn flip(bits: &mut [u64], op: usize) {
    bits[op / 64] ^= 1 << (op % 64);
}

/// Decides whether `ops` (all on one key) can be ordered into a legal register history from
/// `initial`, each known operation taking effect within its interval.
pub(crate) fn search(ops: &[KeyOp], initial: ValueId, limits: Limits) -> SearchResult {
    let mut known_remaining = ops.iter().filter(|op| op.complete.is_some()).count();
    if known_remaining == 0 {
        return SearchResult {
            verdict: Verdict::Linearizable,
            steps: 0,
        };
    }
    let mut entries = Entries::new(ops);
    let words = ops.len().div_ceil(64);
    let entry_bytes = words * 8 + 32;
    let mut bits = vec![0u64; words];
    let mut cache: HashSet<(Box<[u64]>, ValueId)> = HashSet::new();
    let mut cache_bytes = 0usize;
    let mut state = initial;
    // Chosen operations and the register value before each.
    let mut stack: Vec<(usize, ValueId)> = Vec::with_capacity(ops.len());
    let mut deepest: Option<Stuck> = None;
    let mut entry = entries.next[entries.head];
    let mut steps = 0u64;

    let result = |verdict, steps| SearchResult { verdict, steps };
    loop {
        if steps >= limits.steps_max {
            return result(Verdict::Inconclusive(LimitHit::Steps(steps)), steps);
        }
        steps += 1;
        if entry != entries.tail && entries.is_call[entry] {
            let op = entries.op[entry];
            if let Some(next_state) = ops[op].step.apply(state) {
                flip(&mut bits, op);
                if cache.insert((bits.clone().into_boxed_slice(), next_state)) {
                    cache_bytes += entry_bytes;
                    if cache_bytes > limits.cache_bytes_max {
                        let hit = LimitHit::CacheBytes(cache_bytes);
                        return result(Verdict::Inconclusive(hit), steps);
                    }
                    stack.push((op, state));
                    state = next_state;
                    entries.lift(op);
                    if ops[op].complete.is_some() {
                        known_remaining -= 1;
                        if known_remaining == 0 {
                            return result(Verdict::Linearizable, steps);
                        }
                    }
                    entry = entries.next[entries.head];
                    continue;
                }
                flip(&mut bits, op);
            }
            entry = entries.next[entry];
        } else {
            // A return (or, defensively, the tail): that operation can no longer wait.
            if deepest
                .as_ref()
                .is_none_or(|stuck| stack.len() > stuck.linearized.len())
            {
                deepest = Some(Stuck {
                    linearized: stack.iter().map(|&(op, _)| op).collect(),
                    state,
                    blocked: (entry != entries.tail).then(|| entries.op[entry]),
                });
            }
            let Some((op, previous_state)) = stack.pop() else {
                let stuck = deepest.unwrap_or_default();
                return result(Verdict::NotLinearizable(stuck), steps);
            };
            state = previous_state;
            flip(&mut bits, op);
            entries.unlift(op);
            if ops[op].complete.is_some() {
                known_remaining += 1;
            }
            entry = entries.next[entries.call_of[op]];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Step, ABSENT};

    const LIMITS: Limits = Limits {
        steps_max: 1_000_000,
        cache_bytes_max: 1 << 26,
    };

    fn op(step: Step, invoke: u64, complete: Option<u64>) -> KeyOp {
        KeyOp {
            step,
            invoke,
            complete,
            event: 0,
        }
    }

    #[test]
    fn reordering_concurrent_ops_is_found() {
        // The read is invoked first but returns the value of a concurrent write.
        let ops = [
            op(Step::Read(1), 0, Some(10)),
            op(Step::Write(1), 5, Some(8)),
        ];
        let found = search(&ops, ABSENT, LIMITS);
        assert!(matches!(found.verdict, Verdict::Linearizable));
    }

    #[test]
    fn stuck_reports_the_deepest_prefix_and_the_blocked_read() {
        let ops = [
            op(Step::Write(1), 0, Some(10)),
            op(Step::Read(ABSENT), 20, Some(30)),
        ];
        let Verdict::NotLinearizable(stuck) = search(&ops, ABSENT, LIMITS).verdict else {
            panic!("stale read accepted");
        };
        assert_eq!(stuck.linearized, vec![0]);
        assert_eq!(stuck.state, 1);
        assert_eq!(stuck.blocked, Some(1));
    }

    #[test]
    fn more_than_64_ops_use_several_bitset_words() {
        let mut ops: Vec<KeyOp> = (0..200u64)
            .map(|i| {
                op(
                    Step::Write(1 + (i % 7) as ValueId),
                    i * 10,
                    Some(i * 10 + 5),
                )
            })
            .collect();
        ops.push(op(Step::Read(1 + (199 % 7)), 3000, Some(3001)));
        assert!(matches!(
            search(&ops, ABSENT, LIMITS).verdict,
            Verdict::Linearizable
        ));
        ops.push(op(Step::Read(1), 4000, Some(4001)));
        assert!(matches!(
            search(&ops, ABSENT, LIMITS).verdict,
            Verdict::NotLinearizable(_)
        ));
    }
}
