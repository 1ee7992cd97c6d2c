use super::*;

const PARENT: ShardId = 1;
const CHILD: ShardId = 7;

/// The parent's route by a map from before the split: voters 1, 2, 3.
fn parent_route() -> Route {
    Route {
        shard: PARENT,
        candidates: vec![1, 2, 3],
    }
}

/// The child's route by the map that finished the split: the parent's voters.
fn child_route() -> Route {
    Route {
        shard: CHILD,
        candidates: vec![1, 2, 3],
    }
}

fn again(outcome: Outcome) -> Step {
    match outcome {
        Outcome::Again(step) => step,
        other => panic!("expected another attempt, got {other:?}"),
    }
}

fn done_leader(outcome: Outcome) -> (ShardId, HostId) {
    match outcome {
        Outcome::Done { leader, .. } => leader,
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[test]
fn a_request_starts_at_the_cached_leader_else_the_first_candidate() {
    assert_eq!(Retry::new(parent_route(), Some(2)).target(), 2);
    assert_eq!(Retry::new(parent_route(), None).target(), 1);
}

#[test]
fn a_success_remembers_the_leader_under_the_routed_shard() {
    let mut retry = Retry::new(parent_route(), Some(2));
    assert_eq!(done_leader(retry.on_reply(Response::Ok)), (PARENT, 2));
}

#[test]
fn wrong_shard_retries_the_same_host_at_once_with_a_background_refresh() {
    let mut retry = Retry::new(parent_route(), Some(2));
    let step = again(retry.on_reply(Response::WrongShard {
        shard: PARENT,
        epoch: 5,
    }));
    assert_eq!(
        step,
        Step {
            remember: None,
            refresh: Refresh::Background,
            pause: Duration::ZERO,
        }
    );
    assert_eq!(
        retry.target(),
        2,
        "the host routes the key to the child now"
    );
}

#[test]
fn repeated_wrong_shard_backs_off_from_the_split_minimum_to_its_maximum() {
    let mut retry = Retry::new(parent_route(), Some(2));
    let pauses: Vec<Duration> = (0..8)
        .map(|_| {
            again(retry.on_reply(Response::WrongShard {
                shard: PARENT,
                epoch: 5,
            }))
            .pause
        })
        .collect();
    assert_eq!(
        pauses,
        [0, 20, 40, 80, 160, 320, 500, 500].map(Duration::from_millis),
        "never a spin, never past the maximum"
    );
    assert_eq!(SPLIT_WAIT_MIN, pauses[1]);
    assert_eq!(SPLIT_WAIT_MAX, pauses[7]);
}

#[test]
fn after_wrong_shard_only_a_map_of_a_later_epoch_routes_the_key() {
    let mut retry = Retry::new(parent_route(), Some(2));
    assert!(retry.routable_by(3), "no shard gave the slot up yet");
    let _ = retry.on_reply(Response::WrongShard {
        shard: PARENT,
        epoch: 5,
    });
    assert!(!retry.routable_by(4));
    assert!(!retry.routable_by(5), "the epoch of the split itself");
    assert!(retry.routable_by(6));
    let _ = retry.on_reply(Response::WrongShard {
        shard: PARENT,
        epoch: 3,
    });
    assert!(
        retry.routable_by(6),
        "an older epoch in a late reply does not take the requirement back"
    );
}

#[test]
fn a_reroute_after_a_split_goes_to_the_childs_cached_leader() {
    let mut retry = Retry::new(parent_route(), Some(2));
    let _ = retry.on_reply(Response::WrongShard {
        shard: PARENT,
        epoch: 5,
    });
    retry.reroute(child_route(), Some(3));
    assert_eq!((retry.shard(), retry.target()), (CHILD, 3));
    assert_eq!(
        done_leader(retry.on_reply(Response::Ok)),
        (CHILD, 3),
        "the child's leader, not the parent's"
    );
}

#[test]
fn a_reroute_without_a_cached_leader_stays_on_a_host_of_the_new_shard() {
    let mut retry = Retry::new(parent_route(), Some(2));
    retry.reroute(child_route(), None);
    assert_eq!(
        retry.target(),
        2,
        "the host the request was at holds the child"
    );
    let mut retry = Retry::new(parent_route(), Some(2));
    retry.reroute(
        Route {
            shard: CHILD,
            candidates: vec![4, 5],
        },
        Some(9),
    );
    assert_eq!(
        retry.target(),
        4,
        "neither the hint nor the host is a replica"
    );
}

#[test]
fn a_split_after_a_reroute_is_retried_at_once_again() {
    let mut retry = Retry::new(parent_route(), Some(2));
    for _ in 0..3 {
        let _ = retry.on_reply(Response::WrongShard {
            shard: PARENT,
            epoch: 5,
        });
    }
    retry.reroute(child_route(), Some(2));
    let step = again(retry.on_reply(Response::WrongShard {
        shard: CHILD,
        epoch: 9,
    }));
    assert_eq!(step.pause, Duration::ZERO);
}

#[test]
fn a_hint_from_another_shard_is_remembered_under_that_shard_and_followed() {
    let mut retry = Retry::new(parent_route(), Some(2));
    let step = again(retry.on_reply(Response::NotLeader {
        shard: CHILD,
        leader: Some(3),
    }));
    assert_eq!(
        step,
        Step {
            remember: Some((CHILD, 3)),
            refresh: Refresh::Background,
            pause: Duration::ZERO,
        },
        "the map is stale, but the host routes the key to the child anyway"
    );
    assert_eq!(retry.target(), 3);
    assert_eq!(retry.shard(), PARENT, "the route stays until a newer map");
    assert_eq!(
        done_leader(retry.on_reply(Response::Ok)),
        (CHILD, 3),
        "the parent's cached leader is left alone"
    );
}

#[test]
fn following_a_childs_hint_keeps_it_across_the_reroute() {
    let mut retry = Retry::new(parent_route(), Some(2));
    let _ = retry.on_reply(Response::NotLeader {
        shard: CHILD,
        leader: Some(3),
    });
    retry.reroute(child_route(), Some(1));
    assert_eq!(retry.target(), 3, "the hint is newer than the cache read");
}

#[test]
fn another_shard_without_a_leader_refreshes_in_the_background_and_rotates() {
    let mut retry = Retry::new(parent_route(), Some(2));
    let step = again(retry.on_reply(Response::NotLeader {
        shard: CHILD,
        leader: None,
    }));
    assert_eq!(step.refresh, Refresh::Background);
    assert_eq!(step.pause, BACKOFF_MIN);
    assert_eq!(retry.target(), 3);
    assert_eq!(done_leader(retry.on_reply(Response::Ok)), (PARENT, 3));
}

#[test]
fn a_leader_hint_is_followed_at_once_twice_then_after_a_pause() {
    let mut retry = Retry::new(parent_route(), Some(1));
    let mut pauses = Vec::new();
    for l in [2, 3, 1, 2] {
        let step = again(retry.on_reply(Response::NotLeader {
            shard: PARENT,
            leader: Some(l),
        }));
        assert_eq!(step.remember, Some((PARENT, l)));
        assert_eq!(step.refresh, Refresh::No);
        assert_eq!(retry.target(), l);
        pauses.push(step.pause);
    }
    assert_eq!(
        pauses,
        [0, 0, 10, 0].map(Duration::from_millis),
        "hosts pointing at each other are not asked in a tight loop"
    );
}

#[test]
fn a_leader_the_map_does_not_show_waits_for_a_refresh() {
    let mut retry = Retry::new(parent_route(), Some(1));
    let step = again(retry.on_reply(Response::NotLeader {
        shard: PARENT,
        leader: Some(4),
    }));
    assert_eq!(step.refresh, Refresh::Wait);
    assert_eq!(retry.target(), 4);
}

#[test]
fn no_replica_here_follows_a_hint_twice_then_rotates_after_a_pause() {
    let mut retry = Retry::new(parent_route(), Some(1));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let step = again(retry.on_reply(Response::NoReplicaHere {
            shard: PARENT,
            hosts: vec![4, 5],
        }));
        assert_eq!(step.refresh, Refresh::Wait, "the replica moved: look again");
        seen.push((retry.target(), step.pause));
    }
    assert_eq!(
        seen,
        vec![(4, Duration::ZERO), (5, Duration::ZERO), (2, BACKOFF_MIN)]
    );
}

#[test]
fn lost_attempts_rotate_through_the_candidates_with_a_doubling_pause() {
    let mut retry = Retry::new(parent_route(), Some(1));
    let seen: Vec<(HostId, Duration)> = (0..8)
        .map(|i| {
            let step = retry.on_lost(format!("attempt {i} lost"));
            (retry.target(), step.pause)
        })
        .collect();
    let targets: Vec<HostId> = seen.iter().map(|(t, _)| *t).collect();
    let pauses: Vec<Duration> = seen.iter().map(|(_, p)| *p).collect();
    assert_eq!(targets, [2, 3, 1, 2, 3, 1, 2, 3]);
    assert_eq!(
        pauses,
        [10, 20, 40, 80, 160, 320, 500, 500].map(Duration::from_millis)
    );
    assert_eq!(retry.into_last(), "attempt 7 lost");
}

#[test]
fn a_reply_that_retrying_cannot_change_is_final() {
    let mut retry = Retry::new(parent_route(), Some(1));
    assert!(matches!(
        retry.on_reply(Response::Invalid("empty key".into())),
        Outcome::Fail(ClientError::Invalid(_))
    ));
}
