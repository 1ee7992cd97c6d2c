//! The ShardActor's apply over LMDB: the session rules whatever storage has committed yet.

use super::*;
use crate::schema::{kv_key, session_key};
use crate::shard::apply::EntryReply;
use crate::shard::command::{Action, Command};
use crate::shard::sessions::{SESSION_SWEEP_EVERY, SESSION_TTL_MS};
use crate::shard::split::SplitApplied;
use crate::storage::{commit, StorageActor};
use crate::test_fixtures::{storage_actor, temp_schema};

/// What shard 1's state machine is built with here; shard 1 owns every slot.
fn setup(
    schema: &Schema,
    storage: &Addr<StorageActor>,
    fatal: FatalReporter,
    published: AppliedIndex,
) -> ShardSetup {
    let every_slot = OwnedSlots {
        ranges: vec![(0, shardkv_transport::slot::SLOT_COUNT - 1)],
        epoch: 1,
    };
    let ops = vec![owned_op(1, &every_slot).unwrap()];
    commit(schema, vec![WriteBatch { ops }]).unwrap();
    ShardSetup {
        shard: 1,
        host: 1,
        schema: schema.clone(),
        storage: storage.clone(),
        compaction: None,
        fatal,
        published,
        slots: PublishedSlots::default(),
        splits: tokio::sync::mpsc::unbounded_channel().0,
        day0: None,
    }
}

fn shard_actor(schema: &Schema, storage: &Addr<StorageActor>, applied: u64) -> ShardActor {
    let (fatal, _) = FatalReporter::channel();
    let published = AppliedIndex::new(applied);
    ShardActor::new(setup(schema, storage, fatal, published), applied).unwrap()
}

fn put_entry(index: u64, client: u64, seq: u64, time_ms: u64, key: &[u8]) -> Entry {
    let cmd = Command {
        client_id: client,
        seq,
        time_ms,
        action: Action::Put {
            key: key.to_vec(),
            value: b"v".to_vec(),
        },
    };
    Entry {
        index,
        term: 1,
        data: postcard::to_allocvec(&cmd).unwrap().into(),
        ..Default::default()
    }
}

fn session_exists(schema: &Schema, client: u64) -> bool {
    let rtxn = schema.env.read_txn().unwrap();
    schema
        .sessions
        .get(&rtxn, &session_key(1, client))
        .unwrap()
        .is_some()
}

/// The sweep index both session tests end on, and the log time their writes start at.
const SWEEP_AT: u64 = SESSION_SWEEP_EVERY * 2;
const T0: u64 = 1_700_000_000_000;

/// Client 9 writes at `T0`, client 8 `gap_ms` later, just before the sweep at [`SWEEP_AT`];
/// both durably. Returns the log clock after them.
fn two_writes_before_the_sweep(
    schema: &Schema,
    storage: &Addr<StorageActor>,
    gap_ms: u64,
) -> LogClock {
    let shard = shard_actor(schema, storage, SWEEP_AT - 3);
    let plan = shard
        .plan(&[
            put_entry(SWEEP_AT - 2, 9, 1, T0, b"a"),
            put_entry(SWEEP_AT - 1, 8, 1, T0 + gap_ms, b"b"),
        ])
        .unwrap();
    commit(schema, vec![plan.effects.batch]).unwrap();
    plan.log_clock
}

#[actix_rt::test]
async fn idle_sessions_expire_and_live_ones_keep_deduplicating() {
    let (_dir, schema) = temp_schema();
    let storage = storage_actor(&schema);
    let (base, t0) = (SWEEP_AT, T0);

    // Client 9 writes once and goes quiet; client 8 writes a full TTL later.
    two_writes_before_the_sweep(&schema, &storage, SESSION_TTL_MS);
    assert!(session_exists(&schema, 9) && session_exists(&schema, 8));

    // The sweep at `base`, 1 ms past client 9's TTL: 9 goes, 8 (idle 1 ms) stays.
    let shard = shard_actor(&schema, &storage, base - 1);
    let plan = shard
        .plan(&[put_entry(base, 7, 1, t0 + SESSION_TTL_MS + 1, b"c")])
        .unwrap();
    commit(&schema, vec![plan.effects.batch]).unwrap();
    assert!(!session_exists(&schema, 9), "an idle session is forgotten");
    assert!(session_exists(&schema, 8), "a live session is kept");
    assert!(session_exists(&schema, 7));

    // The live client's retry is still answered from its session, not applied again.
    let shard = shard_actor(&schema, &storage, base);
    let plan = shard
        .plan(&[put_entry(
            base + 1,
            8,
            1,
            t0 + SESSION_TTL_MS + 2,
            b"b-again",
        )])
        .unwrap();
    assert_eq!(
        plan.replies,
        vec![EntryReply {
            index: base + 1,
            term: 1,
            response: Response::Ok
        }]
    );
    assert!(
        !plan
            .effects
            .batch
            .ops
            .iter()
            .any(|op| matches!(op, WriteOp::Put(TableId::Kv, ..))),
        "the duplicate wrote nothing"
    );
}

/// Applies `entries` to a fresh shard in runs cut at `cuts`; with `durable`, each run is
/// committed to LMDB before the next is planned, otherwise it stays in the overlay (as
/// when storage lags). Returns every reply and the clients with a session at the end.
fn apply_in_runs(
    entries: &[Entry],
    cuts: &[usize],
    durable: bool,
) -> (Vec<EntryReply>, Vec<u64>, Vec<&'static str>) {
    let (_dir, schema) = temp_schema();
    let storage = storage_actor(&schema);
    let first = entries[0].index - 1;
    let mut shard = shard_actor(&schema, &storage, first);
    let mut replies = Vec::new();
    let mut pending = Vec::new();
    let mut from = 0;
    for (seq, to) in cuts.iter().copied().chain([entries.len()]).enumerate() {
        let plan = shard.plan(&entries[from..to]).unwrap();
        from = to;
        replies.extend(plan.replies.iter().cloned());
        shard.applied = entries[to - 1].index;
        shard.log_clock = plan.log_clock;
        if durable {
            commit(&schema, vec![plan.effects.batch]).unwrap();
        } else {
            let effects = plan.effects;
            shard
                .overlay
                .add(seq as u64, effects.values, effects.sessions);
            pending.push(effects.batch);
        }
    }
    commit(&schema, pending).unwrap();
    let mut live: Vec<u64> = (1..=9).filter(|c| session_exists(&schema, *c)).collect();
    live.sort_unstable();
    let rtxn = schema.env.read_txn().unwrap();
    let keys = ["a", "a2", "b", "b2", "c"]
        .into_iter()
        .filter(|k| {
            schema
                .kv
                .get(&rtxn, &kv_key(1, k.as_bytes()))
                .unwrap()
                .is_some()
        })
        .collect();
    (replies, live, keys)
}

#[actix_rt::test]
async fn session_expiry_does_not_depend_on_what_is_on_disk_yet() {
    let base = SESSION_SWEEP_EVERY * 3;
    let t0 = 1_700_000_000_000;
    let late = t0 + SESSION_TTL_MS + 100;
    // Client 5 writes, goes idle past its TTL, the sweep at `base` runs, and then an old
    // write of 5 with an old seq arrives: with the session gone it is a new write on every
    // replica, however far each replica's storage lags.
    let entries = [
        put_entry(base - 2, 5, 1, t0, b"a"),
        put_entry(base - 1, 6, 1, t0 + 10, b"b"),
        put_entry(base, 7, 1, late, b"c"),
        put_entry(base + 1, 5, 1, late + 1, b"a2"),
        put_entry(base + 2, 6, 1, late + 2, b"b2"),
    ];
    let on_disk = apply_in_runs(&entries, &[1, 2, 3, 4], true);
    for (cuts, durable) in [
        (&[][..], false),
        (&[2][..], false),
        (&[1, 3][..], false),
        (&[3][..], true),
    ] {
        assert_eq!(
            apply_in_runs(&entries, cuts, durable),
            on_disk,
            "runs cut at {cuts:?}, durable between runs: {durable}"
        );
    }
    // The sweep dropped 5 and 6; 5's and 6's later writes made them new sessions again.
    assert_eq!(on_disk.1, vec![5, 6, 7]);
    assert_eq!(on_disk.2, vec!["a", "a2", "b", "b2", "c"]);
    assert!(on_disk.0.iter().all(|r| r.response == Response::Ok));
}

#[actix_rt::test]
async fn a_batch_that_cannot_be_stored_is_reported_fatal_and_stops_the_shard() {
    let (_dir, schema) = temp_schema();
    // A storage actor whose arbiter is gone: every batch sent to it fails.
    let arbiter = Arbiter::new();
    let writer = StorageActor::new(schema.clone(), FatalReporter::channel().0).unwrap();
    let storage = StorageActor::start_in_arbiter(&arbiter.handle(), |_| writer);
    arbiter.stop();
    arbiter.join().unwrap();
    let (fatal, mut fatals) = FatalReporter::channel();
    let shard = ShardActor::new(setup(&schema, &storage, fatal, AppliedIndex::default()), 0)
        .unwrap()
        .start();

    shard.do_send(ApplyEntries {
        entries: vec![put_entry(1, 0, 0, 0, b"a")],
        conf_state: None,
    });
    let reported = tokio::time::timeout(std::time::Duration::from_secs(10), fatals.recv())
        .await
        .expect("a fatal error is reported")
        .expect("the reporter is alive");
    assert_eq!(reported.shard, Some(1));
    assert!(
        reported.reason.contains("could not be stored"),
        "{reported:?}"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while shard.connected() {
        assert!(tokio::time::Instant::now() < deadline, "the shard stops");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn a_committed_entry_that_cannot_be_applied_stops_the_host() {
    let (_dir, schema) = temp_schema();
    let storage = storage_actor(&schema);
    let (fatal, mut fatals) = FatalReporter::channel();
    let published = AppliedIndex::default();
    let shard = ShardActor::new(setup(&schema, &storage, fatal, published.clone()), 0)
        .unwrap()
        .start();
    shard.do_send(ApplyEntries {
        entries: vec![put_entry(1, 0, 0, 0, b"a")],
        conf_state: None,
    });
    let garbage = Entry {
        index: 2,
        term: 1,
        data: vec![0xff; 9].into(),
        ..Default::default()
    };
    shard.do_send(ApplyEntries {
        entries: vec![garbage],
        conf_state: None,
    });
    let reported = tokio::time::timeout(std::time::Duration::from_secs(10), fatals.recv())
        .await
        .expect("a fatal error is reported, not just a stopped shard")
        .expect("the reporter is alive");
    assert_eq!(reported.shard, Some(1));
    assert!(reported.reason.contains("cannot apply"), "{reported:?}");
    // Status reports what the state machine applied (1), not what raft-rs handed it (2).
    assert_eq!(published.get(), 1);
}

#[actix_rt::test]
async fn the_log_clock_resumes_after_a_restart_from_what_was_stored() {
    let (_dir, schema) = temp_schema();
    let storage = storage_actor(&schema);
    // Client 9 writes; five minutes pass under the same leader (term 1).
    let clock = two_writes_before_the_sweep(&schema, &storage, SESSION_TTL_MS / 2);

    // After a restart, another five minutes and a bit under that leader: the clock went on
    // from the stored five minutes, so 9 is idle past its TTL at the sweep.
    let restarted = shard_actor(&schema, &storage, SWEEP_AT - 1);
    assert_eq!(restarted.log_clock, clock);
    let plan = restarted
        .plan(&[put_entry(SWEEP_AT, 7, 1, T0 + SESSION_TTL_MS + 1, b"c")])
        .unwrap();
    commit(&schema, vec![plan.effects.batch]).unwrap();
    assert_eq!(plan.log_clock.now_ms, SESSION_TTL_MS + 1);
    assert!(!session_exists(&schema, 9) && session_exists(&schema, 8));
}

#[actix_rt::test]
async fn a_split_is_on_disk_before_the_child_is_announced_and_reads_of_its_slots_are_refused() {
    let (_dir, schema) = temp_schema();
    let storage = storage_actor(&schema);
    let (fatal, _) = FatalReporter::channel();
    let mut shard_setup = setup(&schema, &storage, fatal, AppliedIndex::default());
    let (notices, mut announced) = tokio::sync::mpsc::unbounded_channel();
    shard_setup.splits = notices;
    let slots = shard_setup.slots.clone();
    let shard = ShardActor::new(shard_setup, 0).unwrap().start();
    let at = 8192;
    let handed_key = (0..)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| shardkv_transport::slot::slot(k) >= at)
        .unwrap();
    let split = Command {
        client_id: 0,
        seq: 0,
        time_ms: 0,
        action: Action::Split(shardkv_transport::wire::SplitSpec {
            child: 5,
            at,
            voters: vec![1, 2, 3],
            epoch: 4,
        }),
    };
    shard.do_send(ApplyEntries {
        entries: vec![
            put_entry(1, 3, 1, 0, &handed_key),
            Entry {
                index: 2,
                term: 1,
                data: postcard::to_allocvec(&split).unwrap().into(),
                ..Default::default()
            },
        ],
        conf_state: None,
    });
    let notice = tokio::time::timeout(std::time::Duration::from_secs(10), announced.recv())
        .await
        .expect("the split is announced")
        .expect("the shard actor is alive");
    assert_eq!(
        notice,
        SplitApplied {
            parent: 1,
            child: 5
        }
    );
    // Announced only once durable: the child's state and the parent's ownership are stored.
    assert!(raft_records::has_state(&schema, 5).unwrap());
    assert_eq!(stored_owned(&schema, 5).unwrap().ranges, vec![(at, 16383)]);
    assert_eq!(stored_owned(&schema, 1).unwrap().ranges, vec![(0, at - 1)]);
    assert_eq!(slots.get(), vec![(0, at - 1)], "published for the router");
    // The row written before the split is the child's now, on disk: it moved nowhere.
    let rtxn = schema.env.read_txn().unwrap();
    assert!(schema
        .kv
        .get(&rtxn, &kv_key(5, &handed_key))
        .unwrap()
        .is_some());
    drop(rtxn);
    let (tx, rx) = tokio::sync::oneshot::channel();
    shard.do_send(ReadAt {
        index: 2,
        keys: ReadKeys::One(handed_key),
        reply: tx,
    });
    assert_eq!(
        rx.await.unwrap(),
        Response::WrongShard { shard: 1, epoch: 4 }
    );
}
