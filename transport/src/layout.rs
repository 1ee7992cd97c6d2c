//! The cluster's layout as it was bootstrapped: how many shards, how many replicas each, which
//! shards are pinned to which hosts, and the placement that resulted.
//!
//! Keys route by `slot -> shard`, so a layout edit in `cluster.toml` (say `shards = 3` -> `5`)
//! would send keys to shards that never held them and answer "not found" for acknowledged
//! writes. Every host stores the layout its data dir was bootstrapped with and refuses a
//! `cluster.toml` that declares another one; clients load it from a host and refuse likewise.
//! The placement is stored too, never recomputed: appending a `[[host]]` entry must not move
//! replicas.

use serde::{Deserialize, Serialize};

use crate::wire::{HostId, ShardId};

/// See the module docs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `cluster.shards`.
    pub shards: u32,
    /// `cluster.replicas`.
    pub replicas: u32,
    /// `[[shard]]` pins: shard -> its hosts as written, sorted by shard.
    pub pins: Vec<(ShardId, Vec<HostId>)>,
    /// Replica hosts of every shard `1..=shards`, in shard order.
    pub placement: Vec<(ShardId, Vec<HostId>)>,
}

/// A declared layout that differs from the bootstrapped one, naming the `cluster.toml` field.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error(
    "`{field}` is {configured} in cluster.toml but the cluster was bootstrapped with {bootstrapped}; \
     put back {bootstrapped} (a layout cannot be changed by editing the file: data would be \
     routed to shards that do not hold it)"
)]
pub struct LayoutMismatch {
    /// The `cluster.toml` field, e.g. `cluster.shards`.
    pub field: &'static str,
    pub configured: String,
    pub bootstrapped: String,
}

/// Replicas of the meta group (shard [`crate::cluster_map::META_SHARD`]) at bootstrap.
pub const META_REPLICAS: usize = 3;

impl Layout {
    /// The hosts of the meta group at bootstrap: the lowest-numbered placed hosts, up to
    /// [`META_REPLICAS`]. Derived from the stored layout, so every host agrees on them
    /// whatever `cluster.toml` appended since.
    pub fn meta_hosts(&self) -> Vec<HostId> {
        let mut hosts: Vec<HostId> = self
            .placement
            .iter()
            .flat_map(|(_, h)| h.iter().copied())
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts.truncate(META_REPLICAS);
        hosts
    }

    /// Checks that `configured` (from cluster.toml) declares this layout: same shard and
    /// replica counts, same pins. The placement is not compared: the stored one rules.
    pub fn check_declared(&self, configured: &Layout) -> Result<(), LayoutMismatch> {
        let mismatch = |field, configured: String, bootstrapped: String| LayoutMismatch {
            field,
            configured,
            bootstrapped,
        };
        if configured.shards != self.shards {
            return Err(mismatch(
                "cluster.shards",
                configured.shards.to_string(),
                self.shards.to_string(),
            ));
        }
        if configured.replicas != self.replicas {
            return Err(mismatch(
                "cluster.replicas",
                configured.replicas.to_string(),
                self.replicas.to_string(),
            ));
        }
        if configured.pins != self.pins {
            return Err(mismatch(
                "[[shard]] pins",
                describe_pins(&configured.pins),
                describe_pins(&self.pins),
            ));
        }
        Ok(())
    }

    /// The replica hosts of `shard` (empty for a shard outside `1..=shards`). On every
    /// request's path: the placement is in shard order, so shard `s` is at `s - 1`.
    pub fn hosts_of(&self, shard: ShardId) -> &[HostId] {
        let at = usize::try_from(shard).ok().and_then(|s| s.checked_sub(1));
        match at.and_then(|i| self.placement.get(i)) {
            Some((s, hosts)) if *s == shard => hosts,
            _ => &[],
        }
    }

    /// Every host that holds a replica of some shard, sorted.
    pub fn replica_hosts(&self) -> Vec<HostId> {
        let mut hosts: Vec<HostId> = self
            .placement
            .iter()
            .flat_map(|(_, hosts)| hosts.iter().copied())
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts
    }
}

fn describe_pins(pins: &[(ShardId, Vec<HostId>)]) -> String {
    if pins.is_empty() {
        return "no pins".into();
    }
    let pins: Vec<String> = pins
        .iter()
        .map(|(shard, hosts)| format!("shard {shard} on {hosts:?}"))
        .collect();
    pins.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(shards: u32, replicas: u32, pins: Vec<(ShardId, Vec<HostId>)>) -> Layout {
        Layout {
            shards,
            replicas,
            pins,
            placement: vec![(1, vec![1, 2, 3]), (2, vec![2, 3, 1])],
        }
    }

    #[test]
    fn an_edited_shard_count_names_the_field_and_both_values() {
        let err = layout(3, 3, vec![])
            .check_declared(&layout(5, 3, vec![]))
            .unwrap_err();
        assert_eq!(err.field, "cluster.shards");
        let text = err.to_string();
        assert!(text.contains("is 5 in cluster.toml"), "{text}");
        assert!(text.contains("bootstrapped with 3"), "{text}");
    }

    #[test]
    fn replicas_and_pins_are_checked_too() {
        let base = layout(3, 3, vec![(1, vec![1, 2, 3])]);
        let err = base
            .check_declared(&layout(3, 2, vec![(1, vec![1, 2, 3])]))
            .unwrap_err();
        assert_eq!(err.field, "cluster.replicas");
        let err = base.check_declared(&layout(3, 3, vec![])).unwrap_err();
        assert_eq!(err.field, "[[shard]] pins");
        assert!(err.to_string().contains("shard 1 on [1, 2, 3]"), "{err}");
    }

    #[test]
    fn a_different_placement_alone_is_no_mismatch() {
        let mut grown = layout(3, 3, vec![]);
        grown.placement = vec![(1, vec![1, 2, 4])];
        assert_eq!(layout(3, 3, vec![]).check_declared(&grown), Ok(()));
    }

    #[test]
    fn placement_lookups() {
        let l = layout(2, 3, vec![]);
        assert_eq!(l.hosts_of(1), [1, 2, 3]);
        assert_eq!(l.hosts_of(2), [2, 3, 1]);
        assert!(l.hosts_of(9).is_empty());
        assert!(l.hosts_of(0).is_empty());
        assert_eq!(l.replica_hosts(), [1, 2, 3]);
    }
}
