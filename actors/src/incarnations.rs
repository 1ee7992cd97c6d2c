//! Which incarnation of each peer host this host accepts Raft traffic from.
//!
//! A peer's incarnation identifies its data dir (see [`crate::schema::meta`]). The first one
//! heard from a peer is recorded durably before any of its traffic is accepted; from then on,
//! traffic from another incarnation of that host (its disk was wiped or replaced) is dropped,
//! so a replica that forgot what it acknowledged never votes and never counts toward a quorum.
//! It stays refused until an operator replaces the host (a membership change).

use std::collections::{HashMap, HashSet};

use shardkv_transport::HostId;

/// What to do with a batch from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The incarnation on record: deliver.
    Accept,
    /// The first incarnation heard from this peer: record it durably, drop this batch (Raft
    /// retransmits) and accept once the record is on disk.
    Record,
    /// Recording is under way: drop.
    Recording,
    /// Another incarnation than the one on record: drop, and tell the operator.
    Refuse { known: u64 },
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct PeerIncarnations {
    known: HashMap<HostId, u64>,
    recording: HashSet<HostId>,
}

impl PeerIncarnations {
    /// Starts from the records on disk.
    pub fn new(known: impl IntoIterator<Item = (HostId, u64)>) -> Self {
        PeerIncarnations {
            known: known.into_iter().collect(),
            recording: HashSet::new(),
        }
    }

    /// Judges a batch from `host` carrying `incarnation`.
    pub fn judge(&mut self, host: HostId, incarnation: u64) -> Verdict {
        match self.judge_known(host, incarnation) {
            // No record yet: the first to ask starts recording.
            Verdict::Recording if self.recording.insert(host) => Verdict::Record,
            verdict => verdict,
        }
    }

    /// Judges traffic that may only come from the incarnation on record and never records one
    /// (snapshots): `Accept` for that incarnation, `Refuse` for any other, `Recording` while
    /// no record is durable yet.
    pub fn judge_known(&self, host: HostId, incarnation: u64) -> Verdict {
        match self.known.get(&host) {
            Some(&known) if known == incarnation => Verdict::Accept,
            Some(&known) => Verdict::Refuse { known },
            None => Verdict::Recording,
        }
    }

    /// The record for `host` is durable (`Some`), or failed and may be tried again (`None`).
    pub fn recorded(&mut self, host: HostId, incarnation: Option<u64>) {
        self.recording.remove(&host);
        if let Some(incarnation) = incarnation {
            self.known.insert(host, incarnation);
        }
    }

    /// Every record, by host id.
    pub fn records(&self) -> Vec<(HostId, u64)> {
        let mut records: Vec<_> = self.known.iter().map(|(h, i)| (*h, *i)).collect();
        records.sort_unstable();
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_incarnation_is_recorded_before_it_is_accepted() {
        let mut peers = PeerIncarnations::default();
        assert_eq!(peers.judge(2, 7), Verdict::Record);
        assert_eq!(peers.judge(2, 7), Verdict::Recording);
        peers.recorded(2, Some(7));
        assert_eq!(peers.judge(2, 7), Verdict::Accept);
        assert_eq!(peers.records(), [(2, 7)]);
    }

    #[test]
    fn another_incarnation_of_a_known_host_is_refused() {
        let mut peers = PeerIncarnations::new([(3, 30)]);
        assert_eq!(peers.judge(3, 31), Verdict::Refuse { known: 30 });
        assert_eq!(peers.judge(3, 30), Verdict::Accept);
    }

    #[test]
    fn snapshots_pass_only_from_the_incarnation_on_record() {
        let mut peers = PeerIncarnations::new([(3, 30)]);
        assert_eq!(peers.judge_known(3, 30), Verdict::Accept);
        assert_eq!(peers.judge_known(3, 31), Verdict::Refuse { known: 30 });
        assert_eq!(peers.judge_known(2, 20), Verdict::Recording);
        assert_eq!(
            peers.judge(2, 20),
            Verdict::Record,
            "judge_known recorded nothing"
        );
    }

    #[test]
    fn a_failed_record_is_tried_again() {
        let mut peers = PeerIncarnations::default();
        assert_eq!(peers.judge(2, 7), Verdict::Record);
        peers.recorded(2, None);
        assert_eq!(peers.judge(2, 7), Verdict::Record);
    }
}
