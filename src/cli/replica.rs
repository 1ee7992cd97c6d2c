//! `shardkv replica move SHARD FROM TO`: moves one replica (see `shardkv::moves`). Replica
//! changes need a host certificate: the command uses the first `[[host]]` entry of the config
//! whose certificate and key are readable here (the operator runs it on a cluster machine).

use std::process::ExitCode;

use anyhow::{bail, Context};
use shardkv::certs::CLI_CLIENT;
use shardkv::client::{Client, ClientSettings};
use shardkv::config::ClusterConfig;
use shardkv_transport::{HostId, ShardId};

use super::runtime;

/// A client holding a host certificate of `cfg` (replica and map changes require one).
pub fn admin_client(cfg: &ClusterConfig) -> anyhow::Result<Client> {
    let Some(host) = cfg
        .hosts
        .iter()
        .find(|h| std::fs::File::open(&h.cert).is_ok() && std::fs::File::open(&h.key).is_ok())
    else {
        bail!(
            "no host certificate readable here (replica changes need one): run this on a \
             cluster machine, with the certificate and key of a [[host]] entry of {}",
            cfg.cluster.path.display()
        );
    };
    let mut settings = ClientSettings::from_config(&cfg.cluster, CLI_CLIENT);
    settings.tls.cert = host.cert.clone();
    settings.tls.key = host.key.clone();
    Client::new(settings).context("client setup")
}

/// Runs `shardkv replica move` (with `abort`: rolls the move back instead).
pub fn run_move(
    cfg: &ClusterConfig,
    shard: ShardId,
    from: HostId,
    to: HostId,
    abort: bool,
) -> anyhow::Result<ExitCode> {
    if !abort && cfg.host(to).is_none() {
        bail!(
            "host {to} is not in {}: append its [[host]] entry first",
            cfg.cluster.path.display()
        );
    }
    runtime()?.block_on(async {
        let admin = admin_client(cfg)?;
        let say = |step: &str| println!("shard {shard}: {step}");
        if abort {
            shardkv::moves::abort_move(&admin, shard, from, to, &say)
                .await
                .with_context(|| format!("aborting the move of shard {shard} to host {to}"))
        } else {
            shardkv::moves::move_replica(&admin, shard, from, to, cfg.cluster.replicas, &say)
                .await
                .with_context(|| format!("moving shard {shard} from host {from} to host {to}"))
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
