//! The apply core over an in-memory view: each command, each session rule, the batch rules.

use super::*;
use crate::messages::WriteOp;
use crate::schema::log_clock_record::decode_log_clock;
use crate::schema::{kv_key, state_key, TableId, TAG_APPLIED, TAG_LOG_CLOCK};
use crate::shard::log_clock::ClockAnchor;
use crate::shard::sessions::{session, SESSION_SWEEP_EVERY, SESSION_TTL_MS};
use crate::shard::view::MemoryView;

const SHARD: ShardId = 1;

/// The apply state of a shard owning every slot, applied up to `applied` with `log_clock`.
fn state(applied: u64, log_clock: LogClock) -> ApplyState {
    ApplyState {
        host: 1,
        applied,
        log_clock,
        owned: OwnedSlots {
            ranges: vec![(0, shardkv_transport::slot::SLOT_COUNT - 1)],
            epoch: 1,
        },
    }
}

fn entry(index: u64, client_id: u64, seq: u64, time_ms: u64, action: Action) -> Entry {
    entry_of_term(2, index, client_id, seq, time_ms, action)
}

/// An entry of `term` (its leader stamped it `time_ms`).
fn entry_of_term(
    term: u64,
    index: u64,
    client_id: u64,
    seq: u64,
    time_ms: u64,
    action: Action,
) -> Entry {
    let cmd = Command {
        client_id,
        seq,
        time_ms,
        action,
    };
    Entry {
        index,
        term,
        data: postcard::to_allocvec(&cmd).unwrap().into(),
        ..Default::default()
    }
}

/// A put of `key` (value "v") at log time 0.
fn put_at(index: u64, client_id: u64, seq: u64, key: &[u8]) -> Entry {
    entry(index, client_id, seq, 0, put_action(key, b"v"))
}

fn put_action(key: &[u8], value: &[u8]) -> Action {
    Action::Put {
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

/// Compare-and-swap of key `k`, as the tests write it.
fn cas_k(
    expected: Option<&str>,
    new: Option<&str>,
    view: &MemoryView,
    effects: &mut Effects,
) -> Response {
    let bytes = |v: Option<&str>| v.map(|v| v.as_bytes().to_vec());
    let (expected, new) = (bytes(expected), bytes(new));
    cas(b"k".to_vec(), expected, new, view, effects).unwrap()
}

fn responses(plan: &Plan) -> Vec<Response> {
    plan.replies.iter().map(|r| r.response.clone()).collect()
}

fn kv_writes(plan: &Plan) -> usize {
    plan.effects
        .batch
        .ops
        .iter()
        .filter(|op| {
            matches!(
                op,
                WriteOp::Put(TableId::Kv, ..) | WriteOp::Delete(TableId::Kv, _)
            )
        })
        .count()
}

#[test]
fn put_sets_the_value_and_answers_ok() {
    let mut effects = Effects::new(SHARD);
    assert_eq!(
        put(b"k".to_vec(), b"v".to_vec(), &mut effects),
        Response::Ok
    );
    assert_eq!(effects.values.get(&b"k"[..]), Some(&Some(b"v".to_vec())));
    assert!(matches!(
        &effects.batch.ops[..],
        [WriteOp::Put(TableId::Kv, k, v)] if *k == kv_key(SHARD, b"k") && v == b"v"
    ));
}

#[test]
fn delete_removes_the_value_and_answers_ok_even_if_absent() {
    let mut effects = Effects::new(SHARD);
    assert_eq!(delete(b"absent".to_vec(), &mut effects), Response::Ok);
    assert_eq!(effects.values.get(&b"absent"[..]), Some(&None));
    assert!(matches!(
        &effects.batch.ops[..],
        [WriteOp::Delete(TableId::Kv, k)] if *k == kv_key(SHARD, b"absent")
    ));
}

#[test]
fn cas_swaps_only_when_the_current_value_is_the_expected_one() {
    let mut view = MemoryView::default();
    view.values.insert(b"k".to_vec(), b"old".to_vec());
    let mut effects = Effects::new(SHARD);

    let failed = cas_k(None, Some("x"), &view, &mut effects);
    assert_eq!(
        failed,
        Response::CasFailed {
            current: Some(b"old".to_vec())
        }
    );
    assert!(effects.batch.ops.is_empty(), "a failed cas writes nothing");

    let ok = cas_k(Some("old"), Some("new"), &view, &mut effects);
    assert_eq!(ok, Response::CasOk);
    assert_eq!(effects.value(&view, b"k").unwrap(), Some(b"new".to_vec()));
}

#[test]
fn cas_to_none_deletes_and_cas_from_none_creates() {
    let view = MemoryView::default();
    let mut effects = Effects::new(SHARD);
    let created = cas_k(None, Some("v"), &view, &mut effects);
    assert_eq!(created, Response::CasOk);
    let deleted = cas_k(Some("v"), None, &view, &mut effects);
    assert_eq!(deleted, Response::CasOk);
    assert_eq!(effects.value(&view, b"k").unwrap(), None);
}

#[test]
fn later_entries_of_a_batch_see_the_earlier_ones() {
    let view = MemoryView::default();
    let entries = [
        entry(1, 0, 0, 0, put_action(b"k", b"1")),
        entry(
            2,
            0,
            0,
            0,
            Action::Cas {
                key: b"k".to_vec(),
                expected: Some(b"1".to_vec()),
                new: Some(b"2".to_vec()),
            },
        ),
    ];
    let plan = plan(SHARD, &state(0, LogClock::default()), &entries, &view).unwrap();
    assert_eq!(responses(&plan), vec![Response::Ok, Response::CasOk]);
    assert_eq!(
        plan.effects.values.get(&b"k"[..]),
        Some(&Some(b"2".to_vec()))
    );
}

#[test]
fn a_retried_write_is_applied_once_and_answered_its_first_reply() {
    // The retry in the same batch, and a retry of a write the view already holds.
    let mut view = MemoryView::default();
    let first = Response::CasFailed { current: None };
    view.sessions.insert(8, session(3, 0, Some(first.clone())));
    let entries = [
        put_at(1, 7, 1, b"a"),
        put_at(2, 7, 1, b"a"),
        put_at(3, 8, 3, b"b"),
    ];
    let plan = plan(SHARD, &state(0, LogClock::default()), &entries, &view).unwrap();
    assert_eq!(responses(&plan), vec![Response::Ok, Response::Ok, first]);
    assert_eq!(
        kv_writes(&plan),
        1,
        "only the first write of client 7 applied"
    );
}

#[test]
fn writes_without_a_session_are_never_deduplicated_nor_recorded() {
    let view = MemoryView::default();
    let entries = [put_at(1, 7, 0, b"a"), put_at(2, 7, 0, b"a")];
    let plan = plan(SHARD, &state(0, LogClock::default()), &entries, &view).unwrap();
    assert_eq!(kv_writes(&plan), 2);
    assert!(plan.effects.sessions.is_empty());
}

#[test]
fn entries_already_applied_are_skipped_and_the_applied_index_is_written_last() {
    let view = MemoryView::default();
    let entries = [
        put_at(4, 0, 0, b"old"),
        put_at(5, 0, 0, b"old"),
        put_at(6, 0, 0, b"new"),
    ];
    let plan = plan(SHARD, &state(5, LogClock::default()), &entries, &view).unwrap();
    assert_eq!(
        plan.replies,
        vec![EntryReply {
            index: 6,
            term: 2,
            response: Response::Ok
        }]
    );
    assert!(matches!(
        plan.effects.batch.ops.last(),
        Some(WriteOp::Put(TableId::RaftState, k, v))
            if k[..] == state_key(SHARD, TAG_APPLIED) && v[..] == 6u64.to_be_bytes()
    ));
}

#[test]
fn an_empty_entry_advances_the_applied_index_without_a_reply() {
    let noop = Entry {
        index: 1,
        ..Default::default()
    };
    let plan = plan(
        SHARD,
        &state(0, LogClock::default()),
        &[noop],
        &MemoryView::default(),
    )
    .unwrap();
    assert!(plan.replies.is_empty());
    assert_eq!(plan.effects.batch.ops.len(), 1, "only the applied index");
}

#[test]
fn nothing_new_writes_nothing() {
    let entries = [put_at(3, 0, 0, b"a")];
    let plan = plan(
        SHARD,
        &state(3, LogClock::default()),
        &entries,
        &MemoryView::default(),
    )
    .unwrap();
    assert!(plan.replies.is_empty() && plan.effects.batch.ops.is_empty());
}

#[test]
#[should_panic(expected = "applies out of order")]
fn a_gap_in_the_entries_is_refused() {
    let entries = [put_at(3, 0, 0, b"a")];
    let _ = plan(
        SHARD,
        &state(1, LogClock::default()),
        &entries,
        &MemoryView::default(),
    );
}

#[test]
fn the_sweep_runs_before_the_entry_at_its_index() {
    // Client 5's session is idle past its TTL when the entry at a sweep index comes: it is
    // forgotten first, so 5's retry of seq 1 in that very entry is applied as a new write.
    let index = 4096;
    let now = 1_700_000_000_000;
    let mut view = MemoryView::default();
    let idle_since = now - SESSION_TTL_MS - 1;
    view.sessions
        .insert(5, session(1, idle_since, Some(Response::Ok)));
    let entries = [entry(index, 5, 1, now, put_action(b"a", b"v"))];
    let clock = LogClock {
        now_ms: now,
        anchor: Some(ClockAnchor {
            term: 2,
            stamp_ms: now,
        }),
    };
    let plan = plan(SHARD, &state(index - 1, clock), &entries, &view).unwrap();
    assert_eq!(
        kv_writes(&plan),
        1,
        "applied, not answered from the session"
    );
    assert_eq!(
        plan.effects
            .sessions
            .get(&5)
            .cloned()
            .flatten()
            .map(|s| s.last_ms),
        Some(now)
    );
}

/// The log clock a plan stores, if it stores one.
fn stored_clock(plan: &Plan) -> Option<LogClock> {
    plan.effects.batch.ops.iter().find_map(|op| match op {
        WriteOp::Put(TableId::RaftState, k, v) if k[..] == state_key(SHARD, TAG_LOG_CLOCK) => {
            Some(decode_log_clock(v).unwrap())
        }
        _ => None,
    })
}

#[test]
fn a_retried_cas_is_answered_from_its_session_after_a_leader_eleven_minutes_ahead() {
    // Leader A (term 2) applies client 5's CAS at its time T. Leader B (term 3), whose clock
    // is 11 minutes ahead, proposes the entry at the sweep index; then 5's retry of the CAS
    // (its reply was lost) arrives. The session must still answer it: B measured no time.
    let t = 1_700_000_000_000;
    let ahead = t + 11 * 60 * 1000;
    let index = SESSION_SWEEP_EVERY;
    let cas = || Action::Cas {
        key: b"k".to_vec(),
        expected: None,
        new: Some(b"v".to_vec()),
    };
    let entries = [
        entry_of_term(2, index - 1, 5, 1, t, cas()),
        entry_of_term(3, index, 6, 1, ahead, put_action(b"other", b"x")),
        entry_of_term(3, index + 1, 5, 1, ahead + 1, cas()),
    ];
    let plan = plan(
        SHARD,
        &state(index - 2, LogClock::default()),
        &entries,
        &MemoryView::default(),
    )
    .unwrap();
    assert_eq!(
        responses(&plan),
        vec![Response::CasOk, Response::Ok, Response::CasOk],
        "the retry gets the first reply, not a failure for a CAS that succeeded"
    );
    assert_eq!(kv_writes(&plan), 2, "the CAS applied once, and B's put");
    assert_eq!(plan.log_clock.now_ms, 1, "only B's own 1 ms counts");
}

#[test]
fn sessions_still_expire_after_a_ttl_measured_within_a_term() {
    // The same leader clock ahead by 11 minutes, but 11 minutes pass under that leader: the
    // idle session goes at the sweep.
    let t = 1_700_000_000_000 + 11 * 60 * 1000;
    let index = SESSION_SWEEP_EVERY;
    let entries = [
        entry_of_term(3, index - 2, 5, 1, t, put_action(b"a", b"v")),
        entry_of_term(3, index - 1, 6, 1, t + 1, put_action(b"b", b"v")),
        entry_of_term(
            3,
            index,
            6,
            2,
            t + SESSION_TTL_MS + 1,
            put_action(b"b", b"w"),
        ),
        entry_of_term(
            3,
            index + 1,
            5,
            1,
            t + SESSION_TTL_MS + 2,
            put_action(b"a", b"v"),
        ),
    ];
    let plan = plan(
        SHARD,
        &state(index - 3, LogClock::default()),
        &entries,
        &MemoryView::default(),
    )
    .unwrap();
    assert_eq!(
        kv_writes(&plan),
        4,
        "5's old seq after its session expired is a new write"
    );
    assert_eq!(plan.log_clock.now_ms, SESSION_TTL_MS + 2);
}

#[test]
fn the_log_clock_is_stored_with_the_applied_index_when_it_moves() {
    let entries = [
        entry_of_term(4, 1, 0, 0, 500, put_action(b"a", b"v")),
        entry_of_term(4, 2, 0, 0, 800, put_action(b"a", b"w")),
    ];
    let moved = plan(
        SHARD,
        &state(0, LogClock::default()),
        &entries,
        &MemoryView::default(),
    )
    .unwrap();
    let expected = LogClock {
        now_ms: 300,
        anchor: Some(ClockAnchor {
            term: 4,
            stamp_ms: 800,
        }),
    };
    assert_eq!(moved.log_clock, expected);
    assert_eq!(stored_clock(&moved), Some(expected));

    // A run whose clock does not move stores none: the stored one still holds.
    let noop = Entry {
        index: 3,
        term: 4,
        ..Default::default()
    };
    let repeat = entry_of_term(4, 4, 0, 0, 800, put_action(b"a", b"x"));
    let same = plan(
        SHARD,
        &state(2, expected),
        &[noop, repeat],
        &MemoryView::default(),
    )
    .unwrap();
    assert_eq!(same.log_clock, expected);
    assert_eq!(stored_clock(&same), None);
}
