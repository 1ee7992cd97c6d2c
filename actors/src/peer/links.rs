//! The host's directory of outbound Raft links, one [`PeerActor`] per other host, shared by
//! every replica and kept in step with the live cluster map.
//!
//! A replica change may add any member host to any shard, and a host may become a member
//! while the others run with the `cluster.toml` they started with. So links are not fixed at
//! start: [`PeerLinks`] is one directory (a clone is the same directory, not a copy) that the
//! replica factory, every replica and the map watcher hold, and [`PeerDialer::follow`] adds a
//! link for every member of a newer map that has none and closes the links of removed hosts.
//! A replica sees a new link with its next message; nothing restarts.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use actix::prelude::*;
use quinn::Endpoint;
use shardkv_transport::cluster_map::HostState;
use shardkv_transport::{ClusterMap, HostId};
use tracing::{info, warn};

use super::{ClosePeerLink, PeerActor};
use crate::messages::SendRaft;

/// One outbound link: where Raft messages for the host go, and how to end the link.
struct PeerLink {
    raft: Recipient<SendRaft>,
    close: Recipient<ClosePeerLink>,
}

/// Link losses a replica may fall behind on before it is told it missed some (and wakes as if
/// its leader's link were among them).
const LOST_LINKS_BUFFERED: usize = 64;

/// See the module docs. Every method takes the lock for one lookup or one change only, and
/// never while sending anything that could wait.
#[derive(Clone)]
pub struct PeerLinks {
    links: Arc<RwLock<HashMap<HostId, PeerLink>>>,
    /// Hosts whose link was lost (connection closed or timed out, or cut by a test fault), for
    /// hibernating replicas, which hear nothing else from a leader that is gone.
    lost: tokio::sync::broadcast::Sender<HostId>,
}

impl Default for PeerLinks {
    fn default() -> Self {
        PeerLinks {
            links: Arc::default(),
            lost: tokio::sync::broadcast::channel(LOST_LINKS_BUFFERED).0,
        }
    }
}

impl PeerLinks {
    // A panic while the lock is held cannot leave the map half changed (every change is one
    // `HashMap` call), so a poisoned lock still guards a valid directory.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<HostId, PeerLink>> {
        self.links.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<HostId, PeerLink>> {
        self.links.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `actor` the link to `host`, unless the host has one already (then `actor` is
    /// not used and `false` is returned: one link per host, so one connection per host).
    pub fn insert<A>(&self, host: HostId, actor: &Addr<A>) -> bool
    where
        A: Actor<Context = Context<A>> + Handler<SendRaft> + Handler<ClosePeerLink>,
    {
        let mut links = self.write();
        if links.contains_key(&host) {
            return false;
        }
        links.insert(
            host,
            PeerLink {
                raft: actor.clone().recipient(),
                close: actor.clone().recipient(),
            },
        );
        true
    }

    /// Whether there is a link to `host`.
    pub fn contains(&self, host: HostId) -> bool {
        self.read().contains_key(&host)
    }

    /// The hosts with a link, ascending.
    pub fn hosts(&self) -> BTreeSet<HostId> {
        self.read().keys().copied().collect()
    }

    /// Runs `f` with the link to `host`; `None` (and `f` not run) if there is none. The link
    /// cannot close while `f` runs, so what `f` prepares for a send (a snapshot file claimed
    /// for the peer) is never left waiting on a link that is gone.
    pub fn with<R>(&self, host: HostId, f: impl FnOnce(&Recipient<SendRaft>) -> R) -> Option<R> {
        self.read().get(&host).map(|link| f(&link.raft))
    }

    /// Hosts whose link is lost from now on, as they are lost (see
    /// [`crate::replica::hibernate`]).
    pub fn subscribe_lost(&self) -> tokio::sync::broadcast::Receiver<HostId> {
        self.lost.subscribe()
    }

    /// What a link reports its losses through.
    pub(super) fn lost_sender(&self) -> tokio::sync::broadcast::Sender<HostId> {
        self.lost.clone()
    }

    /// Takes the link to `host` out of the directory and ends it (its queue is dropped: Raft
    /// retransmits to whoever still counts). `false` if there was none.
    pub fn close(&self, host: HostId) -> bool {
        let Some(link) = self.write().remove(&host) else {
            return false;
        };
        link.close.do_send(ClosePeerLink);
        true
    }
}

/// What following a map changes in a directory that links `linked`: computed without I/O, so
/// the rules are tested on their own.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LinkPlan {
    /// Members without a link, with the address the map gives them.
    pub dial: Vec<(HostId, SocketAddr)>,
    /// Linked hosts the map has removed.
    pub close: Vec<HostId>,
    /// Members without a link whose address does not parse, with the address.
    pub unreadable: Vec<(HostId, String)>,
}

impl LinkPlan {
    /// The plan for host `me`: a link to every host of `map` that is not removed, not `me` and
    /// not linked yet; closing every linked host that `map` lists as removed. A linked host
    /// the map does not list keeps its link: `cluster.toml` may list hosts before they are
    /// added, and the day-0 map lists only the hosts the placement uses.
    pub fn for_map(me: HostId, linked: &BTreeSet<HostId>, map: &ClusterMap) -> Self {
        let mut plan = LinkPlan::default();
        for (&host, entry) in map.hosts() {
            if host == me {
                continue;
            }
            let linked = linked.contains(&host);
            match (entry.state, linked) {
                (HostState::Removed, true) => plan.close.push(host),
                (HostState::Removed, false) | (_, true) => {}
                (_, false) => match entry.addr.parse::<SocketAddr>() {
                    Ok(addr) => plan.dial.push((host, addr)),
                    Err(_) => plan.unreadable.push((host, entry.addr.clone())),
                },
            }
        }
        plan
    }
}

/// What every link of this host shares, to start one: the QUIC endpoint it dials from, the
/// snapshot files it streams, the incarnation it stamps on batches, and the directory the new
/// link goes into.
pub struct PeerDialer {
    me: HostId,
    endpoint: Endpoint,
    snap_dir: PathBuf,
    incarnation: u64,
    links: PeerLinks,
}

impl PeerDialer {
    /// A dialer for host `me` (data dir `incarnation`) adding links to `links`.
    pub fn new(
        me: HostId,
        endpoint: Endpoint,
        snap_dir: PathBuf,
        incarnation: u64,
        links: PeerLinks,
    ) -> Self {
        PeerDialer {
            me,
            endpoint,
            snap_dir,
            incarnation,
            links,
        }
    }

    /// The directory this dialer adds to.
    pub fn links(&self) -> &PeerLinks {
        &self.links
    }

    /// Starts a link to `peer` at `addr`, unless it has one (or is this host). Must run on the
    /// host's actor system. Whether a link was added.
    pub fn dial(&self, peer: HostId, addr: SocketAddr) -> bool {
        if peer == self.me || self.links.contains(peer) {
            return false;
        }
        let actor = PeerActor::new(
            peer,
            addr,
            self.endpoint.clone(),
            self.snap_dir.clone(),
            self.incarnation,
            self.links.lost_sender(),
        )
        .start();
        if self.links.insert(peer, &actor) {
            return true;
        }
        actor.do_send(ClosePeerLink);
        false
    }

    /// Brings the directory in line with `map` (see [`LinkPlan::for_map`]); an address that
    /// does not parse is logged and skipped, the other hosts are still linked.
    pub fn follow(&self, map: &ClusterMap) {
        let plan = LinkPlan::for_map(self.me, &self.links.hosts(), map);
        for (peer, addr) in plan.unreadable {
            warn!(
                peer,
                %addr,
                epoch = map.epoch(),
                "the cluster map gives this host an address that is not ip:port; no Raft link \
                 to it until a map gives a valid one"
            );
        }
        for (peer, addr) in plan.dial {
            if self.dial(peer, addr) {
                info!(peer, %addr, epoch = map.epoch(), "Raft link to a host of the cluster map");
            }
        }
        for peer in plan.close {
            if self.links.close(peer) {
                info!(
                    peer,
                    epoch = map.epoch(),
                    "Raft link closed: the cluster map removed the host"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
