//! What a test records: operations clients invoked on the store, when, and what came back.
//!
//! A [`History`] is plain data so it can be built by hand in unit tests; a [`Recorder`] builds one
//! from many concurrent clients (threads or async tasks) with timestamps from one monotonic clock,
//! which is what makes "A completed before B was invoked" meaningful across clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// An operation a client asked the store to perform on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read the key's current value.
    Get,
    /// Set the key's value.
    Put(Vec<u8>),
    /// Make the key absent.
    Delete,
    /// Compare-and-swap: if the current value equals `expected` (`None` = absent), set it to
    /// `new` (`None` = delete) and succeed; otherwise fail and leave the key unchanged.
    Cas {
        /// The value the key must hold for the swap to happen.
        expected: Option<Vec<u8>>,
        /// The value the key holds after a successful swap.
        new: Option<Vec<u8>>,
    },
}

/// What the client learned about an operation.
///
/// Only the variant matching the operation is meaningful ([`Outcome::Read`] for a Get,
/// [`Outcome::Written`] for Put/Delete, [`Outcome::CasOk`]/[`Outcome::CasFailed`] for Cas);
/// the checker reports any other pairing as a malformed history rather than guessing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A Get returned this value (`None` = absent).
    Read(Option<Vec<u8>>),
    /// A Put or Delete was acknowledged.
    Written,
    /// A Cas found the expected value and swapped.
    CasOk,
    /// A Cas did not swap; the reply carried the key's current value, which must be what the
    /// register held at the instant the Cas took effect.
    CasFailed(Option<Vec<u8>>),
    /// The client never learned the result (timeout, lost connection, cancelled task): a write
    /// may have taken effect at any instant after its invoke, or never; a Get says nothing.
    Unknown,
}

/// One operation of one client: what it asked, when, and what it learned.
///
/// Times are nanoseconds on one monotonic clock shared by all clients of the history. An event
/// with a known outcome took effect at one instant in `invoke..=complete`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// Who issued the operation; used only to make reports readable.
    pub client: usize,
    /// The key the operation addressed.
    pub key: Vec<u8>,
    /// The operation.
    pub op: Op,
    /// When the client sent the request (taken before sending).
    pub invoke: u64,
    /// When the client received the reply (taken after receiving); `None` if it never did.
    /// Ignored when `outcome` is [`Outcome::Unknown`].
    pub complete: Option<u64>,
    /// What the reply said.
    pub outcome: Outcome,
}

/// A recorded history: every operation of every client, plus optional initial values.
///
/// Keys not given an initial value start absent, as in a fresh cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    events: Vec<Event>,
    initial: HashMap<Vec<u8>, Vec<u8>>,
}

impl History {
    /// An empty history in which every key starts absent.
    pub fn new() -> Self {
        Self::default()
    }

    /// A history of these events, in any order (the checker orders by time itself).
    pub fn from_events(events: Vec<Event>) -> Self {
        Self {
            events,
            initial: HashMap::new(),
        }
    }

    /// Appends one event.
    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Declares that `key` held `value` before the first event (e.g. data loaded before the test).
    pub fn with_initial(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.initial.insert(key.into(), value.into());
        self
    }

    /// Every recorded event, in recording order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The value `key` held before the first event; `None` means absent.
    pub fn initial(&self, key: &[u8]) -> Option<&[u8]> {
        self.initial.get(key).map(Vec::as_slice)
    }

    /// Number of recorded events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Gives every recorder a distinct id so a token cannot complete another recorder's event.
static RECORDER_ID_NEXT: AtomicU64 = AtomicU64::new(0);

/// Records a [`History`] from many concurrent clients, threads or async tasks alike.
///
/// Cheap to clone (one `Arc`); every clone appends to the same history. Timestamps are taken
/// inside the lock from one [`Instant`] origin, so they are monotonic and totally ordered across
/// clients. The lock is held for a push or a field update only, never across I/O, so a
/// `std::sync::Mutex` is fine inside async code (nothing is held across `.await`).
///
/// Guarantee: call [`Recorder::invoke`] just before sending a request and
/// [`Recorder::complete`] just after its reply arrives; the recorded interval then contains the
/// instant the store executed the request. An operation whose [`Token`] is dropped without
/// completing (timeout, cancelled future, panic) stays [`Outcome::Unknown`], which is exactly
/// what the client knows about it.
#[derive(Clone, Debug)]
pub struct Recorder {
    id: u64,
    inner: Arc<Mutex<RecorderState>>,
}

#[derive(Debug)]
struct RecorderState {
    origin: Instant,
    events: Vec<Event>,
    initial: HashMap<Vec<u8>, Vec<u8>>,
}

/// Proof that an operation was invoked; hand it back to [`Recorder::complete`] with the reply.
///
/// Not `Clone`: each operation completes at most once. Dropping it leaves the operation
/// [`Outcome::Unknown`].
#[derive(Debug)]
#[must_use = "complete the token with the reply, or drop it to record the outcome as unknown"]
pub struct Token {
    recorder: u64,
    index: usize,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now and in which every key starts absent.
    pub fn new() -> Self {
        Self {
            id: RECORDER_ID_NEXT.fetch_add(1, Ordering::Relaxed),
            inner: Arc::new(Mutex::new(RecorderState {
                origin: Instant::now(),
                events: Vec::new(),
                initial: HashMap::new(),
            })),
        }
    }

    /// Declares the value `key` holds before any recorded operation.
    pub fn set_initial(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.lock().initial.insert(key.into(), value.into());
    }

    /// Records that `client` is about to send `op` on `key`; call it before sending.
    pub fn invoke(&self, client: usize, key: impl Into<Vec<u8>>, op: Op) -> Token {
        let mut state = self.lock();
        let invoke = nanos_since(state.origin);
        state.events.push(Event {
            client,
            key: key.into(),
            op,
            invoke,
            complete: None,
            outcome: Outcome::Unknown,
        });
        Token {
            recorder: self.id,
            index: state.events.len() - 1,
        }
    }

    /// Records the reply to the operation `token` stands for; call it after the reply arrived.
    ///
    /// Completing with [`Outcome::Unknown`] (e.g. the client timed out) keeps the operation
    /// unknown but still notes when the client gave up, for the report. A token from another
    /// recorder is ignored (and is a bug in the test, flagged in debug builds).
    pub fn complete(&self, token: Token, outcome: Outcome) {
        debug_assert_eq!(token.recorder, self.id, "token from another recorder");
        if token.recorder != self.id {
            return;
        }
        let mut state = self.lock();
        let complete = nanos_since(state.origin);
        if let Some(event) = state.events.get_mut(token.index) {
            event.complete = Some(complete);
            event.outcome = outcome;
        }
    }

    /// A snapshot of everything recorded so far; operations not yet completed are unknown.
    pub fn history(&self) -> History {
        let state = self.lock();
        History {
            events: state.events.clone(),
            initial: state.initial.clone(),
        }
    }

    /// The recorder's state is a list of plain values that no panic can leave half-updated,
    /// so a lock poisoned by a panicking client is still safe to use.
    fn lock(&self) -> MutexGuard<'_, RecorderState> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Nanoseconds since `origin`, saturating after 584 years.
fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_orders_times_and_leaves_uncompleted_ops_unknown() {
        let recorder = Recorder::new();
        let put = recorder.invoke(0, "k", Op::Put(b"v".to_vec()));
        let lost = recorder.invoke(1, "k", Op::Delete);
        recorder.complete(put, Outcome::Written);
        drop(lost);
        let history = recorder.history();
        let events = history.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].outcome, Outcome::Written);
        let complete = events[0].complete.unwrap_or(0);
        assert!(events[0].invoke <= events[1].invoke);
        assert!(events[1].invoke <= complete);
        assert_eq!(events[1].outcome, Outcome::Unknown);
        assert_eq!(events[1].complete, None);
    }

    #[test]
    fn recorder_clones_share_one_history_across_threads() {
        let recorder = Recorder::new();
        let threads: Vec<_> = (0..4)
            .map(|client| {
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    for i in 0..50u8 {
                        let token = recorder.invoke(client, [i % 3], Op::Put(vec![i]));
                        recorder.complete(token, Outcome::Written);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(recorder.history().len(), 200);
    }
}
