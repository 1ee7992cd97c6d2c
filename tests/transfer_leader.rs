//! Leadership moved on request, end to end: the shard's leader is asked to hand its
//! leadership to each voter in turn and every host's status must then show that voter
//! leading; a transfer to the leader itself is done already, one to a non-voter is refused,
//! a host that does not lead says so, and a client certificate may not ask at all.

mod common;

use std::time::{Duration, Instant};

use shardkv::client::Client;
use shardkv_transport::wire::Response;
use shardkv_transport::HostId;

const SHARD: u32 = 1;
const HOSTS: [HostId; 3] = [1, 2, 3];

/// The leader of the shard as the hosts report it (the first host that says it leads).
async fn leader(admin: &Client) -> Option<HostId> {
    for h in HOSTS {
        let Ok(s) = admin.host_status(h).await else {
            continue;
        };
        if s.replicas.iter().any(|r| r.shard == SHARD && r.is_leader) {
            return Some(h);
        }
    }
    None
}

/// Asks the shard's current leader to hand leadership to `to` until it answers `Ok`, then
/// waits until `to` reports that it leads. (The shard's preferred host takes leadership back
/// a while after, so `to` is watched closely.)
async fn transfer_and_see(admin: &Client, cluster: &common::Cluster, to: HostId) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("leadership never reached host {to}: {last}");
        }
        let Some(from) = leader(admin).await else {
            last = "no leader".into();
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match admin.transfer_leader(from, SHARD, to).await {
            Ok(Response::Ok) => {}
            Ok(Response::Invalid(why)) => panic!("transfer to {to} refused: {why}"),
            // Leadership moved meanwhile (an election, or the hand-back to the preferred
            // host): ask whoever leads now.
            other => {
                last = format!("{from} answered {other:?}");
                continue;
            }
        }
        // Started: raft-rs completes it within an election timeout, or abandons it.
        let watch_until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < watch_until {
            let status = admin.host_status(to).await;
            if let Ok(s) = &status {
                if s.replicas.iter().any(|r| r.shard == SHARD && r.is_leader) {
                    return;
                }
            }
            last = format!("after asking {from}, host {to} reports {status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_each_voter_on_request() {
    let mut cluster = common::Cluster::new(3, 1, 3);
    cluster.start_all();
    let client = cluster.client();
    let admin = cluster.admin();
    cluster.wait_ready(&client).await;

    for round in 0..2 {
        for to in HOSTS {
            transfer_and_see(&admin, &cluster, to).await;
            let key = format!("after-{round}-{to}").into_bytes();
            client
                .put(&key, &key)
                .await
                .expect("writes go on after a transfer");
        }
    }

    // Asking for what already holds is done at once, wherever the leader is.
    let from = loop {
        if let Some(h) = leader(&admin).await {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let resp = admin.transfer_leader(from, SHARD, from).await;
    assert_eq!(resp.expect("answers"), Response::Ok);

    // Only a voter can take over; only a leader can hand over; only a host may ask.
    let resp = admin
        .transfer_leader(from, SHARD, 9)
        .await
        .expect("answers");
    assert!(matches!(resp, Response::Invalid(_)), "{resp:?}");
    let follower = HOSTS.into_iter().find(|h| *h != from).expect("three hosts");
    let other = HOSTS
        .into_iter()
        .find(|h| *h != from && *h != follower)
        .expect("three hosts");
    let resp = admin
        .transfer_leader(follower, SHARD, other)
        .await
        .expect("answers");
    // The leader may have moved to `other` meanwhile (the hand-back): then it is done.
    assert!(
        matches!(resp, Response::NotLeader { .. } | Response::Ok),
        "{resp:?}"
    );
    let resp = client
        .transfer_leader(from, SHARD, follower)
        .await
        .expect("answers");
    assert!(
        matches!(&resp, Response::Invalid(why) if why.contains("host certificate")),
        "{resp:?}"
    );
    cluster.check_alive();
}
