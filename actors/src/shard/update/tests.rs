//! The update core over an in-memory view: each change, the conditions, atomic failure.

use super::*;
use crate::shard::view::MemoryView;

const SHARD: shardkv_transport::ShardId = 1;
const LIMIT: u64 = 16;

/// The key the tests call `name`: all in one slot (one hash tag), as an update's keys are.
fn tagged(name: &str) -> Vec<u8> {
    format!("{{t}}{name}").into_bytes()
}

fn key_update(key: &str, change: Change) -> KeyUpdate {
    KeyUpdate {
        key: tagged(key),
        change,
        condition: Condition::Always,
        return_previous: false,
    }
}

fn set(key: &str, value: &str) -> KeyUpdate {
    key_update(key, Change::Set(value.as_bytes().to_vec()))
}

fn view_with(pairs: &[(&str, &str)]) -> MemoryView {
    let mut view = MemoryView::default();
    for (k, v) in pairs {
        view.values.insert(tagged(k), v.as_bytes().to_vec());
    }
    view
}

/// Applies `updates` over `view` into fresh effects.
fn run(updates: Vec<KeyUpdate>, view: &MemoryView) -> (Response, Effects) {
    let mut effects = Effects::new(SHARD);
    let response = update(updates, LIMIT, view, &mut effects).unwrap();
    (response, effects)
}

fn outcomes(response: Response) -> Vec<UpdateOutcome> {
    match response {
        Response::Updated(outcomes) => outcomes,
        other => panic!("expected Updated, got {other:?}"),
    }
}

fn written(effects: &Effects, key: &str) -> Option<Option<String>> {
    effects
        .values
        .get(&tagged(key))
        .map(|v| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()))
}

#[test]
fn set_writes_every_key_and_later_changes_see_earlier_ones() {
    let view = MemoryView::default();
    let mut again = set("a", "2");
    again.return_previous = true;
    let (response, effects) = run(vec![set("a", "1"), set("b", "x"), again], &view);
    let got = outcomes(response);
    assert!(got.iter().all(|o| o.applied));
    assert_eq!(got[2].previous, Some(b"1".to_vec()));
    assert_eq!(written(&effects, "a"), Some(Some("2".into())));
    assert_eq!(written(&effects, "b"), Some(Some("x".into())));
    // One LMDB write per key, not per change.
    assert_eq!(effects.batch.ops.len(), 2);
}

#[test]
fn if_absent_and_if_present_decide_on_the_current_value() {
    let view = view_with(&[("here", "v")]);
    let mut nx_here = set("here", "new");
    nx_here.condition = Condition::IfAbsent;
    let mut nx_gone = set("gone", "new");
    nx_gone.condition = Condition::IfAbsent;
    let mut xx_gone = set("gone2", "new");
    xx_gone.condition = Condition::IfPresent;
    let mut xx_here = set("here", "newer");
    xx_here.condition = Condition::IfPresent;
    xx_here.return_previous = true;
    let (response, effects) = run(vec![nx_here, nx_gone, xx_gone, xx_here], &view);
    let applied: Vec<bool> = outcomes(response.clone())
        .iter()
        .map(|o| o.applied)
        .collect();
    assert_eq!(applied, [false, true, false, true]);
    assert_eq!(outcomes(response)[3].previous, Some(b"v".to_vec()));
    assert_eq!(written(&effects, "here"), Some(Some("newer".into())));
    assert_eq!(written(&effects, "gone"), Some(Some("new".into())));
    assert_eq!(written(&effects, "gone2"), None);
}

#[test]
fn a_condition_that_fails_still_returns_the_previous_value() {
    let view = view_with(&[("k", "old")]);
    let mut nx = set("k", "new");
    nx.condition = Condition::IfAbsent;
    nx.return_previous = true;
    let (response, effects) = run(vec![nx], &view);
    let got = outcomes(response);
    assert!(!got[0].applied);
    assert_eq!(got[0].previous, Some(b"old".to_vec()));
    assert!(effects.batch.ops.is_empty());
}

#[test]
fn delete_says_whether_the_key_existed_and_writes_only_then() {
    let view = view_with(&[("a", "1")]);
    let mut getdel = key_update("a", Change::Delete);
    getdel.return_previous = true;
    let (response, effects) = run(vec![getdel, key_update("b", Change::Delete)], &view);
    let got = outcomes(response);
    assert!(got[0].applied);
    assert_eq!(got[0].previous, Some(b"1".to_vec()));
    assert!(!got[1].applied);
    assert_eq!(written(&effects, "a"), Some(None));
    assert_eq!(written(&effects, "b"), None);
}

#[test]
fn incr_by_adds_to_a_decimal_value_and_an_absent_key_counts_as_zero() {
    let view = view_with(&[("n", "41")]);
    let (response, effects) = run(
        vec![
            key_update("n", Change::IncrBy(1)),
            key_update("m", Change::IncrBy(-5)),
        ],
        &view,
    );
    let got = outcomes(response);
    assert_eq!((got[0].number, got[1].number), (42, -5));
    assert_eq!(written(&effects, "n"), Some(Some("42".into())));
    assert_eq!(written(&effects, "m"), Some(Some("-5".into())));
}

#[test]
fn incr_of_a_non_integer_fails_the_whole_update_and_changes_nothing() {
    let view = view_with(&[("s", "abc")]);
    let (response, effects) = run(
        vec![set("a", "1"), key_update("s", Change::IncrBy(1))],
        &view,
    );
    assert_eq!(response, Response::Invalid(UPDATE_NOT_AN_INTEGER.into()));
    assert!(effects.batch.ops.is_empty());
    assert!(effects.values.is_empty());
}

#[test]
fn incr_that_overflows_fails_with_redis_wording() {
    let view = view_with(&[("n", &i64::MAX.to_string())]);
    let (response, effects) = run(vec![key_update("n", Change::IncrBy(1))], &view);
    assert_eq!(response, Response::Invalid(UPDATE_OVERFLOW.into()));
    assert!(effects.batch.ops.is_empty());
}

#[test]
fn append_extends_the_value_and_answers_its_length() {
    let view = view_with(&[("a", "foo")]);
    let (response, effects) = run(
        vec![
            key_update("a", Change::Append(b"bar".to_vec())),
            key_update("new", Change::Append(b"x".to_vec())),
        ],
        &view,
    );
    let got = outcomes(response);
    assert_eq!((got[0].number, got[1].number), (6, 1));
    assert_eq!(written(&effects, "a"), Some(Some("foobar".into())));
    assert_eq!(written(&effects, "new"), Some(Some("x".into())));
}

#[test]
fn append_past_the_value_limit_fails_and_changes_nothing() {
    let view = view_with(&[("a", "0123456789")]);
    let (response, effects) = run(
        vec![
            set("b", "1"),
            key_update("a", Change::Append(b"0123456".to_vec())),
        ],
        &view,
    );
    assert_eq!(
        response,
        Response::TooLarge {
            what: LimitKind::Value,
            len: 17,
            limit: 16
        }
    );
    assert!(effects.batch.ops.is_empty());
}

#[test]
fn an_update_sees_earlier_entries_of_the_same_batch() {
    let view = MemoryView::default();
    let mut effects = Effects::new(SHARD);
    effects.put_value(tagged("n"), b"9".to_vec());
    let response = update(
        vec![key_update("n", Change::IncrBy(1))],
        LIMIT,
        &view,
        &mut effects,
    )
    .unwrap();
    assert_eq!(outcomes(response)[0].number, 10);
}

#[test]
fn integers_are_parsed_the_way_redis_parses_them() {
    for (text, want) in [
        ("0", Some(0)),
        ("7", Some(7)),
        ("-12", Some(-12)),
        ("9223372036854775807", Some(i64::MAX)),
        ("-9223372036854775808", Some(i64::MIN)),
        ("9223372036854775808", None),
        ("", None),
        ("-", None),
        ("-0", None),
        ("01", None),
        ("+1", None),
        (" 1", None),
        ("1 ", None),
        ("1.5", None),
        ("1e3", None),
    ] {
        assert_eq!(parse_integer(text.as_bytes()), want, "{text:?}");
    }
}

#[test]
fn keys_of_two_slots_are_refused_at_apply_too() {
    let view = MemoryView::default();
    let mut other_slot = set("b", "2");
    other_slot.key = b"b".to_vec();
    let (response, effects) = run(vec![set("a", "1"), other_slot], &view);
    assert!(matches!(response, Response::Invalid(why) if why.contains("one slot")));
    assert!(effects.batch.ops.is_empty());
}
