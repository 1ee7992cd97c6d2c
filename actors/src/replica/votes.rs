//! Vote refusal after a restart.
//!
//! A replica that just started may have acknowledged a leader right before it went down, and
//! that leader may still serve lease reads on the strength of it. raft-rs only protects such a
//! lease while a follower remembers its leader, which a restart forgets; so for one election
//! timeout after start the replica votes for nobody. A leadership transfer is let through:
//! the leader handing over has already given up its lease.

use std::time::Instant;

use raft::eraftpb::{Message as RaftMessage, MessageType};

/// Drops vote and pre-vote requests until a point in time.
#[derive(Debug, Clone, Copy)]
pub struct StartupVoteRefusal {
    until: Instant,
}

impl StartupVoteRefusal {
    /// Refuses votes until `until` (start time plus one election timeout).
    pub fn until(until: Instant) -> Self {
        StartupVoteRefusal { until }
    }

    /// Whether `message`, arriving at `now`, must be dropped unstepped.
    pub fn refuses(&self, message: &RaftMessage, now: Instant) -> bool {
        matches!(
            message.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) && message.get_context() != raft::CAMPAIGN_TRANSFER
            && now < self.until
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(kind: MessageType, context: &[u8]) -> RaftMessage {
        let mut m = RaftMessage::default();
        m.set_msg_type(kind);
        m.set_context(context.to_vec().into());
        m
    }

    #[test]
    fn votes_and_pre_votes_are_refused_until_the_window_ends() {
        let now = Instant::now();
        let refusal = StartupVoteRefusal::until(now + Duration::from_millis(500));
        for kind in [MessageType::MsgRequestVote, MessageType::MsgRequestPreVote] {
            assert!(refusal.refuses(&message(kind, b""), now));
            assert!(!refusal.refuses(&message(kind, b""), now + Duration::from_millis(500)));
        }
    }

    #[test]
    fn transfers_and_other_messages_pass() {
        let now = Instant::now();
        let refusal = StartupVoteRefusal::until(now + Duration::from_secs(1));
        let transfer = message(MessageType::MsgRequestVote, raft::CAMPAIGN_TRANSFER);
        assert!(!refusal.refuses(&transfer, now));
        for kind in [MessageType::MsgAppend, MessageType::MsgHeartbeat] {
            assert!(!refusal.refuses(&message(kind, b""), now));
        }
    }
}
