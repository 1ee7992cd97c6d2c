//! Replica changes by Raft configuration changes, end to end: a voter demoted to learner, a
//! joint change, the explicit leave, and a promotion back, with every host killed (-9) and
//! restarted at each step and a learner catching up by snapshot across the leave. The
//! configuration each host reports must survive all of it, and every acknowledged write must
//! read back.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shardkv::client::Client;
use shardkv_transport::wire::{ReplicaChange, ReplicaTarget, Response};
use shardkv_transport::HostId;

const SHARD: u32 = 1;
/// Small, so that a learner paused across the leave catches up by a snapshot.
const SNAPSHOT_AFTER: u64 = 40;

/// The configuration a host reports for the shard: (voters, outgoing voters, learners).
type Conf = (Vec<HostId>, Vec<HostId>, Vec<HostId>);

/// Asks the shard's leader for `changes` until it answers `Ok`; a retry after a lost answer
/// must be harmless, since a change already in effect is answered `Ok` without a second one.
/// `keeper` (never demoted) takes leadership first, so no change demotes the leader: the
/// preferred host takes leadership back by itself, but not while a change is joint.
async fn change(
    admin: &Client,
    cluster: &common::Cluster,
    keeper: HostId,
    changes: &[ReplicaChange],
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    let mut ask = keeper;
    while Instant::now() < deadline {
        match admin.change_replicas(ask, SHARD, changes.to_vec()).await {
            Ok(Response::Ok) => return,
            Ok(Response::Invalid(why)) => panic!("change {changes:?} refused: {why}"),
            Ok(Response::NotLeader {
                leader: Some(l), ..
            }) => {
                // Hand leadership to the keeper, then ask it.
                let _ = admin.transfer_leader(l, SHARD, keeper).await;
                ask = keeper;
                last = format!("host {l} leads");
            }
            other => last = format!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.dump_logs();
    panic!("change {changes:?} not done: {last}");
}

async fn conf_on(admin: &Client, host: HostId) -> Option<Conf> {
    let s = admin.host_status(host).await.ok()?;
    let r = s.replicas.iter().find(|r| r.shard == SHARD)?;
    Some((
        r.voters.clone(),
        r.voters_outgoing.clone(),
        r.learners.clone(),
    ))
}

/// Waits until every host in `hosts` reports `want`.
async fn wait_conf(admin: &Client, cluster: &common::Cluster, hosts: &[HostId], want: &Conf) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = BTreeMap::new();
        for h in hosts {
            seen.insert(*h, conf_on(admin, *h).await);
        }
        if seen.values().all(|c| c.as_ref() == Some(want)) {
            return;
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("wanted {want:?} on {hosts:?}, saw {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn to(host: HostId, role: ReplicaTarget) -> ReplicaChange {
    ReplicaChange { host, to: role }
}

async fn write_keys(client: &Client, from: usize, n: usize, written: &mut Vec<Vec<u8>>) {
    for i in from..from + n {
        let key = format!("k{i}").into_bytes();
        client.put(&key, &key).await.expect("write acknowledged");
        written.push(key);
    }
}

async fn restart_all(cluster: &mut common::Cluster, client: &Client) {
    cluster.kill9_all();
    cluster.start_all();
    cluster.wait_ready(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_changes_take_effect_and_survive_kill9_at_every_step() {
    let raft = format!("snapshot_after = {SNAPSHOT_AFTER}\n");
    let mut cluster = common::Cluster::with_raft(3, 1, 3, &raft);
    cluster.start_all();
    let client = cluster.client();
    let admin = cluster.admin();
    cluster.wait_ready(&client).await;
    let all = [1, 2, 3];
    let mut written = Vec::new();
    write_keys(&client, 0, 10, &mut written).await;

    // The preferred host takes leadership back whenever it is up, so it is asked each time
    // and never demoted; `a` and `b` take turns.
    let status = admin.host_status(1).await.expect("status");
    let leader = status.layout.hosts_of(SHARD)[0];
    let others: Vec<HostId> = all.iter().copied().filter(|h| *h != leader).collect();
    let (a, b) = (others[0], others[1]);

    // Refused: from a client certificate, demoting the leader, an unknown host.
    change(&admin, &cluster, leader, &[]).await; // answers only once `leader` leads
    let from_client = client
        .change_replicas(leader, SHARD, vec![to(a, ReplicaTarget::Learner)])
        .await;
    assert!(
        matches!(from_client, Ok(Response::Invalid(_))),
        "{from_client:?}"
    );
    for bad in [
        to(leader, ReplicaTarget::Learner),
        to(9, ReplicaTarget::Learner),
    ] {
        let resp = admin.change_replicas(leader, SHARD, vec![bad]).await;
        assert!(
            matches!(resp, Ok(Response::Invalid(_))),
            "{bad:?}: {resp:?}"
        );
    }

    // 1. Demote `a` to a learner; the two voters left keep serving, across kill -9.
    change(&admin, &cluster, leader, &[to(a, ReplicaTarget::Learner)]).await;
    let voters = sorted(vec![leader, b]);
    let demoted = (voters.clone(), vec![], vec![a]);
    wait_conf(&admin, &cluster, &all, &demoted).await;
    restart_all(&mut cluster, &client).await;
    wait_conf(&admin, &cluster, &all, &demoted).await;
    write_keys(&client, 10, 10, &mut written).await;

    // 2. One joint change: promote `a`, demote `b`. It stays joint until asked to leave,
    //    across kill -9.
    let joint_change = [to(a, ReplicaTarget::Voter), to(b, ReplicaTarget::Learner)];
    change(&admin, &cluster, leader, &joint_change).await;
    let incoming = sorted(vec![leader, a]);
    let joint = (incoming.clone(), voters.clone(), vec![b]);
    wait_conf(&admin, &cluster, &all, &joint).await;
    restart_all(&mut cluster, &client).await;
    wait_conf(&admin, &cluster, &all, &joint).await;
    write_keys(&client, 20, 10, &mut written).await;

    // 3. The explicit leave, across kill -9; asking again for it, or for the joint change,
    //    changes nothing.
    change(&admin, &cluster, leader, &[]).await;
    let left = (incoming.clone(), vec![], vec![b]);
    wait_conf(&admin, &cluster, &all, &left).await;
    restart_all(&mut cluster, &client).await;
    wait_conf(&admin, &cluster, &all, &left).await;
    change(&admin, &cluster, leader, &[]).await;
    change(&admin, &cluster, leader, &joint_change).await;
    wait_conf(&admin, &cluster, &all, &left).await;

    // 4. `b` is promoted back while it is down and the log it misses is compacted away: it
    //    learns its promotion from the snapshot it catches up by, and keeps it after another
    //    kill -9.
    cluster.kill9(b);
    write_keys(&client, 30, (SNAPSHOT_AFTER * 3) as usize, &mut written).await;
    change(&admin, &cluster, leader, &[to(b, ReplicaTarget::Voter)]).await;
    write_keys(&client, 500, 5, &mut written).await;
    cluster.start(b);
    let full = (all.to_vec(), vec![], vec![]);
    wait_conf(&admin, &cluster, &all, &full).await;
    let snapshots_on_b = std::fs::read_to_string(cluster.log_path(b))
        .expect("log")
        .matches("snapshot installed")
        .count();
    assert!(
        snapshots_on_b > 0,
        "the paused host should have caught up by a snapshot"
    );
    cluster.kill9(b);
    cluster.start(b);
    wait_conf(&admin, &cluster, &all, &full).await;
    for h in all {
        cluster.wait_caught_up(&admin, h).await;
        for key in &written {
            let got = cluster.stale_read_on(h, key).await.expect("host answers");
            assert_eq!(got.as_deref(), Some(key.as_slice()), "host {h}");
        }
    }
}

fn sorted(mut hosts: Vec<HostId>) -> Vec<HostId> {
    hosts.sort_unstable();
    hosts
}
