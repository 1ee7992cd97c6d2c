//! A host appended to a running cluster: the hosts already running (never restarted, their
//! cluster.toml as it was) link to it once the live map lists it, so a replica moves onto it;
//! and a host restarted while the meta group has no quorum routes by the last map it took, not
//! by the day-0 map.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use shardkv::client::Client;
use shardkv_transport::{HostId, ReplicaRole, ShardId};

const SHARDS: u32 = 2;
const SHARD: ShardId = 1;
const WAIT: Duration = Duration::from_secs(30);

/// Waits until host `host` answers a status request; returns its incarnation.
async fn wait_answers(admin: &Client, host: HostId) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        match admin.host_status(host).await {
            Ok(status) => return status.incarnation,
            Err(e) => assert!(
                Instant::now() < deadline,
                "host {host} does not answer: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until each of `hosts` routes by a map of `epoch` or later.
async fn wait_epoch(admin: &Client, hosts: &[HostId], epoch: u64) {
    let deadline = Instant::now() + WAIT;
    for &host in hosts {
        loop {
            let seen = admin.host_status(host).await.map(|s| s.map_epoch);
            if seen.as_ref().is_ok_and(|e| *e >= epoch) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "host {host} routes by epoch {seen:?}, not {epoch}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_appended_while_the_others_run_receives_a_moved_replica() {
    let mut cluster = common::Cluster::new(3, SHARDS, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    // Enough writes that shard 1's commit index is past the move's catch-up slack (64
    // entries): below it, `replica move` counts a learner that has nothing yet as caught up.
    let mut written = Vec::new();
    for i in 0..300u32 {
        let (key, value) = (format!("k{i}").into_bytes(), format!("v{i}").into_bytes());
        client.put(&key, &value).await.expect("write");
        written.push((key, value));
    }

    // Host 4 joins: its [[host]] entry and certificate, then the process. Hosts 1..3 keep
    // running with the cluster.toml they started with.
    let new = cluster.append_host();
    cluster.start(new);
    let admin = cluster.admin();
    let incarnation = wait_answers(&admin, new).await;
    let addr = cluster
        .cfg
        .host(new)
        .expect("the appended host is in the config")
        .host
        .addr
        .to_string();
    let map = admin
        .change_map(|m| {
            m.add_host(new, &addr)?;
            m.activate_host(new, incarnation)
        })
        .await
        .expect("host 4 becomes a member");
    wait_epoch(&admin, &[1, 2, 3, new], map.epoch()).await;

    let from = map.voters_of(SHARD).next().expect("the shard has a voter");
    let out = tokio::task::block_in_place(|| {
        Command::new(common::BIN)
            .arg("--config")
            .arg(&cluster.cfg_path)
            .args([
                "replica",
                "move",
                &SHARD.to_string(),
                &from.to_string(),
                &new.to_string(),
            ])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run shardkv replica move")
    });
    assert!(
        out.status.success(),
        "move onto the appended host failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let map = client.read_map().await.expect("map").map;
    let roles = map.replicas_of(SHARD).expect("shard");
    assert_eq!(roles.get(&new), Some(&ReplicaRole::Voter), "{roles:?}");
    assert!(!roles.contains_key(&from), "{roles:?}");
    cluster.wait_caught_up(&admin, new).await;
    let mut moved = 0;
    for (key, value) in &written {
        if map.shard_of_slot(shardkv_transport::slot::slot(key)) == Some(SHARD) {
            let local = cluster
                .stale_read_on(new, key)
                .await
                .expect("host 4 answers");
            assert_eq!(
                local.as_ref(),
                Some(value),
                "host {new} holds the moved data"
            );
            moved += 1;
        }
        assert_eq!(client.get(key).await.expect("read").as_ref(), Some(value));
    }
    assert!(moved > 0, "some written key is in the moved shard");
    cluster.check_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_restarted_without_a_meta_quorum_routes_by_the_last_map_it_took() {
    let mut cluster = common::Cluster::new(3, SHARDS, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    let admin = cluster.admin();
    // Any change past day 0 will do: a member that never starts.
    let map = admin
        .change_map(|m| m.add_host(4, "127.0.0.14:9"))
        .await
        .expect("a map change");
    assert!(map.epoch() > 1, "the change advanced the epoch");
    wait_epoch(&admin, &[1, 2, 3], map.epoch()).await;

    cluster.kill9_all();
    // One host of three: the meta group has no quorum, so the host cannot read the map.
    cluster.start(2);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        match admin.host_status(2).await {
            Ok(status) => break status,
            Err(e) => assert!(Instant::now() < deadline, "host 2 does not answer: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status.map_epoch,
        map.epoch(),
        "the restarted host routes by the map it stored, not the day-0 map"
    );
}
