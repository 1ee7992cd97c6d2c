//! [`Topology`]: this host's picture of the cluster as Redis Cluster clients need it: the
//! cluster map it routes by, each shard's leader, and every host's RESP address.
//!
//! A background task ([`Topology::refresh`]) keeps it current, about once a second: the map
//! and the leaders the local replicas know come from this host's router; the leaders of
//! shards with no replica here from the other hosts' status, asked with the host's own
//! certificate. Commands only ever read the last picture, so none waits on a refresh; a
//! leader learned from a `NotLeader` answer is noted at once. A leader not known yet is
//! taken to be the map's preferred one, so every slot has a master to redirect to from the
//! start; a wrong guess costs a client one more `-MOVED`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::Addr;
use shardkv_actors::router::{GetHostStatus, MapOp, RouterActor};
use shardkv_client::Client;
use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::wire::{MapRequest, Response};
use shardkv_transport::{ClusterMap, HostId, ShardId};
use tracing::debug;

use super::cluster::{node_id, ClusterView, Node, ShardView};

/// How often the picture is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// One picture of the cluster (see the module docs).
#[derive(Debug, Clone)]
pub struct Picture {
    pub map: ClusterMap,
    /// Leaders known from a replica's status or a reply.
    pub leaders: BTreeMap<ShardId, HostId>,
    /// The map's preferred leaders, for shards whose leader is not known.
    pub preferred: BTreeMap<ShardId, HostId>,
}

impl Picture {
    fn new(map: ClusterMap) -> Picture {
        Picture {
            preferred: map.preferred_leaders(),
            map,
            leaders: BTreeMap::new(),
        }
    }

    /// The leader of `shard`: known, else the map's preferred one.
    pub fn leader_of(&self, shard: ShardId) -> Option<HostId> {
        self.leaders
            .get(&shard)
            .or_else(|| self.preferred.get(&shard))
            .copied()
    }
}

/// The live picture and what never changes while the host runs.
#[derive(Debug)]
pub struct Topology {
    cluster: String,
    host: HostId,
    /// Every host's RESP address (hosts without one are absent).
    resp_addrs: BTreeMap<HostId, SocketAddr>,
    tls: bool,
    picture: RwLock<Arc<Picture>>,
}

impl Topology {
    /// The topology of host `host` of cluster `cluster`, starting from `map`.
    pub fn new(
        cluster: String,
        host: HostId,
        resp_addrs: BTreeMap<HostId, SocketAddr>,
        tls: bool,
        map: ClusterMap,
    ) -> Topology {
        Topology {
            cluster,
            host,
            resp_addrs,
            tls,
            picture: RwLock::new(Arc::new(Picture::new(map))),
        }
    }

    /// The host this is.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// This host's node id.
    pub fn my_id(&self) -> String {
        node_id(&self.cluster, self.host)
    }

    /// The RESP address of `host`, if it has one.
    pub fn resp_addr(&self, host: HostId) -> Option<SocketAddr> {
        self.resp_addrs.get(&host).copied()
    }

    /// The last picture.
    pub fn picture(&self) -> Arc<Picture> {
        match self.picture.read() {
            Ok(p) => p.clone(),
            // A writer panicked mid-update; the picture it left is still a whole one.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Picture)) {
        let mut guard = match self.picture.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = (**guard).clone();
        change(&mut next);
        *guard = Arc::new(next);
    }

    /// Notes that `leader` leads `shard` (from a reply).
    pub fn note_leader(&self, shard: ShardId, leader: HostId) {
        if self.picture().leaders.get(&shard) != Some(&leader) {
            self.update(|p| {
                p.leaders.insert(shard, leader);
            });
        }
    }

    /// The `CLUSTER` view of the last picture.
    pub fn cluster_view(&self) -> ClusterView {
        let picture = self.picture();
        let nodes = self
            .resp_addrs
            .iter()
            .filter(|(h, _)| picture.map.host(**h).is_some())
            .map(|(&h, &addr)| {
                let id = node_id(&self.cluster, h);
                (h, Node { addr, id })
            })
            .collect();
        let shards = picture
            .map
            .shards()
            .iter()
            .filter(|(id, s)| **id != META_SHARD && !s.slots.is_empty())
            .map(|(&shard, s)| ShardView {
                shard,
                slots: s.slots.clone(),
                master: picture.leader_of(shard),
                // Voters only: a learner may still be catching up, and a READONLY client
                // reading there would miss keys that exist.
                hosts: s.voters().collect(),
            })
            .collect();
        ClusterView {
            epoch: picture.map.epoch(),
            myself: self.host,
            nodes,
            shards,
            tls: self.tls,
        }
    }

    /// Keeps the picture current until the host stops (see the module docs). `client`
    /// carries the host's certificate, to ask other hosts for their status.
    pub async fn refresh(self: Arc<Self>, router: Addr<RouterActor>, client: Client) {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh_once(&router, &client).await;
        }
    }

    async fn refresh_once(&self, router: &Addr<RouterActor>, client: &Client) {
        if let Ok(Response::Value(Some(bytes))) = router.send(MapOp(MapRequest::Current)).await {
            match ClusterMap::decode(&bytes) {
                Ok(map) if map.epoch() != self.picture().map.epoch() => {
                    debug!(epoch = map.epoch(), "RESP topology takes a new cluster map");
                    self.update(|p| {
                        let leaders = std::mem::take(&mut p.leaders);
                        *p = Picture::new(map);
                        p.leaders = leaders;
                    });
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "the router's cluster map does not decode"),
            }
        }
        let mut learned = BTreeMap::new();
        let mut local = BTreeSet::new();
        if let Ok(status) = router.send(GetHostStatus).await {
            for r in status.replicas {
                local.insert(r.shard);
                if let Some(leader) = r.leader {
                    learned.insert(r.shard, leader);
                }
            }
        }
        // One status request per other host holding a shard this host does not, all at once.
        let picture = self.picture();
        let ask: BTreeSet<HostId> = picture
            .map
            .shards()
            .iter()
            .filter(|(id, _)| **id != META_SHARD && !local.contains(id))
            .filter_map(|(_, s)| s.replicas.keys().find(|h| **h != self.host).copied())
            .collect();
        let asked = futures::future::join_all(ask.into_iter().map(|h| client.host_status(h))).await;
        for status in asked.into_iter().flatten() {
            for r in status.replicas {
                if !local.contains(&r.shard) {
                    if let Some(leader) = r.leader {
                        learned.entry(r.shard).or_insert(leader);
                    }
                }
            }
        }
        if learned
            .iter()
            .any(|(s, l)| picture.leaders.get(s) != Some(l))
        {
            self.update(|p| p.leaders.extend(learned));
        }
    }
}

/// A topology for unit tests, seen from host 1: hosts 1..=3 on 127.0.0.1:7101..7103, each
/// shard `h` of 1..=3 placed on host `h` first; the hosts of `resp` listen on 127.0.0.1:610h.
#[cfg(test)]
pub(crate) fn test_topology(resp: &[HostId]) -> Topology {
    let layout = shardkv_transport::Layout {
        shards: 3,
        replicas: 3,
        pins: vec![],
        placement: vec![(1, vec![1, 2, 3]), (2, vec![2, 3, 1]), (3, vec![3, 1, 2])],
    };
    let addrs: Vec<(HostId, String)> = (1..=3)
        .map(|h| (h, format!("127.0.0.1:71{h:02}")))
        .collect();
    let map = ClusterMap::day0(&layout, &addrs).expect("a day-0 map");
    let resp = resp
        .iter()
        .map(|&h| (h, SocketAddr::from(([127, 0, 0, 1], 6100 + h as u16))))
        .collect();
    Topology::new("t".into(), 1, resp, false, map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        test_topology(&[1, 2])
    }

    #[test]
    fn an_unknown_leader_is_the_maps_preferred_one_until_one_is_noted() {
        let t = topology();
        assert_eq!(
            t.picture().leader_of(2),
            Some(2),
            "the placement's first host"
        );
        t.note_leader(2, 3);
        assert_eq!(t.picture().leader_of(2), Some(3));
    }

    #[test]
    fn the_cluster_view_lists_data_shards_and_hosts_with_resp_only() {
        let view = topology().cluster_view();
        assert_eq!(view.nodes.keys().copied().collect::<Vec<_>>(), [1, 2]);
        let shards: Vec<ShardId> = view.shards.iter().map(|s| s.shard).collect();
        assert_eq!(
            shards,
            [1, 2, 3],
            "the meta group owns no slots and is left out"
        );
        assert_eq!(view.shards[0].hosts, [1, 2, 3]);
        assert_eq!(view.myself, 1);
    }
}
