//! Unit tests of the Redis Cluster view: slot ranges after splits, roles, hosts without a
//! RESP address, node ids, and the cluster state.

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Three hosts with RESP on 6101..6103; shard 1 split into shard 4 (so shard 1 owns two
/// ranges), each shard led by a different host.
fn view() -> ClusterView {
    let nodes = (1..=3)
        .map(|h| {
            (
                h,
                Node {
                    addr: addr(6100 + h as u16),
                    id: node_id("t", h),
                },
            )
        })
        .collect();
    ClusterView {
        epoch: 7,
        myself: 2,
        nodes,
        shards: vec![
            ShardView {
                shard: 1,
                slots: vec![(0, 2000), (4000, 5460)],
                master: Some(1),
                hosts: vec![1, 2, 3],
            },
            ShardView {
                shard: 2,
                slots: vec![(5461, 10922)],
                master: Some(2),
                hosts: vec![1, 2, 3],
            },
            ShardView {
                shard: 3,
                slots: vec![(10923, 16383)],
                master: Some(2),
                hosts: vec![1, 2, 3],
            },
            ShardView {
                shard: 4,
                slots: vec![(2001, 3999)],
                master: Some(3),
                hosts: vec![1, 2, 3],
            },
        ],
        tls: false,
    }
}

fn int(r: &Reply) -> i64 {
    match r {
        Reply::Integer(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

fn array(r: &Reply) -> &[Reply] {
    match r {
        Reply::Array(items) => items,
        other => panic!("not an array: {other:?}"),
    }
}

#[test]
fn node_ids_are_forty_hex_digits_stable_and_distinct() {
    let id = node_id("t", 1);
    assert_eq!(id.len(), 40);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(id, node_id("t", 1));
    assert_ne!(id, node_id("t", 2));
    assert_ne!(id, node_id("other", 1));
}

#[test]
fn cluster_slots_lists_every_range_with_its_master_first_sorted_by_slot() {
    let slots = view().slots();
    let ranges = array(&slots);
    assert_eq!(ranges.len(), 5, "shard 1 has two ranges after its split");
    let firsts: Vec<i64> = ranges.iter().map(|r| int(&array(r)[0])).collect();
    assert_eq!(firsts, [0, 2001, 4000, 5461, 10923]);
    let second = array(&ranges[1]);
    assert_eq!(int(&second[1]), 3999);
    let master = array(&second[2]);
    assert_eq!(master[0], Reply::text("127.0.0.1"));
    assert_eq!(int(&master[1]), 6103, "shard 4 is led by host 3");
    assert_eq!(master[2], Reply::text(node_id("t", 3)));
    assert_eq!(second.len(), 5, "two replicas follow the master");
}

#[test]
fn hosts_without_resp_are_left_out_and_their_slots_uncovered() {
    let mut v = view();
    v.nodes.remove(&3);
    let slots = v.slots();
    assert_eq!(
        array(&slots).len(),
        4,
        "shard 4's master has no RESP address"
    );
    for range in array(&slots) {
        assert_eq!(array(range).len(), 4, "master and one replica");
    }
    let info = v.info();
    assert!(info.contains("cluster_state:fail\r\n"), "{info}");
    assert!(info.contains("cluster_slots_ok:14385\r\n"), "{info}");
    assert!(info.contains("cluster_known_nodes:2\r\n"), "{info}");
}

#[test]
fn cluster_info_is_ok_when_every_slot_has_a_master() {
    let info = view().info();
    assert!(info.contains("cluster_state:ok\r\n"), "{info}");
    assert!(info.contains("cluster_slots_assigned:16384\r\n"), "{info}");
    assert!(info.contains("cluster_slots_ok:16384\r\n"), "{info}");
    assert!(info.contains("cluster_size:3\r\n"), "{info}");
    assert!(info.contains("cluster_current_epoch:7\r\n"), "{info}");
}

#[test]
fn a_shard_without_a_known_master_is_not_served() {
    let mut v = view();
    v.shards[1].master = None;
    assert!(v.info().contains("cluster_state:fail"));
    assert_eq!(array(&v.slots()).len(), 4);
}

#[test]
fn cluster_nodes_shows_masters_with_their_ranges_and_myself() {
    let text = view().nodes();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    let h1 = format!(
        "{} 127.0.0.1:6101@16101 master - 0 0 7 connected 0-2000 4000-5460",
        node_id("t", 1)
    );
    assert_eq!(lines[0], h1);
    let h2 = format!(
        "{} 127.0.0.1:6102@16102 myself,master - 0 0 7 connected 5461-10922 10923-16383",
        node_id("t", 2)
    );
    assert_eq!(lines[1], h2);
    assert!(lines[2].ends_with("connected 2001-3999"), "{}", lines[2]);
}

#[test]
fn a_host_leading_nothing_is_a_replica_of_its_first_shards_master() {
    let mut v = view();
    v.shards[3].master = Some(1);
    let text = v.nodes();
    let h3 = text.lines().nth(2).expect("three lines");
    assert_eq!(
        h3,
        format!(
            "{} 127.0.0.1:6103@16103 slave {} 0 0 7 connected",
            node_id("t", 3),
            node_id("t", 1)
        )
    );
}

#[test]
fn cluster_shards_lists_slots_as_pairs_and_nodes_with_roles() {
    let shards = view().shards();
    let first = &array(&shards)[0];
    let Reply::Map(fields) = first else {
        panic!("a map: {first:?}")
    };
    assert_eq!(fields[0].0, Reply::text("slots"));
    let slots: Vec<i64> = array(&fields[0].1).iter().map(int).collect();
    assert_eq!(slots, [0, 2000, 4000, 5460]);
    let nodes = array(&fields[1].1);
    assert_eq!(nodes.len(), 3);
    let Reply::Map(master) = &nodes[0] else {
        panic!("a map")
    };
    assert!(master.contains(&(Reply::text("role"), Reply::text("master"))));
    assert!(master.contains(&(Reply::text("port"), Reply::Integer(6101))));
    let mut tls = view();
    tls.tls = true;
    let shards = tls.shards();
    let Reply::Map(fields) = &array(&shards)[0] else {
        panic!("a map")
    };
    let Reply::Map(master) = &array(&fields[1].1)[0] else {
        panic!("a map")
    };
    assert!(master.contains(&(Reply::text("tls-port"), Reply::Integer(6101))));
}
