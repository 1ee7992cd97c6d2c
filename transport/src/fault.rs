//! Fault injection for tests: partitions between hosts and lost acknowledgements.
//!
//! The hooks are compiled in only with the `fault-injection` feature, which the workspace
//! enables for its own tests (as a dev-dependency feature) and never for `cargo build
//! --release`. Without it `apply` does not exist and every query here answers "no fault".
//! Faults are switched on by `AdminRequest::Fault` (see [`crate::wire`]), which the endpoint
//! accepts from host certificates only.

use crate::wire::HostId;

#[cfg(feature = "fault-injection")]
mod state {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use crate::wire::HostId;

    pub static PARTITIONED: Mutex<Option<HashSet<HostId>>> = Mutex::new(None);
    pub static DROP_REPLIES: AtomicU32 = AtomicU32::new(0);

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
#[cfg(feature = "fault-injection")]
pub fn apply(spec: &crate::wire::FaultSpec) {
    let mut g = state::PARTITIONED.lock().unwrap_or_else(|p| p.into_inner());
    *g = Some(spec.partition_from.iter().copied().collect());
    state::DROP_REPLIES.store(spec.drop_replies, std::sync::atomic::Ordering::SeqCst);
    tracing::warn!(?spec, "fault injection active");
}

/// Whether Raft traffic to/from `peer` is being dropped.
pub fn partitioned(peer: HostId) -> bool {
    #[cfg(feature = "fault-injection")]
    {
        state::partitioned(peer)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = peer;
        false
    }
}

/// Whether to swallow the reply to this write (consumes one from the budget).
pub fn take_reply_drop() -> bool {
    #[cfg(feature = "fault-injection")]
    {
        state::take_reply_drop()
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        false
    }
}
