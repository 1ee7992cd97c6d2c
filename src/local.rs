//! Local clusters of real `shardkv serve` processes: the one launcher behind `shardkv up`,
//! `shardkv bench --local` and the end-to-end tests.
//!
//! [`HostProcesses`] starts, signals and stops the daemons of one config, each a child process
//! addressed by PID only (never by name). [`LoopbackSpec`] writes a config for a cluster on
//! loopback addresses into a directory and makes its certificates; [`LocalCluster`] is the two
//! together in a temp dir, stopped when dropped.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use shardkv_transport::HostId;

use crate::config::{ClusterConfig, ConfigError};

/// How often a stopping host is polled for its exit.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// What can go wrong while standing up or stopping a local cluster.
#[derive(thiserror::Error, Debug)]
pub enum LocalError {
    /// A file, socket or process operation failed; the message says which.
    #[error("local cluster: {0}")]
    Io(String),
    /// A host did not exit within its grace period after SIGTERM and was killed.
    #[error("host {id} did not stop within {grace:?} after SIGTERM; it was killed")]
    StopTimeout { id: HostId, grace: Duration },
    /// The written config did not validate (a bug in the spec).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Certificates could not be made.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
}

/// Where loopback clusters take their ports: below Linux's default ephemeral range
/// (32768–60999, `net.ipv4.ip_local_port_range`), so a socket bound to port 0 — a client's
/// QUIC endpoint, a host dialing out — can never be handed a port a host was given but has
/// not bound yet, or one it lost for a moment while it restarts.
const LOOPBACK_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// Ports this process already handed out, so two hosts of one process never get the same one
/// before either has bound it.
static HANDED_OUT: std::sync::Mutex<Vec<(Protocol, u16)>> = std::sync::Mutex::new(Vec::new());

/// Which socket a port is for: UDP and TCP ports are separate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Protocol {
    Udp,
    Tcp,
}

/// A free UDP port on `ip` (QUIC listens on UDP), from [`LOOPBACK_PORTS`]. Another process
/// may still bind it before the host does; nothing that binds port 0 will.
pub fn free_udp_port(ip: [u8; 4]) -> Result<u16, LocalError> {
    free_port(ip, Protocol::Udp)
}

/// A free TCP port on `ip` (a metrics or RESP listener), chosen as [`free_udp_port`] does.
pub fn free_tcp_port(ip: [u8; 4]) -> Result<u16, LocalError> {
    free_port(ip, Protocol::Tcp)
}

/// Tries ports of [`LOOPBACK_PORTS`] from a random start until one binds on `ip`.
fn free_port(ip: [u8; 4], protocol: Protocol) -> Result<u16, LocalError> {
    use rand::Rng;
    let span = LOOPBACK_PORTS.end - LOOPBACK_PORTS.start;
    free_port_from(ip, protocol, rand::thread_rng().gen_range(0..span))
}

/// Tries ports of [`LOOPBACK_PORTS`] from its `first`th on.
fn free_port_from(ip: [u8; 4], protocol: Protocol, first: u16) -> Result<u16, LocalError> {
    let span = LOOPBACK_PORTS.end - LOOPBACK_PORTS.start;
    let mut handed_out = HANDED_OUT
        .lock()
        .map_err(|_| LocalError::Io("the port list's lock was poisoned".into()))?;
    for step in 0..span {
        let port = LOOPBACK_PORTS.start + (first + step) % span;
        if handed_out.contains(&(protocol, port)) {
            continue;
        }
        let addr = SocketAddr::from((ip, port));
        let bound = match protocol {
            Protocol::Udp => UdpSocket::bind(addr).map(drop),
            Protocol::Tcp => std::net::TcpListener::bind(addr).map(drop),
        };
        if bound.is_ok() {
            handed_out.push((protocol, port));
            return Ok(port);
        }
    }
    Err(LocalError::Io(format!(
        "no free {protocol:?} port on {} in {LOOPBACK_PORTS:?}",
        std::net::Ipv4Addr::from(ip)
    )))
}

/// A cluster on loopback: host `id` listens on `127.0.0.<first_octet + id>` on a free port.
#[derive(Debug, Clone)]
pub struct LoopbackSpec {
    /// `cluster.name`.
    pub name: String,
    /// Number of hosts, ids `1..=hosts`.
    pub hosts: u64,
    /// `cluster.shards`.
    pub shards: u32,
    /// `cluster.replicas`.
    pub replicas: u32,
    /// Host `id` gets loopback address `127.0.0.<first_octet + id>`.
    pub first_octet: u8,
    /// Lines for the `[raft]` table (empty: defaults).
    pub raft: String,
    /// `storage.map_size`, e.g. `"1GiB"`.
    pub map_size: String,
    /// Whether every host gets a `/metrics` listener on a free TCP port.
    pub metrics: bool,
}

impl LoopbackSpec {
    /// Writes `<dir>/cluster.toml` for this spec, makes every certificate (CA, hosts, `cli`)
    /// beside it, and returns the config's path and the config.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, ClusterConfig), LocalError> {
        let mut text = format!(
            "[cluster]\nname = \"{}\"\nshards = {}\nreplicas = {}\n\n[raft]\n{}\n\
             [storage]\nmap_size = \"{}\"\n\n",
            self.name, self.shards, self.replicas, self.raft, self.map_size
        );
        for id in 1..=self.hosts {
            let last = u8::try_from(u64::from(self.first_octet) + id)
                .map_err(|_| LocalError::Io("too many hosts for one loopback /24".into()))?;
            let ip = [127, 0, 0, last];
            let port = free_udp_port(ip)?;
            text.push_str(&format!(
                "[[host]]\nid = {id}\naddr = \"127.0.0.{last}:{port}\"\ndata_dir = \"data/host-{id}\"\n"
            ));
            if self.metrics {
                let metrics = free_tcp_port(ip)?;
                text.push_str(&format!("metrics = \"127.0.0.{last}:{metrics}\"\n"));
            }
            text.push('\n');
        }
        let path = dir.join("cluster.toml");
        std::fs::write(&path, text)
            .map_err(|e| LocalError::Io(format!("cannot write {}: {e}", path.display())))?;
        let config = ClusterConfig::load(&path)?;
        crate::certs::init(&config, false)?;
        Ok((path, config))
    }
}

/// The `shardkv serve` processes of one config, by host id. Dropping it kills (SIGKILL) and
/// reaps whatever is still running, so no daemon outlives its owner.
pub struct HostProcesses {
    exe: PathBuf,
    config: PathBuf,
    /// Where host `id` appends its stderr as `host-<id>.log`; `None`: inherit ours.
    log_dir: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    children: BTreeMap<HostId, Child>,
}

impl HostProcesses {
    /// Launcher for the hosts of the config at `config`, using the `shardkv` binary `exe`.
    /// Host output is inherited unless [`HostProcesses::log_to`] is called.
    pub fn new(exe: &Path, config: &Path) -> Self {
        HostProcesses {
            exe: exe.to_path_buf(),
            config: config.to_path_buf(),
            log_dir: None,
            env: Vec::new(),
            children: BTreeMap::new(),
        }
    }

    /// Sends each host's stderr to `<dir>/host-<id>.log` (appended) and drops its stdout.
    pub fn log_to(mut self, dir: &Path) -> Self {
        self.log_dir = Some(dir.to_path_buf());
        self
    }

    /// Sets an environment variable for every host started from now on.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Where host `id` logs, if logs go to files.
    pub fn log_path(&self, id: HostId) -> Option<PathBuf> {
        self.log_dir
            .as_ref()
            .map(|d| d.join(format!("host-{id}.log")))
    }

    /// Starts `shardkv serve` for host `id`; an error if it is already running.
    pub fn start(&mut self, id: HostId) -> Result<(), LocalError> {
        if self.children.contains_key(&id) {
            return Err(LocalError::Io(format!("host {id} is already running")));
        }
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--host")
            .arg(id.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(path) = self.log_path(id) {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| LocalError::Io(format!("cannot open {}: {e}", path.display())))?;
            cmd.stdout(Stdio::null()).stderr(log);
        }
        let child = cmd.spawn().map_err(|e| {
            LocalError::Io(format!(
                "cannot start {} for host {id}: {e}",
                self.exe.display()
            ))
        })?;
        self.children.insert(id, child);
        Ok(())
    }

    /// Ids of the hosts with a running (or not yet reaped) process.
    pub fn running(&self) -> Vec<HostId> {
        self.children.keys().copied().collect()
    }

    /// Whether host `id` has a process.
    pub fn is_running(&self, id: HostId) -> bool {
        self.children.contains_key(&id)
    }

    /// The PID of host `id`'s process, if it has one.
    pub fn pid(&self, id: HostId) -> Option<u32> {
        self.children.get(&id).map(|c| c.id())
    }

    /// Sends `sig` to host `id`'s process; `false` if it has none.
    pub fn signal(&self, id: HostId, sig: libc::c_int) -> bool {
        let Some(pid) = self.pid(id).and_then(|p| libc::pid_t::try_from(p).ok()) else {
            return false;
        };
        // SAFETY: kill(2) has no memory-safety preconditions; the PID is our own child's,
        // not yet reaped, so it cannot name another process.
        unsafe { libc::kill(pid, sig) == 0 }
    }

    /// A host whose process exited on its own (and is now reaped), if any.
    pub fn exited(&mut self) -> Option<(HostId, ExitStatus)> {
        let (id, status) = self
            .children
            .iter_mut()
            .find_map(|(id, c)| match c.try_wait() {
                Ok(Some(status)) => Some((*id, status)),
                _ => None,
            })?;
        self.children.remove(&id);
        Some((id, status))
    }

    /// SIGKILL host `id` and reap it.
    pub fn kill(&mut self, id: HostId) -> Result<ExitStatus, LocalError> {
        let mut c = self
            .children
            .remove(&id)
            .ok_or_else(|| LocalError::Io(format!("host {id} is not running")))?;
        c.kill()
            .map_err(|e| LocalError::Io(format!("SIGKILL host {id}: {e}")))?;
        c.wait()
            .map_err(|e| LocalError::Io(format!("reap host {id}: {e}")))
    }

    /// SIGTERM host `id` and wait up to `grace` for it to exit; after that it is killed and
    /// the answer is [`LocalError::StopTimeout`].
    pub fn stop(&mut self, id: HostId, grace: Duration) -> Result<ExitStatus, LocalError> {
        if !self.signal(id, libc::SIGTERM) {
            return Err(LocalError::Io(format!("host {id} is not running")));
        }
        let deadline = Instant::now() + grace;
        self.reap_by(id, deadline, grace)
    }

    /// SIGTERM every host at once, then wait up to `grace` in total; hosts still running
    /// then are killed. Answers the ids that had to be killed.
    pub fn stop_all(&mut self, grace: Duration) -> Vec<HostId> {
        let ids = self.running();
        for &id in &ids {
            self.signal(id, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        ids.into_iter()
            .filter(|&id| {
                matches!(
                    self.reap_by(id, deadline, grace),
                    Err(LocalError::StopTimeout { .. })
                )
            })
            .collect()
    }

    fn reap_by(
        &mut self,
        id: HostId,
        deadline: Instant,
        grace: Duration,
    ) -> Result<ExitStatus, LocalError> {
        let mut c = self
            .children
            .remove(&id)
            .ok_or_else(|| LocalError::Io(format!("host {id} is not running")))?;
        loop {
            match c.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(EXIT_POLL),
                Ok(None) => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return Err(LocalError::StopTimeout { id, grace });
                }
                Err(e) => return Err(LocalError::Io(format!("wait for host {id}: {e}"))),
            }
        }
    }
}

impl Drop for HostProcesses {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A throwaway cluster for `shardkv bench --local`: a config and certificates in a temp dir,
/// every host running; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct LocalCluster {
    dir: tempfile::TempDir,
    /// The config it runs.
    pub config: ClusterConfig,
    hosts: HostProcesses,
}

impl LocalCluster {
    /// Starts `replicas` hosts (one replica of every shard each) running `shards` shards,
    /// using the `shardkv` binary at `exe`. Host logs go to files in the temp dir.
    pub fn start(exe: &Path, shards: u32, replicas: u32) -> Result<Self, LocalError> {
        let dir = tempfile::Builder::new()
            .prefix("shardkv-local-")
            .tempdir()
            .map_err(|e| LocalError::Io(e.to_string()))?;
        let spec = LoopbackSpec {
            name: format!("local-{shards}x{replicas}"),
            hosts: u64::from(replicas),
            shards,
            replicas,
            first_octet: 100,
            raft: String::new(),
            map_size: "4GiB".into(),
            metrics: false,
        };
        let (path, config) = spec.write(dir.path())?;
        let mut hosts = HostProcesses::new(exe, &path).log_to(dir.path());
        for h in &config.hosts {
            hosts.start(h.host.id)?;
        }
        Ok(LocalCluster { dir, config, hosts })
    }

    /// Where host `id` logs.
    pub fn log_path(&self, id: HostId) -> PathBuf {
        self.dir.path().join(format!("host-{id}.log"))
    }

    /// Stops every host: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.hosts.stop_all(grace);
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's ephemeral range, where sockets bound to port 0 land.
    fn ephemeral_range() -> (u16, u16) {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap_or_else(|_| "32768 60999".into());
        let mut bounds = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
        (bounds.next().unwrap_or(0), bounds.next().unwrap_or(0))
    }

    #[test]
    fn loopback_ports_stay_out_of_the_ephemeral_range_and_are_never_handed_out_twice() {
        let (low, high) = ephemeral_range();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let udp = free_udp_port([127, 0, 0, 1]).expect("a UDP port");
            let tcp = free_tcp_port([127, 0, 0, 1]).expect("a TCP port");
            for port in [udp, tcp] {
                assert!(LOOPBACK_PORTS.contains(&port), "{port}");
                assert!(!(low..=high).contains(&port), "{port} is ephemeral");
            }
            assert!(seen.insert((Protocol::Udp, udp)), "UDP {udp} twice");
            assert!(seen.insert((Protocol::Tcp, tcp)), "TCP {tcp} twice");
        }
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        let ip = [127, 0, 0, 1];
        let span = LOOPBACK_PORTS.end - LOOPBACK_PORTS.start;
        let (first, _held) = (0..span)
            .find_map(|k| {
                let addr = SocketAddr::from((ip, LOOPBACK_PORTS.start + k));
                UdpSocket::bind(addr).ok().map(|socket| (k, socket))
            })
            .expect("some port of the range is free");
        let port = free_port_from(ip, Protocol::Udp, first).expect("a UDP port");
        assert_ne!(port, LOOPBACK_PORTS.start + first);
    }
}
