//! Unit tests of the client's view of `cluster.toml` (the daemon's full validation is tested
//! in the root crate, over the same file schema).

use super::*;

fn parse(text: &str) -> Result<ClientConfig, ConfigError> {
    let origin = Path::new("/etc/shardkv/cluster.toml");
    let raw = ClientConfig::read(text, origin)?;
    ClientConfig::from_raw(&raw, Path::new("/etc/shardkv"), origin)
}

const THREE_HOSTS: &str = "[cluster]\nname = \"t\"\nshards = 4\nreplicas = 2\n\
    [raft]\ntick = \"50ms\"\nelection_timeout = \"700ms\"\n\
    [[host]]\nid = 3\naddr = \"127.0.0.1:7103\"\ndata_dir = \"d3\"\n\
    [[host]]\nid = 1\naddr = \"127.0.0.1:7101\"\ndata_dir = \"d1\"\nmetrics = \"127.0.0.1:9101\"\n\
    [[host]]\nid = 2\naddr = \"127.0.0.1:7102\"\ndata_dir = \"d2\"\n\
    [[shard]]\nid = 4\nhosts = [3, 2]\n";

#[test]
fn a_client_reads_hosts_placement_tls_and_timing_from_the_daemon_file() {
    let cfg = parse(THREE_HOSTS).expect("parses");
    assert_eq!(cfg.shards, 4);
    assert_eq!(cfg.value_bytes_max, VALUE_BYTES_MAX_DEFAULT);
    assert_eq!(cfg.election_timeout, Duration::from_millis(700));
    assert_eq!(
        cfg.hosts.iter().map(|h| h.id).collect::<Vec<_>>(),
        [3, 1, 2]
    );
    assert_eq!(cfg.tls.ca, Path::new("/etc/shardkv/certs/ca.pem"));
    assert_eq!(
        cfg.tls.client_cert_paths("app"),
        (
            PathBuf::from("/etc/shardkv/certs/client-app.pem"),
            PathBuf::from("/etc/shardkv/certs/client-app.key")
        )
    );
    assert_eq!(
        cfg.placement(),
        vec![
            (1, vec![1, 2]),
            (2, vec![2, 3]),
            (3, vec![3, 1]),
            (4, vec![3, 2])
        ]
    );
}

#[test]
fn the_client_rejects_what_it_cannot_route() {
    let no_hosts = "[cluster]\nname = \"t\"\nshards = 1\nreplicas = 1\n";
    assert!(parse(no_hosts)
        .expect_err("no hosts")
        .to_string()
        .contains("no [[host]] entries"));
    let unknown = format!("{THREE_HOSTS}[extra]\n");
    assert!(matches!(parse(&unknown), Err(ConfigError::Syntax { .. })));
}

#[test]
fn replica_hosts_outside_the_shard_range_are_empty() {
    assert!(replica_hosts(0, 3, 1, [1, 2], &[]).is_empty());
    assert!(replica_hosts(4, 3, 1, [1, 2], &[]).is_empty());
    assert!(replica_hosts(1, 3, 1, [], &[]).is_empty());
    assert_eq!(replica_hosts(3, 3, 2, [2, 1], &[]), vec![1, 2]);
}

#[test]
fn load_names_the_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    let e = ClientConfig::load(&missing).expect_err("missing file");
    assert!(e.to_string().contains("nope.toml"), "{e}");
}

#[test]
fn a_client_reads_past_the_daemons_redis_protocol_keys() {
    let with_resp = THREE_HOSTS
        .replace(
            "data_dir = \"d1\"\n",
            "data_dir = \"d1\"\nresp = \"127.0.0.1:6101\"\n",
        )
        .replace(
            "[[shard]]",
            "[resp]\ntls = false\nforward = true\n[[shard]]",
        );
    let cfg = parse(&with_resp).expect("a client reads a file with resp keys");
    assert_eq!(cfg, parse(THREE_HOSTS).expect("parses"));
}
