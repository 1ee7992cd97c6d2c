//! The ShardActor: the state machine of one shard's replica on this host.
//!
//! It applies committed commands to the shard's rows in LMDB, writing the applied index and the
//! client-session table in the same transaction, so a command is applied exactly once even when
//! a client retries it or the host crashes mid-apply. It completes waiting writes and serves
//! reads once the index they wait for is applied.
//!
//! Applying does not wait for its own fsync: a committed entry is already durable on a
//! majority in the Raft log, so after a crash it is simply applied again from the log (the
//! durable applied index and the sessions move together). The effects of batches still on
//! their way to disk are kept in an in-memory overlay that reads and later applies consult
//! first, so replies and reads never wait for the apply's fsync. (TiKV's apply works the same
//! way.)
//!
//! The parts, each in its own file:
//! - `command`: the [`Command`] record in the Raft log.
//! - `apply`: the pure core, one function per command, over a read view (`view`), writing
//!   into the batch's effects (`effects`); `update`: the atomic multi-key update of the
//!   Redis commands; `sessions`: the session rules (dedup, expiry);
//!   `log_clock`: the log time sessions expire by, which no leader's clock offset can move.
//! - `owned`: the slots the shard owns; `split`: applying a split, which hands some to a
//!   new shard.
//! - `overlay` and `store_view`: the batches in flight over LMDB, the view the core reads.
//! - `waiters`: the writes and reads waiting on the applied index.
//! - `actor`: the [`ShardActor`] that ties them to storage and the replica.

mod actor;
mod applied_index;
mod apply;
mod command;
mod effects;
mod log_clock;
mod overlay;
mod owned;
mod sessions;
mod split;
mod store_view;
mod update;
mod view;
mod waiters;

pub(crate) use actor::APPLY_BATCHES_IN_FLIGHT_MAX;
pub use actor::{Compaction, ShardActor, ShardSetup};
pub use applied_index::AppliedIndex;
pub use command::{Action, Command};
pub use log_clock::{leader_stamp_ms, ClockAnchor, LogClock};
pub use owned::{OwnedSlots, PublishedSlots};
pub use sessions::SESSION_TTL_MS;
pub use split::{SplitApplied, SplitNotices};
pub use update::parse_integer;
