//! Test harness: a real cluster of `shardkv serve` processes on loopback, with certificates and
//! a config written into a temp dir, started and stopped by PID through the same launcher as
//! `shardkv up` ([`shardkv::local`]). Failures panic with what went wrong: this is a test.
//!
//! Every test binary compiles this module and uses a different part of it, so the items that
//! not every binary uses carry a narrow `allow(dead_code)`.

use std::path::PathBuf;
use std::time::Duration;

use shardkv::client::{Client, ClientSettings};
use shardkv::config::ClusterConfig;
use shardkv::local::{HostProcesses, LoopbackSpec};
use shardkv_transport::HostId;

#[allow(dead_code, reason = "used by the tests that read metrics")]
pub mod metrics;
#[allow(dead_code, reason = "used by the Redis protocol tests only")]
pub mod resp;
#[allow(
    dead_code,
    reason = "used by the shard split tests and the slot checks"
)]
pub mod slots;

/// Path of the binary under test.
#[allow(dead_code, reason = "used by the tests that run the CLI")]
pub const BIN: &str = env!("CARGO_BIN_EXE_shardkv");

/// Host `id` listens on `127.0.0.<LOOPBACK_FIRST_OCTET + id>`.
const LOOPBACK_FIRST_OCTET: u8 = 10;

/// How long a host may take to exit after SIGTERM before the test fails.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A free UDP port on `ip` (QUIC listens on UDP).
#[allow(dead_code, reason = "used by the tests that write their own config")]
pub fn free_port(ip: [u8; 4]) -> u16 {
    shardkv::local::free_udp_port(ip).expect("a free port on loopback")
}

/// A cluster under test; every host still running is killed when it drops.
pub struct Cluster {
    /// First field, so it drops (killing the hosts) before their directory is removed.
    hosts: HostProcesses,
    /// Holds the config, certificates, data and logs; removed when the cluster drops.
    #[allow(
        dead_code,
        reason = "read only by the tests that write files of their own"
    )]
    pub dir: tempfile::TempDir,
    #[allow(dead_code, reason = "read only by the tests that run the CLI")]
    pub cfg_path: PathBuf,
    pub cfg: ClusterConfig,
}

#[allow(
    dead_code,
    reason = "each test binary drives the cluster through a different subset of these"
)]
impl Cluster {
    /// Writes config + certs for `hosts` hosts, `shards` shards x `replicas` replicas. Each
    /// host gets its own loopback address 127.0.0.(10+id).
    pub fn new(hosts: u64, shards: u32, replicas: u32) -> Cluster {
        Self::with_raft(hosts, shards, replicas, "")
    }

    /// Like [`Cluster::new`], with extra lines for the `[raft]` table.
    pub fn with_raft(hosts: u64, shards: u32, replicas: u32, raft_extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = LoopbackSpec {
            name: "test".into(),
            hosts,
            shards,
            replicas,
            first_octet: LOOPBACK_FIRST_OCTET,
            raft: format!(
                "tick = \"50ms\"\nelection_timeout = \"500ms\"\nheartbeat = \"50ms\"\n{raft_extra}"
            ),
            map_size: "1GiB".into(),
            metrics: true,
        };
        let (cfg_path, cfg) = spec.write(dir.path()).expect("test config and certs");
        let hosts = HostProcesses::new(
            std::path::Path::new(env!("CARGO_BIN_EXE_shardkv")),
            &cfg_path,
        )
        .log_to(dir.path())
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0");
        Cluster {
            hosts,
            dir,
            cfg_path,
            cfg,
        }
    }

    /// Appends a `[[host]]` entry for the next host id to cluster.toml (its own loopback
    /// address, as [`Cluster::new`] gives them, and a metrics listener if the others have
    /// one), issues its certificate with `shardkv certs host ID`, and reloads `self.cfg`.
    /// Hosts already running keep the config they started with; the new host is not started.
    pub fn append_host(&mut self) -> HostId {
        use std::io::Write;
        let id = self.cfg.hosts.iter().map(|h| h.host.id).max().unwrap_or(0) + 1;
        let last = u8::try_from(u64::from(LOOPBACK_FIRST_OCTET) + id)
            .expect("host ids fit one loopback /24");
        let ip = [127, 0, 0, last];
        let mut entry = format!(
            "\n[[host]]\nid = {id}\naddr = \"127.0.0.{last}:{}\"\ndata_dir = \"data/host-{id}\"\n",
            free_port(ip)
        );
        if self.cfg.hosts.iter().any(|h| h.metrics.is_some()) {
            let metrics = shardkv::local::free_tcp_port(ip).expect("a free TCP port on loopback");
            entry.push_str(&format!("metrics = \"127.0.0.{last}:{metrics}\"\n"));
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&self.cfg_path)
            .and_then(|mut f| f.write_all(entry.as_bytes()))
            .expect("append to cluster.toml");
        let out = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&self.cfg_path)
            .args(["certs", "host", &id.to_string()])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run shardkv certs host");
        assert!(
            out.status.success(),
            "shardkv certs host {id}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.cfg = ClusterConfig::load(&self.cfg_path).expect("the grown config loads");
        id
    }

    pub fn log_path(&self, id: HostId) -> PathBuf {
        self.hosts.log_path(id).expect("test hosts log to files")
    }

    /// Starts `shardkv serve` for host `id`.
    pub fn start(&mut self, id: HostId) {
        self.hosts.start(id).expect("start shardkv serve");
    }

    /// Starts the hosts `ids` (when the config lists hosts that are not to run).
    pub fn start_all_of(&mut self, ids: &[HostId]) {
        for &id in ids {
            self.start(id);
        }
    }

    pub fn start_all(&mut self) {
        for id in self.cfg.hosts.iter().map(|h| h.host.id).collect::<Vec<_>>() {
            self.start(id);
        }
    }

    /// Panics (with the logs) if a host process exited on its own: a crash the test did not
    /// cause is a bug even when the cluster kept working.
    pub fn check_alive(&mut self) {
        if let Some((id, status)) = self.hosts.exited() {
            panic!("host {id} exited on its own ({status})");
        }
    }

    /// SIGSTOP: the host freezes with its sockets open, like a long GC pause or a hung VM.
    /// The PID of host `id`'s running process.
    pub fn pid(&self, id: HostId) -> u32 {
        self.hosts.pid(id).expect("host is running")
    }

    pub fn pause(&self, id: HostId) {
        assert!(self.hosts.signal(id, libc::SIGSTOP), "host {id} running");
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&self, id: HostId) {
        assert!(self.hosts.signal(id, libc::SIGCONT), "host {id} running");
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self, id: HostId) {
        self.hosts
            .kill(id)
            .expect("SIGKILL and reap a running host");
    }

    pub fn kill9_all(&mut self) {
        for id in self.hosts.running() {
            self.kill9(id);
        }
    }

    /// Host `id`'s exit status if it has exited on its own (then it is reaped); panics if
    /// another host did.
    pub fn try_exit(&mut self, id: HostId) -> Option<std::process::ExitStatus> {
        match self.hosts.exited() {
            Some((exited, status)) if exited == id => Some(status),
            Some((other, status)) => panic!("host {other} exited on its own ({status})"),
            None => None,
        }
    }

    /// Some host that exited on its own since the last look (it is reaped), if any.
    pub fn reap_exited(&mut self) -> Option<(HostId, std::process::ExitStatus)> {
        self.hosts.exited()
    }

    /// Waits until every local replica of host `id` has applied what its shard's leader had
    /// committed.
    pub async fn wait_caught_up(&self, client: &Client, id: HostId) {
        self.wait_caught_up_within(client, id, Duration::from_secs(30))
            .await
    }

    /// Like [`Cluster::wait_caught_up`], for up to `within` (a catch-up of much data on a
    /// loaded machine).
    pub async fn wait_caught_up_within(&self, client: &Client, id: HostId, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            // Per shard, the (term, commit) of its newest leader: a deposed leader that has
            // not heard of the new term yet (a host just resumed, say) still says it leads.
            let mut commit = std::collections::HashMap::new();
            for h in self.cfg.hosts.iter().map(|h| h.host.id) {
                if let Ok(s) = client.host_status(h).await {
                    for r in s.replicas.iter().filter(|r| r.is_leader) {
                        let newest = commit.entry(r.shard).or_insert((r.term, r.commit));
                        *newest = (*newest).max((r.term, r.commit));
                    }
                }
            }
            if let Ok(s) = client.host_status(id).await {
                let caught_up = s.replicas.iter().all(|r| {
                    commit
                        .get(&r.shard)
                        .is_some_and(|&(_, leader_commit)| r.applied >= leader_commit)
                });
                if caught_up && !s.replicas.is_empty() {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "host {id} did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `within` for host `id` to exit on its own (a refusal to start); returns
    /// its exit status.
    pub fn wait_exit(&mut self, id: HostId, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            match self.hosts.exited() {
                Some((exited, status)) if exited == id => return status,
                Some((other, status)) => panic!("host {other} exited on its own ({status})"),
                None => {}
            }
            assert!(
                std::time::Instant::now() < deadline,
                "host {id} still runs after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self, id: HostId) -> std::process::ExitStatus {
        match self.hosts.stop(id, STOP_GRACE) {
            Ok(status) => status,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn settings(&self, name: &str) -> ClientSettings {
        let mut s = ClientSettings::from_config(&self.cfg.cluster, name);
        s.deadline = Duration::from_secs(20);
        s
    }

    pub fn client(&self) -> Client {
        Client::new(self.settings("cli")).expect("client")
    }

    /// A client holding host 1's certificate: hosts accept fault hooks only from a host
    /// certificate, never from a client one.
    pub fn admin(&self) -> Client {
        let host = &self.cfg.hosts[0];
        let mut settings = self.settings("cli");
        settings.tls.cert = host.cert.clone();
        settings.tls.key = host.key.clone();
        Client::new(settings).expect("admin client")
    }

    /// Like [`Cluster::raw_connection`], for a host that may not be up yet.
    pub async fn try_raw_connection(
        &self,
        name: &str,
        index: usize,
    ) -> Result<quinn::Connection, shardkv_transport::TransportError> {
        let (cert, key) = self.cfg.cluster.tls.client_cert_paths(name);
        let files = shardkv_transport::TlsFiles {
            ca: self.cfg.cluster.tls.ca.clone(),
            cert,
            key,
        };
        let endpoint = shardkv_transport::endpoint::client_endpoint(&files)?;
        let host = &self.cfg.hosts[index];
        shardkv_transport::endpoint::connect(&endpoint, host.host.addr, host.host.id).await
    }

    /// A bare QUIC connection to the `index`th host with the client certificate `name`, for
    /// tests that send hand-made requests or Raft traffic.
    pub async fn raw_connection(&self, name: &str, index: usize) -> quinn::Connection {
        self.try_raw_connection(name, index)
            .await
            .expect("a client may connect")
    }

    /// `key` as host `host` alone has applied it (a stale read sent to that host only); `Err`
    /// while the host cannot answer (it is starting, or down).
    pub async fn stale_read_on(&self, host: HostId, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let index = self
            .cfg
            .hosts
            .iter()
            .position(|h| h.host.id == host)
            .expect("host in config");
        let conn = self
            .try_raw_connection("cli", index)
            .await
            .map_err(|e| e.to_string())?;
        stale_read_via(&conn, key)
            .await
            .map_err(|e| format!("stale read on host {host}: {e}"))
    }

    /// Waits until the meta group answers a linearizable read of the map and every shard
    /// accepts a write and a linearizable read.
    pub async fn wait_ready(&self, client: &Client) {
        client
            .read_map()
            .await
            .expect("the meta group elects a leader");
        for shard in 1..=self.cfg.cluster.shards {
            let key = key_in_shard(shard, self.cfg.cluster.shards);
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

    /// Runs the `shardkv` command with `args` against this cluster's config, with extra
    /// environment `env`, and waits for it.
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("--config").arg(&self.cfg_path).args(args);
        cmd.env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run shardkv")
    }

    pub fn dump_logs(&self) {
        for h in &self.cfg.hosts {
            if let Ok(s) = std::fs::read_to_string(self.log_path(h.host.id)) {
                let tail: Vec<&str> = s.lines().rev().take(60).collect();
                let errors: Vec<&str> = s
                    .lines()
                    .filter(|l| l.contains("ERROR") || l.contains("panicked"))
                    .take(20)
                    .collect();
                eprintln!("---- host {} log: errors ----", h.host.id);
                for l in errors {
                    eprintln!("{l}");
                }
                eprintln!("---- host {} log (last 60 lines) ----", h.host.id);
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
    }
}

/// `key` as the host at the other end of `conn` alone has applied it (a stale read).
pub async fn stale_read_via(
    conn: &quinn::Connection,
    key: &[u8],
) -> Result<Option<Vec<u8>>, String> {
    use shardkv_transport::wire::{Op, ReadConsistency, Request, RequestFrame, Response};
    let req = RequestFrame::Data(Request {
        client_id: 0,
        seq: 0,
        op: Op::Get {
            key: key.to_vec(),
            consistency: ReadConsistency::Stale,
        },
    });
    match shardkv_transport::endpoint::call(conn, &req).await {
        Ok(Response::Value(v)) => Ok(v),
        other => Err(format!("{other:?}")),
    }
}

/// A size field of `/proc/<pid>/status` (e.g. `VmHWM`, `RssAnon`), in bytes.
#[allow(dead_code, reason = "used by the memory-bound drills")]
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib * 1024
}

/// A key that lands in `shard` (of `shards` day-0 shards).
pub fn key_in_shard(shard: u32, shards: u32) -> Vec<u8> {
    (0u64..)
        .map(|i| format!("probe-{i}").into_bytes())
        .find(|k| shardkv_transport::slot::shard_of_key(k, shards) == shard)
        .expect("some key maps to every shard")
}

/// Seed from SHARDKV_SEED or the clock, printed so a failure can be replayed.
#[allow(dead_code, reason = "used by the randomised tests")]
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

/// The output of a finished `shardkv` command, stdout then stderr, for assertion messages.
#[allow(dead_code, reason = "used by the tests that run the CLI")]
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Reads every `(key, value)` of `acked` back through `client`, retrying a read that fails
/// (an election after a restart) for up to `within` in all; panics on a wrong value.
#[allow(dead_code, reason = "used by the tests that check acknowledged writes")]
pub async fn assert_reads_back(
    client: &Client,
    acked: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    within: Duration,
) {
    let deadline = std::time::Instant::now() + within;
    for (key, value) in acked {
        loop {
            match client.get(key).await {
                Ok(v) => {
                    assert_eq!(
                        v.as_ref(),
                        Some(value),
                        "acknowledged write of {} reads back",
                        String::from_utf8_lossy(key)
                    );
                    break;
                }
                Err(e) => assert!(
                    std::time::Instant::now() < deadline,
                    "read {}: {e}",
                    String::from_utf8_lossy(key)
                ),
            }
        }
    }
}
