//! Fatal errors: how an actor tells the daemon that the host must stop at once.
//!
//! Some failures leave memory and disk disagreeing (an applied batch that could not be
//! stored): no actor can repair that, and carrying on would serve or persist state the disk
//! does not back. A library must not end the process itself, so the actor reports through a
//! [`FatalReporter`] and stops its own work; the daemon, which owns the process, waits on the
//! other end and exits. On restart the host recovers from the durable Raft log.

use shardkv_transport::ShardId;
use tokio::sync::mpsc;
use tracing::error;

/// A failure the host cannot continue after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    /// The shard whose state can no longer be trusted; `None` for the whole host (its
    /// storage writer failed).
    pub shard: Option<ShardId>,
    /// What went wrong, for the operator.
    pub reason: String,
}

/// The sending end of the daemon's fatal-error channel; cheap to clone, one per actor that
/// can fail fatally. Unbounded so reporting never waits (nor fails for lack of room) in the
/// moment the host is going down.
#[derive(Debug, Clone)]
pub struct FatalReporter {
    tx: mpsc::UnboundedSender<Fatal>,
}

impl FatalReporter {
    /// A reporter and the receiver the daemon waits on.
    pub fn channel() -> (FatalReporter, mpsc::UnboundedReceiver<Fatal>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (FatalReporter { tx }, rx)
    }

    /// Tells the daemon. If nobody listens any more (the daemon is already shutting down),
    /// the error is logged here so it is not lost.
    pub fn report(&self, fatal: Fatal) {
        if let Err(mpsc::error::SendError(fatal)) = self.tx.send(fatal) {
            error!(
                shard = ?fatal.shard,
                reason = %fatal.reason,
                "fatal error with no daemon listening"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fatal(shard: ShardId) -> Fatal {
        Fatal {
            shard: Some(shard),
            reason: "disk full".into(),
        }
    }

    #[test]
    fn every_clone_reports_to_the_one_receiver() {
        let (reporter, mut rx) = FatalReporter::channel();
        let other = reporter.clone();
        reporter.report(fatal(1));
        other.report(fatal(2));
        assert_eq!(rx.try_recv().unwrap(), fatal(1));
        assert_eq!(rx.try_recv().unwrap(), fatal(2));
    }

    #[test]
    fn reporting_with_no_receiver_does_not_panic() {
        let (reporter, rx) = FatalReporter::channel();
        drop(rx);
        reporter.report(fatal(1));
    }
}
