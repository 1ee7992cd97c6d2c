//! The overlay: the effects of apply batches still on their way to disk.
//!
//! Applying does not wait for its own fsync (a committed entry is durable in the Raft log
//! already), so reads and later batches must see what earlier batches did before LMDB has it.
//! Each value and session here remembers the batch that last wrote it; once that batch is
//! committed, LMDB holds the same and the entry goes. A later batch's write of the same key
//! keeps the entry alive until that later batch is committed too.

use std::collections::HashMap;

use crate::schema::session_record::SessionRecord;

/// A state written by an apply batch not yet committed to LMDB.
#[derive(Debug, Clone)]
struct InFlight<T> {
    /// The number of the batch that last wrote it.
    batch: u64,
    state: T,
}

/// Values and sessions of batches in flight; see the module docs.
#[derive(Debug, Default)]
pub struct Overlay {
    /// User key -> its value (`None`: deleted).
    values: HashMap<Vec<u8>, InFlight<Option<Vec<u8>>>>,
    /// Client -> its session (`None`: expired).
    sessions: HashMap<u64, InFlight<Option<SessionRecord>>>,
}

impl Overlay {
    /// Adds the values and sessions written by batch number `batch`, newer than all before.
    pub fn add(
        &mut self,
        batch: u64,
        values: HashMap<Vec<u8>, Option<Vec<u8>>>,
        sessions: HashMap<u64, Option<SessionRecord>>,
    ) {
        for (key, state) in values {
            self.values.insert(key, InFlight { batch, state });
        }
        for (client, state) in sessions {
            self.sessions.insert(client, InFlight { batch, state });
        }
    }

    /// Batch number `batch` is committed: drops what it was the last to write.
    pub fn settle(&mut self, batch: u64) {
        self.values.retain(|_, v| v.batch != batch);
        self.sessions.retain(|_, s| s.batch != batch);
    }

    /// Forgets everything (the shard's state was replaced wholesale by a snapshot).
    pub fn clear(&mut self) {
        self.values.clear();
        self.sessions.clear();
    }

    /// The in-flight value of `key`: `Some(None)` if deleted, `None` if LMDB decides.
    pub fn value(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.values.get(key).map(|v| &v.state)
    }

    /// The in-flight session of `client`: `Some(None)` if expired, `None` if LMDB decides.
    pub fn session(&self, client: u64) -> Option<&Option<SessionRecord>> {
        self.sessions.get(&client).map(|s| &s.state)
    }

    /// Every in-flight session (`None`: expired).
    pub fn sessions(&self) -> impl Iterator<Item = (u64, Option<&SessionRecord>)> + '_ {
        self.sessions
            .iter()
            .map(|(client, s)| (*client, s.state.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::sessions::session;

    fn values(pairs: &[(&str, Option<&str>)]) -> HashMap<Vec<u8>, Option<Vec<u8>>> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn a_settled_batch_leaves_only_what_later_batches_rewrote() {
        let mut overlay = Overlay::default();
        overlay.add(
            1,
            values(&[("a", Some("1")), ("b", Some("1"))]),
            HashMap::new(),
        );
        overlay.add(2, values(&[("b", None)]), HashMap::new());
        overlay.settle(1);
        assert_eq!(overlay.value(b"a"), None, "LMDB has batch 1's value now");
        assert_eq!(
            overlay.value(b"b"),
            Some(&None),
            "batch 2's delete is still in flight"
        );
        overlay.settle(2);
        assert_eq!(overlay.value(b"b"), None);
    }

    #[test]
    fn sessions_settle_like_values() {
        let mut overlay = Overlay::default();
        let session = session(1, 5, None);
        overlay.add(
            1,
            HashMap::new(),
            HashMap::from([(7, Some(session.clone()))]),
        );
        overlay.add(2, HashMap::new(), HashMap::from([(8, None)]));
        assert_eq!(overlay.session(7), Some(&Some(session)));
        let mut all: Vec<_> = overlay.sessions().map(|(c, s)| (c, s.is_some())).collect();
        all.sort_unstable();
        assert_eq!(all, vec![(7, true), (8, false)]);
        overlay.settle(1);
        assert_eq!(overlay.session(7), None);
        overlay.clear();
        assert_eq!(overlay.session(8), None);
    }
}
