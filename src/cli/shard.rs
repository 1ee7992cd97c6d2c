//! `shardkv shard split SHARD`: splits a shard's slots in two, the upper half going to a new
//! shard on the same hosts (see `shardkv::splits`). Like replica changes it needs a host
//! certificate. Its last line of output is the new shard's id alone, for scripts.

use std::process::ExitCode;

use anyhow::Context;
use shardkv::config::ClusterConfig;
use shardkv::splits::{split_shard, SplitError};
use shardkv_transport::slot::Slot;
use shardkv_transport::ShardId;

use super::replica::admin_client;
use super::runtime;

/// The exit code of a split the test hook stopped (`SHARDKV_TEST_SPLIT_STOP_AFTER`), told
/// apart from a failure so that a test knows the step it asked for was reached.
const STOPPED_BY_TEST_HOOK: u8 = 3;

/// Runs `shardkv shard split`.
pub fn run_split(cfg: &ClusterConfig, shard: ShardId) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let admin = admin_client(cfg)?;
        let say = |step: &str| println!("shard {shard}: {step}");
        let child = match split_shard(&admin, shard, &say).await {
            Ok(child) => child,
            Err(e @ SplitError::Stopped { .. }) => {
                eprintln!("error: splitting shard {shard}: {e}");
                return Ok(ExitCode::from(STOPPED_BY_TEST_HOOK));
            }
            Err(e) => return Err(e).with_context(|| format!("splitting shard {shard}")),
        };
        let map = admin
            .read_map()
            .await
            .context("reading the cluster map after the split")?
            .map;
        let slots_of = |s: ShardId| map.shard(s).map(|e| ranges(&e.slots)).unwrap_or_default();
        println!(
            "shard {shard} split: slots {} stay, slots {} moved to new shard {child}",
            slots_of(shard),
            slots_of(child)
        );
        println!("{child}");
        Ok(ExitCode::SUCCESS)
    })
}

/// Inclusive slot ranges as `A-B,C-D`.
pub fn ranges(slots: &[(Slot, Slot)]) -> String {
    let parts: Vec<String> = slots.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    parts.join(",")
}
