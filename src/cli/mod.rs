//! Command-line interface: one module per group of subcommands; `anyhow` lives only here.

mod bench;
mod host;
mod kv;
mod progress;
mod rebalance;
mod replica;
mod shard;
mod status;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use shardkv::certs::HostCertificate;
use shardkv::config::ClusterConfig;
use shardkv_transport::wire::ReadConsistency;

/// shardkv: a sharded, strongly consistent key/value store.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Cluster description [default: $SHARDKV_CONFIG, else ./cluster.toml]
    #[arg(long, global = true, env = "SHARDKV_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one host of the cluster (the daemon).
    Serve {
        /// This host's id in the config.
        #[arg(long)]
        host: u64,
    },
    /// Start every host of the config locally as child processes (certs made if missing).
    Up,
    /// Certificate tooling.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Print the value of KEY (exit 1 and "not found" if absent).
    Get {
        key: String,
        /// Serve from any replica's applied state (may be stale).
        #[arg(long, conflicts_with = "lease")]
        stale: bool,
        /// Serve from the leader's lease without a quorum round (see README, Guarantees).
        #[arg(long)]
        lease: bool,
    },
    /// Set KEY to VALUE (read from stdin when VALUE is omitted, for large or binary values).
    Put { key: String, value: Option<String> },
    /// Delete KEY.
    Del { key: String },
    /// Compare-and-swap: set KEY to NEW only if its value is EXPECTED (exit 1 and the current
    /// value on stderr otherwise). `--absent` expects no value (create-if-absent); `--delete`
    /// removes the key instead of writing NEW (delete-if-equal).
    Cas {
        key: String,
        /// The value KEY must have (omit with --absent).
        expected: Option<String>,
        /// The value to write (omit with --delete).
        new: Option<String>,
        /// Succeed only if KEY is absent.
        #[arg(long)]
        absent: bool,
        /// Delete KEY instead of writing a new value.
        #[arg(long)]
        delete: bool,
    },
    /// Per host reachability and version; per shard leader, term, commit/applied, lag.
    /// Exits 1 if any shard lacks a quorum.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput and latency (figures, not pass/fail).
    Bench(bench::BenchArgs),
    /// Replica changes (need a host certificate of the cluster).
    Replica {
        #[command(subcommand)]
        command: ReplicaCommand,
    },
    /// Shard changes (need a host certificate of the cluster).
    Shard {
        #[command(subcommand)]
        command: ShardCommand,
    },
    /// Hosts joining and leaving the cluster (need a host certificate of the cluster).
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Spread replicas evenly over the active hosts; waits and shows progress unless
    /// --no-wait (the cluster carries the moves out either way).
    Rebalance {
        /// Return once the request is recorded.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand, Debug)]
enum HostCommand {
    /// Make host ID a member: it must be running, listed in the config, and not yet a member.
    Add { id: u64 },
    /// Move every replica off host ID (waits), then remove it from the cluster for good.
    /// Refused if the other hosts could not hold every shard's replicas.
    Remove { id: u64 },
    /// Bring back host ID after its data dir was lost: start it on an empty data dir (it
    /// holds nothing and never votes), then run this; its replicas are re-added as learners
    /// and promoted once caught up.
    Replace { id: u64 },
}

#[derive(Subcommand, Debug)]
enum ReplicaCommand {
    /// Move SHARD's replica from host FROM to host TO while it serves (learner, catch-up,
    /// joint change, leave); safe to re-run after an interruption. SHARD 0 is the meta group.
    Move {
        shard: u32,
        from: u64,
        to: u64,
        /// Roll the move back instead (before its joint change), e.g. when TO died.
        #[arg(long)]
        abort: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ShardCommand {
    /// Split SHARD's slots in two while it serves: the upper half goes to a new shard on the
    /// same hosts (no data moves). Prints the new shard's id as its last line; safe to re-run
    /// after an interruption (it finishes the split recorded then).
    Split { shard: u32 },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Make the cluster CA, a certificate per host and the `cli` client certificate.
    Init {
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate NAME from the existing CA.
    Client {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Issue the certificate of host ID (a `[[host]]` entry of the config) from the existing
    /// CA; leaves valid files alone.
    Host {
        id: u64,
        /// Replace the host's files even if they exist.
        #[arg(long)]
        force: bool,
    },
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The runtime a one-shot command runs its client on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| PathBuf::from("cluster.toml"))
}

fn load(path: &std::path::Path) -> anyhow::Result<ClusterConfig> {
    Ok(ClusterConfig::load(path)?)
}

/// Entry point: parses arguments, runs the command, maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = config_path(cli.config);
    match cli.command {
        Command::Serve { host } => {
            let cfg = load(&path)?;
            shardkv::daemon::run(cfg, host).with_context(|| format!("host {host}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up => up::run(&path),
        Command::Certs { command } => {
            let cfg = load(&path)?;
            let written = match command {
                CertsCommand::Init { force } => shardkv::certs::init(&cfg, force)?,
                CertsCommand::Client { name, force } => {
                    shardkv::certs::issue_client(&cfg, &name, force)?
                }
                CertsCommand::Host { id, force } => {
                    match shardkv::certs::issue_host(&cfg, id, force)? {
                        HostCertificate::Issued(written) => written,
                        HostCertificate::AlreadyValid { cert, key } => {
                            println!(
                                "{} and {} are already valid for host {id}; nothing written \
                                 (--force replaces them)",
                                cert.display(),
                                key.display()
                            );
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                }
            };
            for p in written.paths {
                println!("wrote {}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { key, stale, lease } => {
            let consistency = match (stale, lease) {
                (true, _) => ReadConsistency::Stale,
                (_, true) => ReadConsistency::Lease,
                _ => ReadConsistency::Linearizable,
            };
            kv::get(&load(&path)?, &key, consistency)
        }
        Command::Put { key, value } => {
            let value = match value {
                Some(v) => v.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                        .context("cannot read the value from stdin")?;
                    buf
                }
            };
            kv::put(&load(&path)?, &key, &value)
        }
        Command::Del { key } => kv::del(&load(&path)?, &key),
        Command::Cas {
            key,
            expected,
            new,
            absent,
            delete,
        } => {
            // Positional values fill EXPECTED first, unless --absent says there is none.
            let (expected, new) = match (absent, expected, new) {
                (true, Some(_), Some(_)) => {
                    bail!("--absent takes the place of EXPECTED: give only NEW")
                }
                (true, first, None) => (None, first),
                (false, e, n) => (e, n),
                (true, None, Some(n)) => (None, Some(n)),
            };
            let expected = match (absent, expected) {
                (true, _) => None,
                (false, Some(e)) => Some(e.into_bytes()),
                (false, None) => bail!("give EXPECTED, or --absent for create-if-absent"),
            };
            let new = match (delete, new) {
                (true, Some(_)) => bail!("--delete takes the place of NEW: do not give both"),
                (true, None) => None,
                (false, Some(n)) => Some(n.into_bytes()),
                (false, None) => bail!("give NEW, or --delete for delete-if-equal"),
            };
            kv::cas(&load(&path)?, &key, expected, new)
        }
        Command::Status { json } => status::run(&load(&path)?, json),
        Command::Replica {
            command:
                ReplicaCommand::Move {
                    shard,
                    from,
                    to,
                    abort,
                },
        } => replica::run_move(&load(&path)?, shard, from, to, abort),
        Command::Shard {
            command: ShardCommand::Split { shard },
        } => shard::run_split(&load(&path)?, shard),
        Command::Host {
            command: HostCommand::Add { id },
        } => host::run_add(&load(&path)?, id),
        Command::Host {
            command: HostCommand::Remove { id },
        } => host::run_remove(&load(&path)?, id),
        Command::Host {
            command: HostCommand::Replace { id },
        } => host::run_replace(&load(&path)?, id),
        Command::Rebalance { no_wait } => rebalance::run(&load(&path)?, no_wait),
        Command::Bench(args) => bench::run(&path, args),
    }
}
