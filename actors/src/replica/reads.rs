//! Linearizable reads waiting for a ReadIndex round.
//!
//! A read joins the next round; a round is asked of raft-rs once the mailbox has drained, so
//! every read that arrived meanwhile shares one quorum confirmation. Reads and rounds have
//! numbers of their own: a round's number is the context raft-rs echoes in its read state.

use std::collections::HashMap;
use std::time::Instant;

use shardkv_transport::wire::Response;
use tokio::sync::oneshot;

use crate::messages::ReadKeys;

/// One read waiting for its round to be confirmed.
#[derive(Debug)]
pub struct PendingRead {
    /// When the read arrived: a round serving it was asked no earlier, so a lease derived
    /// from its confirmation may start here.
    pub issued: Instant,
    pub keys: ReadKeys,
    pub reply: oneshot::Sender<Response>,
    /// Past this the client has been told to retry; the read is forgotten.
    pub deadline: Instant,
}

/// Reads by number, the reads waiting for the next round, and the rounds in flight.
#[derive(Debug, Default)]
pub struct ReadQueue {
    reads: HashMap<u64, PendingRead>,
    next_read: u64,
    /// Reads that join the next round, in arrival order.
    waiting: Vec<u64>,
    /// Rounds asked and not yet confirmed: round number -> the reads it serves.
    rounds: HashMap<u64, Vec<u64>>,
    next_round: u64,
}

impl ReadQueue {
    /// Queues `read` for the next round.
    pub fn push(&mut self, read: PendingRead) {
        self.next_read += 1;
        self.reads.insert(self.next_read, read);
        self.waiting.push(self.next_read);
    }

    /// Whether some read waits for a round to be asked.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Whether no read waits or is in a round.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.waiting.is_empty() && self.rounds.is_empty()
    }

    /// Opens a round for every read still waiting; returns the context to hand to raft-rs'
    /// `read_index`, or `None` when no live read waits.
    pub fn start_round(&mut self) -> Option<Vec<u8>> {
        let reads = &self.reads;
        let ids: Vec<u64> = std::mem::take(&mut self.waiting)
            .into_iter()
            .filter(|id| reads.contains_key(id))
            .collect();
        if ids.is_empty() {
            return None;
        }
        self.next_round += 1;
        self.rounds.insert(self.next_round, ids);
        Some(self.next_round.to_be_bytes().to_vec())
    }

    /// The reads of the round whose context raft-rs confirmed, in arrival order; none for a
    /// context this queue did not issue or has forgotten.
    pub fn confirmed(&mut self, context: &[u8]) -> Vec<PendingRead> {
        let Some(round) = context.try_into().ok().map(u64::from_be_bytes) else {
            return Vec::new();
        };
        let Some(ids) = self.rounds.remove(&round) else {
            return Vec::new();
        };
        ids.iter().filter_map(|id| self.reads.remove(id)).collect()
    }

    /// Forgets reads past their deadline or whose client stopped waiting, and rounds that no
    /// longer serve anyone.
    pub fn expire(&mut self, now: Instant) {
        self.reads
            .retain(|_, r| r.deadline > now && !r.reply.is_closed());
        let reads = &self.reads;
        self.rounds
            .retain(|_, ids| ids.iter().any(|id| reads.contains_key(id)));
    }

    /// Answers every read with `response` and forgets all rounds (leadership was lost: no
    /// round of the old term may serve a read any more).
    pub fn fail_all(&mut self, response: &Response) {
        for (_, read) in self.reads.drain() {
            let _ = read.reply.send(response.clone());
        }
        self.waiting.clear();
        self.rounds.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn read(key: &str, deadline: Instant) -> (PendingRead, oneshot::Receiver<Response>) {
        let (reply, rx) = oneshot::channel();
        let read = PendingRead {
            issued: Instant::now(),
            keys: ReadKeys::One(key.as_bytes().to_vec()),
            reply,
            deadline,
        };
        (read, rx)
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn keys(reads: &[PendingRead]) -> Vec<&[u8]> {
        reads
            .iter()
            .map(|r| match &r.keys {
                ReadKeys::One(key) => key.as_slice(),
                ReadKeys::Many(_) => panic!("the tests read one key at a time"),
            })
            .collect()
    }

    #[test]
    fn reads_of_one_drain_share_one_round_in_arrival_order() {
        let mut q = ReadQueue::default();
        let (a, _ra) = read("a", later());
        let (b, _rb) = read("b", later());
        q.push(a);
        q.push(b);
        assert!(q.has_waiting());
        let round = q.start_round().expect("a round for two reads");
        assert!(!q.has_waiting());
        assert_eq!(q.start_round(), None, "nothing left to ask for");
        assert_eq!(keys(&q.confirmed(&round)), [b"a", b"b"]);
        assert!(q.confirmed(&round).is_empty(), "a round serves once");
    }

    #[test]
    fn rounds_are_numbered_apart_from_reads() {
        let mut q = ReadQueue::default();
        for key in ["a", "b", "c"] {
            let (r, _) = read(key, later());
            q.push(r);
        }
        let first = q.start_round().expect("round");
        let (d, _rd) = read("d", later());
        q.push(d);
        let second = q.start_round().expect("round");
        assert_eq!(first, 1u64.to_be_bytes());
        assert_eq!(second, 2u64.to_be_bytes());
    }

    #[test]
    fn unknown_or_malformed_contexts_serve_nothing() {
        let mut q = ReadQueue::default();
        let (a, _ra) = read("a", later());
        q.push(a);
        let round = q.start_round().expect("round");
        assert!(q.confirmed(&99u64.to_be_bytes()).is_empty());
        assert!(q.confirmed(b"short").is_empty());
        assert_eq!(keys(&q.confirmed(&round)), [b"a"]);
    }

    #[test]
    fn expired_and_abandoned_reads_are_forgotten_with_their_rounds() {
        let mut q = ReadQueue::default();
        let now = Instant::now();
        let (late, _rl) = read("late", now);
        let (gone, rx_gone) = read("gone", later());
        drop(rx_gone);
        q.push(late);
        q.push(gone);
        let round = q.start_round().expect("round");
        let (fresh, _rf) = read("fresh", later());
        q.push(fresh);
        q.expire(now);
        assert!(
            q.confirmed(&round).is_empty(),
            "the round served only dead reads"
        );
        let next = q.start_round().expect("the live read still gets a round");
        assert_eq!(keys(&q.confirmed(&next)), [b"fresh"]);
    }

    #[test]
    fn losing_leadership_answers_every_read() {
        let mut q = ReadQueue::default();
        let (a, mut ra) = read("a", later());
        let (b, mut rb) = read("b", later());
        q.push(a);
        let round = q.start_round().expect("round");
        q.push(b);
        let resp = Response::Unavailable("lost leadership".into());
        q.fail_all(&resp);
        assert_eq!(ra.try_recv().ok(), Some(resp.clone()));
        assert_eq!(rb.try_recv().ok(), Some(resp));
        assert!(!q.has_waiting());
        assert!(q.confirmed(&round).is_empty());
    }
}
