//! Unit tests of what shardkv answers become for a Redis client.

use shardkv_transport::wire::{LimitKind, UpdateOutcome};

use super::*;

/// Hosts 1..=3 holding shards 1..=3; hosts 1 and 2 have RESP addresses.
fn topology() -> Topology {
    super::super::topology::test_topology(&[1, 2])
}

#[test]
fn moved_names_the_slot_and_the_leaders_resp_address() {
    assert_eq!(
        moved(&topology(), 15495, 2),
        Reply::Error("MOVED 15495 127.0.0.1:6102".into())
    );
}

#[test]
fn a_leader_without_a_resp_address_is_clusterdown_not_a_redirect() {
    let Reply::Error(text) = moved(&topology(), 7, 3) else {
        panic!("an error")
    };
    assert!(text.starts_with("CLUSTERDOWN "), "{text}");
    assert!(text.contains("host 3"), "{text}");
}

#[test]
fn final_answers_pass_and_the_rest_become_redis_errors() {
    assert_eq!(answer(Response::Ok, true), Ok(Response::Ok));
    let updated = Response::Updated(vec![UpdateOutcome::default()]);
    assert_eq!(answer(updated.clone(), true), Ok(updated));
    let cases = [
        (
            Response::NotLeader {
                shard: 2,
                leader: None,
            },
            "TRYAGAIN shard 2 is electing a leader",
        ),
        (
            Response::Unavailable("no quorum".into()),
            "TRYAGAIN no quorum",
        ),
        (
            Response::WrongShard { shard: 1, epoch: 9 },
            "TRYAGAIN shard 1 no longer owns the key as of map epoch 9",
        ),
        (
            Response::Invalid("value is not an integer or out of range".into()),
            "ERR value is not an integer or out of range",
        ),
        (Response::Internal("disk".into()), "ERR internal: disk"),
        (
            Response::TooLarge {
                what: LimitKind::Value,
                len: 10,
                limit: 5,
            },
            "ERR value of 10 bytes exceeds the limit of 5 bytes",
        ),
    ];
    for (resp, text) in cases {
        assert_eq!(answer(resp, false), Err(Reply::Error(text.into())));
    }
}

#[test]
fn a_write_of_unknown_outcome_is_no_tryagain_that_clients_would_retry_on_their_own() {
    let timed_out = Response::Unavailable("not committed within 3s; retry".into());
    let Err(Reply::Error(text)) = answer(timed_out, true) else {
        panic!("an error reply")
    };
    assert!(text.starts_with("ERR outcome unknown"), "{text}");
    let stepped_down = Response::LeaderLost {
        shard: 2,
        leader: Some(3),
    };
    let Err(Reply::Error(text)) = answer(stepped_down, true) else {
        panic!("an error reply")
    };
    assert!(text.starts_with("ERR outcome unknown"), "no MOVED: {text}");
    let no_leader = Response::NotLeader {
        shard: 2,
        leader: None,
    };
    let Err(Reply::Error(text)) = answer(no_leader, true) else {
        panic!("an error reply")
    };
    assert!(text.starts_with("TRYAGAIN "), "{text}");
}
