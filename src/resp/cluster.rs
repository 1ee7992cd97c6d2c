//! Redis Cluster's view of a shardkv cluster, as pure functions over a [`ClusterView`]: the
//! replies of `CLUSTER SLOTS`, `CLUSTER SHARDS`, `CLUSTER NODES` and `CLUSTER INFO`, and the
//! stable node ids.
//!
//! A shard is a Redis shard: its leader the master, its other replicas the replicas, each at
//! its host's RESP address. Hosts without a RESP address are left out; a shard whose master
//! has none leaves its slots uncovered (and the cluster state `fail`), so a client is never
//! sent somewhere it cannot connect. After a split a shard owns several slot ranges; each is
//! listed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use shardkv_transport::slot::{Slot, SLOT_COUNT};
use shardkv_transport::{HostId, ShardId};

use super::reply::Reply;

/// One host as Redis Cluster shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its RESP address.
    pub addr: SocketAddr,
    /// Its 40-hex-digit node id ([`node_id`]).
    pub id: String,
}

/// One shard: its slot ranges, its master if one is known, and every host holding a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    pub shard: ShardId,
    /// Inclusive `(first, last)` ranges, sorted.
    pub slots: Vec<(Slot, Slot)>,
    pub master: Option<HostId>,
    /// The hosts of the shard's replicas, the master among them, ascending.
    pub hosts: Vec<HostId>,
}

/// What the `CLUSTER` replies are computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// The cluster map's epoch (Redis' current epoch).
    pub epoch: u64,
    /// The host answering.
    pub myself: HostId,
    /// Hosts with a RESP address.
    pub nodes: BTreeMap<HostId, Node>,
    /// The data shards, by id.
    pub shards: Vec<ShardView>,
    /// Whether the listeners speak TLS (`CLUSTER SHARDS` then names the port `tls-port`).
    pub tls: bool,
}

/// A host's node id: 40 hex digits of SHA-256 over the cluster name and the host id, so it is
/// the same on every host and across restarts, and differs between clusters.
pub fn node_id(cluster: &str, host: HostId) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"shardkv redis node\0");
    ctx.update(cluster.as_bytes());
    ctx.update(b"\0");
    ctx.update(&host.to_be_bytes());
    let digest = ctx.finish();
    digest.as_ref()[..20]
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl ClusterView {
    /// The shards whose master is known and reachable over RESP, with that master's node.
    fn served(&self) -> impl Iterator<Item = (&ShardView, HostId, &Node)> {
        self.shards.iter().filter_map(|s| {
            let master = s.master?;
            Some((s, master, self.nodes.get(&master)?))
        })
    }

    /// The replicas of `shard` other than its master that have a RESP address.
    fn replicas<'a>(&'a self, shard: &'a ShardView) -> impl Iterator<Item = (HostId, &'a Node)> {
        shard
            .hosts
            .iter()
            .filter(move |h| Some(**h) != shard.master)
            .filter_map(|h| Some((*h, self.nodes.get(h)?)))
    }

    /// Slots of shards [`ClusterView::served`].
    fn slots_ok(&self) -> u32 {
        self.served()
            .flat_map(|(s, _, _)| s.slots.iter())
            .map(|(first, last)| u32::from(last - first) + 1)
            .sum()
    }

    /// `CLUSTER SLOTS`: per slot range, `[first, last, master, replicas..]`, each node as
    /// `[ip, port, id]`.
    pub fn slots(&self) -> Reply {
        let entry = |node: &Node| {
            Reply::Array(vec![
                Reply::text(node.addr.ip().to_string()),
                Reply::Integer(i64::from(node.addr.port())),
                Reply::text(node.id.clone()),
            ])
        };
        let mut out = Vec::new();
        for (shard, _, master) in self.served() {
            for &(first, last) in &shard.slots {
                let mut range = vec![
                    Reply::Integer(i64::from(first)),
                    Reply::Integer(i64::from(last)),
                    entry(master),
                ];
                range.extend(self.replicas(shard).map(|(_, n)| entry(n)));
                out.push(range);
            }
        }
        out.sort_by_key(|r| match r.first() {
            Some(Reply::Integer(first)) => *first,
            _ => 0,
        });
        Reply::Array(out.into_iter().map(Reply::Array).collect())
    }

    /// `CLUSTER SHARDS` (Redis 7): per shard, its slots and its nodes with their roles.
    pub fn shards(&self) -> Reply {
        let port_name = if self.tls { "tls-port" } else { "port" };
        let node = |node: &Node, role: &str| {
            Reply::Map(vec![
                (Reply::text("id"), Reply::text(node.id.clone())),
                (
                    Reply::text(port_name),
                    Reply::Integer(i64::from(node.addr.port())),
                ),
                (Reply::text("ip"), Reply::text(node.addr.ip().to_string())),
                (
                    Reply::text("endpoint"),
                    Reply::text(node.addr.ip().to_string()),
                ),
                (Reply::text("role"), Reply::text(role)),
                (Reply::text("replication-offset"), Reply::Integer(0)),
                (Reply::text("health"), Reply::text("online")),
            ])
        };
        let shards = self
            .served()
            .map(|(shard, _, master)| {
                let slots = shard
                    .slots
                    .iter()
                    .flat_map(|&(f, l)| {
                        [Reply::Integer(i64::from(f)), Reply::Integer(i64::from(l))]
                    })
                    .collect();
                let mut nodes = vec![node(master, "master")];
                nodes.extend(self.replicas(shard).map(|(_, n)| node(n, "replica")));
                Reply::Map(vec![
                    (Reply::text("slots"), Reply::Array(slots)),
                    (Reply::text("nodes"), Reply::Array(nodes)),
                ])
            })
            .collect();
        Reply::Array(shards)
    }

    /// `CLUSTER NODES`: one line per host with a RESP address. A host leading shards is a
    /// master of their slot ranges; one leading none is shown as a replica of the master of
    /// the first shard it holds (a master without slots if it holds none).
    pub fn nodes(&self) -> String {
        let mut led: BTreeMap<HostId, Vec<(Slot, Slot)>> = BTreeMap::new();
        for (shard, master, _) in self.served() {
            led.entry(master).or_default().extend(&shard.slots);
        }
        let mut out = String::new();
        for (host, node) in &self.nodes {
            let myself = if *host == self.myself { "myself," } else { "" };
            let (role, master_id) = match led.get(host) {
                Some(_) => ("master", "-".to_string()),
                None => {
                    let master = self
                        .served()
                        .find(|(s, _, _)| s.hosts.contains(host))
                        .map(|(_, _, m)| m.id.clone());
                    match master {
                        Some(id) => ("slave", id),
                        None => ("master", "-".to_string()),
                    }
                }
            };
            let _ = write!(
                out,
                "{} {}:{}@{} {myself}{role} {master_id} 0 0 {} connected",
                node.id,
                node.addr.ip(),
                node.addr.port(),
                u32::from(node.addr.port()) + 10_000,
                self.epoch,
            );
            let mut ranges = led.get(host).cloned().unwrap_or_default();
            ranges.sort_unstable();
            for (first, last) in ranges {
                if first == last {
                    let _ = write!(out, " {first}");
                } else {
                    let _ = write!(out, " {first}-{last}");
                }
            }
            out.push('\n');
        }
        out
    }

    /// `CLUSTER INFO`: `ok` only when every slot has a master reachable over RESP.
    pub fn info(&self) -> String {
        let ok = self.slots_ok();
        let assigned: u32 = self
            .shards
            .iter()
            .flat_map(|s| s.slots.iter())
            .map(|(first, last)| u32::from(last - first) + 1)
            .sum();
        let state = if ok == u32::from(SLOT_COUNT) {
            "ok"
        } else {
            "fail"
        };
        let masters: std::collections::BTreeSet<HostId> =
            self.served().map(|(_, m, _)| m).collect();
        format!(
            "cluster_state:{state}\r\ncluster_slots_assigned:{assigned}\r\n\
             cluster_slots_ok:{ok}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\n\
             cluster_known_nodes:{}\r\ncluster_size:{}\r\ncluster_current_epoch:{}\r\n\
             cluster_my_epoch:{}\r\ncluster_stats_messages_sent:0\r\n\
             cluster_stats_messages_received:0\r\n",
            assigned.saturating_sub(ok),
            self.nodes.len(),
            masters.len(),
            self.epoch,
            self.epoch,
        )
    }
}

#[cfg(test)]
mod tests;
