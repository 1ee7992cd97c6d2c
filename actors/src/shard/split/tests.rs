//! Splits through the apply core over an in-memory view: what the parent keeps, what the
//! child gets on a voter host and on another, and the entries around the split.

use raft::eraftpb::Entry;
use shardkv_transport::slot::slot;

use super::*;
use crate::schema::{
    state_key, TAG_APPLIED, TAG_CONF_STATE, TAG_HARD_STATE, TAG_LOG_CLOCK, TAG_OWNED, TAG_TRUNCATED,
};
use crate::shard::apply::{plan, ApplyState, Plan};
use crate::shard::command::{Action, Command};
use crate::shard::sessions::session;
use crate::shard::view::MemoryView;

const PARENT: ShardId = 1;
const CHILD: ShardId = 7;
/// The parent owns slots 0 to this.
const PARENT_LAST: u16 = 8191;

fn entry(index: u64, client_id: u64, seq: u64, action: Action) -> Entry {
    let cmd = Command {
        client_id,
        seq,
        time_ms: 1_000 * index,
        action,
    };
    Entry {
        index,
        term: 2,
        data: postcard::to_allocvec(&cmd).unwrap().into(),
        ..Default::default()
    }
}

fn split_entry(index: u64, at: u16) -> Entry {
    let spec = SplitSpec {
        child: CHILD,
        at,
        voters: vec![1, 2, 3],
        epoch: 5,
    };
    entry(index, 0, 0, Action::Split(spec))
}

fn put(key: &[u8]) -> Action {
    Action::Put {
        key: key.to_vec(),
        value: b"v".to_vec(),
    }
}

/// A key of the parent's slots below `at`, and one at or above it.
fn keys_around(at: u16) -> (Vec<u8>, Vec<u8>) {
    let mut low = None;
    let mut high = None;
    for i in 0..10_000u32 {
        let k = format!("key{i}").into_bytes();
        match slot(&k) {
            s if s < at => {
                low.get_or_insert(k);
            }
            s if s <= PARENT_LAST => {
                high.get_or_insert(k);
            }
            _ => {}
        }
        if low.is_some() && high.is_some() {
            break;
        }
    }
    (low.unwrap(), high.unwrap())
}

fn run(host: HostId, entries: &[Entry], view: &MemoryView) -> Plan {
    let state = ApplyState {
        host,
        applied: 0,
        log_clock: LogClock::default(),
        owned: OwnedSlots {
            ranges: vec![(0, PARENT_LAST)],
            epoch: 1,
        },
    };
    plan(PARENT, &state, entries, view).unwrap()
}

fn puts_of(plan: &Plan, key: &[u8]) -> bool {
    plan.effects
        .batch
        .ops
        .iter()
        .any(|op| matches!(op, WriteOp::Put(TableId::RaftState, k, _) if k[..] == key[..]))
}

#[test]
fn on_a_voter_host_the_child_gets_the_upper_slots_sessions_and_clock() {
    let (low, high) = keys_around(4096);
    let mut view = MemoryView::default();
    view.sessions
        .insert(42, session(3, 500, Some(Response::Ok)));
    let entries = [
        entry(1, 9, 1, put(&high)),
        split_entry(2, 4096),
        entry(3, 9, 2, put(&high)),
        entry(4, 9, 3, put(&low)),
    ];
    let plan = run(1, &entries, &view);
    let replies: Vec<_> = plan.replies.iter().map(|r| r.response.clone()).collect();
    assert_eq!(
        replies,
        vec![
            Response::Ok,
            Response::Ok,
            Response::WrongShard {
                shard: PARENT,
                epoch: 5
            },
            Response::Ok
        ],
        "a write of a handed slot after the split is refused, one of a kept slot applies"
    );
    assert_eq!(
        plan.owned,
        Some(OwnedSlots {
            ranges: vec![(0, 4095)],
            epoch: 5
        })
    );
    assert_eq!(plan.children, vec![CHILD]);
    for tag in [
        TAG_CONF_STATE,
        TAG_OWNED,
        TAG_LOG_CLOCK,
        TAG_HARD_STATE,
        TAG_TRUNCATED,
        TAG_APPLIED,
    ] {
        assert!(puts_of(&plan, &state_key(CHILD, tag)), "child tag {tag}");
    }
    assert!(puts_of(&plan, &state_key(PARENT, TAG_OWNED)));
    // Both sessions as of the split: the stored one and the one entry 1 wrote.
    let copied: Vec<u64> = plan
        .effects
        .batch
        .ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Put(TableId::Sessions, k, _) if k[..4] == CHILD.to_be_bytes() => {
                Some(u64::from_be_bytes(k[4..12].try_into().unwrap()))
            }
            _ => None,
        })
        .collect();
    let mut copied = copied;
    copied.sort_unstable();
    assert_eq!(copied, vec![9, 42]);
}

#[test]
fn a_refused_write_is_not_recorded_in_the_session_so_its_retry_applies_in_the_child() {
    let (_, high) = keys_around(4096);
    let plan = run(
        1,
        &[split_entry(1, 4096), entry(2, 9, 1, put(&high))],
        &MemoryView::default(),
    );
    assert!(matches!(
        plan.replies[1].response,
        Response::WrongShard { .. }
    ));
    assert!(
        !plan.effects.sessions.contains_key(&9),
        "nothing recorded: the same seq applies once at the new owner"
    );
}

#[test]
fn on_a_host_outside_the_child_the_handed_rows_are_deleted() {
    let plan = run(4, &[split_entry(1, 4096)], &MemoryView::default());
    assert!(plan.children.is_empty());
    assert!(!puts_of(&plan, &state_key(CHILD, TAG_CONF_STATE)));
    let deleted: Vec<_> = plan
        .effects
        .batch
        .ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::DeleteRange(TableId::Kv, from, to) => Some((from.clone(), to.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted,
        vec![(
            4096u16.to_be_bytes().to_vec(),
            8192u16.to_be_bytes().to_vec()
        )]
    );
}

#[test]
fn a_split_applied_again_changes_nothing() {
    let plan = run(
        1,
        &[split_entry(1, 4096), split_entry(2, 4096)],
        &MemoryView::default(),
    );
    assert_eq!(plan.replies[1].response, Response::Ok);
    assert_eq!(plan.children, vec![CHILD], "one child, once");
}

#[test]
fn a_split_that_would_leave_a_side_empty_is_refused_and_changes_nothing() {
    let plan = run(1, &[split_entry(1, 0)], &MemoryView::default());
    assert!(matches!(plan.replies[0].response, Response::Invalid(_)));
    assert_eq!(plan.owned, None);
    assert!(plan.children.is_empty());
}

#[test]
fn a_split_never_creates_a_shard_over_one_this_host_holds() {
    let mut view = MemoryView::default();
    view.hosted.insert(CHILD);
    let plan = run(1, &[split_entry(1, 4096)], &view);
    assert_eq!(plan.replies[0].response, Response::Ok, "the parent splits");
    assert!(plan.children.is_empty());
    assert!(!puts_of(&plan, &state_key(CHILD, TAG_CONF_STATE)));
}
