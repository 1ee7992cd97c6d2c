//! `shardkv up`: every host of the config as a child process of this one, for a laptop or a
//! demo. Certificates are made if missing. SIGINT/SIGTERM stop all children cleanly (SIGTERM
//! to each, then wait); if a child dies, the others are stopped too.

use std::path::Path;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use shardkv::config::ClusterConfig;

fn signal(child: &Child, sig: libc::c_int) {
    // Only our own children, by PID.
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Runs the local cluster until a signal.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = ClusterConfig::load(path)?;
    if let Some(written) = shardkv::certs::ensure(&cfg)? {
        for p in written.paths {
            eprintln!("wrote {}", p.display());
        }
    }
    let exe = std::env::current_exe().context("cannot find the shardkv executable")?;
    let mut children = Vec::new();
    for h in &cfg.hosts {
        let child = Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(path)
            .arg("--host")
            .arg(h.id.to_string())
            .spawn()
            .with_context(|| format!("cannot start host {}", h.id))?;
        children.push((h.id, child));
    }
    let hosts: Vec<String> = cfg
        .hosts
        .iter()
        .map(|h| format!("host {} at {}", h.id, h.addr))
        .collect();
    eprintln!(
        "shardkv: {} shards x {} replicas on {}\n  try: shardkv --config {} put hello world && shardkv --config {} get hello\n  Ctrl-C stops the cluster",
        cfg.shards,
        cfg.replicas,
        hosts.join(", "),
        path.display(),
        path.display()
    );

    let stop = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = term.recv() => return Ok::<_, anyhow::Error>(None),
                    _ = int.recv() => return Ok(None),
                    _ = tick.tick() => {
                        for (id, c) in children.iter_mut() {
                            if let Ok(Some(status)) = c.try_wait() {
                                return Ok(Some((*id, status)));
                            }
                        }
                    }
                }
            }
        })?
    };
    if let Some((id, status)) = stop {
        eprintln!("host {id} exited ({status}); stopping the others");
    }
    for (_, c) in &children {
        signal(c, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, c) in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    eprintln!("host {id} did not stop in time; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
            }
        }
    }
    Ok(if stop.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
