//! Hand-written histories, each a behaviour the checker must accept or a bug it must catch.

use crate::{check, check_with_budget, CheckError, Event, History, LimitHit, Op, Outcome};

fn val(v: &str) -> Option<Vec<u8>> {
    Some(v.as_bytes().to_vec())
}

fn put(v: &str) -> Op {
    Op::Put(v.as_bytes().to_vec())
}

fn cas(expected: Option<&str>, new: Option<&str>) -> Op {
    Op::Cas {
        expected: expected.and_then(val),
        new: new.and_then(val),
    }
}

fn read(v: Option<&str>) -> Outcome {
    Outcome::Read(v.and_then(val))
}

/// An operation that completed with a known outcome.
fn done(client: usize, key: &str, op: Op, invoke: u64, complete: u64, outcome: Outcome) -> Event {
    Event {
        client,
        key: key.as_bytes().to_vec(),
        op,
        invoke,
        complete: Some(complete),
        outcome,
    }
}

/// An operation whose client never learned the outcome.
fn lost(client: usize, key: &str, op: Op, invoke: u64) -> Event {
    Event {
        client,
        key: key.as_bytes().to_vec(),
        op,
        invoke,
        complete: None,
        outcome: Outcome::Unknown,
    }
}

fn verdict(events: Vec<Event>) -> Result<(), CheckError> {
    check(&History::from_events(events))
}

fn violation(events: Vec<Event>) -> crate::Violation {
    match verdict(events) {
        Err(CheckError::NotLinearizable(violation)) => violation,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn sequential_history_is_linearizable() {
    let w = Outcome::Written;
    assert_eq!(
        verdict(vec![
            done(0, "k", Op::Get, 0, 1, read(None)),
            done(0, "k", put("1"), 2, 3, w.clone()),
            done(1, "k", Op::Get, 4, 5, read(Some("1"))),
            done(1, "k", put("2"), 6, 7, w),
            done(0, "k", Op::Get, 8, 9, read(Some("2"))),
        ]),
        Ok(())
    );
}

#[test]
fn overlapping_puts_allow_a_later_read_of_either_value() {
    for seen in ["1", "2"] {
        let events = vec![
            done(0, "k", put("1"), 0, 10, Outcome::Written),
            done(1, "k", put("2"), 5, 15, Outcome::Written),
            done(2, "k", Op::Get, 20, 25, read(Some(seen))),
        ];
        assert_eq!(verdict(events), Ok(()), "read {seen}");
    }
}

#[test]
fn read_overlapping_a_put_may_see_old_or_new_value() {
    for seen in [None, Some("1")] {
        let events = vec![
            done(0, "k", put("1"), 0, 10, Outcome::Written),
            done(1, "k", Op::Get, 5, 8, read(seen)),
        ];
        assert_eq!(verdict(events), Ok(()), "read {seen:?}");
    }
}

#[test]
fn stale_read_after_completed_put_is_a_violation_naming_key_and_events() {
    let put_event = done(0, "stale", put("1"), 100, 110, Outcome::Written);
    let get_event = done(1, "stale", Op::Get, 120, 130, read(None));
    let found = violation(vec![put_event.clone(), get_event.clone()]);
    assert_eq!(found.key, b"stale");
    assert_eq!(found.events, vec![put_event, get_event]);
    let report = found.to_string();
    assert!(report.contains("key \"stale\""), "{report}");
    assert!(report.contains("#1") && report.contains("#2"), "{report}");
    assert!(report.contains("+0ns"), "times are relative: {report}");
    assert!(report.contains("the register holds \"1\""), "{report}");
}

#[test]
fn read_of_old_value_after_overwrite_is_a_violation() {
    let found = violation(vec![
        done(0, "k", put("old"), 0, 1, Outcome::Written),
        done(0, "k", put("new"), 2, 3, Outcome::Written),
        done(1, "k", Op::Get, 4, 5, read(Some("old"))),
    ]);
    assert_eq!(found.events.len(), 3);
}

#[test]
fn read_of_a_value_never_written_is_a_violation() {
    let found = violation(vec![
        done(0, "k", put("1"), 0, 10, Outcome::Written),
        done(1, "k", Op::Get, 5, 15, read(Some("ghost"))),
    ]);
    // The put cannot explain the ghost value, so the core is the read alone.
    assert_eq!(found.events.len(), 1);
    assert_eq!(found.events[0].op, Op::Get);
}

#[test]
fn unknown_put_may_be_seen_or_not() {
    for seen in [None, Some("1")] {
        let events = vec![
            lost(0, "k", put("1"), 0),
            done(1, "k", Op::Get, 50, 60, read(seen)),
            done(1, "k", Op::Get, 70, 80, read(seen)),
        ];
        assert_eq!(verdict(events), Ok(()), "read {seen:?}");
    }
}

#[test]
fn unknown_put_may_take_effect_long_after_the_client_gave_up() {
    let mut gave_up = lost(0, "k", put("1"), 0);
    gave_up.complete = Some(10);
    let events = vec![
        gave_up,
        done(1, "k", Op::Get, 20, 30, read(None)),
        done(1, "k", Op::Get, 40, 50, read(Some("1"))),
    ];
    assert_eq!(verdict(events), Ok(()));
}

#[test]
fn unknown_put_seen_then_unseen_is_a_violation() {
    let found = violation(vec![
        lost(0, "k", put("1"), 0),
        done(1, "k", Op::Get, 50, 60, read(Some("1"))),
        done(1, "k", Op::Get, 70, 80, read(None)),
    ]);
    assert_eq!(found.events.len(), 3);
}

#[test]
fn unknown_get_is_ignored() {
    let events = vec![
        done(0, "k", put("1"), 0, 10, Outcome::Written),
        lost(1, "k", Op::Get, 20),
    ];
    assert_eq!(verdict(events), Ok(()));
}

#[test]
fn cas_success_and_failure_that_agree_with_the_register_pass() {
    let events = vec![
        done(0, "k", cas(None, Some("a")), 0, 1, Outcome::CasOk),
        done(
            1,
            "k",
            cas(None, Some("b")),
            2,
            3,
            Outcome::CasFailed(val("a")),
        ),
        done(0, "k", cas(Some("a"), Some("c")), 4, 5, Outcome::CasOk),
        done(1, "k", Op::Get, 6, 7, read(Some("c"))),
    ];
    assert_eq!(verdict(events), Ok(()));
}

#[test]
fn cas_success_on_a_mismatching_value_is_a_violation() {
    violation(vec![
        done(0, "k", put("x"), 0, 1, Outcome::Written),
        done(1, "k", cas(Some("y"), Some("z")), 2, 3, Outcome::CasOk),
    ]);
}

#[test]
fn cas_failure_reporting_a_contradicting_current_value_is_a_violation() {
    // The failure reports "w", which was overwritten by "x" before the CAS started.
    let found = violation(vec![
        done(0, "k", put("w"), 0, 1, Outcome::Written),
        done(0, "k", put("x"), 2, 3, Outcome::Written),
        done(
            1,
            "k",
            cas(Some("y"), Some("z")),
            4,
            5,
            Outcome::CasFailed(val("w")),
        ),
    ]);
    assert_eq!(found.events.len(), 3, "{found}");
    assert!(found.explanation.contains("holds \"x\""), "{found}");
}

#[test]
fn cas_failure_when_the_expected_value_was_present_is_a_violation() {
    let found = violation(vec![
        done(0, "k", put("x"), 0, 1, Outcome::Written),
        done(
            1,
            "k",
            cas(Some("x"), Some("z")),
            2,
            3,
            Outcome::CasFailed(val("x")),
        ),
    ]);
    assert!(found.explanation.contains("equals the expected"), "{found}");
}

#[test]
fn unknown_cas_may_apply_or_not() {
    for seen in [Some("x"), Some("z")] {
        let events = vec![
            done(0, "k", put("x"), 0, 1, Outcome::Written),
            lost(1, "k", cas(Some("x"), Some("z")), 2),
            done(2, "k", Op::Get, 10, 11, read(seen)),
        ];
        assert_eq!(verdict(events), Ok(()), "read {seen:?}");
    }
}

#[test]
fn delete_makes_the_key_absent() {
    let events = vec![
        done(0, "k", put("1"), 0, 1, Outcome::Written),
        done(0, "k", Op::Delete, 2, 3, Outcome::Written),
        done(1, "k", Op::Get, 4, 5, read(None)),
        done(1, "k", cas(None, Some("2")), 6, 7, Outcome::CasOk),
        done(0, "k", cas(Some("2"), None), 8, 9, Outcome::CasOk),
        done(1, "k", Op::Get, 10, 11, read(None)),
    ];
    assert_eq!(verdict(events), Ok(()));
}

#[test]
fn reading_a_deleted_value_is_a_violation() {
    let found = violation(vec![
        done(0, "k", put("1"), 0, 1, Outcome::Written),
        done(0, "k", Op::Delete, 2, 3, Outcome::Written),
        done(1, "k", Op::Get, 4, 5, read(Some("1"))),
    ]);
    assert_eq!(found.events.len(), 3);
}

#[test]
fn initial_value_is_honoured() {
    let history = History::from_events(vec![done(0, "k", Op::Get, 0, 1, read(Some("0")))]);
    assert!(check(&history).is_err());
    assert!(check(&history.clone().with_initial("other", "0")).is_err());
    let history = history.with_initial("k", "0");
    assert_eq!(check(&history), Ok(()));
}

#[test]
fn keys_are_independent_registers() {
    // Interleaved but on different keys: each key alone is sequentially fine.
    let events = vec![
        done(0, "a", put("1"), 0, 1, Outcome::Written),
        done(1, "b", Op::Get, 2, 3, read(None)),
        done(1, "a", Op::Get, 4, 5, read(Some("1"))),
        done(0, "b", put("2"), 6, 7, Outcome::Written),
    ];
    assert_eq!(verdict(events), Ok(()));
}

#[test]
fn a_violation_on_one_key_is_found_among_clean_keys() {
    let mut events = Vec::new();
    for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let t = i as u64 * 100;
        events.push(done(0, key, put(key), t, t + 10, Outcome::Written));
        events.push(done(1, key, Op::Get, t + 20, t + 30, read(Some(key))));
    }
    events.push(done(2, "c", Op::Get, 1000, 1010, read(None)));
    let found = violation(events);
    assert_eq!(found.key, b"c");
    assert!(found.events.iter().all(|e| e.key == b"c"));
}

#[test]
fn core_leaves_out_unrelated_events() {
    let mut events: Vec<Event> = (0..30)
        .map(|i| {
            done(
                i % 3,
                "k",
                put(&i.to_string()),
                i as u64 * 10,
                i as u64 * 10 + 5,
                Outcome::Written,
            )
        })
        .collect();
    events.push(done(5, "k", Op::Get, 400, 410, read(Some("3"))));
    let found = violation(events);
    assert_eq!(found.events.len(), 3, "{found}");
    assert_eq!(found.events[0].op, put("3"));
}

#[test]
fn budget_exceeded_is_inconclusive_not_a_pass() {
    let events: Vec<Event> = (0..20)
        .map(|i| done(i, "k", put(&i.to_string()), 0, 100, Outcome::Written))
        .chain([done(99, "k", Op::Get, 200, 210, read(Some("7")))])
        .collect();
    let history = History::from_events(events);
    assert_eq!(check(&history), Ok(()));
    match check_with_budget(&history, 5) {
        Err(CheckError::Inconclusive { key, limit }) => {
            assert_eq!(key, b"k");
            assert_eq!(limit, LimitHit::Steps(5));
        }
        other => panic!("expected inconclusive, got {other:?}"),
    }
}

#[test]
fn a_violation_outranks_an_inconclusive_key() {
    let mut events: Vec<Event> = (0..20)
        .map(|i| done(i, "a", put(&i.to_string()), 0, 100, Outcome::Written))
        .collect();
    events.push(done(0, "b", put("1"), 0, 1, Outcome::Written));
    events.push(done(1, "b", Op::Get, 2, 3, read(None)));
    let history = History::from_events(events);
    let result = check_with_budget(&history, 15);
    assert!(
        matches!(&result, Err(CheckError::NotLinearizable(v)) if v.key == b"b"),
        "{result:?}"
    );
}

#[test]
fn mismatched_outcome_is_a_malformed_history() {
    let result = verdict(vec![done(0, "k", Op::Get, 0, 1, Outcome::Written)]);
    assert!(
        matches!(result, Err(CheckError::Malformed { .. })),
        "{result:?}"
    );
    let mut backwards = done(0, "k", put("1"), 10, 1, Outcome::Written);
    assert!(matches!(
        verdict(vec![backwards.clone()]),
        Err(CheckError::Malformed { .. })
    ));
    backwards.complete = None;
    assert!(matches!(
        verdict(vec![backwards]),
        Err(CheckError::Malformed { .. })
    ));
}
