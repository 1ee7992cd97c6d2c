//! Unit tests of `cluster.toml` parsing and validation.

use super::*;

fn base() -> &'static Path {
    Path::new("/etc/shardkv")
}

fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
    ClusterConfig::parse(text, base(), Path::new("/etc/shardkv/cluster.toml"))
}

/// A minimal valid config with `n` hosts; tests append or replace parts of it.
fn hosts_toml(n: u64) -> String {
    (1..=n)
        .map(|i| {
            format!(
                "[[host]]\nid = {i}\naddr = \"127.0.0.1:71{i:02}\"\ndata_dir = \"data/host-{i}\"\n"
            )
        })
        .collect()
}

fn with_cluster(cluster: &str, rest: &str) -> String {
    format!("[cluster]\n{cluster}\n{rest}\n{}", hosts_toml(3))
}

fn minimal(rest: &str) -> String {
    with_cluster("name = \"t\"\nshards = 3\nreplicas = 3", rest)
}

/// Asserts that `text` fails and that the message names `field` and contains `reason`.
#[track_caller]
fn assert_invalid(text: &str, field: &str, reason: &str) {
    match parse(text) {
        Ok(cfg) => panic!("expected an error naming {field}, got {cfg:?}"),
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.contains(field), "{shown:?} does not name {field}");
            assert!(shown.contains(reason), "{shown:?} does not say {reason:?}");
            assert!(
                shown.contains("cluster.toml"),
                "{shown:?} does not name the file"
            );
        }
    }
}

#[test]
fn committed_sample_parses_with_defaults() {
    let cfg = parse(SAMPLE).expect("sample must parse");
    assert_eq!(cfg.cluster.name, "local");
    assert_eq!((cfg.cluster.shards, cfg.cluster.replicas), (3, 3));
    assert_eq!(cfg.cluster.value_bytes_max, 1 << 20);
    assert_eq!(cfg.raft.tick, Duration::from_millis(100));
    assert_eq!(cfg.cluster.election_timeout, Duration::from_secs(1));
    assert_eq!(cfg.raft.heartbeat, Duration::from_millis(100));
    assert_eq!(cfg.raft.snapshot_after, 10_000);
    assert!(
        cfg.raft.hibernate,
        "idle shards hibernate unless told not to"
    );
    assert_eq!(cfg.raft_ticks(), (10, 1));
    assert_eq!(cfg.storage.map_size, 64 << 30);
    assert_eq!(cfg.hosts.len(), 3);
    let h2 = cfg.host(2).expect("host 2");
    assert_eq!(h2.host.addr, "127.0.0.1:7102".parse().expect("addr"));
    assert_eq!(h2.metrics, Some("127.0.0.1:9102".parse().expect("addr")));
    assert!(cfg.cluster.pins.is_empty());
}

#[test]
fn omitted_tables_take_defaults() {
    let cfg = parse(&minimal("")).expect("parses");
    assert_eq!(cfg.raft_ticks(), (10, 1));
    assert_eq!(cfg.cluster.tls.ca, Path::new("/etc/shardkv/certs/ca.pem"));
    assert_eq!(
        cfg.cluster.tls.ca_key,
        Path::new("/etc/shardkv/certs/ca.key")
    );
    assert_eq!(cfg.cluster.tls.dir, Path::new("/etc/shardkv/certs"));
    assert_eq!(cfg.hosts[0].metrics, None);
    assert_eq!(cfg.storage.map_size, MAP_SIZE_DEFAULT);
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let cfg = parse(&minimal("[tls]\nca = \"pki/root.pem\"")).expect("parses");
    assert_eq!(
        cfg.cluster.tls.ca_key,
        Path::new("/etc/shardkv/pki/root.key")
    );
    let h1 = cfg.host(1).expect("host 1");
    assert_eq!(h1.data_dir, Path::new("/etc/shardkv/data/host-1"));
    assert_eq!(h1.cert, Path::new("/etc/shardkv/pki/host-1.pem"));
    assert_eq!(h1.key, Path::new("/etc/shardkv/pki/host-1.key"));
    assert_eq!(
        cfg.cluster.tls.client_cert_paths("cli"),
        (
            PathBuf::from("/etc/shardkv/pki/client-cli.pem"),
            PathBuf::from("/etc/shardkv/pki/client-cli.key")
        )
    );

    let text = "[cluster]\nname = \"t\"\nshards = 1\nreplicas = 1\n[[host]]\nid = 1\n\
         addr = \"127.0.0.1:7101\"\ndata_dir = \"/var/lib/shardkv\"\n\
         cert = \"mine/h.pem\"\nkey = \"/secret/h.key\"\n";
    let cfg = parse(text).expect("parses");
    let h1 = cfg.host(1).expect("host 1");
    assert_eq!(h1.data_dir, Path::new("/var/lib/shardkv"));
    assert_eq!(h1.cert, Path::new("/etc/shardkv/mine/h.pem"));
    assert_eq!(h1.key, Path::new("/secret/h.key"));
}

#[test]
fn load_resolves_against_the_file_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, SAMPLE).expect("write");
    let cfg = ClusterConfig::load(&file).expect("loads");
    assert_eq!(cfg.cluster.path, file);
    assert_eq!(cfg.cluster.tls.ca, dir.path().join("certs/ca.pem"));
    assert_eq!(cfg.hosts[2].data_dir, dir.path().join("data/host-3"));

    let missing = dir.path().join("nope.toml");
    let e = ClusterConfig::load(&missing).expect_err("missing file");
    assert!(e.to_string().contains("nope.toml"), "{e}");
}

#[test]
fn map_size_accepts_bytes_and_suffixed_strings() {
    for (given, bytes) in [
        ("1048576", 1u64 << 20),
        ("\"1MiB\"", 1 << 20),
        ("\"512 MiB\"", 512 << 20),
        ("\"64GiB\"", 64 << 30),
        ("\"2TiB\"", 2 << 40),
        ("\"2048KiB\"", 2 << 20),
        ("\"1048576B\"", 1 << 20),
    ] {
        let cfg = parse(&minimal(&format!("[storage]\nmap_size = {given}")))
            .unwrap_or_else(|e| panic!("{given}: {e}"));
        assert_eq!(cfg.storage.map_size, bytes, "{given}");
    }
}

#[test]
fn placement_is_round_robin_over_hosts_sorted_by_id() {
    // Hosts listed out of order: placement sorts by id.
    let text = format!(
        "[cluster]\nname = \"t\"\nshards = 5\nreplicas = 2\n{}{}{}",
        "[[host]]\nid = 30\naddr = \"127.0.0.1:7103\"\ndata_dir = \"c\"\n",
        "[[host]]\nid = 10\naddr = \"127.0.0.1:7101\"\ndata_dir = \"a\"\n",
        "[[host]]\nid = 20\naddr = \"127.0.0.1:7102\"\ndata_dir = \"b\"\n",
    );
    let cfg = parse(&text).expect("parses");
    assert_eq!(
        cfg.cluster.placement(),
        vec![
            (1, vec![10, 20]),
            (2, vec![20, 30]),
            (3, vec![30, 10]),
            (4, vec![10, 20]),
            (5, vec![20, 30]),
        ]
    );
    assert_eq!(cfg.shards_of_host(30), vec![2, 3, 5]);
    assert!(cfg.cluster.shard_hosts(0).is_empty());
    assert!(cfg.cluster.shard_hosts(6).is_empty());
}

#[test]
fn pins_override_round_robin_for_their_shard_only() {
    let text = format!(
        "[cluster]\nname = \"t\"\nshards = 3\nreplicas = 2\n{}[[shard]]\nid = 2\nhosts = [4, 1]\n",
        hosts_toml(4)
    );
    let cfg = parse(&text).expect("parses");
    assert_eq!(
        cfg.cluster.placement(),
        vec![(1, vec![1, 2]), (2, vec![4, 1]), (3, vec![3, 4])]
    );
}

#[test]
fn the_daemon_holds_what_a_client_reads_and_each_host_its_client_view() {
    let text = minimal("");
    let cfg = parse(&text).expect("parses");
    let origin = Path::new("/etc/shardkv/cluster.toml");
    let raw = ClientConfig::read(&text, origin).expect("reads");
    let client = ClientConfig::from_raw(&raw, base(), origin).expect("validates");
    assert_eq!(cfg.cluster, client);
    let daemon_view: Vec<HostAddr> = cfg.hosts.iter().map(|h| h.host).collect();
    assert_eq!(daemon_view, cfg.cluster.hosts, "same hosts, same order");
}

#[test]
fn to_toml_round_trips() {
    let text = format!(
        "[cluster]\nname = \"t\"\nshards = 3\nreplicas = 2\nmax_value_bytes = 4096\n\
         [raft]\ntick = \"50ms\"\nelection_timeout = \"1s 500ms\"\nheartbeat = \"150ms\"\n\
         hibernate = false\n[storage]\nmap_size = \"1GiB\"\n{}[[shard]]\nid = 1\nhosts = [3, 2]\n",
        hosts_toml(3)
    );
    let cfg = parse(&text).expect("parses");
    assert!(!cfg.raft.hibernate);
    let again = parse(&cfg.to_toml()).expect("rendered text parses");
    assert_eq!(cfg, again);
    let sample = parse(SAMPLE).expect("sample");
    assert_eq!(parse(&sample.to_toml()).expect("parses"), sample);
}

#[test]
fn syntax_errors_show_file_line_and_column() {
    let e = parse("[cluster]\nname = \"t\"\nshards = = 3\n").expect_err("bad toml");
    let shown = e.to_string();
    assert!(shown.contains("cluster.toml"), "{shown}");
    assert!(shown.contains("line 3"), "{shown}");
    assert!(shown.contains("column"), "{shown}");
}

#[test]
fn unknown_fields_are_rejected() {
    let e = parse(&minimal("[raft]\ntick = \"100ms\"\nticks = 3")).expect_err("unknown");
    assert!(e.to_string().contains("ticks"), "{e}");
    let e = parse(&format!("{}colour = \"red\"\n", minimal(""))).expect_err("unknown");
    assert!(e.to_string().contains("colour"), "{e}");
    let e = parse(&minimal("[metrics]\nport = 1")).expect_err("unknown table");
    assert!(e.to_string().contains("metrics"), "{e}");
}

#[test]
fn cluster_fields_are_validated() {
    let c = |cluster: &str| with_cluster(cluster, "");
    assert_invalid(
        &c("name = \"  \"\nshards = 3\nreplicas = 3"),
        "cluster.name",
        "empty",
    );
    assert_invalid(
        &c("name = \"t\"\nshards = 0\nreplicas = 3"),
        "cluster.shards",
        "out of range",
    );
    assert_invalid(
        &c("name = \"t\"\nshards = 16385\nreplicas = 3"),
        "cluster.shards",
        "1..=16384",
    );
    assert_invalid(
        &c("name = \"t\"\nshards = 3\nreplicas = 0"),
        "cluster.replicas",
        "out of range",
    );
    assert_invalid(
        &c("name = \"t\"\nshards = 3\nreplicas = 4"),
        "cluster.replicas",
        "only 3 host(s)",
    );
    for bad in ["0", "-1", "67108865"] {
        assert_invalid(
            &c(&format!(
                "name = \"t\"\nshards = 3\nreplicas = 3\nmax_value_bytes = {bad}"
            )),
            "cluster.max_value_bytes",
            "out of range",
        );
    }
    assert!(parse(&c(
        "name = \"t\"\nshards = 3\nreplicas = 3\nmax_value_bytes = 67108864"
    ))
    .is_ok());
}

#[test]
fn raft_timing_is_validated() {
    let raft = |body: &str| minimal(&format!("[raft]\n{body}"));
    assert_invalid(
        &raft("tick = \"10 parsecs\""),
        "raft.tick",
        "\"10 parsecs\"",
    );
    assert_invalid(
        &raft("election_timeout = \"soon\""),
        "raft.election_timeout",
        "\"soon\"",
    );
    assert_invalid(&raft("tick = \"0s\""), "raft.tick", "zero");
    assert_invalid(
        &raft("tick = \"100ms\"\nheartbeat = \"50ms\""),
        "raft.heartbeat",
        "shorter than raft.tick",
    );
    assert_invalid(
        &raft("heartbeat = \"1s\"\nelection_timeout = \"1s\""),
        "raft.election_timeout",
        "not longer than raft.heartbeat",
    );
    assert_invalid(
        &raft("tick = \"100ms\"\nheartbeat = \"100ms\"\nelection_timeout = \"250ms\""),
        "raft.election_timeout",
        "at least 3 ticks",
    );
    // Longer in time but equal in whole ticks: raft-rs would refuse it.
    assert_invalid(
        &raft("tick = \"100ms\"\nheartbeat = \"350ms\"\nelection_timeout = \"390ms\""),
        "raft.election_timeout",
        "3 tick(s)",
    );
    assert_invalid(
        &raft("snapshot_after = 0"),
        "raft.snapshot_after",
        "out of range",
    );
}

#[test]
fn hosts_are_validated() {
    let cluster = "[cluster]\nname = \"t\"\nshards = 1\nreplicas = 1\n";
    let host = |id: &str, addr: &str, extra: &str| {
        format!("[[host]]\nid = {id}\naddr = \"{addr}\"\ndata_dir = \"d{id}\"\n{extra}")
    };
    assert_invalid(cluster, "host", "no [[host]] entries");
    assert_invalid(
        &format!("{cluster}{}", host("0", "127.0.0.1:1", "")),
        "host[0].id",
        "reserves 0",
    );
    assert_invalid(
        &format!("{cluster}{}", host("-3", "127.0.0.1:1", "")),
        "host[0].id",
        "-3",
    );
    assert_invalid(
        &format!(
            "{cluster}{}{}",
            host("1", "127.0.0.1:1", ""),
            host("1", "127.0.0.1:2", "")
        ),
        "host[1].id",
        "already used by host[0]",
    );
    assert_invalid(
        &format!(
            "{cluster}{}{}",
            host("1", "127.0.0.1:1", ""),
            host("2", "127.0.0.1:1", "")
        ),
        "host[1].addr",
        "already used by host[0]",
    );
    assert_invalid(
        &format!("{cluster}{}", host("1", "localhost:7101", "")),
        "host[0].addr",
        "not an IP:port",
    );
    assert_invalid(
        &format!("{cluster}{}", host("1", "0.0.0.0:7101", "")),
        "host[0].addr",
        "not a concrete address",
    );
    assert_invalid(
        &format!(
            "{cluster}{}",
            host("1", "127.0.0.1:1", "metrics = \"nine\"\n")
        ),
        "host[0].metrics",
        "not an IP:port",
    );
    assert_invalid(
        &format!(
            "{cluster}{}{}",
            host("1", "127.0.0.1:1", "cert = \"certs/x.pem\"\n"),
            host("2", "127.0.0.1:2", "cert = \"certs/x.pem\"\n")
        ),
        "host[1].cert",
        "already used by host[0].cert",
    );
    assert_invalid(
        &format!("{cluster}[[host]]\nid = 1\naddr = \"127.0.0.1:1\"\ndata_dir = \"\"\n"),
        "host[0].data_dir",
        "empty",
    );
}

#[test]
fn pins_are_validated() {
    let pinned = |pin: &str| {
        format!(
            "[cluster]\nname = \"t\"\nshards = 3\nreplicas = 2\n{}{pin}",
            hosts_toml(3)
        )
    };
    assert_invalid(
        &pinned("[[shard]]\nid = 4\nhosts = [1, 2]\n"),
        "shard[0].id",
        "shard 4 does not exist",
    );
    assert_invalid(
        &pinned("[[shard]]\nid = 0\nhosts = [1, 2]\n"),
        "shard[0].id",
        "1..=3",
    );
    assert_invalid(
        &pinned("[[shard]]\nid = 1\nhosts = [1, 9]\n"),
        "shard[0].hosts",
        "host 9 is not a [[host]]",
    );
    assert_invalid(
        &pinned("[[shard]]\nid = 1\nhosts = [2, 2]\n"),
        "shard[0].hosts",
        "listed twice",
    );
    assert_invalid(
        &pinned("[[shard]]\nid = 1\nhosts = [1, 2, 3]\n"),
        "shard[0].hosts",
        "exactly cluster.replicas = 2",
    );
    assert_invalid(
        &pinned("[[shard]]\nid = 1\nhosts = [1, 2]\n[[shard]]\nid = 1\nhosts = [2, 3]\n"),
        "shard[1].id",
        "already pinned by shard[0]",
    );
}

#[test]
fn storage_and_tls_are_validated() {
    assert_invalid(
        &minimal("[storage]\nmap_size = \"lots\""),
        "storage.map_size",
        "\"lots\"",
    );
    assert_invalid(
        &minimal("[storage]\nmap_size = \"64 GB\""),
        "storage.map_size",
        "cannot parse",
    );
    assert_invalid(
        &minimal("[storage]\nmap_size = \"99999999999TiB\""),
        "storage.map_size",
        "cannot parse",
    );
    assert_invalid(
        &minimal("[storage]\nmap_size = 4096"),
        "storage.map_size",
        "below the 1 MiB minimum",
    );
    assert_invalid(
        &minimal("[tls]\nca = \"certs/ca.key\""),
        "tls.ca",
        "cannot be the CA certificate",
    );
}

#[test]
fn check_certs_names_the_missing_file_and_the_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg =
        ClusterConfig::parse(SAMPLE, dir.path(), &dir.path().join("cluster.toml")).expect("parses");
    let e = cfg.check_certs(Some(1)).expect_err("nothing exists yet");
    let shown = e.to_string();
    assert!(shown.contains("CA certificate"), "{shown}");
    assert!(shown.contains("ca.pem"), "{shown}");
    assert!(shown.contains("shardkv certs init --config"), "{shown}");

    std::fs::create_dir_all(&cfg.cluster.tls.dir).expect("mkdir");
    std::fs::write(&cfg.cluster.tls.ca, "x").expect("write");
    std::fs::write(&cfg.host(1).expect("h1").cert, "x").expect("write");
    let e = cfg.check_certs(Some(1)).expect_err("key missing");
    assert!(e.to_string().contains("host-1.key"), "{e}");
    std::fs::write(&cfg.host(1).expect("h1").key, "x").expect("write");
    cfg.check_certs(Some(1)).expect("host 1 complete");
    let e = cfg.check_certs(None).expect_err("host 2 missing");
    assert!(e.to_string().contains("host-2.pem"), "{e}");
    let e = cfg.check_certs(Some(9)).expect_err("unknown host");
    assert!(matches!(e, ConfigError::UnknownHost { id: 9, .. }), "{e}");
}

/// `minimal("")` with `resp` lines on the hosts (`127.0.0.1:610N`) and `resp_table` added.
fn with_resp(ips: [&str; 3], resp_table: &str) -> String {
    let mut text = format!("[cluster]\nname = \"t\"\nshards = 3\nreplicas = 3\n{resp_table}\n");
    for (i, ip) in ips.iter().enumerate() {
        let id = i + 1;
        text.push_str(&format!(
            "[[host]]\nid = {id}\naddr = \"127.0.0.1:71{id:02}\"\n\
             data_dir = \"data/host-{id}\"\nresp = \"{ip}:61{id:02}\"\n"
        ));
    }
    text
}

#[test]
fn resp_listeners_are_optional_and_default_to_tls_without_forwarding() {
    let cfg = parse(&minimal("")).expect("parses");
    assert!(cfg.hosts.iter().all(|h| h.resp.is_none()));
    assert_eq!(cfg.resp, RespSettings::default());
    assert!(cfg.resp.tls && !cfg.resp.forward);
    let cfg = parse(&with_resp(["127.0.0.1"; 3], "")).expect("parses");
    let h2 = cfg.host(2).expect("host 2");
    assert_eq!(h2.resp, Some("127.0.0.1:6102".parse().expect("addr")));
    assert!(cfg.resp.tls);
}

#[test]
fn resp_table_sets_tls_and_forward() {
    let cfg = parse(&with_resp(
        ["127.0.0.1"; 3],
        "[resp]\ntls = false\nforward = true",
    ))
    .expect("parses");
    assert_eq!(
        cfg.resp,
        RespSettings {
            tls: false,
            forward: true
        }
    );
}

#[test]
fn plaintext_resp_is_refused_unless_every_resp_address_is_loopback() {
    assert_invalid(
        &with_resp(
            ["127.0.0.1", "10.0.0.2", "127.0.0.1"],
            "[resp]\ntls = false",
        ),
        "resp.tls",
        "host[1].resp 10.0.0.2:6102 is not a loopback address",
    );
    // With TLS any address is fine.
    parse(&with_resp(["127.0.0.1", "10.0.0.2", "127.0.0.1"], "")).expect("parses");
    // IPv6 loopback is loopback.
    let text =
        with_resp(["127.0.0.1"; 3], "[resp]\ntls = false").replace("127.0.0.1:6103", "[::1]:6103");
    parse(&text).expect("::1 is loopback");
}

#[test]
fn resp_addresses_are_validated_and_unique() {
    assert_invalid(
        &with_resp(["127.0.0.1"; 3], "").replace("127.0.0.1:6102", "localhost:6102"),
        "host[1].resp",
        "is not an IP:port address",
    );
    assert_invalid(
        &with_resp(["127.0.0.1"; 3], "").replace("127.0.0.1:6103", "127.0.0.1:6101"),
        "host[2].resp",
        "already used by host[0].resp",
    );
    let text = with_resp(["127.0.0.1"; 3], "").replace(
        "resp = \"127.0.0.1:6101\"",
        "resp = \"127.0.0.1:6101\"\nmetrics = \"127.0.0.1:6102\"",
    );
    assert_invalid(&text, "host[1].resp", "already used by host[0].metrics");
    // A wrong type is the shared schema's error, with the line, like any other field's.
    let e = parse(&with_resp(["127.0.0.1"; 3], "").replace("\"127.0.0.1:6101\"", "6101"))
        .expect_err("an integer");
    let e = e.to_string();
    assert!(
        e.contains("resp = 6101") && e.contains("expected a string"),
        "{e}"
    );
}

#[test]
fn unknown_keys_of_the_resp_table_are_rejected() {
    let e = parse(&with_resp(["127.0.0.1"; 3], "[resp]\nport = 1")).expect_err("unknown");
    assert!(e.to_string().contains("port"), "{e}");
}

#[test]
fn to_toml_round_trips_the_resp_keys() {
    let cfg = parse(&with_resp(
        ["127.0.0.1"; 3],
        "[resp]\ntls = false\nforward = true",
    ))
    .expect("parses");
    assert_eq!(parse(&cfg.to_toml()).expect("rendered text parses"), cfg);
    let cfg = parse(&with_resp(["10.0.0.1", "10.0.0.2", "10.0.0.3"], "")).expect("parses");
    assert_eq!(parse(&cfg.to_toml()).expect("rendered text parses"), cfg);
}

#[test]
fn the_samples_commented_resp_lines_parse_once_uncommented() {
    let text = SAMPLE.replace("# resp = ", "resp = ");
    let cfg = parse(&text).expect("sample with resp lines parses");
    let ports: Vec<u16> = cfg
        .hosts
        .iter()
        .filter_map(|h| h.resp.map(|a| a.port()))
        .collect();
    assert_eq!(ports, [6101, 6102, 6103]);
    // Plaintext, so plain `redis-cli -c -p 6101` works: allowed, every address is loopback.
    assert!(!cfg.resp.tls);
}
