//! Which incarnation of each peer host this host accepts Raft traffic from.
//!
//! A peer's incarnation identifies its data dir (see [`crate::schema::meta`]). The first one
//! heard from a peer is recorded durably before any of its traffic is accepted; from then on,
//! traffic from another incarnation of that host (its disk was wiped or replaced) is dropped,
//! so a replica that forgot what it acknowledged never votes and never counts toward a quorum.
//! It stays refused until an operator replaces the host (a membership change).
//!
//! The live cluster map rules over a record made on first contact: once it lists an
//! incarnation for a host (set by `shardkv host add` for a new host, or by `shardkv host
//! replace` after the host's replicas were taken out of their Raft groups), only that one is
//! accepted, and it is recorded durably before it is.

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
    /// The incarnation the live map lists for each host whose one it knows.
    listed: HashMap<HostId, u64>,
}

impl PeerIncarnations {
    /// Starts from the records on disk.
    pub fn new(known: impl IntoIterator<Item = (HostId, u64)>) -> Self {
        PeerIncarnations {
            known: known.into_iter().collect(),
            recording: HashSet::new(),
            listed: HashMap::new(),
        }
    }

    /// The incarnations the live map lists, by host (0, "not known yet", is left out).
    pub fn set_listed(&mut self, listed: impl IntoIterator<Item = (HostId, u64)>) {
        self.listed = listed.into_iter().filter(|(_, i)| *i != 0).collect();
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
        let known = self.known.get(&host).copied();
        match self.listed.get(&host).copied() {
            Some(listed) if listed != incarnation => Verdict::Refuse { known: listed },
            // The map's one, not on record yet: recorded before it is accepted.
            Some(_) if known != Some(incarnation) => Verdict::Recording,
            _ => match known {
                Some(known) if known == incarnation => Verdict::Accept,
                Some(known) => Verdict::Refuse { known },
                None => Verdict::Recording,
            },
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
    fn the_incarnation_the_map_lists_replaces_the_one_on_record() {
        let mut peers = PeerIncarnations::new([(3, 30)]);
        peers.set_listed([(3, 31), (4, 0)]);
        assert_eq!(
            peers.judge(3, 30),
            Verdict::Refuse { known: 31 },
            "the lost one"
        );
        assert_eq!(
            peers.judge_known(3, 31),
            Verdict::Recording,
            "not durable yet"
        );
        assert_eq!(peers.judge(3, 31), Verdict::Record);
        assert_eq!(peers.judge(3, 31), Verdict::Recording);
        peers.recorded(3, Some(31));
        assert_eq!(peers.judge(3, 31), Verdict::Accept);
        assert_eq!(peers.judge_known(3, 31), Verdict::Accept);
        assert_eq!(peers.records(), [(3, 31)]);
        assert_eq!(
            peers.judge(4, 40),
            Verdict::Record,
            "0 in the map: first contact rules"
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
