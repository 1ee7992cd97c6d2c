//! The host's Prometheus metrics: one process-wide set, updated by the actors and served as
//! OpenMetrics text by the daemon's optional HTTP listener (`metrics = "addr"` in the config).

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a client request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// get, put, delete, cas, status, fault
    pub kind: &'static str,
    /// ok, not_found, cas_failed, not_leader, no_replica, too_large, invalid, unavailable,
    /// internal
    pub result: &'static str,
}

/// Labels naming a request kind only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Labels naming a peer host.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: u64,
}

/// Labels naming a shard.
/// A Redis-protocol command by name and by what its reply was (`ok`, `moved`, `tryagain`,
/// `crossslot`, `clusterdown`, `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RespLabels {
    pub command: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: u32,
}

/// Every metric of a host.
pub struct Metrics {
    pub client_requests: Family<RequestLabels, Counter>,
    pub client_request_seconds: Family<KindLabels, Histogram>,
    pub raft_proposals: Family<ShardLabels, Counter>,
    pub raft_applied_entries: Family<ShardLabels, Counter>,
    pub raft_leader_changes: Family<ShardLabels, Counter>,
    pub raft_elections: Family<ShardLabels, Counter>,
    pub raft_slow_disk_handoffs: Family<ShardLabels, Counter>,
    pub snapshots_sent: Family<ShardLabels, Counter>,
    pub snapshots_installed: Family<ShardLabels, Counter>,
    pub raft_is_leader: Family<ShardLabels, Gauge>,
    pub raft_term: Family<ShardLabels, Gauge>,
    pub storage_commits: Counter,
    pub wal_syncs: Counter,
    pub wal_sync_seconds: Histogram,
    pub wal_sync_batches: Histogram,
    pub storage_commit_seconds: Histogram,
    pub storage_commit_batches: Histogram,
    pub peer_connected: Family<PeerLabels, Gauge>,
    pub raft_messages_sent: Family<PeerLabels, Counter>,
    pub raft_hibernating: Family<ShardLabels, Gauge>,
    pub raft_ticks: Family<ShardLabels, Counter>,
    pub raft_batches_refused: Counter,
    pub resp_commands: Family<RespLabels, Counter>,
    pub resp_connections: Gauge,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~3 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics {
        client_requests: Family::default(),
        client_request_seconds: Family::new_with_constructor(latency_histogram),
        raft_proposals: Family::default(),
        raft_applied_entries: Family::default(),
        raft_leader_changes: Family::default(),
        raft_elections: Family::default(),
        raft_slow_disk_handoffs: Family::default(),
        snapshots_sent: Family::default(),
        snapshots_installed: Family::default(),
        raft_is_leader: Family::default(),
        raft_term: Family::default(),
        storage_commits: Counter::default(),
        wal_syncs: Counter::default(),
        wal_sync_seconds: latency_histogram(),
        wal_sync_batches: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        storage_commit_seconds: latency_histogram(),
        storage_commit_batches: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        peer_connected: Family::default(),
        raft_messages_sent: Family::default(),
        raft_hibernating: Family::default(),
        raft_ticks: Family::default(),
        raft_batches_refused: Counter::default(),
        resp_commands: Family::default(),
        resp_connections: Gauge::default(),
    })
}

/// A registry holding every metric, for the HTTP listener to encode.
pub fn registry() -> Registry {
    let m = metrics();
    let mut r = Registry::with_prefix("shardkv");
    r.register(
        "client_requests",
        "Client requests by kind and result",
        m.client_requests.clone(),
    );
    r.register(
        "client_request_seconds",
        "Client request latency inside the host, by kind",
        m.client_request_seconds.clone(),
    );
    r.register(
        "raft_proposals",
        "Writes proposed to Raft by local leaders",
        m.raft_proposals.clone(),
    );
    r.register(
        "raft_applied_entries",
        "Committed Raft entries applied to the state machine",
        m.raft_applied_entries.clone(),
    );
    r.register(
        "raft_leader_changes",
        "Leader changes seen by local replicas",
        m.raft_leader_changes.clone(),
    );
    r.register(
        "raft_elections",
        "Elections started by local replicas (they became candidates)",
        m.raft_elections.clone(),
    );
    r.register(
        "raft_slow_disk_handoffs",
        "Leaderships a local replica handed away because its own persist had been waiting \
         on this host's disk for longer than an election timeout",
        m.raft_slow_disk_handoffs.clone(),
    );
    r.register(
        "raft_batches_refused",
        "Raft batches dropped because they came from an incarnation of a peer other than the \
         one on record (a host whose data dir was lost or replaced)",
        m.raft_batches_refused.clone(),
    );
    r.register(
        "snapshots_sent",
        "Snapshots streamed to followers",
        m.snapshots_sent.clone(),
    );
    r.register(
        "snapshots_installed",
        "Snapshots installed by local replicas",
        m.snapshots_installed.clone(),
    );
    r.register(
        "raft_is_leader",
        "1 if the local replica leads the shard",
        m.raft_is_leader.clone(),
    );
    r.register(
        "raft_hibernating",
        "1 while the local replica sleeps: its group was idle, so it neither ticks nor \
         heartbeats until a request, a Raft message or the loss of its leader's link wakes it",
        m.raft_hibernating.clone(),
    );
    r.register(
        "raft_ticks",
        "Raft clock ticks of the local replica (none while it hibernates)",
        m.raft_ticks.clone(),
    );
    r.register(
        "raft_messages_sent",
        "Raft messages sent to a peer host (every shard's, heartbeats included)",
        m.raft_messages_sent.clone(),
    );
    r.register(
        "raft_term",
        "Current Raft term of the local replica",
        m.raft_term.clone(),
    );
    r.register(
        "storage_commits",
        "LMDB write transactions committed (one fdatasync each; the meta page is flushed by the next)",
        m.storage_commits.clone(),
    );
    r.register(
        "wal_syncs",
        "Write-ahead log group syncs (one fdatasync each)",
        m.wal_syncs.clone(),
    );
    r.register(
        "wal_sync_seconds",
        "Latency of one write-ahead log group write and fdatasync",
        m.wal_sync_seconds.clone(),
    );
    r.register(
        "wal_sync_batches",
        "Write batches carried by one write-ahead log sync",
        m.wal_sync_batches.clone(),
    );
    r.register(
        "storage_commit_seconds",
        "Latency of one LMDB group commit including its fdatasync",
        m.storage_commit_seconds.clone(),
    );
    r.register(
        "storage_commit_batches",
        "Write batches carried by one group commit",
        m.storage_commit_batches.clone(),
    );
    r.register(
        "peer_connected",
        "1 while the outbound link to a peer host is up",
        m.peer_connected.clone(),
    );
    r.register(
        "resp_commands",
        "Redis-protocol commands answered, by command and reply",
        m.resp_commands.clone(),
    );
    r.register(
        "resp_connections",
        "Redis-protocol connections open",
        m.resp_connections.clone(),
    );
    r
}

/// The registry's text in OpenMetrics format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
