//! A layout edit in cluster.toml never hides acknowledged data: hosts refuse to start and
//! clients refuse to route when the file declares another layout than the cluster was
//! bootstrapped with, and appending a `[[host]]` entry moves no replica.

mod common;

use std::time::Duration;

use shardkv::client::{Client, ClientConfig, ClientError, ClientSettings};

const KEYS: usize = 40;

fn key(i: usize) -> Vec<u8> {
    format!("layout-key-{i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_edit_is_refused_and_an_appended_host_moves_nothing() {
    let mut cluster = common::Cluster::new(3, 3, 3);
    cluster.start_all();
    let client = cluster.client();
    cluster.wait_ready(&client).await;
    for i in 0..KEYS {
        client.put(&key(i), b"v").await.expect("acknowledged write");
    }
    drop(client);
    for id in 1..=3 {
        assert!(cluster.stop(id).success());
    }
    let original = std::fs::read_to_string(&cluster.cfg_path).expect("read cluster.toml");

    // 1. shards = 3 -> 5: a host refuses to start, naming the field and both values.
    let edited = original.replacen("shards = 3", "shards = 5", 1);
    assert_ne!(edited, original, "the test config declares shards = 3");
    std::fs::write(&cluster.cfg_path, &edited).expect("edit cluster.toml");
    cluster.start(1);
    let status = cluster.wait_exit(1, Duration::from_secs(20));
    assert!(
        !status.success(),
        "a host with an edited layout must not serve"
    );
    let log = std::fs::read_to_string(cluster.log_path(1)).expect("host log");
    assert!(
        log.contains("`cluster.shards` is 5 in cluster.toml")
            && log.contains("bootstrapped with 3"),
        "the refusal names the field and both values: {log}"
    );

    // 2. A client whose file declares the edited layout refuses to route.
    std::fs::write(&cluster.cfg_path, &original).expect("restore cluster.toml");
    cluster.start_all();
    let edited_path = cluster.dir.path().join("edited.toml");
    std::fs::write(&edited_path, &edited).expect("write the edited copy");
    let edited_cfg = ClientConfig::load(&edited_path).expect("the edited file is valid on its own");
    let mut settings = ClientSettings::from_config(&edited_cfg, "cli");
    settings.deadline = Duration::from_secs(20);
    let stale = Client::new(settings).expect("client");
    match stale.get(&key(0)).await {
        Err(ClientError::LayoutMismatch(m)) => {
            assert_eq!(m.field, "cluster.shards");
            assert_eq!((m.configured.as_str(), m.bootstrapped.as_str()), ("5", "3"));
        }
        other => panic!("a client with another layout must refuse to route, got {other:?}"),
    }

    // 3. Appending a [[host]] entry (how a new machine gets its address) moves nothing: every
    //    acknowledged key reads back through hosts restarted with the grown file.
    for id in 1..=3 {
        assert!(cluster.stop(id).success());
    }
    let port = common::free_port([127, 0, 0, 14]);
    let grown = format!(
        "{original}\n[[host]]\nid = 4\naddr = \"127.0.0.14:{port}\"\ndata_dir = \"data/host-4\"\n"
    );
    std::fs::write(&cluster.cfg_path, &grown).expect("append a host");
    cluster.start_all_of(&[1, 2, 3]);
    let grown_cfg = ClientConfig::load(&cluster.cfg_path).expect("grown file is valid");
    assert_ne!(
        grown_cfg.placement(),
        cluster.cfg.cluster.placement(),
        "the grown host list would place shards differently if placement were recomputed"
    );
    let mut settings = ClientSettings::from_config(&grown_cfg, "cli");
    settings.deadline = Duration::from_secs(20);
    let client = Client::new(settings).expect("client");
    for i in 0..KEYS {
        assert_eq!(
            client
                .get(&key(i))
                .await
                .expect("read after the host list grew"),
            Some(b"v".to_vec()),
            "key {i} after appending a [[host]] entry"
        );
    }
}
