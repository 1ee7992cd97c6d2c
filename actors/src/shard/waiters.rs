//! Who waits on the shard: writes waiting for their entry to be applied, reads waiting for
//! the applied index to reach the index they must see.
//!
//! A write is answered only by the entry it proposed: the same index in the same term. An
//! entry of another term at its index means its proposal was lost to a leader change, and
//! the client is told to retry (its session keeps the retry exactly-once).

use std::collections::BTreeMap;

use shardkv_transport::wire::Response;
use tokio::sync::oneshot;

use super::apply::EntryReply;
use crate::messages::ReadKeys;

/// What a write waiting on a lost proposal is told.
fn lost_proposal() -> Response {
    Response::Unavailable("leadership changed before commit; retry".into())
}

/// A write waiting for its entry.
#[derive(Debug)]
struct WriteWaiter {
    /// The term the entry was proposed in.
    term: u64,
    reply: oneshot::Sender<Response>,
}

/// Writes waiting for their entry, by log index.
#[derive(Debug, Default)]
pub struct WriteWaiters {
    by_index: BTreeMap<u64, WriteWaiter>,
}

impl WriteWaiters {
    /// Waits for the entry proposed at (`index`, `term`). A waiter already at `index` was
    /// proposed in an earlier term whose entry was overwritten: it is told to retry.
    pub fn wait(&mut self, index: u64, term: u64, reply: oneshot::Sender<Response>) {
        if let Some(old) = self.by_index.insert(index, WriteWaiter { term, reply }) {
            let _ = old.reply.send(lost_proposal());
        }
    }

    /// Everything up to `last` is applied, with `replies` for the entries that carried a
    /// command: each waiter gets its entry's reply if the term matches and is told to retry
    /// otherwise, including waiters whose index held a no-op of another term.
    pub fn complete(&mut self, replies: Vec<EntryReply>, last: u64) {
        for r in replies {
            if let Some(w) = self.by_index.remove(&r.index) {
                let response = if w.term == r.term {
                    r.response
                } else {
                    lost_proposal()
                };
                let _ = w.reply.send(response);
            }
        }
        let later = self.by_index.split_off(&(last + 1));
        for (_, w) in std::mem::replace(&mut self.by_index, later) {
            let _ = w.reply.send(lost_proposal());
        }
    }

    /// Answers every waiter with `response` (leadership lost, or state replaced).
    pub fn fail_all(&mut self, response: &Response) {
        for (_, w) in std::mem::take(&mut self.by_index) {
            let _ = w.reply.send(response.clone());
        }
    }
}

/// A read waiting for the applied index.
#[derive(Debug)]
pub struct ReadWaiter {
    pub keys: ReadKeys,
    pub reply: oneshot::Sender<Response>,
}

/// Reads waiting for the applied index, by the index each must see.
#[derive(Debug, Default)]
pub struct ReadWaiters {
    by_index: BTreeMap<u64, Vec<ReadWaiter>>,
}

impl ReadWaiters {
    /// Waits until `index` is applied.
    pub fn wait(&mut self, index: u64, read: ReadWaiter) {
        self.by_index.entry(index).or_default().push(read);
    }

    /// The reads that may be served now that everything up to `applied` is applied.
    pub fn take_ready(&mut self, applied: u64) -> Vec<ReadWaiter> {
        let later = self.by_index.split_off(&(applied + 1));
        std::mem::replace(&mut self.by_index, later)
            .into_values()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(index: u64, term: u64) -> EntryReply {
        EntryReply {
            index,
            term,
            response: Response::CasOk,
        }
    }

    fn lost(rx: &mut oneshot::Receiver<Response>) -> bool {
        matches!(rx.try_recv(), Ok(Response::Unavailable(m)) if m.contains("leadership changed"))
    }

    #[test]
    fn a_write_gets_the_reply_of_its_own_entry_only() {
        let mut waiters = WriteWaiters::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        let (tx9, mut rx9) = oneshot::channel();
        waiters.wait(1, 5, tx1);
        waiters.wait(2, 4, tx2); // overwritten by term 5's entry
        waiters.wait(3, 5, tx3); // index 3 was a no-op: no reply for it
        waiters.wait(9, 5, tx9); // not applied yet
        waiters.complete(vec![reply(1, 5), reply(2, 5)], 3);
        assert_eq!(rx1.try_recv().unwrap(), Response::CasOk);
        assert!(lost(&mut rx2));
        assert!(lost(&mut rx3));
        assert!(rx9.try_recv().is_err(), "still waiting");
        waiters.fail_all(&Response::Ok);
        assert_eq!(rx9.try_recv().unwrap(), Response::Ok);
    }

    #[test]
    fn a_second_waiter_at_an_index_retires_the_first() {
        let mut waiters = WriteWaiters::default();
        let (old, mut old_rx) = oneshot::channel();
        let (new, mut new_rx) = oneshot::channel();
        waiters.wait(4, 1, old);
        waiters.wait(4, 2, new);
        assert!(lost(&mut old_rx));
        waiters.complete(vec![reply(4, 2)], 4);
        assert_eq!(new_rx.try_recv().unwrap(), Response::CasOk);
    }

    #[test]
    fn reads_are_released_once_their_index_is_applied() {
        let mut reads = ReadWaiters::default();
        for (index, key) in [(3, "c"), (1, "a"), (2, "b"), (1, "a2")] {
            let (reply, _) = oneshot::channel();
            let keys = ReadKeys::One(key.as_bytes().to_vec());
            reads.wait(index, ReadWaiter { keys, reply });
        }
        let keys = |ready: Vec<ReadWaiter>| -> Vec<Vec<u8>> {
            ready
                .into_iter()
                .map(|r| match r.keys {
                    ReadKeys::One(key) => key,
                    ReadKeys::Many(_) => panic!("the test reads one key at a time"),
                })
                .collect()
        };
        assert_eq!(keys(reads.take_ready(0)), Vec::<Vec<u8>>::new());
        assert_eq!(
            keys(reads.take_ready(2)),
            vec![b"a".to_vec(), b"a2".to_vec(), b"b".to_vec()]
        );
        assert_eq!(keys(reads.take_ready(9)), vec![b"c".to_vec()]);
    }
}
