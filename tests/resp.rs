//! The Redis protocol front end of a 3-host cluster (plaintext on loopback, redirecting) as
//! Redis clients see it: Debian's `redis-cli` following `-MOVED`, the `CLUSTER` replies a
//! cluster client builds its slot map from, the `redis` crate's cluster client over many
//! slots and from concurrent tasks, values crossing between RESP and the shardkv client,
//! `READONLY` reads on a follower, and a leader's kill -9 under a writing cluster client.
//!
//! One cluster serves every check, in order; the kill comes last.

#[path = "resp/cluster_replies.rs"]
mod cluster_replies;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cluster;
use futures::{StreamExt, TryStreamExt};
use redis::AsyncCommands;
use shardkv::client::Client;
use shardkv_transport::slot::slot;
use shardkv_transport::{HostId, ShardId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_clients_use_the_cluster_as_a_redis_cluster() {
    let (mut cluster, client, leaders) = Cluster::started_with_resp(3, 3, 3, false, false).await;

    db_size_counts_each_key_once_and_config_get_answers(&cluster).await;
    redis_cli_follows_moved_to_each_shards_leader(&cluster, &leaders);
    metrics_count_commands_by_reply(&cluster);
    redis_cli_commands_answer_as_redis_does(&cluster);
    cluster_replies::describe_the_shards(&cluster, &client, &leaders).await;
    cluster_client_reads_its_writes_across_slots(&cluster).await;
    concurrent_incr_loses_no_increment(&cluster).await;
    mget_sees_all_or_none_of_a_concurrent_mset(&cluster).await;
    values_cross_between_resp_and_the_shardkv_client(&cluster, &client).await;
    readonly_reads_a_follower_and_readwrite_redirects_again(&cluster, &client, &leaders).await;
    acknowledged_sets_survive_a_leader_kill(&mut cluster, &client, &leaders).await;
    cluster.check_alive();
}

/// A key of day-0 shard `shard`, as text (redis-cli takes arguments as text).
fn key_of(cluster: &Cluster, shard: ShardId) -> String {
    String::from_utf8(common::key_in_shard(shard, cluster.cfg.cluster.shards)).expect("ASCII key")
}

/// A cluster client over every host, retrying quickly enough for a test's elections.
async fn cluster_connection(cluster: &Cluster) -> redis::cluster_async::ClusterConnection {
    let urls: Vec<String> = cluster
        .cfg
        .hosts
        .iter()
        .map(|h| cluster.resp_url(h.host.id))
        .collect();
    redis::cluster::ClusterClient::builder(urls)
        .retries(40)
        .min_retry_wait(20)
        .max_retry_wait(500)
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(10))
        .build()
        .expect("cluster client settings")
        .get_async_connection()
        .await
        .expect("the cluster client reads the slot map")
}

/// A plain (non-cluster) connection to host `id`: it sees `-MOVED` and `-CROSSSLOT` as errors.
async fn host_connection(cluster: &Cluster, id: HostId) -> redis::aio::MultiplexedConnection {
    redis::Client::open(cluster.resp_url(id))
        .expect("a redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to a RESP listener")
}

/// The sum of every host's `DBSIZE` until it is `want` (a count may trail the latest writes
/// by the few milliseconds they take to reach LMDB); panics with the last sum otherwise.
async fn wait_db_size_sum(cluster: &Cluster, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut sum = 0;
        for h in &cluster.cfg.hosts {
            let mut con = host_connection(cluster, h.host.id).await;
            let n: i64 = redis::cmd("DBSIZE")
                .query_async(&mut con)
                .await
                .expect("DBSIZE");
            sum += n;
        }
        if sum == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the hosts' DBSIZE add up to {sum}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each host's `DBSIZE` counts the keys of the shards it leads, so the counts add up to the
/// cluster's keys; `CONFIG GET` answers what redis-benchmark asks.
async fn db_size_counts_each_key_once_and_config_get_answers(cluster: &Cluster) {
    wait_db_size_sum(cluster, 0).await;
    let mut con = cluster_connection(cluster).await;
    for i in 0..30 {
        let () = con.set(format!("dbsize-{i}"), i).await.expect("SET");
    }
    wait_db_size_sum(cluster, 30).await;
    for i in 0..10 {
        let _: i64 = con.del(format!("dbsize-{i}")).await.expect("DEL");
    }
    wait_db_size_sum(cluster, 20).await;
    let mut one = host_connection(cluster, 1).await;
    let settings: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .arg("appendonly")
        .query_async(&mut one)
        .await
        .expect("CONFIG GET");
    assert_eq!(settings, ["appendonly", "yes", "save", ""]);
}

/// Each host's `/metrics` counts RESP commands by their reply: after the redirections above,
/// some SETs were answered `moved` and some `ok`, and connections were counted.
fn metrics_count_commands_by_reply(cluster: &Cluster) {
    let scrapes = common::metrics::scrape_all(cluster);
    let sum = |command: &str, result: &str| -> f64 {
        let want = format!("command=\"{command}\",result=\"{result}\"");
        common::metrics::total(&scrapes, "shardkv_resp_commands_total", &[&want])
    };
    assert!(sum("set", "moved") >= 1.0, "a SET was redirected");
    assert!(sum("set", "ok") >= 1.0, "a SET was applied");
    let body = &scrapes[&1];
    assert!(body.contains("shardkv_resp_connections"), "{body}");
}

/// Every host answers a SET of a key it does not lead with `-MOVED <slot> <leader>`, and
/// `redis-cli -c` follows it; another host then reads the value back.
fn redis_cli_follows_moved_to_each_shards_leader(
    cluster: &Cluster,
    leaders: &BTreeMap<ShardId, HostId>,
) {
    let mut moved = 0;
    for &from in &[1, 2, 3] {
        for (&shard, &leader) in leaders {
            let key = key_of(cluster, shard);
            let value = format!("from-{from}-shard-{shard}");
            let plain = cluster.redis_cli_text(from, &["set", &key, &value]);
            if leader == from {
                assert_eq!(plain, "OK", "host {from} leads shard {shard}");
            } else {
                moved += 1;
                assert_eq!(
                    plain,
                    format!(
                        "MOVED {} {}",
                        slot(key.as_bytes()),
                        cluster.resp_addr(leader)
                    ),
                    "host {from} redirects a SET of shard {shard} to its leader {leader}"
                );
            }
            assert_eq!(
                cluster.redis_cli_text(from, &["-c", "set", &key, &value]),
                "OK"
            );
            let other = from % 3 + 1;
            assert_eq!(
                cluster.redis_cli_text(other, &["-c", "get", &key]),
                value,
                "host {other} reads what was set through host {from}"
            );
        }
    }
    assert!(moved >= 3, "three hosts cannot each lead every shard");
}

/// INCR, DEL, EXISTS, MSET/MGET of one hash tag, CROSSSLOT and CLUSTER KEYSLOT through
/// `redis-cli -c` answer what Redis answers.
fn redis_cli_commands_answer_as_redis_does(cluster: &Cluster) {
    let cli = |args: &[&str]| {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        cluster.redis_cli_text(1, &all)
    };
    assert_eq!(cli(&["incr", "cli-counter"]), "1");
    assert_eq!(cli(&["incr", "cli-counter"]), "2");
    assert_eq!(cli(&["get", "cli-counter"]), "2");
    assert_eq!(cli(&["exists", "cli-counter"]), "1");
    assert_eq!(cli(&["del", "cli-counter"]), "1");
    assert_eq!(cli(&["exists", "cli-counter"]), "0");
    assert_eq!(cli(&["del", "cli-counter"]), "0");
    assert_eq!(cli(&["get", "cli-counter"]), "", "a missing key is nil");

    assert_eq!(
        cli(&[
            "mset",
            "{user1000}.following",
            "7",
            "{user1000}.followers",
            "9"
        ]),
        "OK"
    );
    assert_eq!(
        cli(&["mget", "{user1000}.following", "{user1000}.followers"]),
        "7\n9"
    );
    assert_ne!(slot(b"a"), slot(b"b"));
    let crossslot = cli(&["mset", "a", "1", "b", "2"]);
    assert!(
        crossslot.starts_with("CROSSSLOT"),
        "MSET over two slots is refused: {crossslot}"
    );
    assert_eq!(cli(&["get", "a"]), "", "a refused MSET wrote nothing");

    // Slots as Redis 7.0.15 computes them (CLUSTER KEYSLOT of a cluster-enabled
    // redis-server), hash tags included.
    for (key, redis_slot) in [
        ("foo", 12182),
        ("bar", 5061),
        ("hello", 866),
        ("{user1000}.following", 3443),
        ("{user1000}.followers", 3443),
        ("{user1000", 8723),
        ("{}", 15257),
        ("{a}{b}", 15495),
        ("a{}{b}", 15033),
    ] {
        assert_eq!(
            cli(&["cluster", "keyslot", key]),
            redis_slot.to_string(),
            "CLUSTER KEYSLOT {key}"
        );
        assert_eq!(slot(key.as_bytes()), redis_slot, "shardkv's slot of {key}");
    }
}

/// The cluster client sets and gets 2,000 keys over every shard, MGETs a hash tag, and a
/// cross-slot MGET or MSET sent to one host is refused with CROSSSLOT.
async fn cluster_client_reads_its_writes_across_slots(cluster: &Cluster) {
    let con = cluster_connection(cluster).await;
    let keys: Vec<String> = (0..2000).map(|i| format!("many-{i}")).collect();
    let shards: BTreeSet<u32> = keys
        .iter()
        .map(|k| shardkv_transport::slot::shard_of_key(k.as_bytes(), cluster.cfg.cluster.shards))
        .collect();
    assert_eq!(shards.len(), 3, "the keys reach every shard");
    let slots: BTreeSet<u16> = keys.iter().map(|k| slot(k.as_bytes())).collect();
    assert!(slots.len() > 1500, "the keys spread over the slots");

    futures::stream::iter(keys.iter().cloned())
        .map(|k| {
            let mut c = con.clone();
            async move { c.set::<_, _, ()>(&k, format!("value-of-{k}")).await }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await
        .expect("every SET is acknowledged");
    let got: Vec<(String, Option<String>)> = futures::stream::iter(keys.iter().cloned())
        .map(|k| {
            let mut c = con.clone();
            async move { c.get::<_, Option<String>>(&k).await.map(|v| (k, v)) }
        })
        .buffered(64)
        .try_collect()
        .await
        .expect("every GET answers");
    for (k, v) in got {
        assert_eq!(v, Some(format!("value-of-{k}")), "GET {k}");
    }

    let mut c = con.clone();
    let tagged: Vec<String> = (0..10).map(|i| format!("{{tag}}:{i}")).collect();
    for (i, k) in tagged.iter().enumerate() {
        c.set::<_, _, ()>(k, i).await.expect("SET of a tagged key");
    }
    let values: Vec<Option<u32>> = c.mget(&tagged).await.expect("MGET of one hash tag");
    assert_eq!(values, (0..10).map(Some).collect::<Vec<_>>());

    // One host, no client-side splitting: the server itself refuses keys of two slots.
    let mut one = host_connection(cluster, 1).await;
    let e = redis::cmd("MGET")
        .arg("many-0")
        .arg("many-1")
        .query_async::<Vec<Option<String>>>(&mut one)
        .await
        .expect_err("MGET over two slots is refused");
    assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");
    let e = redis::cmd("MSET")
        .arg("many-0")
        .arg("x")
        .arg("many-1")
        .arg("y")
        .query_async::<()>(&mut one)
        .await
        .expect_err("MSET over two slots is refused");
    assert_eq!(e.code(), Some("CROSSSLOT"), "{e}");
    let v: Option<String> = c.get("many-0").await.expect("GET");
    assert_eq!(
        v.as_deref(),
        Some("value-of-many-0"),
        "a refused MSET wrote nothing"
    );
}

/// INCR from 8 tasks x 50 over one cluster connection: the state machine increments, so
/// every reply is distinct and the counter ends at 400.
async fn concurrent_incr_loses_no_increment(cluster: &Cluster) {
    let con = cluster_connection(cluster).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = con.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..50 {
                seen.push(c.incr::<_, _, i64>("incr-counter", 1).await.expect("INCR"));
            }
            seen
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.extend(t.await.expect("incrementing task"));
    }
    replies.sort_unstable();
    assert_eq!(
        replies,
        (1..=400).collect::<Vec<i64>>(),
        "one reply per INCR"
    );
    let mut c = con.clone();
    let v: String = c.get("incr-counter").await.expect("GET");
    assert_eq!(v, "400");
}

/// `MGET` reads its keys at one applied state, as Redis does: while another connection
/// rewrites two keys of one hash tag together with `MSET`, every `MGET` sees them equal.
async fn mget_sees_all_or_none_of_a_concurrent_mset(cluster: &Cluster) {
    let keys = ["{pair}left", "{pair}right"];
    let mut writer = cluster_connection(cluster).await;
    let mut reader = cluster_connection(cluster).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let () = writer
                    .mset(&[(keys[0], i), (keys[1], i)])
                    .await
                    .expect("MSET");
            }
            i
        })
    };
    for _ in 0..300 {
        let pair: Vec<Option<u64>> = reader.mget(&keys).await.expect("MGET");
        assert_eq!(pair[0], pair[1], "MGET saw half of an MSET");
    }
    stop.store(true, Ordering::Relaxed);
    let written = writing.await.expect("writer");
    assert!(written > 1, "the writer wrote while MGET read");
}

/// A value SET over RESP reads back through the shardkv client and `shardkv get`; one put
/// through the client reads back over RESP, and INCR counts on from it.
async fn values_cross_between_resp_and_the_shardkv_client(cluster: &Cluster, client: &Client) {
    let mut con = cluster_connection(cluster).await;
    con.set::<_, _, ()>("from-resp", "written over RESP")
        .await
        .expect("SET");
    assert_eq!(
        client.get(b"from-resp").await.expect("client get"),
        Some(b"written over RESP".to_vec())
    );
    let out = cluster.cli(&["get", "from-resp"], &[]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "written over RESP\n");

    client
        .put(b"from-shardkv", b"written by the client")
        .await
        .expect("client put");
    let v: Option<String> = con.get("from-shardkv").await.expect("GET");
    assert_eq!(v.as_deref(), Some("written by the client"));

    client.put(b"counted", b"41").await.expect("client put");
    let n: i64 = con.incr("counted", 1).await.expect("INCR");
    assert_eq!(n, 42);
    assert_eq!(
        client.get(b"counted").await.expect("client get"),
        Some(b"42".to_vec())
    );

    con.del::<_, ()>("from-shardkv").await.expect("DEL");
    assert_eq!(client.get(b"from-shardkv").await.expect("client get"), None);
}

/// On a follower, READONLY serves a GET from the local replica (no MOVED); READWRITE
/// redirects again.
async fn readonly_reads_a_follower_and_readwrite_redirects_again(
    cluster: &Cluster,
    client: &Client,
    leaders: &BTreeMap<ShardId, HostId>,
) {
    let (&shard, &leader) = leaders.iter().next().expect("a shard");
    let follower = [1, 2, 3]
        .into_iter()
        .find(|&h| h != leader)
        .expect("a host other than the leader");
    let key = key_of(cluster, shard);
    client.put(key.as_bytes(), b"stale-ok").await.expect("put");
    cluster.wait_caught_up(client, follower).await;

    let mut con = host_connection(cluster, follower).await;
    let moved = |e: redis::RedisError| {
        assert_eq!(e.code(), Some("MOVED"), "{e}");
        let (addr, slot_of) = e.redirect_node().expect("MOVED names a node");
        assert_eq!(slot_of, slot(key.as_bytes()));
        assert_eq!(cluster.host_at_resp(addr), leader, "MOVED to the leader");
    };
    moved(
        con.get::<_, Option<String>>(&key)
            .await
            .expect_err("a follower redirects a linearizable read"),
    );
    let ok: String = redis::cmd("READONLY")
        .query_async(&mut con)
        .await
        .expect("READONLY");
    assert_eq!(ok, "OK");
    let v: Option<String> = con.get(&key).await.expect("READONLY GET on a follower");
    assert_eq!(v.as_deref(), Some("stale-ok"));
    let ok: String = redis::cmd("READWRITE")
        .query_async(&mut con)
        .await
        .expect("READWRITE");
    assert_eq!(ok, "OK");
    moved(
        con.get::<_, Option<String>>(&key)
            .await
            .expect_err("READWRITE redirects again"),
    );
}

/// kill -9 of a shard's leader while a cluster client writes: the client carries on once a
/// new leader is elected (it retries on MOVED, TRYAGAIN and connection errors), writes reach
/// the shard again, and every acknowledged SET reads back over RESP and through the client.
async fn acknowledged_sets_survive_a_leader_kill(
    cluster: &mut Cluster,
    client: &Client,
    leaders: &BTreeMap<ShardId, HostId>,
) {
    let (&shard, &victim) = leaders.iter().last().expect("a shard");
    let shards = cluster.cfg.cluster.shards;
    let con = cluster_connection(cluster).await;
    let acked: Arc<Mutex<Vec<(String, String, bool)>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, killed, mut con) = (acked.clone(), killed.clone(), con.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut failed = 0u32;
            for i in 0u64.. {
                let (k, v) = (format!("kill-{i}"), format!("value-{i}"));
                let after = killed.load(Ordering::SeqCst);
                match con.set::<_, _, ()>(&k, &v).await {
                    Ok(()) => acked.lock().expect("lock").push((k, v, after)),
                    Err(e) => {
                        failed += 1;
                        eprintln!("SET {k} failed (not acknowledged): {e}");
                    }
                }
                let of_shard_after = acked
                    .lock()
                    .expect("lock")
                    .iter()
                    .filter(|(k, _, after)| {
                        *after
                            && shardkv_transport::slot::shard_of_key(k.as_bytes(), shards) == shard
                    })
                    .count();
                if of_shard_after >= 30 || Instant::now() > deadline {
                    return failed;
                }
            }
            failed
        })
    };
    while acked.lock().expect("lock").len() < 150 {
        assert!(!writer.is_finished(), "the writer stopped before the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.kill9(victim);
    killed.store(true, Ordering::SeqCst);
    let failed = writer.await.expect("writer task");
    let acked = acked.lock().expect("lock").clone();
    let of_shard_after = acked
        .iter()
        .filter(|(k, _, after)| {
            *after && shardkv_transport::slot::shard_of_key(k.as_bytes(), shards) == shard
        })
        .count();
    eprintln!(
        "{} SETs acknowledged, {failed} failed, {of_shard_after} to shard {shard} after killing its leader {victim}",
        acked.len()
    );
    assert!(
        of_shard_after >= 30,
        "writes to shard {shard} resume after its leader {victim} is killed"
    );

    let mut c = con.clone();
    for (k, v, _) in &acked {
        let got: Option<String> = c.get(k).await.expect("GET after the kill");
        assert_eq!(
            got.as_deref(),
            Some(v.as_str()),
            "acknowledged SET {k} reads back"
        );
    }
    let model: BTreeMap<Vec<u8>, Vec<u8>> = acked
        .iter()
        .map(|(k, v, _)| (k.clone().into_bytes(), v.clone().into_bytes()))
        .collect();
    common::assert_reads_back(client, &model, Duration::from_secs(30)).await;
}
