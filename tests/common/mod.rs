//! Test harness: a real cluster of `shardkv serve` processes on loopback, with certificates and
//! a config written into a temp dir. Processes are stopped by PID when the harness drops.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardkv::client::{Client, ClientSettings};
use shardkv::config::ClusterConfig;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_shardkv");

/// A free UDP port on `ip` (QUIC listens on UDP).
pub fn free_port(ip: [u8; 4]) -> u16 {
    let s = UdpSocket::bind(SocketAddr::from((ip, 0))).expect("bind a probe socket on loopback");
    s.local_addr().expect("probe socket has an address").port()
}

/// A free TCP port on `ip` (for the metrics listener).
pub fn free_tcp_port(ip: [u8; 4]) -> u16 {
    let s = std::net::TcpListener::bind(SocketAddr::from((ip, 0))).expect("bind a probe listener");
    s.local_addr()
        .expect("probe listener has an address")
        .port()
}

/// GET `path` from `addr` over plain HTTP/1.0; returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    assert!(
        out.starts_with("HTTP/1.") && out.contains(" 200 "),
        "response: {out}"
    );
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub cfg_path: PathBuf,
    pub cfg: ClusterConfig,
    procs: BTreeMap<u64, Child>,
}

impl Cluster {
    /// Writes config + certs for `hosts` hosts, `shards` shards x `replicas` replicas. Each
    /// host gets its own loopback address 127.0.0.(10+id).
    pub fn new(hosts: u64, shards: u32, replicas: u32) -> Cluster {
        Self::with_raft(hosts, shards, replicas, "")
    }

    /// Like [`Cluster::new`], with extra lines for the `[raft]` table.
    pub fn with_raft(hosts: u64, shards: u32, replicas: u32, raft_extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut text = format!(
            "[cluster]\nname = \"test\"\nshards = {shards}\nreplicas = {replicas}\n\n\
             [raft]\ntick = \"50ms\"\nelection_timeout = \"500ms\"\nheartbeat = \"50ms\"\n{raft_extra}\n\
             [storage]\nmap_size = \"1GiB\"\n\n"
        );
        for id in 1..=hosts {
            let ip = [127, 0, 0, 10 + id as u8];
            let port = free_port(ip);
            let metrics = free_tcp_port(ip);
            text.push_str(&format!(
                "[[host]]\nid = {id}\naddr = \"127.0.0.{last}:{port}\"\ndata_dir = \"data/host-{id}\"\n\
                 metrics = \"127.0.0.{last}:{metrics}\"\n\n",
                last = 10 + id
            ));
        }
        let cfg_path = dir.path().join("cluster.toml");
        std::fs::write(&cfg_path, text).expect("write config");
        let cfg = ClusterConfig::load(&cfg_path).expect("test config is valid");
        shardkv::certs::init(&cfg, false).expect("certs");
        Cluster {
            dir,
            cfg_path,
            cfg,
            procs: BTreeMap::new(),
        }
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("host-{id}.log"))
    }

    /// Starts `shardkv serve` for host `id`.
    pub fn start(&mut self, id: u64) {
        assert!(!self.procs.contains_key(&id), "host {id} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&self.cfg_path)
            .arg("--host")
            .arg(id.to_string())
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shardkv serve");
        self.procs.insert(id, child);
    }

    pub fn start_all(&mut self) {
        for id in self.cfg.hosts.iter().map(|h| h.id).collect::<Vec<_>>() {
            self.start(id);
        }
    }

    pub fn pid(&self, id: u64) -> i32 {
        self.procs[&id].id() as i32
    }

    pub fn signal(&self, id: u64, sig: libc::c_int) {
        // SAFETY: kill(2) on a child we started.
        unsafe {
            libc::kill(self.pid(id), sig);
        }
    }

    /// Panics (with the logs) if a host process exited on its own: a crash the test did not
    /// cause is a bug even when the cluster kept working.
    pub fn check_alive(&mut self) {
        for (id, c) in self.procs.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("host {id} exited on its own ({status})");
            }
        }
    }

    /// Whether host `id` has a running process.
    pub fn is_running(&self, id: u64) -> bool {
        self.procs.contains_key(&id)
    }

    /// SIGSTOP: the host freezes with its sockets open, like a long GC pause or a hung VM.
    pub fn pause(&self, id: u64) {
        self.signal(id, libc::SIGSTOP);
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&self, id: u64) {
        self.signal(id, libc::SIGCONT);
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self, id: u64) {
        let mut c = self.procs.remove(&id).expect("host running");
        c.kill().expect("SIGKILL");
        c.wait().expect("reap");
    }

    pub fn kill9_all(&mut self) {
        for id in self.procs.keys().copied().collect::<Vec<_>>() {
            self.kill9(id);
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self, id: u64) -> std::process::ExitStatus {
        self.signal(id, libc::SIGTERM);
        let mut c = self.procs.remove(&id).expect("host running");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("host {id} did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn settings(&self, name: &str) -> ClientSettings {
        let mut s = ClientSettings::from_config(&self.cfg, name);
        s.deadline = Duration::from_secs(20);
        s
    }

    pub fn client(&self) -> Client {
        Client::new(self.settings("cli")).expect("client")
    }

    /// A bare QUIC connection to the `index`th host with the client certificate `name`, for
    /// tests that send hand-made requests or Raft traffic.
    pub async fn raw_connection(&self, name: &str, index: usize) -> quinn::Connection {
        let (cert, key) = self.cfg.client_cert_paths(name);
        let files = shardkv_transport::TlsFiles {
            ca: self.cfg.tls.ca.clone(),
            cert,
            key,
        };
        let endpoint =
            shardkv_transport::endpoint::client_endpoint(&files).expect("client endpoint");
        let host = &self.cfg.hosts[index];
        shardkv_transport::endpoint::connect(&endpoint, host.addr, host.id)
            .await
            .expect("a client may connect")
    }

    /// Waits until every shard accepts a write and a linearizable read.
    pub async fn wait_ready(&self, client: &Client) {
        for shard in 1..=self.cfg.shards {
            let key = key_in_shard(shard, self.cfg.shards);
            client
                .put(&key, b"ready")
                .await
                .expect("cluster becomes ready");
            assert_eq!(
                client.get(&key).await.expect("ready read"),
                Some(b"ready".to_vec())
            );
            client.delete(&key).await.expect("ready delete");
        }
    }

    pub fn dump_logs(&self) {
        for h in &self.cfg.hosts {
            if let Ok(s) = std::fs::read_to_string(self.log_path(h.id)) {
                let tail: Vec<&str> = s.lines().rev().take(60).collect();
                let errors: Vec<&str> = s
                    .lines()
                    .filter(|l| l.contains("ERROR") || l.contains("panicked"))
                    .take(20)
                    .collect();
                eprintln!("---- host {} log: errors ----", h.id);
                for l in errors {
                    eprintln!("{l}");
                }
                eprintln!("---- host {} log (last 60 lines) ----", h.id);
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SHARDKV_TEST_LOGS").is_some() {
            self.dump_logs();
        }
        for (_, mut c) in std::mem::take(&mut self.procs) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A key that lands in `shard`.
pub fn key_in_shard(shard: u32, shards: u32) -> Vec<u8> {
    (0u64..)
        .map(|i| format!("probe-{i}").into_bytes())
        .find(|k| shardkv_transport::slot::shard_of_key(k, shards) == shard)
        .expect("some key maps to every shard")
}

/// Seed from SHARDKV_SEED or the clock, printed so a failure can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("SHARDKV_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed: {seed} (replay with SHARDKV_SEED={seed})");
    seed
}
