//! Redis protocol (RESP) helpers: a test cluster whose hosts have `resp` listeners, Debian's
//! `redis-cli` run against them, a raw TCP connection for hand-made bytes, and the shard
//! leaders the RESP replies must agree with.
//!
//! The listeners are added by rewriting the cluster.toml that [`Cluster::new`] wrote, so the
//! launcher and the certificates are the ones every other test uses.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use shardkv::client::Client;
use shardkv::config::ClusterConfig;
use shardkv_transport::{HostId, ShardId};

use super::Cluster;

/// The `[resp]` table of a test cluster.
#[derive(Debug, Clone, Copy)]
pub struct RespTable {
    /// `[resp] tls`: client certificates required; `false` is plaintext on loopback.
    pub tls: bool,
    /// `[resp] forward`: hosts forward instead of answering `-MOVED`.
    pub forward: bool,
}

/// How long a redis-cli run may take before the test fails (it retries nothing itself).
const REDIS_CLI_TIMEOUT: Duration = Duration::from_secs(30);

impl Cluster {
    /// A cluster of [`Cluster::with_resp`], started and ready: every shard led by its
    /// preferred host and every RESP listener answering ([`Cluster::wait_resp_ready`]).
    /// Returns it, a shardkv client of it, and the shards' leaders.
    pub async fn started_with_resp(
        hosts: u64,
        shards: u32,
        replicas: u32,
        tls: bool,
        forward: bool,
    ) -> (Cluster, Client, BTreeMap<ShardId, HostId>) {
        let mut cluster = Cluster::with_resp(hosts, shards, replicas, RespTable { tls, forward });
        cluster.start_all();
        let client = cluster.client();
        cluster.wait_ready(&client).await;
        let leaders = cluster.wait_resp_ready(&client).await;
        (cluster, client, leaders)
    }

    /// Like [`Cluster::new`], with a `resp` listener on a free TCP port of every host's own
    /// loopback address and the `[resp]` table `table`.
    pub fn with_resp(hosts: u64, shards: u32, replicas: u32, table: RespTable) -> Cluster {
        let mut cluster = Cluster::new(hosts, shards, replicas);
        let text = std::fs::read_to_string(&cluster.cfg_path).expect("read cluster.toml");
        let mut out = String::new();
        for line in text.lines() {
            out.push_str(line);
            out.push('\n');
            let Some(id) = line
                .strip_prefix("data_dir = \"data/host-")
                .and_then(|rest| rest.strip_suffix('"'))
                .and_then(|id| id.parse::<HostId>().ok())
            else {
                continue;
            };
            let ip = match cluster.cfg.host(id).map(|h| h.host.addr.ip()) {
                Some(std::net::IpAddr::V4(ip)) => ip.octets(),
                other => panic!("host {id} has an IPv4 loopback address, not {other:?}"),
            };
            let port = shardkv::local::free_tcp_port(ip).expect("a free TCP port on loopback");
            let ip = std::net::Ipv4Addr::from(ip);
            out.push_str(&format!("resp = \"{ip}:{port}\"\n"));
        }
        out.push_str(&format!(
            "\n[resp]\ntls = {}\nforward = {}\n",
            table.tls, table.forward
        ));
        std::fs::write(&cluster.cfg_path, out).expect("write cluster.toml");
        cluster.cfg = ClusterConfig::load(&cluster.cfg_path).expect("config with resp loads");
        cluster
    }

    /// Host `id`'s RESP address.
    pub fn resp_addr(&self, id: HostId) -> SocketAddr {
        self.cfg
            .host(id)
            .and_then(|h| h.resp)
            .unwrap_or_else(|| panic!("host {id} has a resp address"))
    }

    /// The host whose RESP listener is `addr`.
    pub fn host_at_resp(&self, addr: &str) -> HostId {
        self.cfg
            .hosts
            .iter()
            .find(|h| h.resp.is_some_and(|a| a.to_string() == addr))
            .map(|h| h.host.id)
            .unwrap_or_else(|| panic!("{addr} is some host's resp address"))
    }

    /// `redis://ip:port/` of host `id`, for the `redis` crate.
    pub fn resp_url(&self, id: HostId) -> String {
        format!("redis://{}/", self.resp_addr(id))
    }

    /// Runs `redis-cli -h IP -p PORT <args>` against host `id`; panics if it cannot run or
    /// takes longer than [`REDIS_CLI_TIMEOUT`].
    pub fn redis_cli(&self, id: HostId, args: &[&str]) -> Output {
        redis_cli(self.resp_addr(id), args, None)
    }

    /// Like [`Cluster::redis_cli`], its standard output as text (redis-cli prints replies,
    /// error replies among them, there, and exits 0 on an error reply).
    pub fn redis_cli_text(&self, id: HostId, args: &[&str]) -> String {
        let out = self.redis_cli(id, args);
        assert!(
            out.status.success(),
            "redis-cli {args:?} on host {id}: {}",
            super::output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Waits until every data shard is led by its preferred host (a fresh cluster hands
    /// each shard over within a few seconds; a redirection test must not race that), every
    /// host agrees on it, and every host's RESP listener answers `PING` (accepts, with TLS);
    /// returns the leaders.
    pub async fn wait_resp_ready(&self, client: &Client) -> BTreeMap<ShardId, HostId> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for h in self.cfg.hosts.iter().filter(|h| h.resp.is_some()) {
            let addr = h.resp.expect("filtered");
            loop {
                // A TLS listener is ready once it accepts; a plaintext one once it answers.
                let ready = if self.cfg.resp.tls {
                    TcpStream::connect(addr).is_ok()
                } else {
                    raw_command(addr, b"*1\r\n$4\r\nPING\r\n")
                        .is_some_and(|pong| pong.starts_with(b"+PONG"))
                };
                if ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "host {}'s RESP listener answers PING",
                    h.host.id
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        loop {
            let preferred = client.read_map().await.map(|v| {
                let mut leaders = v.map.preferred_leaders();
                leaders.remove(&shardkv_transport::cluster_map::META_SHARD);
                leaders
            });
            if let (Some(leaders), Ok(preferred)) = (self.agreed_leaders(client).await, preferred) {
                if leaders == preferred {
                    return leaders;
                }
            }
            assert!(
                Instant::now() < deadline,
                "every shard is led by its preferred host"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each data shard's leader, if every running host that holds a replica of it names
    /// the same one and every shard of the config has one.
    pub async fn agreed_leaders(&self, client: &Client) -> Option<BTreeMap<ShardId, HostId>> {
        let mut leaders: BTreeMap<ShardId, HostId> = BTreeMap::new();
        for h in self.hosts.running() {
            let Ok(status) = client.host_status(h).await else {
                return None;
            };
            for r in status
                .replicas
                .iter()
                .filter(|r| r.shard != shardkv_transport::cluster_map::META_SHARD)
            {
                let leader = r.leader?;
                if *leaders.entry(r.shard).or_insert(leader) != leader {
                    return None;
                }
            }
        }
        (leaders.len() == self.cfg.cluster.shards as usize).then_some(leaders)
    }
}

/// Runs `redis-cli -h IP -p PORT <args>` against `addr`, with `stdin` as its standard input
/// (commands, one a line, all sent over one connection) if given.
pub fn redis_cli(addr: SocketAddr, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("run redis-cli ({e}); it is in Debian's redis-tools (`.ci/run` installs it)")
        });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .expect("write redis-cli stdin");
    }
    let deadline = Instant::now() + REDIS_CLI_TIMEOUT;
    loop {
        if child.try_wait().expect("poll redis-cli").is_some() {
            return child.wait_with_output().expect("redis-cli output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("redis-cli output");
            panic!(
                "redis-cli {args:?} against {addr} still runs after {REDIS_CLI_TIMEOUT:?}: {}",
                super::output_text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `bytes` over a new TCP connection to `addr` and returns the first reply bytes (up
/// to one read), or `None` if the connection fails or nothing comes back within 5 s.
pub fn raw_command(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(bytes).ok()?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    buf.truncate(n);
    (n > 0).then_some(buf)
}

/// What a RESP server did with bytes sent to it: what it answered, and whether it closed the
/// connection (within the wait).
#[derive(Debug)]
pub struct RawOutcome {
    /// Everything read until the close or the wait ended.
    pub reply: Vec<u8>,
    /// The server closed (end of stream or reset) rather than the wait running out.
    pub closed: bool,
}

/// Writes `bytes` to a new connection to `addr` (a write refused because the server closed
/// early is not an error: that is one of the answers under test), then reads until the server
/// closes, what was read ends with `until` (if given), or `wait` passes.
pub fn send_raw(
    addr: SocketAddr,
    bytes: &[u8],
    until: Option<&[u8]>,
    wait: Duration,
) -> RawOutcome {
    let mut s = TcpStream::connect(addr).expect("connect to the RESP listener");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    let _ = s.write_all(bytes);
    let deadline = Instant::now() + wait;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return RawOutcome {
                reply,
                closed: false,
            };
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => {
                return RawOutcome {
                    reply,
                    closed: true,
                }
            }
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if until.is_some_and(|end| reply.ends_with(end)) {
                    return RawOutcome {
                        reply,
                        closed: false,
                    };
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return RawOutcome {
                    reply,
                    closed: false,
                }
            }
            Err(_) => {
                return RawOutcome {
                    reply,
                    closed: true,
                }
            }
        }
    }
}
