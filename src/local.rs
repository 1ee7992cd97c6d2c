//! Throwaway local clusters: `shardkv bench --local` and the benchmark grid start real
//! `shardkv serve` processes on loopback from a config written into a temp dir, and stop them
//! (by PID, SIGTERM then SIGKILL) when dropped.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{ClusterConfig, ConfigError};

/// What can go wrong while standing up a local cluster.
#[derive(thiserror::Error, Debug)]
pub enum LocalError {
    #[error("local cluster: {0}")]
    Io(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
}

/// A running local cluster; stopped when dropped.
pub struct LocalCluster {
    dir: tempfile::TempDir,
    /// The config it runs.
    pub config: ClusterConfig,
    children: Vec<(u64, Child)>,
}

fn free_port(ip: [u8; 4]) -> Result<u16, LocalError> {
    let s =
        UdpSocket::bind(SocketAddr::from((ip, 0))).map_err(|e| LocalError::Io(e.to_string()))?;
    Ok(s.local_addr()
        .map_err(|e| LocalError::Io(e.to_string()))?
        .port())
}

impl LocalCluster {
    /// Starts `replicas` hosts (one replica of every shard each) running `shards` shards,
    /// using the `shardkv` binary at `exe`. Host logs go to files in the temp dir.
    pub fn start(exe: &Path, shards: u32, replicas: u32) -> Result<Self, LocalError> {
        let dir = tempfile::Builder::new()
            .prefix("shardkv-local-")
            .tempdir()
            .map_err(|e| LocalError::Io(e.to_string()))?;
        let mut text = format!(
            "[cluster]\nname = \"local-{shards}x{replicas}\"\nshards = {shards}\nreplicas = {replicas}\n\n\
             [storage]\nmap_size = \"4GiB\"\n\n"
        );
        for id in 1..=u64::from(replicas) {
            let last =
                u8::try_from(100 + id).map_err(|_| LocalError::Io("too many hosts".into()))?;
            let ip = [127, 0, 0, last];
            let port = free_port(ip)?;
            text.push_str(&format!(
                "[[host]]\nid = {id}\naddr = \"127.0.0.{last}:{port}\"\ndata_dir = \"data/host-{id}\"\n\n"
            ));
        }
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, text).map_err(|e| LocalError::Io(e.to_string()))?;
        let config = ClusterConfig::load(&path)?;
        crate::certs::init(&config, false)?;
        let mut cluster = LocalCluster {
            dir,
            config,
            children: Vec::new(),
        };
        for h in cluster.config.hosts.clone() {
            let log = std::fs::File::create(cluster.log_path(h.id))
                .map_err(|e| LocalError::Io(e.to_string()))?;
            let child = Command::new(exe)
                .arg("serve")
                .arg("--config")
                .arg(&path)
                .arg("--host")
                .arg(h.id.to_string())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| LocalError::Io(format!("cannot start {}: {e}", exe.display())))?;
            cluster.children.push((h.id, child));
        }
        Ok(cluster)
    }

    /// Where host `id` logs.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("host-{id}.log"))
    }

    /// Stops every host: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        for (_, c) in &self.children {
            if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + grace;
        for (_, c) in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
