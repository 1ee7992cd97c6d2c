//! Slots in tests: where a split cuts, keys of given slots, and the slots each replica
//! reports owning.

use std::time::Duration;

use shardkv::client::Client;
use shardkv_transport::HostId;

/// The new shard's id `shardkv shard split` printed on its last line, for scripts.
pub fn split_child(out: &std::process::Output) -> shardkv_transport::ShardId {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "a new shard id on the last line: {}",
                super::output_text(out)
            )
        })
}

/// Inclusive slot ranges, in order, as the map and a replica's status list them.
pub type SlotRanges = Vec<(u16, u16)>;

/// `slots` (inclusive ranges, in order) cut where a split of them cuts: the lower half stays
/// with the shard, the upper half (from the middle slot on) goes to the new shard.
pub fn split_halves(slots: &[(u16, u16)]) -> (SlotRanges, SlotRanges) {
    let count: u32 = slots
        .iter()
        .map(|&(a, b)| u32::from(b) - u32::from(a) + 1)
        .sum();
    let mut n = count / 2;
    let mut at = None;
    for &(a, b) in slots {
        let len = u32::from(b) - u32::from(a) + 1;
        if n < len {
            at = Some(u16::try_from(u32::from(a) + n).expect("a slot"));
            break;
        }
        n -= len;
    }
    let at = at.expect("at least two slots");
    let (mut lower, mut upper) = (Vec::new(), Vec::new());
    for &(a, b) in slots {
        if b < at {
            lower.push((a, b));
        } else if a >= at {
            upper.push((a, b));
        } else {
            lower.push((a, at - 1));
            upper.push((at, b));
        }
    }
    (lower, upper)
}

/// Keys `{prefix}-{i}` whose slot lies in one of `slots` (inclusive ranges), `count` of them.
pub fn keys_in_slots(prefix: &str, slots: &[(u16, u16)], count: usize) -> Vec<Vec<u8>> {
    (0u64..)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .filter(|k| {
            let s = shardkv_transport::slot::slot(k);
            slots.iter().any(|&(a, b)| a <= s && s <= b)
        })
        .take(count)
        .collect()
}

/// The slots host `host`'s replica of `shard` owns, as its status reports them; `None` when
/// the host does not answer or holds no replica of the shard.
pub async fn replica_slots(
    client: &Client,
    host: HostId,
    shard: shardkv_transport::ShardId,
) -> Option<SlotRanges> {
    let status = client.host_status(host).await.ok()?;
    status
        .replicas
        .into_iter()
        .find(|r| r.shard == shard)
        .map(|r| r.slots)
}

/// Waits up to `within` until every host in `hosts` reports a replica of `shard` owning
/// exactly `slots`; panics with what each host reported otherwise.
pub async fn wait_replica_slots(
    client: &Client,
    hosts: &[HostId],
    shard: shardkv_transport::ShardId,
    slots: &[(u16, u16)],
    within: Duration,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut seen = Vec::new();
        for &h in hosts {
            seen.push((h, replica_slots(client, h, shard).await));
        }
        if seen.iter().all(|(_, s)| s.as_deref() == Some(slots)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "every host reports shard {shard} owning {slots:?}; they report {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
