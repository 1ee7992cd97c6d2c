//! The link plan's rules on plain maps, and the directory's sharing and closing on real (test)
//! actors.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardkv_transport::{Layout, ShardId};

use super::*;

/// Shard 1 on hosts 1..=3 (the meta group too), every host at `127.0.0.1:710<id>`.
fn day0() -> ClusterMap {
    let layout = Layout {
        shards: 1,
        replicas: 3,
        pins: vec![],
        placement: vec![(1, vec![1, 2, 3])],
    };
    let addrs: Vec<(HostId, String)> = (1..=3).map(|h| (h, format!("127.0.0.1:710{h}"))).collect();
    ClusterMap::day0(&layout, &addrs).expect("a day-0 map")
}

fn linked(hosts: &[HostId]) -> BTreeSet<HostId> {
    hosts.iter().copied().collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a test address")
}

#[test]
fn every_member_but_this_host_and_the_linked_ones_is_dialled_at_its_map_address() {
    let mut map = day0();
    map.add_host(4, "127.0.0.1:7104").expect("add");
    let plan = LinkPlan::for_map(1, &linked(&[2]), &map);
    assert_eq!(
        plan,
        LinkPlan {
            dial: vec![(3, addr("127.0.0.1:7103")), (4, addr("127.0.0.1:7104"))],
            ..LinkPlan::default()
        }
    );
    let all = LinkPlan::for_map(1, &linked(&[2, 3, 4]), &map);
    assert_eq!(all, LinkPlan::default(), "nothing to do once linked");
}

#[test]
fn an_address_that_does_not_parse_is_reported_and_the_others_are_still_dialled() {
    let mut map = day0();
    map.add_host(4, "host-four:7104")
        .expect("the map takes any address");
    map.add_host(5, "127.0.0.1:7105").expect("add");
    let plan = LinkPlan::for_map(1, &linked(&[2, 3]), &map);
    assert_eq!(plan.dial, vec![(5, addr("127.0.0.1:7105"))]);
    assert_eq!(plan.unreadable, vec![(4, "host-four:7104".to_string())]);
}

#[test]
fn removed_hosts_are_closed_and_never_dialled_and_hosts_the_map_omits_keep_their_links() {
    let mut map = day0();
    map.add_host(4, "127.0.0.1:7104").expect("add");
    map.add_host(5, "127.0.0.1:7105").expect("add");
    for h in [4, 5] {
        map.drain_host(h).expect("drain");
        map.remove_host(h).expect("remove");
    }
    // 4 is linked and removed; 5 is removed and was never linked; 9 is only in cluster.toml.
    let plan = LinkPlan::for_map(1, &linked(&[2, 3, 4, 9]), &map);
    assert_eq!(
        plan,
        LinkPlan {
            close: vec![4],
            ..LinkPlan::default()
        }
    );
}

/// A link that records the shards of what it was sent.
struct RecordingLink(Arc<Mutex<Vec<ShardId>>>);

impl Actor for RecordingLink {
    type Context = Context<Self>;
}

impl Handler<SendRaft> for RecordingLink {
    type Result = ();
    fn handle(&mut self, msg: SendRaft, _: &mut Self::Context) {
        self.0.lock().expect("not poisoned").push(msg.shard);
    }
}

impl Handler<ClosePeerLink> for RecordingLink {
    type Result = ();
    fn handle(&mut self, _: ClosePeerLink, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

fn raft_to(shard: ShardId) -> SendRaft {
    SendRaft {
        shard,
        message: raft::eraftpb::Message::default(),
        report: None,
    }
}

#[actix_rt::test]
async fn a_link_added_to_one_clone_is_used_by_every_clone_and_closing_it_stops_its_actor() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let links = PeerLinks::default();
    let replica_copy = links.clone();
    assert!(!replica_copy.contains(2));
    assert_eq!(replica_copy.with(2, |l| l.do_send(raft_to(1))), None);

    let actor = RecordingLink(Arc::clone(&sent)).start();
    assert!(links.insert(2, &actor));
    let second = RecordingLink(Arc::clone(&sent)).start();
    assert!(!links.insert(2, &second), "one link per host");
    assert_eq!(replica_copy.hosts(), linked(&[2]));
    assert_eq!(replica_copy.with(2, |l| l.do_send(raft_to(7))), Some(()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while sent.lock().expect("not poisoned").is_empty() {
        assert!(Instant::now() < deadline, "the message reaches the link");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(*sent.lock().expect("not poisoned"), [7]);

    assert!(links.close(2));
    assert!(!replica_copy.contains(2), "gone for every clone");
    assert!(!links.close(2), "closed once");
    while actor.connected() {
        assert!(Instant::now() < deadline, "a closed link's actor stops");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
