//! The RESP listener's mutual TLS (`[resp] tls = true`, the default): `redis-cli --tls` with
//! a client certificate from `shardkv certs client NAME` is served; without a certificate,
//! with one from another CA, or in plaintext it is refused, and the host goes on serving
//! the others. And plaintext RESP is refused at config time unless every `resp` address is
//! loopback.

mod common;

use std::path::{Path, PathBuf};

use common::resp::redis_cli;
use common::Cluster;

/// `--tls` flags for redis-cli: the cluster CA to check the host with, and a client
/// certificate and key if given.
fn tls_args(ca: &Path, cert: Option<(&Path, &Path)>) -> Vec<String> {
    let mut args = vec!["--tls".to_string(), "--cacert".into(), path_text(ca)];
    if let Some((cert, key)) = cert {
        args.extend([
            "--cert".into(),
            path_text(cert),
            "--key".into(),
            path_text(key),
        ]);
    }
    args
}

fn path_text(p: &Path) -> String {
    p.to_str().expect("a UTF-8 temp path").to_string()
}

/// Runs `shardkv --config CFG args`, panicking with its output unless it succeeds.
fn shardkv_ok(cfg: &Path, args: &[&str]) {
    let out = std::process::Command::new(common::BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run shardkv");
    assert!(
        out.status.success(),
        "shardkv {args:?}: {}",
        common::output_text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_only_clients_with_a_certificate_of_the_cluster_ca() {
    let (mut cluster, _client, _) = Cluster::started_with_resp(1, 1, 1, true, false).await;
    let addr = cluster.resp_addr(1);
    let ca = cluster.cfg.cluster.tls.ca.clone();

    // A client certificate issued by the cluster CA.
    shardkv_ok(&cluster.cfg_path, &["certs", "client", "app"]);
    let (cert, key) = cluster.cfg.cluster.tls.client_cert_paths("app");
    let good = tls_args(&ca, Some((&cert, &key)));
    let run = |tls: &[String], cmd: &[&str]| {
        let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
        args.extend_from_slice(cmd);
        redis_cli(addr, &args, None)
    };
    let stdout =
        |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    let out = run(&good, &["set", "tls-key", "over-tls"]);
    assert_eq!(stdout(&out), "OK", "{}", common::output_text(&out));
    let out = run(&good, &["-c", "get", "tls-key"]);
    assert_eq!(stdout(&out), "over-tls", "{}", common::output_text(&out));

    // A second CA, made by `shardkv certs init` for a copy of the config in another dir,
    // and a client certificate from it.
    let other = tempfile::tempdir().expect("temp dir");
    let other_cfg = other.path().join("cluster.toml");
    std::fs::copy(&cluster.cfg_path, &other_cfg).expect("copy cluster.toml");
    shardkv_ok(&other_cfg, &["certs", "init"]);
    shardkv_ok(&other_cfg, &["certs", "client", "app"]);
    let other_cert: PathBuf = other.path().join("certs/client-app.pem");
    let other_key: PathBuf = other.path().join("certs/client-app.key");
    assert!(
        other_cert.exists() && other_key.exists(),
        "the other CA's client files"
    );

    let refused: [(&str, Vec<String>); 3] = [
        ("no client certificate", tls_args(&ca, None)),
        (
            "a client certificate of another CA",
            tls_args(&ca, Some((&other_cert, &other_key))),
        ),
        ("plaintext", Vec::new()),
    ];
    for (what, tls) in &refused {
        let out = run(tls, &["set", "tls-key", "overwritten"]);
        eprintln!(
            "{what}: redis-cli says {}",
            common::output_text(&out).trim_end()
        );
        assert_ne!(
            stdout(&out),
            "OK",
            "{what} is refused: {}",
            common::output_text(&out)
        );
        let out = run(&good, &["get", "tls-key"]);
        assert_eq!(
            stdout(&out),
            "over-tls",
            "after a client with {what}, the host serves the others and nothing was written"
        );
    }
    cluster.check_alive();
}

#[test]
fn plaintext_resp_on_a_non_loopback_address_is_a_config_error_naming_resp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("cluster.toml");
    let config = |resp_table: &str| {
        let mut text = format!(
            "[cluster]\nname = \"x\"\nshards = 1\nreplicas = 1\n{resp_table}\n\
             [[host]]\nid = 1\naddr = \"127.0.0.1:7000\"\ndata_dir = \"d\"\n"
        );
        // A documentation address (TEST-NET-1): not loopback, and never bound or dialled.
        text.push_str("resp = \"192.0.2.10:6101\"\n");
        text
    };
    std::fs::write(&cfg, config("[resp]\ntls = false\n")).expect("write config");
    let mut serve = std::process::Command::new(common::BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["serve", "--host", "1"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run shardkv serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while serve.try_wait().expect("poll shardkv serve").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            panic!("shardkv serve started with plaintext RESP on 192.0.2.10");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = serve.wait_with_output().expect("shardkv serve output");
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("resp"), "the error names resp: {err}");
    assert!(err.contains("loopback"), "the error says why: {err}");

    // The same address with TLS (the default) is a valid config.
    std::fs::write(&cfg, config("")).expect("write config");
    shardkv_ok(&cfg, &["certs", "init"]);
}
