//! `shardkv up`: every host of the config as a child process of this one, for a laptop or a
//! demo. Certificates are made if missing. SIGINT/SIGTERM stop all children cleanly (SIGTERM
//! to each, then wait); if a child dies, the others are stopped too.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use shardkv::config::ClusterConfig;
use shardkv::local::HostProcesses;

/// How long the hosts get to hand off leadership and exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs the local cluster until a signal.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = ClusterConfig::load(path)?;
    if let Some(written) = shardkv::certs::ensure(&cfg)? {
        for p in written.paths {
            eprintln!("wrote {}", p.display());
        }
    }
    let exe = std::env::current_exe().context("cannot find the shardkv executable")?;
    let mut children = HostProcesses::new(&exe, path);
    for h in &cfg.hosts {
        children
            .start(h.host.id)
            .with_context(|| format!("cannot start host {}", h.host.id))?;
    }
    let hosts: Vec<String> = cfg
        .hosts
        .iter()
        .map(|h| format!("host {} at {}", h.host.id, h.host.addr))
        .collect();
    eprintln!(
        "shardkv: {} shards x {} replicas on {}\n  try: shardkv --config {} put hello world && shardkv --config {} get hello\n  Ctrl-C stops the cluster",
        cfg.cluster.shards,
        cfg.cluster.replicas,
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
                        if let Some(exited) = children.exited() {
                            return Ok(Some(exited));
                        }
                    }
                }
            }
        })?
    };
    if let Some((id, status)) = stop {
        eprintln!("host {id} exited ({status}); stopping the others");
    }
    for id in children.stop_all(STOP_GRACE) {
        eprintln!("host {id} did not stop in time; it was killed");
    }
    Ok(if stop.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
