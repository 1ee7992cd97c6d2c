//! The `CLUSTER` replies a Redis cluster client builds its slot map from, checked against
//! the slots the shards' leaders report owning.

use std::collections::{BTreeMap, BTreeSet};

use shardkv::client::Client;
use shardkv_transport::{HostId, ShardId};

use super::host_connection;
use crate::common::{self, Cluster};

/// `(first, last, shard)` of every slot range the shards' leaders report owning.
async fn slot_ranges(
    client: &Client,
    leaders: &BTreeMap<ShardId, HostId>,
) -> Vec<(u16, u16, ShardId)> {
    let mut ranges = Vec::new();
    for (&shard, &leader) in leaders {
        let slots = common::slots::replica_slots(client, leader, shard)
            .await
            .unwrap_or_else(|| panic!("leader {leader} reports shard {shard}'s slots"));
        ranges.extend(slots.into_iter().map(|(a, b)| (a, b, shard)));
    }
    ranges.sort_unstable();
    ranges
}

/// `CLUSTER SLOTS`, `NODES`, `INFO`, `MYID` and `SHARDS` on every host: each slot once, at
/// the RESP address of its shard's leader, with the other replicas as replicas.
pub async fn describe_the_shards(
    cluster: &Cluster,
    client: &Client,
    leaders: &BTreeMap<ShardId, HostId>,
) {
    let ranges = slot_ranges(client, leaders).await;
    let covered: u32 = ranges
        .iter()
        .map(|&(a, b, _)| u32::from(b) - u32::from(a) + 1)
        .sum();
    assert_eq!(covered, 16384, "the shards own every slot: {ranges:?}");
    let led_hosts: BTreeSet<HostId> = leaders.values().copied().collect();

    for h in &cluster.cfg.hosts {
        let id = h.host.id;
        // CLUSTER SLOTS, read as the redis crate reads it.
        let mut con = host_connection(cluster, id).await;
        let reply: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut con)
            .await
            .expect("CLUSTER SLOTS");
        let mut seen = Vec::new();
        let redis::Value::Array(entries) = reply else {
            panic!("CLUSTER SLOTS is an array: {reply:?}");
        };
        for entry in entries {
            let redis::Value::Array(fields) = entry else {
                panic!("a CLUSTER SLOTS entry is an array: {entry:?}");
            };
            let first: u16 = redis::from_redis_value_ref(&fields[0]).expect("first slot");
            let last: u16 = redis::from_redis_value_ref(&fields[1]).expect("last slot");
            let nodes: Vec<(String, u16, String)> = fields[2..]
                .iter()
                .map(|n| {
                    let redis::Value::Array(n) = n else {
                        panic!("a node is an array: {n:?}");
                    };
                    (
                        redis::from_redis_value_ref(&n[0]).expect("node ip"),
                        redis::from_redis_value_ref(&n[1]).expect("node port"),
                        redis::from_redis_value_ref(&n[2]).expect("node id"),
                    )
                })
                .collect();
            let &(_, _, shard) = ranges
                .iter()
                .find(|&&(a, b, _)| a == first && b == last)
                .unwrap_or_else(|| panic!("{first}-{last} is a shard's range: {ranges:?}"));
            let master = format!("{}:{}", nodes[0].0, nodes[0].1);
            assert_eq!(
                cluster.host_at_resp(&master),
                leaders[&shard],
                "host {id}: the master of {first}-{last} is shard {shard}'s leader"
            );
            let replicas: BTreeSet<HostId> = nodes[1..]
                .iter()
                .map(|(ip, port, _)| cluster.host_at_resp(&format!("{ip}:{port}")))
                .collect();
            let expected: BTreeSet<HostId> = [1, 2, 3]
                .into_iter()
                .filter(|&h| h != leaders[&shard])
                .collect();
            assert_eq!(replicas, expected, "host {id}: replicas of {first}-{last}");
            assert!(nodes.iter().all(|n| n.2.len() == 40));
            seen.push((first, last, shard));
        }
        seen.sort_unstable();
        assert_eq!(
            seen, ranges,
            "host {id}: CLUSTER SLOTS lists every range once"
        );

        // CLUSTER NODES through redis-cli: one line per host, masters owning the slots.
        let nodes = cluster.redis_cli_text(id, &["cluster", "nodes"]);
        let lines: Vec<Vec<&str>> = nodes.lines().map(|l| l.split(' ').collect()).collect();
        assert_eq!(lines.len(), 3, "host {id}: CLUSTER NODES\n{nodes}");
        let myself: Vec<&Vec<&str>> = lines.iter().filter(|l| l[2].contains("myself")).collect();
        assert_eq!(myself.len(), 1, "one line is myself:\n{nodes}");
        assert!(
            myself[0][1].starts_with(&format!("{}@", cluster.resp_addr(id))),
            "myself is host {id}:\n{nodes}"
        );
        let myid = cluster.redis_cli_text(id, &["cluster", "myid"]);
        assert_eq!(myself[0][0], myid, "CLUSTER MYID is myself's id");
        let mut node_slots = Vec::new();
        for l in &lines {
            assert!(l.len() >= 8, "a node line has 8 fields: {l:?}");
            assert_eq!(l[0].len(), 40, "node id of {l:?}");
            assert!(l[0].bytes().all(|b| b.is_ascii_hexdigit()));
            let addr = l[1].split('@').next().expect("ip:port@cport");
            let host = cluster.host_at_resp(addr);
            assert_eq!(l[7], "connected", "{l:?}");
            if led_hosts.contains(&host) {
                assert!(
                    l[2].contains("master"),
                    "leader host {host} is a master: {l:?}"
                );
            }
            for range in &l[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                let (a, b): (u16, u16) = (a.parse().expect("slot"), b.parse().expect("slot"));
                node_slots.push((a, b, host));
            }
        }
        node_slots.sort_unstable();
        let expected: Vec<(u16, u16, HostId)> = ranges
            .iter()
            .map(|&(a, b, shard)| (a, b, leaders[&shard]))
            .collect();
        assert_eq!(node_slots, expected, "host {id}: masters' slots\n{nodes}");

        // CLUSTER INFO through redis-cli.
        let info = cluster.redis_cli_text(id, &["cluster", "info"]);
        let fields: BTreeMap<&str, &str> = info
            .lines()
            .filter_map(|l| l.trim_end().split_once(':'))
            .collect();
        assert_eq!(fields.get("cluster_state"), Some(&"ok"), "{info}");
        assert_eq!(
            fields.get("cluster_slots_assigned"),
            Some(&"16384"),
            "{info}"
        );
        assert_eq!(fields.get("cluster_slots_ok"), Some(&"16384"), "{info}");
        assert_eq!(fields.get("cluster_known_nodes"), Some(&"3"), "{info}");
        assert_eq!(
            fields.get("cluster_size"),
            Some(&led_hosts.len().to_string().as_str()),
            "{info}"
        );

        // CLUSTER SHARDS: one entry per shard.
        let shards: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SHARDS")
            .query_async(&mut con)
            .await
            .expect("CLUSTER SHARDS");
        assert_eq!(shards.len(), leaders.len(), "host {id}: CLUSTER SHARDS");
    }
}
