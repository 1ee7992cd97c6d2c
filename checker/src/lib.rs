//! Linearizability checker for histories recorded against shardkv (or any key/value store).
//!
//! A test records what each client invoked and what it got back ([`Recorder`], or a hand-built
//! [`History`]); [`check`] then decides whether some single order of those operations, each
//! taking effect at one instant between its invoke and its reply, explains every reply under
//! the semantics of one register per key. If not, the store has a consistency bug and the
//! [`Violation`] shows a small set of events that prove it.
//!
//! Model and rules:
//! - Every key is an independent register of bytes, absent until written (or given an initial
//!   value with [`History::with_initial`]). Operations: [`Op::Get`], [`Op::Put`],
//!   [`Op::Delete`], [`Op::Cas`].
//! - An operation with a known [`Outcome`] took effect once, between invoke and complete.
//! - A write whose outcome is [`Outcome::Unknown`] (timeout, lost connection, cancelled task) may
//!   have taken effect at any instant after its invoke, or never. An unknown Get is ignored.
//!
//! Algorithm: keys are checked independently (P-compositionality); each key by Wing & Gong's
//! search with Lowe's memoization of (operations taken effect, register value), as in
//! Porcupine. Every search is bounded; running out of budget gives
//! [`CheckError::Inconclusive`], never a pass.
//!
//! Recording from async tasks: clone the [`Recorder`] into each task; call
//! [`Recorder::invoke`] right before the request and [`Recorder::complete`] right after the
//! reply. A task that times out or is cancelled just drops its [`Token`], which leaves the
//! operation unknown.
//!
//! ```ignore
//! // In a tokio test, with `client: shardkv::Client` shared by the tasks:
//! let recorder = shardkv_checker::Recorder::new();
//! let mut tasks = tokio::task::JoinSet::new();
//! for id in 0..8 {
//!     let (recorder, client) = (recorder.clone(), client.clone());
//!     tasks.spawn(async move {
//!         let token = recorder.invoke(id, b"k".to_vec(), Op::Put(b"v".to_vec()));
//!         let outcome = match client.put(b"k", b"v").await {
//!             Ok(()) => Outcome::Written,
//!             Err(_) => Outcome::Unknown, // it may still have been applied
//!         };
//!         recorder.complete(token, outcome);
//!
//!         let token = recorder.invoke(id, b"k".to_vec(), Op::Get);
//!         if let Ok(value) = client.get(b"k").await {
//!             recorder.complete(token, Outcome::Read(value));
//!         } // else: dropping the token records the Get as unknown
//!     });
//! }
//! while let Some(joined) = tasks.join_next().await { joined?; }
//! if let Err(error) = shardkv_checker::check(&recorder.history()) {
//!     panic!("{error}");
//! }
//! ```
//!
//! The same works with threads:
//!
//! ```
//! use shardkv_checker::{check, Op, Outcome, Recorder};
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//!
//! let store = Arc::new(Mutex::new(HashMap::<Vec<u8>, Vec<u8>>::new()));
//! let recorder = Recorder::new();
//! let workers: Vec<_> = (0..4)
//!     .map(|client| {
//!         let (store, recorder) = (store.clone(), recorder.clone());
//!         std::thread::spawn(move || {
//!             let value = vec![client as u8];
//!             let token = recorder.invoke(client, b"k".to_vec(), Op::Put(value.clone()));
//!             store.lock().unwrap().insert(b"k".to_vec(), value);
//!             recorder.complete(token, Outcome::Written);
//!             let token = recorder.invoke(client, b"k".to_vec(), Op::Get);
//!             let read = store.lock().unwrap().get(&b"k"[..]).cloned();
//!             recorder.complete(token, Outcome::Read(read));
//!         })
//!     })
//!     .collect();
//! for worker in workers {
//!     worker.join().unwrap();
//! }
//! assert!(check(&recorder.history()).is_ok());
//! ```

mod check;
mod history;
mod model;
mod search;
mod shrink;
mod violation;

pub use check::{check, check_with_budget, CACHE_BYTES_MAX, SHRINK_STEPS_MAX, STEPS_MAX_DEFAULT};
pub use history::{Event, History, Op, Outcome, Recorder, Token};
pub use search::LimitHit;
pub use violation::{CheckError, Violation};

#[cfg(test)]
mod tests;
