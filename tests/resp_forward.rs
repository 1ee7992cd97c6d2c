//! `[resp] forward = true`: a client that knows nothing of Redis Cluster (plain `redis-cli`,
//! no `-c`) talks to one host and reaches every shard; the host forwards instead of
//! redirecting, so no reply is a `-MOVED`.

mod common;

use common::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_host_serves_every_shard_to_a_plain_client() {
    let (mut cluster, client, leaders) = Cluster::started_with_resp(3, 3, 3, false, true).await;
    // A host that does not lead every shard, so some commands must be forwarded.
    let entry = [1, 2, 3]
        .into_iter()
        .find(|&h| leaders.values().any(|&l| l != h))
        .expect("three hosts cannot each lead every shard");

    for (&shard, &leader) in &leaders {
        let key = String::from_utf8(common::key_in_shard(shard, cluster.cfg.cluster.shards))
            .expect("ASCII key");
        let value = format!("forwarded-{shard}");
        let how = if leader == entry {
            "led here"
        } else {
            "forwarded"
        };
        assert_eq!(
            cluster.redis_cli_text(entry, &["set", &key, &value]),
            "OK",
            "SET of shard {shard} ({how})"
        );
        assert_eq!(
            cluster.redis_cli_text(entry, &["get", &key]),
            value,
            "GET of shard {shard} ({how})"
        );
        assert_eq!(
            cluster.redis_cli_text(entry, &["incr", &format!("{{{key}}}.n")]),
            "1",
            "INCR of shard {shard} ({how})"
        );
        assert_eq!(
            client.get(key.as_bytes()).await.expect("client get"),
            Some(value.into_bytes()),
            "the shardkv client reads what was forwarded"
        );
    }
    // Several commands over one connection, none of them redirected.
    let script: String = leaders
        .keys()
        .map(|&shard| {
            let key = String::from_utf8(common::key_in_shard(shard, cluster.cfg.cluster.shards))
                .expect("ASCII key");
            format!("GET {key}\nDEL {key}\nEXISTS {key}\n")
        })
        .collect();
    let out = common::resp::redis_cli(cluster.resp_addr(entry), &[], Some(&script));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("MOVED"), "no redirection: {text}");
    let expected: String = leaders
        .keys()
        .map(|shard| format!("forwarded-{shard}\n1\n0\n"))
        .collect();
    assert_eq!(text, expected);
    cluster.check_alive();
}
