//! [`QueuedBytes`]: the bytes of Raft messages waiting for one peer, bounded.
//!
//! The queue to a peer is bounded by count too, but a count says nothing about memory when a
//! message may be a hundred MiB. A message is admitted when the queue is empty (so one of any
//! size still travels) or when it fits within [`QUEUE_BYTES_MAX`] with what waits already;
//! otherwise it is dropped, and Raft retransmits what matters once the link drains. Small
//! messages (heartbeats, votes, acknowledgements of every shard on the link) get
//! [`SMALL_HEADROOM_BYTES`] more: large appends of one shard filling the queue must not
//! silence the others, whose leaders would then step down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of Raft messages queued for one peer at most (plus one message admitted into an
/// empty queue): several batches' worth, so a healthy link never drops, and a bound on what
/// a slow or stalled peer makes this host hold.
pub const QUEUE_BYTES_MAX: usize = 64 << 20;
/// A message this small counts as control traffic (see the module docs).
pub const SMALL_MESSAGE_BYTES_MAX: usize = 64 << 10;
/// Room kept beyond [`QUEUE_BYTES_MAX`] for small messages only.
pub const SMALL_HEADROOM_BYTES: usize = 16 << 20;

/// Shared between the actor that queues and the link that sends; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct QueuedBytes {
    bytes: Arc<AtomicUsize>,
}

impl QueuedBytes {
    /// Counts `len` more bytes in the queue if they may be admitted; false: drop the message.
    pub fn admit(&self, len: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                let limit = if len <= SMALL_MESSAGE_BYTES_MAX {
                    QUEUE_BYTES_MAX + SMALL_HEADROOM_BYTES
                } else {
                    QUEUE_BYTES_MAX
                };
                (queued == 0 || queued + len <= limit).then_some(queued + len)
            })
            .is_ok()
    }

    /// `len` bytes left the queue (sent, dropped, or never queued after all).
    pub fn release(&self, len: usize) {
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                Some(queued.saturating_sub(len))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_queue_admits_any_message_and_a_full_one_refuses() {
        let q = QueuedBytes::default();
        assert!(
            q.admit(QUEUE_BYTES_MAX * 2),
            "one message of any size travels"
        );
        assert!(!q.admit(SMALL_MESSAGE_BYTES_MAX + 1));
        q.release(QUEUE_BYTES_MAX * 2);
        assert!(q.admit(QUEUE_BYTES_MAX - 10));
        assert!(q.admit(10));
        assert!(
            !q.admit(SMALL_MESSAGE_BYTES_MAX + 1),
            "the bound is in bytes"
        );
        q.release(QUEUE_BYTES_MAX);
        assert!(q.admit(SMALL_MESSAGE_BYTES_MAX + 1));
    }

    #[test]
    fn small_messages_still_pass_when_large_ones_filled_the_queue() {
        let q = QueuedBytes::default();
        assert!(q.admit(QUEUE_BYTES_MAX));
        assert!(
            !q.admit(SMALL_MESSAGE_BYTES_MAX + 1),
            "another large one waits"
        );
        assert!(q.admit(100), "a heartbeat passes");
        assert!(
            !q.admit(SMALL_HEADROOM_BYTES),
            "the headroom is bounded too"
        );
    }
}
