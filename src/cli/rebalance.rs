//! `shardkv rebalance [--no-wait]`: asks the cluster to spread replicas evenly over its active
//! hosts. The request is recorded in the live map and carried out by the balancer on the host
//! leading the meta group (see `shardkv::balancer`), so it goes on if this command stops;
//! the command waits and shows progress unless `--no-wait`.

use std::process::ExitCode;

use anyhow::Context;
use shardkv::config::ClusterConfig;
use shardkv_transport::ClusterMap;

use super::progress::wait_for_moves;
use super::replica::admin_client;
use super::runtime;

/// Runs `shardkv rebalance`.
pub fn run(cfg: &ClusterConfig, no_wait: bool) -> anyhow::Result<ExitCode> {
    let replicas = cfg.cluster.replicas;
    runtime()?.block_on(async {
        let admin = admin_client(cfg)?;
        let map = admin
            .change_map(ClusterMap::request_rebalance)
            .await
            .context("recording the rebalance request in the cluster map")?;
        let planned = map.pending_moves(replicas).len();
        if no_wait {
            println!(
                "rebalance requested: {planned} replica moves planned; `shardkv status` shows \
                 progress"
            );
            return Ok(ExitCode::SUCCESS);
        }
        let map = wait_for_moves(
            &admin,
            "rebalance",
            |m| !m.rebalance_requested(),
            |m| m.pending_moves(replicas).len() + m.moves_in_flight().len(),
        )
        .await?;
        let left = map.plan_rebalance(replicas);
        if left.is_empty() {
            println!("rebalance done: replicas are spread evenly");
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "rebalance finished with {} moves the cluster refused ({left:?}): see the log of \
             the host leading the meta group",
            left.len()
        );
        Ok(ExitCode::FAILURE)
    })
}
