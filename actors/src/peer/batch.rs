//! [`BatchBuilder`]: cuts the Raft messages queued for one peer into frames that always fit.
//!
//! A batch takes messages while it stays within [`BATCH_BYTES_MAX`] and
//! [`BATCH_MESSAGES_MAX`]; a message that would push it over starts the next batch instead.
//! An empty batch takes any one message, so a message larger than the batch target (an append
//! carrying one large entry) still travels, alone. Every frame built is therefore at most the
//! larger of the batch target and one message, and the wire limit
//! [`RAFT_FRAME_BYTES_MAX`] is sized for one maximal message: no frame is ever refused, so the
//! link is never reset over its own batching.

use shardkv_transport::wire::{
    RaftBatch, RaftEnvelope, RAFT_BATCH_PREFIX_BYTES_MAX, RAFT_FRAME_BYTES_MAX,
};

/// Messages in one frame at most: bounds the work one frame makes the receiver do at once.
pub const BATCH_MESSAGES_MAX: usize = 4096;
/// Frame bytes a batch of several messages stays within: large enough to carry a burst of
/// ordinary appends and heartbeats for many shards in one write, small enough that one frame
/// does not hold up the link for long. A single larger message is sent alone.
pub const BATCH_BYTES_MAX: usize = 8 << 20;

const _: () = assert!(BATCH_BYTES_MAX <= RAFT_FRAME_BYTES_MAX);

/// One frame's worth of Raft messages being gathered; see the module docs.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    batch: RaftBatch,
    /// Upper bound on the batch's encoded payload.
    frame_bytes: usize,
}

impl BatchBuilder {
    /// Whether a message of `env`'s size can travel at all: one alone in a frame must fit
    /// the wire limit. Never false for a message raft-rs builds under our configuration; a
    /// message that is must be dropped, as no frame can carry it.
    pub fn fits_alone(env: &RaftEnvelope) -> bool {
        RAFT_BATCH_PREFIX_BYTES_MAX + env.framed_bytes_max() <= RAFT_FRAME_BYTES_MAX
    }

    /// Adds `env` to the batch if it fits; gives it back otherwise, to start the next batch.
    /// An empty batch takes any message that [`BatchBuilder::fits_alone`].
    pub fn push(&mut self, env: RaftEnvelope) -> Result<(), RaftEnvelope> {
        let frame_bytes =
            self.frame_bytes.max(RAFT_BATCH_PREFIX_BYTES_MAX) + env.framed_bytes_max();
        let fits = if self.batch.messages.is_empty() {
            frame_bytes <= RAFT_FRAME_BYTES_MAX
        } else {
            self.batch.messages.len() < BATCH_MESSAGES_MAX && frame_bytes <= BATCH_BYTES_MAX
        };
        if !fits {
            return Err(env);
        }
        self.frame_bytes = frame_bytes;
        self.batch.messages.push(env);
        Ok(())
    }

    /// Whether no further message will be taken.
    pub fn is_full(&self) -> bool {
        self.batch.messages.len() >= BATCH_MESSAGES_MAX || self.frame_bytes >= BATCH_BYTES_MAX
    }

    /// The batch gathered so far; the builder is empty again.
    pub fn take(&mut self) -> RaftBatch {
        self.frame_bytes = 0;
        std::mem::take(&mut self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardkv_transport::frame::encode;
    use shardkv_transport::wire::{RAFT_MESSAGE_BYTES_MAX, VALUE_BYTES_MAX_CEILING};

    fn env(shard: u32, bytes: usize) -> RaftEnvelope {
        RaftEnvelope {
            shard,
            message: vec![0xab; bytes],
        }
    }

    /// Feeds `queue` through a builder the way the link loop does and returns the frames.
    fn cut(queue: Vec<RaftEnvelope>) -> Vec<RaftBatch> {
        let mut frames = Vec::new();
        let mut builder = BatchBuilder::default();
        for m in queue {
            if let Err(m) = builder.push(m) {
                frames.push(builder.take());
                builder
                    .push(m)
                    .expect("an empty batch takes any message that fits alone");
            }
        }
        let last = builder.take();
        if !last.messages.is_empty() {
            frames.push(last);
        }
        frames
    }

    #[test]
    fn near_cap_messages_behind_small_ones_each_get_a_frame_that_fits() {
        // What a follower catching up over large values receives: a few MiB of ordinary
        // appends and heartbeats, then appends of one maximal entry each.
        let maximal = RAFT_MESSAGE_BYTES_MAX;
        let queue = vec![
            env(1, 100),
            env(2, 6 << 20),
            env(1, maximal),
            env(3, 7 << 20),
            env(1, VALUE_BYTES_MAX_CEILING),
            env(2, 100),
        ];
        let sent: Vec<(u32, usize)> = queue.iter().map(|m| (m.shard, m.message.len())).collect();
        let frames = cut(queue);
        for f in &frames {
            let payload = encode(f).expect("every frame encodes").len() - 4;
            assert!(payload <= RAFT_FRAME_BYTES_MAX, "frame of {payload} bytes");
        }
        let received: Vec<(u32, usize)> = frames
            .iter()
            .flat_map(|f| f.messages.iter().map(|m| (m.shard, m.message.len())))
            .collect();
        assert_eq!(received, sent, "every message, in order");
        assert!(
            frames.len() >= 4,
            "large messages travel in frames of their own"
        );
    }

    #[test]
    fn small_messages_share_a_frame_up_to_the_batch_limits() {
        let frames = cut((0..10_000).map(|i| env(i, 10)).collect());
        assert_eq!(frames.len(), 3);
        assert!(frames
            .iter()
            .all(|f| f.messages.len() <= BATCH_MESSAGES_MAX));
        let frames = cut((0..20).map(|i| env(i, 1 << 20)).collect());
        assert!(frames
            .iter()
            .all(|f| encode(f).unwrap().len() - 4 <= BATCH_BYTES_MAX));
        assert_eq!(frames.iter().map(|f| f.messages.len()).sum::<usize>(), 20);
    }

    #[test]
    fn a_message_no_frame_can_carry_is_recognised() {
        assert!(BatchBuilder::fits_alone(&env(1, RAFT_MESSAGE_BYTES_MAX)));
        assert!(!BatchBuilder::fits_alone(&env(1, RAFT_FRAME_BYTES_MAX)));
        let mut builder = BatchBuilder::default();
        assert!(builder.push(env(1, RAFT_FRAME_BYTES_MAX)).is_err());
        assert!(builder.take().messages.is_empty());
    }

    #[test]
    fn a_full_batch_says_so() {
        let mut builder = BatchBuilder::default();
        builder
            .push(env(1, BATCH_BYTES_MAX))
            .expect("alone, it fits");
        assert!(builder.is_full());
        assert!(builder.push(env(1, 1)).is_err());
    }
}
