//! Watching the balancer work: `shardkv rebalance` and `shardkv host remove` wait, reading the
//! live map, until what they asked for is done, with a progress bar on a terminal and one
//! line per change otherwise (logs and scripts).

use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use shardkv::client::Client;
use shardkv_transport::ClusterMap;

/// How often the map is read while waiting.
const POLL: Duration = Duration::from_millis(500);
/// How long the work may go without one move finishing before the wait gives up: a move
/// catches a replica up by snapshot, which for a large shard takes a while, but not this long
/// without the count of moves left changing.
const STALL: Duration = Duration::from_secs(300);

/// Waits until `done(map)`, showing `left(map)` (moves or replicas still to go) count down.
/// Answers the map that satisfied `done`. Gives up (the work goes on in the cluster) when
/// nothing changes for [`STALL`].
pub async fn wait_for_moves(
    admin: &Client,
    label: &str,
    done: impl Fn(&ClusterMap) -> bool,
    left: impl Fn(&ClusterMap) -> usize,
) -> anyhow::Result<ClusterMap> {
    let mut map = admin.read_map().await?.map;
    let mut total = left(&map);
    let bar = bar(total, label);
    let mut last_left = usize::MAX;
    let mut last_change = Instant::now();
    loop {
        let now_left = left(&map);
        if now_left != last_left {
            total = total.max(now_left);
            last_left = now_left;
            last_change = Instant::now();
            match &bar {
                Some(bar) => {
                    bar.set_length(total as u64);
                    bar.set_position((total - now_left) as u64);
                }
                None => println!("{label}: {} of {total} done", total - now_left),
            }
        }
        if done(&map) {
            if let Some(bar) = &bar {
                bar.finish();
            }
            return Ok(map);
        }
        if last_change.elapsed() > STALL {
            bail!(
                "{label}: nothing moved for {STALL:?} ({now_left} left); the cluster goes on \
                 trying: see the log of the host leading the meta group (`shardkv status`), \
                 and re-run this command to keep watching"
            );
        }
        tokio::time::sleep(POLL).await;
        // A failed read (the meta group electing a leader) is retried on the next poll.
        if let Ok(read) = admin.read_map().await {
            map = read.map;
        }
    }
}

fn bar(total: usize, label: &str) -> Option<ProgressBar> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return None;
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(label.to_string());
    Some(bar)
}
