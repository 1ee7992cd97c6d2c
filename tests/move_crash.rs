//! kill -9 at every step of a replica move: the move is stopped right after each step that
//! changes the shard's Raft configuration (learner added, caught up, joint, left; a
//! debug-only hook of `shardkv replica move`), then the shard's leader, or separately the
//! joining host, is killed with -9 and restarted, and the move is re-run. Each re-run must
//! finish the move; a writer runs throughout and every write it got acknowledged reads back.
// The stop hook exists only in builds with debug assertions.
#![cfg(debug_assertions)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardkv_transport::{HostId, ReplicaRole, ShardId};

const SHARD: ShardId = 1;
const HOSTS: HostId = 4;

#[derive(Debug, Clone, Copy)]
enum Victim {
    /// The shard's leader at the moment of the kill.
    Leader,
    /// The host the replica moves to.
    Joining,
}

/// The host leading `SHARD` now (highest term reported).
async fn leader(cluster: &common::Cluster) -> Option<HostId> {
    let admin = cluster.admin();
    let mut best: Option<(u64, HostId)> = None;
    for h in 1..=HOSTS {
        if let Ok(s) = admin.host_status(h).await {
            for r in s
                .replicas
                .iter()
                .filter(|r| r.shard == SHARD && r.is_leader)
            {
                if best.is_none_or(|(t, _)| r.term > t) {
                    best = Some((r.term, h));
                }
            }
        }
    }
    best.map(|(_, h)| h)
}

fn replica_move(
    cluster: &common::Cluster,
    from: HostId,
    to: HostId,
    stop_after: Option<&str>,
) -> std::process::Output {
    let (shard, from, to) = (SHARD.to_string(), from.to_string(), to.to_string());
    let args = ["replica", "move", &shard, &from, &to];
    let env: Vec<(&str, &str)> = stop_after
        .map(|s| ("SHARDKV_TEST_MOVE_STOP_AFTER", s))
        .into_iter()
        .collect();
    tokio::task::block_in_place(|| cluster.cli(&args, &env))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_finishes_after_kill_9_of_the_leader_or_the_joining_host_at_every_step() {
    let mut cluster = common::Cluster::new(HOSTS, 1, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    // One shard on three of the four hosts: the fourth is listed but not placed, so it
    // joins the map as an empty member.
    let added = tokio::task::block_in_place(|| cluster.cli(&["host", "add", "4"], &[]));
    assert!(added.status.success(), "host add: {}", text(&added));

    let acked: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("k{i}").into_bytes(), format!("v{i}").into_bytes());
                if client.put(&key, &value).await.is_ok() {
                    acked.lock().expect("lock").insert(key, value);
                }
                i += 1;
            }
        })
    };

    let steps = ["learner", "caught-up", "joint", "left"];
    let victims = [Victim::Leader, Victim::Joining];
    for (step, victim) in steps
        .iter()
        .flat_map(|s| victims.iter().map(move |v| (*s, *v)))
    {
        let map = cluster.admin().read_map().await.expect("map").map;
        let holders: Vec<HostId> = map
            .replicas_of(SHARD)
            .expect("shard")
            .keys()
            .copied()
            .collect();
        let to = (1..=HOSTS)
            .find(|h| !holders.contains(h))
            .expect("a spare host");
        let from = holders[0];

        let stopped = replica_move(&cluster, from, to, Some(step));
        assert!(
            !stopped.status.success() && text(&stopped).contains("test hook"),
            "the move stops after {step}: {}",
            text(&stopped)
        );
        let killed = match victim {
            Victim::Leader => leader(&cluster).await.expect("the shard has a leader"),
            Victim::Joining => to,
        };
        cluster.kill9(killed);
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.start(killed);

        let rerun = replica_move(&cluster, from, to, None);
        if !rerun.status.success() {
            cluster.dump_logs();
        }
        assert!(
            rerun.status.success(),
            "after {step} and kill -9 of {victim:?} (host {killed}), the re-run finishes the \
             move from {from} to {to}: {}",
            text(&rerun)
        );
        let map = cluster.admin().read_map().await.expect("map").map;
        let roles = map.replicas_of(SHARD).expect("shard");
        assert_eq!(
            roles.get(&to),
            Some(&ReplicaRole::Voter),
            "{step}: {roles:?}"
        );
        assert!(!roles.contains_key(&from), "{step}: {roles:?}");
        assert!(
            map.moves_in_flight().is_empty(),
            "{step}: the move record is cleared"
        );
        eprintln!("after {step}, kill -9 of {victim:?} (host {killed}): moved {from} -> {to}");
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 50,
        "the writer made progress: {}",
        acked.len()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for (key, value) in &acked {
        loop {
            match client.get(key).await {
                Ok(v) => {
                    assert_eq!(v.as_ref(), Some(value), "an acknowledged write reads back");
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "read {key:?}: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_target_died_rolls_back_when_the_target_is_removed() {
    let mut cluster = common::Cluster::new(HOSTS, 1, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    let added = tokio::task::block_in_place(|| cluster.cli(&["host", "add", "4"], &[]));
    assert!(added.status.success(), "host add: {}", text(&added));
    let map = cluster.admin().read_map().await.expect("map").map;
    let before = map.replicas_of(SHARD).expect("shard").clone();
    let from = *before.keys().next().expect("a holder");

    // The move places its learner on host 4, which then dies for good.
    let stopped = replica_move(&cluster, from, 4, Some("learner"));
    assert!(text(&stopped).contains("test hook"), "{}", text(&stopped));
    cluster.kill9(4);

    // Removing host 4 rolls the move back (the balancer), then removes it.
    let removed = tokio::task::block_in_place(|| cluster.cli(&["host", "remove", "4"], &[]));
    if !removed.status.success() {
        cluster.dump_logs();
    }
    assert!(removed.status.success(), "host remove: {}", text(&removed));
    let map = cluster.admin().read_map().await.expect("map").map;
    assert_eq!(
        map.replicas_of(SHARD),
        Some(&before),
        "the shard is as it was"
    );
    assert!(map.moves_in_flight().is_empty());
    // The group no longer lists host 4, and serves.
    let (host, info) = loop {
        if let Some(h) = leader(&cluster).await {
            let s = cluster.admin().host_status(h).await.expect("status");
            if let Some(r) = s
                .replicas
                .into_iter()
                .find(|r| r.shard == SHARD && r.is_leader)
            {
                break (h, r);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !info.learners.contains(&4) && !info.voters.contains(&4),
        "host {host}: {info:?}"
    );
    client
        .put(b"after", b"rollback")
        .await
        .expect("a write after the rollback");
    let again = replica_move(&cluster, from, 4, None);
    assert!(
        !again.status.success(),
        "a removed host takes no replica: {}",
        text(&again)
    );
    let (shard, f) = (SHARD.to_string(), from.to_string());
    let abort = ["replica", "move", &shard, &f, "4", "--abort"];
    let aborted = tokio::task::block_in_place(|| cluster.cli(&abort, &[]));
    assert!(
        aborted.status.success() && text(&aborted).contains("no such move"),
        "an abort once rolled back is a no-op: {}",
        text(&aborted)
    );
}
