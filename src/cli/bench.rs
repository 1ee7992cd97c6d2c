//! `shardkv bench`: runs a workload against the configured cluster or a throwaway local one,
//! and prints ops/s and latency percentiles (text or JSON). `--grid` runs the original
//! prototype's grid of shards x replicas x clients.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use shardkv::bench::{self, Mix, Report, Workload};
use shardkv::certs::CLI_CLIENT;
use shardkv::client::{Client, ClientSettings};
use shardkv::config::ClusterConfig;
use shardkv::local::LocalCluster;
use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::wire::ReadConsistency;

/// Options of `shardkv bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent clients (comma-separated list to sweep, e.g. 1,16,64).
    #[arg(long, default_value = "1", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Total operations per run.
    #[arg(long, default_value_t = 10_000, conflicts_with = "duration")]
    ops: u64,
    /// Run for this long instead of a fixed op count (e.g. 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Operation mix, e.g. put=50,get=50,del=0.
    #[arg(long, default_value = "put=50,get=50,del=0")]
    mix: Mix,
    /// Serve gets from any replica (may be stale) instead of linearizably.
    #[arg(long, conflicts_with = "lease")]
    stale: bool,
    /// Serve gets from the leader's lease (no quorum round while it holds).
    #[arg(long)]
    lease: bool,
    /// Skip writing every key before measuring.
    #[arg(long)]
    no_preload: bool,
    /// Start a throwaway local cluster of SHARDSxREPLICAS (REPLICAS hosts), e.g. 3x3.
    #[arg(long, value_name = "SxR")]
    local: Option<String>,
    /// Run the original prototype's grid (5x5, 5x3, 1x5, 3x3 with 1,3,5,16,64 clients) on local
    /// clusters.
    #[arg(long, conflicts_with = "local")]
    grid: bool,
    /// Also draw throughput and p99 against clients, one line per cluster, as SVG here.
    #[arg(long, value_name = "FILE.svg", conflicts_with = "sanity")]
    chart: Option<std::path::PathBuf>,
    /// Run the original 1000-op sanity workload (1 client) and report its time.
    #[arg(long, conflicts_with = "grid")]
    sanity: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `per-client`: every client its own QUIC endpoint and connections, as independent
    /// application processes are; `shared`: one client (one connection per host) that all
    /// workers share, as the tasks of one process would.
    #[arg(long, value_enum, default_value_t = Connections::PerClient)]
    connections: Connections,
}

/// How `shardkv bench`'s workers reach the cluster.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Connections {
    PerClient,
    Shared,
}

fn parse_shape(s: &str) -> anyhow::Result<(u32, u32)> {
    let (a, b) = s
        .split_once('x')
        .with_context(|| format!("--local {s}: expected SHARDSxREPLICAS, e.g. 3x3"))?;
    let shards = a
        .parse()
        .with_context(|| format!("--local {s}: bad shard count"))?;
    let replicas = b
        .parse()
        .with_context(|| format!("--local {s}: bad replica count"))?;
    if shards == 0 || replicas == 0 || replicas > 100 {
        bail!("--local {s}: shards >= 1 and 1 <= replicas <= 100");
    }
    Ok((shards, replicas))
}

fn clients(cfg: &ClusterConfig, n: usize, args: &BenchArgs) -> anyhow::Result<Vec<Client>> {
    let mut settings = ClientSettings::from_config(&cfg.cluster, CLI_CLIENT);
    settings.deadline = Duration::from_secs(20);
    if args.stale {
        settings.consistency = ReadConsistency::Stale;
    } else if args.lease {
        settings.consistency = ReadConsistency::Lease;
    }
    match args.connections {
        Connections::PerClient => (0..n).map(|_| Ok(Client::new(settings.clone())?)).collect(),
        Connections::Shared => Ok(vec![Client::new(settings)?; n]),
    }
}

fn progress(total: Option<u64>, label: &str) -> Option<ProgressBar> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let pb = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) =
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} {per_sec} eta {eta}")
    {
        pb.set_style(style);
    }
    pb.set_message(label.to_string());
    Some(pb)
}

async fn warm_up(c: &Client, cfg: &ClusterConfig) -> anyhow::Result<()> {
    // One write per shard: returns once every shard has a leader.
    for shard in 1..=cfg.cluster.shards {
        let key = (0u64..)
            .map(|i| format!("warmup-{i}").into_bytes())
            .find(|k| shardkv_transport::slot::shard_of_key(k, cfg.cluster.shards) == shard)
            .context("no key for a shard")?;
        c.put(&key, b"w")
            .await
            .context("cluster did not become ready")?;
    }
    // A fresh cluster hands each shard to its preferred host within a few seconds; measure
    // after that, not during the hand-overs. Bounded: a host may be down on purpose.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline && !leaders_settled(c, cfg).await {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Whether every data shard is led by its preferred host in the live map.
async fn leaders_settled(c: &Client, cfg: &ClusterConfig) -> bool {
    let Ok(map) = c.read_map().await.map(|v| v.map) else {
        return false;
    };
    let mut led = std::collections::HashMap::new();
    for h in map
        .hosts()
        .keys()
        .chain(cfg.hosts.iter().map(|h| &h.host.id))
    {
        if let Ok(s) = c.host_status(*h).await {
            for r in s.replicas.iter().filter(|r| r.is_leader) {
                led.insert(r.shard, *h);
            }
        }
    }
    map.preferred_leaders()
        .iter()
        .filter(|(shard, _)| **shard != META_SHARD)
        .all(|(shard, host)| led.get(shard) == Some(host))
}

async fn run_one(
    cfg: &ClusterConfig,
    args: &BenchArgs,
    n: usize,
    label: &str,
) -> anyhow::Result<Report> {
    let cs = clients(cfg, n, args)?;
    warm_up(&cs[0], cfg).await?;
    if !args.no_preload && args.mix.get > 0 {
        bench::preload(&cs, args.keys, args.value_size).await?;
    }
    let w = Workload {
        clients: n,
        ops: args.duration.is_none().then_some(args.ops),
        duration: args.duration,
        value_bytes: args.value_size,
        keys: args.keys,
        mix: args.mix,
        preload: !args.no_preload,
        seed: args.seed,
    };
    let pb = progress(w.ops, label);
    let tick: Arc<dyn Fn() + Send + Sync> = match pb.clone() {
        Some(pb) => Arc::new(move || pb.inc(1)),
        None => Arc::new(|| {}),
    };
    let report = bench::run(&cs, &w, tick).await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(report)
}

fn print_header() {
    println!(
        "{:<10} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "cluster", "clients", "ops", "ops/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"
    );
}

fn print_row(shape: &str, r: &Report) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{:<10} {:>7} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7}",
        shape,
        r.clients,
        r.ops,
        r.ops_per_s,
        ms(r.p50_us),
        ms(r.p95_us),
        ms(r.p99_us),
        ms(r.max_us),
        r.errors
    );
    for e in &r.error_samples {
        println!("    error: {e}");
    }
}

/// Runs `shardkv bench`.
pub fn run(config_path: &Path, args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let exe = std::env::current_exe().context("cannot find the shardkv executable")?;
    let shapes: Vec<(u32, u32)> = if args.grid {
        vec![(5, 5), (5, 3), (1, 5), (3, 3)]
    } else if let Some(s) = &args.local {
        vec![parse_shape(s)?]
    } else {
        vec![]
    };
    let client_counts = if args.grid && args.clients == [1] {
        vec![1, 3, 5, 16, 64]
    } else {
        args.clients.clone()
    };
    let mut rows = Vec::new();
    rt.block_on(async {
        if !args.json && !args.sanity {
            print_header();
        }
        let targets: Vec<(String, Option<LocalCluster>, ClusterConfig)> = if shapes.is_empty() {
            vec![("config".into(), None, ClusterConfig::load(config_path)?)]
        } else {
            Vec::new()
        };
        let run_on = |shape: String, cfg: ClusterConfig| {
            let args = args.clone();
            let client_counts = client_counts.clone();
            async move {
                let mut out = Vec::new();
                if args.sanity {
                    let c = clients(&cfg, 1, &args)?;
                    warm_up(&c[0], &cfg).await?;
                    let r = bench::sanity(&c[0], args.seed).await?;
                    if args.json {
                        println!("{}", serde_json::to_string(&r)?);
                    } else {
                        println!(
                            "sanity ({shape}): 1000 preloads in {:.3} s, then 1000 mixed ops in {:.3} s, {} mismatches",
                            r.preload_s, r.ops_s, r.mismatches
                        );
                    }
                    if r.mismatches > 0 {
                        bail!("{} answers differed from the in-memory model", r.mismatches);
                    }
                    return Ok(out);
                }
                for &n in &client_counts {
                    let r = run_one(&cfg, &args, n, &format!("{shape} x{n}")).await?;
                    if !args.json {
                        print_row(&shape, &r);
                    }
                    out.push((shape.clone(), r));
                }
                Ok::<_, anyhow::Error>(out)
            }
        };
        for (shape, _guard, cfg) in targets {
            rows.extend(run_on(shape, cfg).await?);
        }
        for (s, r) in shapes {
            let cluster = LocalCluster::start(&exe, s, r)?;
            let cfg = cluster.config.clone();
            rows.extend(run_on(format!("{s}x{r}"), cfg).await?);
            drop(cluster);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    if let Some(path) = &args.chart {
        let title = format!(
            "shardkv bench: mix {}, {}-byte values, {} keys",
            args.mix, args.value_size, args.keys
        );
        shardkv::chart::render_svg(&rows, &title, path)
            .with_context(|| format!("cannot write the chart {}", path.display()))?;
        if !args.json {
            println!("chart: {}", path.display());
        }
    }
    if args.json && !args.sanity {
        let json: Vec<_> = rows
            .iter()
            .map(|(shape, r)| serde_json::json!({ "cluster": shape, "report": r }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
