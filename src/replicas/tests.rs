//! ReplicaFactory tests on a real LMDB Env and real actors, one host with no peers: a joining
//! replica stays silent, and destroying a replica leaves nothing of its shard and all of the
//! others.

use std::time::{Duration, Instant};

use shardkv_actors::fatal::FatalReporter;
use shardkv_actors::messages::{ClientRequest, GetStatus, SendRaft};
use shardkv_actors::peer::ClosePeerLink;
use shardkv_actors::schema::{kv_ranges, raft_records, shard_key_range, Schema, TableId};
use shardkv_actors::shard::OwnedSlots;
use shardkv_actors::snapshot::{BuildSlots, SNAPSHOT_BUILDS_MAX};
use shardkv_transport::wire::{Op, ReadConsistency, ReplicaInfo, Request, Response};

use super::*;

const TICK: Duration = Duration::from_millis(5);
const ELECTION_TICKS: usize = 10;

fn factory(dir: &std::path::Path) -> ReplicaFactory {
    let schema = Schema::open(dir, 1 << 26, "t", 1).expect("a test schema opens");
    let fatal = FatalReporter::channel().0;
    let storage = StorageActor::new(schema.clone(), fatal.clone())
        .expect("the storage thread starts")
        .start();
    ReplicaFactory {
        host: 1,
        schema,
        storage,
        peers: PeerLinks::default(),
        snap_dir: dir.join("snap"),
        build_slots: Arc::new(BuildSlots::new(SNAPSHOT_BUILDS_MAX)),
        settings: ReplicaSettings {
            tick: TICK,
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: 2,
            request_timeout: Duration::from_secs(3),
            preferred_leader: None,
            value_bytes_max: 1024,
            hibernate: true,
        },
        compaction: None,
        fatal,
        splits: tokio::sync::mpsc::unbounded_channel().0,
        day0_shards: 2,
    }
}

async fn status(replica: &LocalReplica) -> ReplicaInfo {
    replica
        .status
        .send(GetStatus)
        .await
        .expect("the replica runs")
}

/// Waits until `replica` (a group of one) leads.
async fn wait_leader(replica: &LocalReplica) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !status(replica).await.is_leader {
        assert!(Instant::now() < deadline, "a group of one elects itself");
        tokio::time::sleep(TICK).await;
    }
}

async fn put(replica: &LocalReplica, key: &[u8]) {
    let req = Request {
        client_id: 7,
        seq: 1,
        op: Op::Put {
            key: key.to_vec(),
            value: b"v".to_vec(),
        },
    };
    let resp = ClientRequest::ask(&replica.requests, req).await;
    assert_eq!(resp.expect("the replica runs"), Response::Ok);
}

fn linearizable_get(key: &[u8]) -> Request {
    Request {
        client_id: 0,
        seq: 0,
        op: Op::Get {
            key: key.to_vec(),
            consistency: ReadConsistency::Linearizable,
        },
    }
}

/// The slots test shard `shard` (1 or 2) owns: the lower or the upper half.
fn half(shard: ShardId) -> OwnedSlots {
    let ranges = if shard == 1 {
        vec![(0, 8191)]
    } else {
        vec![(8192, 16383)]
    };
    OwnedSlots { ranges, epoch: 1 }
}

/// Three keys in the slots `shard` owns (see [`half`]).
fn keys_of(shard: ShardId) -> Vec<Vec<u8>> {
    let owned = half(shard);
    (0..)
        .map(|i| format!("key{i}").into_bytes())
        .filter(|k| owned.contains(shardkv_transport::slot::slot(k)))
        .take(3)
        .collect()
}

/// The keys of `shard` in `table` (for `kv`, those of the slots it owns, see [`half`]).
fn rows_of(schema: &Schema, table: TableId, shard: ShardId) -> usize {
    let rtxn = schema.env.read_txn().expect("a read transaction");
    let ranges = if table == TableId::Kv {
        kv_ranges(shard, &half(shard).ranges)
            .into_iter()
            .map(|(_, lo, hi)| (lo, hi))
            .collect()
    } else {
        vec![shard_key_range(shard)]
    };
    ranges
        .iter()
        .map(|(lo, hi)| {
            let range = (
                std::ops::Bound::Included(lo.as_slice()),
                std::ops::Bound::Excluded(hi.as_slice()),
            );
            schema
                .table(table)
                .range(&rtxn, &range)
                .expect("a range read")
                .count()
        })
        .sum()
}

/// A peer host that only notes which shards sent it Raft messages.
struct RecordingPeer(Arc<std::sync::Mutex<Vec<ShardId>>>);

impl Actor for RecordingPeer {
    type Context = Context<Self>;
}

impl Handler<SendRaft> for RecordingPeer {
    type Result = ();
    fn handle(&mut self, msg: SendRaft, _: &mut Self::Context) {
        self.0.lock().expect("not poisoned").push(msg.shard);
    }
}

impl Handler<ClosePeerLink> for RecordingPeer {
    type Result = ();
    fn handle(&mut self, _: ClosePeerLink, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[actix_rt::test]
async fn a_joining_replica_never_starts_an_election() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let f = factory(dir.path());
    let peer = RecordingPeer(Arc::clone(&sent)).start();
    assert!(f.peers.insert(2, &peer));
    let sent_by = |shard: ShardId| sent.lock().expect("not poisoned").contains(&shard);
    let joining = f.start_joining(1).expect("starts");
    // The control: a bootstrapped replica of a group with host 2 campaigns (a pre-vote to
    // host 2) once its election timeout passes, so ticks run and campaigns are seen.
    let _control = f
        .start_bootstrapped(2, &[1, 2], Some(&half(2)), Some(1))
        .expect("starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sent_by(2) {
        assert!(Instant::now() < deadline, "the control replica campaigns");
        tokio::time::sleep(TICK).await;
    }
    // Many election timeouts go by; the joining replica sends nothing and stays at term 0,
    // with no leader and no configuration, and records nothing of its shard.
    let watch_until = Instant::now() + TICK * (ELECTION_TICKS as u32) * 20;
    while Instant::now() < watch_until {
        let s = status(&joining).await;
        assert_eq!((s.term, s.leader, s.is_leader), (0, None, false), "{s:?}");
        assert!(s.voters.is_empty() && s.learners.is_empty(), "{s:?}");
        assert!(!sent_by(1), "a joining replica sent a Raft message");
        tokio::time::sleep(TICK).await;
    }
    assert!(!raft_records::has_state(&f.schema, 1).expect("reads"));
    assert!(raft_records::has_state(&f.schema, 2).expect("reads"));
}

#[actix_rt::test]
async fn destroying_a_replica_deletes_every_row_of_its_shard_and_no_other() {
    let dir = tempfile::tempdir().expect("temp dir");
    let f = factory(dir.path());
    let gone = f
        .start_bootstrapped(1, &[1], Some(&half(1)), Some(1))
        .expect("starts");
    let kept = f
        .start_bootstrapped(2, &[1], Some(&half(2)), Some(1))
        .expect("starts");
    wait_leader(&gone).await;
    wait_leader(&kept).await;
    for key in keys_of(1) {
        put(&gone, &key).await;
    }
    for key in keys_of(2) {
        put(&kept, &key).await;
    }
    let snap_file = f
        .snap_dir
        .join(shardkv_actors::snapshot::file_name(1, 4, 1));
    std::fs::create_dir_all(&f.snap_dir).expect("snap dir");
    std::fs::write(&snap_file, b"a snapshot of shard 1").expect("writes");
    // LMDB takes the logged writes a little after they are acknowledged: an empty batch is
    // taken after all of them.
    f.storage
        .send(Persist(WriteBatch::default()))
        .await
        .expect("storage runs")
        .expect("commits");
    let s = &f.schema;
    let tables = [
        TableId::Kv,
        TableId::Sessions,
        TableId::RaftLog,
        TableId::RaftState,
    ];
    for t in tables {
        assert!(rows_of(s, t, 1) > 0 && rows_of(s, t, 2) > 0);
    }
    let kept_before: Vec<usize> = tables.iter().map(|t| rows_of(s, *t, 2)).collect();

    f.destroy(1, gone).await.expect("destroyed");

    for t in tables {
        assert_eq!(rows_of(s, t, 1), 0, "no row of the destroyed shard is left");
    }
    assert!(!raft_records::has_state(s, 1).expect("reads"));
    assert!(!snap_file.exists(), "its snapshot files are deleted");
    let kept_after: Vec<usize> = tables.iter().map(|t| rows_of(s, *t, 2)).collect();
    assert_eq!(kept_before, kept_after, "the other shard is untouched");
    let resp = ClientRequest::ask(&kept.requests, linearizable_get(&keys_of(2)[0])).await;
    assert_eq!(resp.expect("runs"), Response::Value(Some(b"v".to_vec())));
}

#[actix_rt::test]
async fn a_joining_replica_restarted_halfway_goes_on_from_what_its_shard_stored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let f = factory(dir.path());
    // What a learner holds once its snapshot is installed stands in for a group of one here.
    let first = f
        .start_bootstrapped(1, &[1], Some(&half(1)), Some(1))
        .expect("starts");
    wait_leader(&first).await;
    let key = keys_of(1).remove(0);
    put(&first, &key).await;
    stop_and_settle(1, &first, &f.storage).await.expect("stops");

    let again = f.start_joining(1).expect("starts");
    wait_leader(&again).await;
    assert_eq!(
        status(&again).await.voters,
        vec![1],
        "the stored configuration"
    );
    let resp = ClientRequest::ask(&again.requests, linearizable_get(&key)).await;
    assert_eq!(resp.expect("runs"), Response::Value(Some(b"v".to_vec())));
}
