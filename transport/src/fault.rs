//! Fault injection for tests: partitions between hosts, lost acknowledgements, a slow disk and
//! crashes at chosen steps of the write path.
//!
//! The hooks are compiled in only with the `fault-injection` feature and only in builds with
//! debug assertions. The workspace enables the feature for its own tests (as a dev-dependency
//! feature), and Cargo then builds the `shardkv` binary with it, in `cargo test --release` too;
//! the `debug_assertions` condition keeps every optimised binary, the ones users deploy, free
//! of the hooks. Without them `apply` does not exist and every query here answers "no fault".
//! Faults are switched on by `AdminRequest::Fault` (see [`crate::wire`]), which the endpoint
//! accepts from host certificates only.

use crate::wire::HostId;

/// Whether this build has the hooks (so polling them can be skipped where it costs).
pub const ENABLED: bool = cfg!(all(feature = "fault-injection", debug_assertions));

#[cfg(all(feature = "fault-injection", debug_assertions))]
mod state {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::sync::Mutex;

    use crate::wire::HostId;

    pub static PARTITIONED: Mutex<Option<HashSet<HostId>>> = Mutex::new(None);
    pub static DROP_REPLIES: AtomicU32 = AtomicU32::new(0);
    pub static COMMIT_DELAY_MS: AtomicU64 = AtomicU64::new(0);
    pub static HOLD_LMDB: AtomicBool = AtomicBool::new(false);
    pub static CRASH_AT: Mutex<Option<crate::wire::CrashPoint>> = Mutex::new(None);

    pub fn partitioned(peer: HostId) -> bool {
        let g = PARTITIONED.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().is_some_and(|s| s.contains(&peer))
    }

    pub fn take_reply_drop() -> bool {
        DROP_REPLIES
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Switches on the faults in `spec` (replacing earlier ones).
#[cfg(all(feature = "fault-injection", debug_assertions))]
pub fn apply(spec: &crate::wire::FaultSpec) {
    let mut g = state::PARTITIONED.lock().unwrap_or_else(|p| p.into_inner());
    *g = Some(spec.partition_from.iter().copied().collect());
    state::DROP_REPLIES.store(spec.drop_replies, std::sync::atomic::Ordering::SeqCst);
    state::COMMIT_DELAY_MS.store(spec.commit_delay_ms, std::sync::atomic::Ordering::SeqCst);
    state::HOLD_LMDB.store(spec.hold_lmdb, std::sync::atomic::Ordering::SeqCst);
    *state::CRASH_AT.lock().unwrap_or_else(|p| p.into_inner()) = spec.crash_at;
    tracing::warn!(?spec, "fault injection active");
}

/// Whether Raft traffic to/from `peer` is being dropped.
pub fn partitioned(peer: HostId) -> bool {
    #[cfg(all(feature = "fault-injection", debug_assertions))]
    {
        state::partitioned(peer)
    }
    #[cfg(not(all(feature = "fault-injection", debug_assertions)))]
    {
        let _ = peer;
        false
    }
}

/// Whether to swallow the reply to this write (consumes one from the budget).
pub fn take_reply_drop() -> bool {
    #[cfg(all(feature = "fault-injection", debug_assertions))]
    {
        state::take_reply_drop()
    }
    #[cfg(not(all(feature = "fault-injection", debug_assertions)))]
    {
        false
    }
}

/// How much longer every write-ahead log sync must take (a slow disk), if at all. The log
/// writer sleeps this long before syncing, on its own thread, so the host sees exactly what
/// an fsync of that length would do to it.
pub fn commit_delay() -> Option<std::time::Duration> {
    #[cfg(all(feature = "fault-injection", debug_assertions))]
    {
        let ms = state::COMMIT_DELAY_MS.load(std::sync::atomic::Ordering::SeqCst);
        (ms > 0).then(|| std::time::Duration::from_millis(ms))
    }
    #[cfg(not(all(feature = "fault-injection", debug_assertions)))]
    {
        None
    }
}

/// Whether LMDB must not commit for now (see [`crate::wire::FaultSpec::hold_lmdb`]).
pub fn lmdb_held() -> bool {
    #[cfg(all(feature = "fault-injection", debug_assertions))]
    {
        state::HOLD_LMDB.load(std::sync::atomic::Ordering::SeqCst)
    }
    #[cfg(not(all(feature = "fault-injection", debug_assertions)))]
    {
        false
    }
}

/// Aborts the process if a crash was asked for at `point` (see [`crate::wire::FaultSpec`]).
pub fn crash_point(point: crate::wire::CrashPoint) {
    #[cfg(all(feature = "fault-injection", debug_assertions))]
    {
        let at = *state::CRASH_AT.lock().unwrap_or_else(|p| p.into_inner());
        if at == Some(point) {
            eprintln!("fault injection: crashing at {point:?}");
            std::process::abort();
        }
    }
    #[cfg(not(all(feature = "fault-injection", debug_assertions)))]
    {
        let _ = point;
    }
}
