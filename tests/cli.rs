//! The `shardkv` binary as a user runs it: `up`, `put`/`get`/`del`, `certs init` and
//! `certs host`, and clear errors for bad input.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn shardkv(cfg: &std::path::Path, args: &[&str]) -> Output {
    Command::new(common::BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run shardkv")
}

fn shardkv_stdin(cfg: &std::path::Path, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(common::BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shardkv");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait shardkv")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn up_serves_put_get_del_and_stops_on_sigterm() {
    // A config written the way a user would, without certs: `up` must make them.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut text = String::from(
        "[cluster]\nname = \"cli\"\nshards = 3\nreplicas = 3\n[storage]\nmap_size = \"1GiB\"\n",
    );
    for id in 1..=3u8 {
        let ip = [127, 0, 0, 20 + id];
        let port = common::free_port(ip);
        text.push_str(&format!(
            "[[host]]\nid = {id}\naddr = \"127.0.0.{}:{port}\"\ndata_dir = \"data/host-{id}\"\n",
            20 + id
        ));
    }
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(&cfg, text).expect("write config");
    let log = std::fs::File::create(dir.path().join("up.log")).expect("log");
    let mut up = Command::new(common::BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("up")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start up");

    // `up` prints its banner once certs exist and every host has been started.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(dir.path().join("up.log"))
        .unwrap_or_default()
        .contains("Ctrl-C stops the cluster")
    {
        assert!(Instant::now() < deadline, "`up` never printed its banner");
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = std::panic::catch_unwind(|| {
        // The first put may race the elections; the client retries within its deadline.
        let put = shardkv(&cfg, &["put", "hello", "world"]);
        assert!(put.status.success(), "put failed: {}", stderr(&put));
        let get = shardkv(&cfg, &["get", "hello"]);
        assert!(get.status.success(), "get failed: {}", stderr(&get));
        assert_eq!(String::from_utf8_lossy(&get.stdout), "world\n");
        let del = shardkv(&cfg, &["del", "hello"]);
        assert!(del.status.success(), "del failed: {}", stderr(&del));
        let get = shardkv(&cfg, &["get", "hello"]);
        assert_eq!(get.status.code(), Some(1), "absent key exits 1");
        let put = shardkv_stdin(&cfg, &["put", "from-stdin"], b"line one\nline two");
        assert!(
            put.status.success(),
            "put from stdin failed: {}",
            stderr(&put)
        );
        let got = shardkv(&cfg, &["get", "from-stdin"]);
        assert_eq!(String::from_utf8_lossy(&got.stdout), "line one\nline two\n");
        assert!(
            stderr(&get).contains("not found"),
            "stderr: {}",
            stderr(&get)
        );
        assert!(get.stdout.is_empty());

        let put = shardkv_stdin(&cfg, &["put", "big"], &vec![b'x'; 1024 * 1024 + 1]);
        assert_eq!(put.status.code(), Some(2));
        assert!(
            stderr(&put).contains("exceeds the limit"),
            "stderr: {}",
            stderr(&put)
        );
    });

    // SAFETY: kill(2) on the child we started.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = up.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = up.kill();
            panic!("`up` did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if result.is_err() {
        eprintln!(
            "{}",
            std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default()
        );
    }
    result.expect("CLI session");
    assert!(status.success(), "`up` exits 0 after SIGTERM, got {status}");
    for id in 1..=3 {
        assert!(dir.path().join(format!("data/host-{id}/data.mdb")).exists());
        assert!(dir.path().join(format!("certs/host-{id}.pem")).exists());
    }
}

#[test]
fn certs_init_refuses_to_overwrite_without_force() {
    let cluster = common::Cluster::new(1, 1, 1); // already ran certs init
    let out = shardkv(&cluster.cfg_path, &["certs", "init"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--force"), "stderr: {}", stderr(&out));
    let out = shardkv(&cluster.cfg_path, &["certs", "init", "--force"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
}

#[test]
fn bad_config_names_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nname = \"x\"\nshards = 1\nreplicas = 1\n[raft]\nelection_timeout = \"soon\"\n\
         [[host]]\nid = 1\naddr = \"127.0.0.1:7000\"\ndata_dir = \"d\"\n",
    )
    .expect("write");
    let out = shardkv(&cfg, &["get", "k"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("raft.election_timeout"), "stderr: {err}");
    assert!(err.contains("soon"), "stderr: {err}");
}

#[test]
fn unknown_host_is_a_clear_error() {
    let cluster = common::Cluster::new(1, 1, 1);
    let out = shardkv(&cluster.cfg_path, &["serve", "--host", "9"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains('9') && err.contains('1'),
        "names the host and the known ones: {err}"
    );
}

#[test]
fn certs_host_issues_a_new_hosts_certificate_once_and_is_safe_to_rerun() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("cluster.toml");
    let mut text = String::from("[cluster]\nname = \"grow\"\nshards = 1\nreplicas = 3\n");
    let host = |id: u8| {
        format!(
            "[[host]]\nid = {id}\naddr = \"127.0.0.{id}:7000\"\ndata_dir = \"data/host-{id}\"\n"
        )
    };
    for id in 1..=3 {
        text.push_str(&host(id));
    }
    std::fs::write(&cfg, &text).expect("write config");

    let out = shardkv(&cfg, &["certs", "host", "3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("certs init"), "{}", stderr(&out));
    let out = shardkv(&cfg, &["certs", "init"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The fourth machine: its [[host]] entry is appended, then its certificate issued.
    text.push_str(&host(4));
    std::fs::write(&cfg, &text).expect("append host 4");
    let out = shardkv(&cfg, &["certs", "host", "5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("1, 2, 3, 4"), "{}", stderr(&out));
    let out = shardkv(&cfg, &["certs", "host", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("host-4.pem") && stdout.contains("host-4.key"),
        "{stdout}"
    );
    let cert = dir.path().join("certs/host-4.pem");
    let issued = std::fs::read(&cert).expect("host 4 cert");

    // Re-running leaves the valid files alone; --force replaces them.
    let out = shardkv(&cfg, &["certs", "host", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("already valid for host 4"), "{stdout}");
    assert_eq!(std::fs::read(&cert).expect("read"), issued);
    let out = shardkv(&cfg, &["certs", "host", "4", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(std::fs::read(&cert).expect("read"), issued);

    // Files that do not belong to the host are refused without --force.
    std::fs::copy(dir.path().join("certs/host-3.pem"), &cert).expect("copy");
    let out = shardkv(&cfg, &["certs", "host", "4"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
}
