//! Idle shards hibernate: no ticks, no heartbeats, no wake-ups while nothing happens.
//!
//! A host holds a replica of many shards, and an awake Raft group costs CPU when idle: its
//! timer fires every tick and its leader heartbeats every follower every heartbeat interval.
//! So, as TiKV's hibernate regions do, a group whose leader has seen nothing to do for
//! [`Hibernation::idle_ticks_needed`] ticks goes to sleep:
//!
//! 1. The leader, idle (every member has its whole log, everything is committed and handed to
//!    the state machine, no read, change, transfer or persist in flight), asks a ReadIndex
//!    round whose context is [`HIBERNATE_CONTEXT`] and a round number. raft-rs sends it to
//!    every member as a heartbeat carrying that context.
//! 2. A follower that gets such a heartbeat from the leader of its term steps it as usual
//!    (its answer carries the context back) and stops ticking.
//! 3. The leader stops ticking once every member has answered that round. A member that does
//!    not answer (down, partitioned) keeps the leader awake; it retries after the next idle
//!    stretch.
//!
//! A sleeping replica wakes, and ticks again, on any Raft message from a member of its group
//! but those two and the routine ones of an idle group (a plain heartbeat from its leader, any
//! heartbeat's answer, in its term): a candidate's vote request wakes the leader, whose next
//! heartbeat settles the candidate. It also wakes on a step that changed its term, role or
//! leader, a request, an admin request, or the loss of the Raft link to its leader's host
//! ([`crate::peer::links::PeerLinks::subscribe_lost`]; QUIC's idle timeout notices a dead or
//! paused host within seconds), after which its election timer runs again and a new leader is
//! elected if the old one is gone. A follower that wakes for any reason but a message from its
//! leader sends the leader a wake-up ([`WAKE_CONTEXT`]) so that the leader heartbeats again
//! before the follower's election timer runs out: without it, two followers woken together
//! (a request each) could elect a new leader while the old one slept.
//!
//! Sleeping is safe because it only stops clocks. A follower that does not tick keeps
//! refusing votes to other candidates (raft-rs' check-quorum lease) for as long as it sleeps,
//! which only delays an election. A sleeping leader's read lease is not renewed, so it runs
//! out in real time and later reads go through a quorum round again (the hibernate round
//! itself never renews it: its reads queue never sees that context).

use std::collections::BTreeSet;

use raft::eraftpb::{Message, MessageType};

/// What a hibernate round's ReadIndex context starts with; the round number follows. Read
/// rounds of [`super::reads::ReadQueue`] have 8-byte contexts, so the two never mix.
pub const HIBERNATE_CONTEXT: &[u8] = b"shardkv/hibernate/";

/// The context of a follower's wake-up to its sleeping leader: a heartbeat answer, which
/// raft-rs takes as a sign of life and otherwise ignores (no read round has this context).
pub const WAKE_CONTEXT: &[u8] = b"shardkv/wake";

/// What an inbound Raft message means for hibernation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A leader's heartbeat asking its followers to sleep.
    SleepRequest,
    /// A follower's answer to that heartbeat, for round `round`.
    SleepAnswer { round: u64 },
    /// What an idle group still exchanges: a heartbeat without context, any heartbeat's
    /// answer. It wakes no one when it comes in the replica's term.
    Routine,
    /// Anything else: activity (a wake-up among it).
    Activity,
}

impl Signal {
    /// Classifies `m`.
    pub fn of(m: &Message) -> Self {
        let context = m.get_context();
        let round = context
            .strip_prefix(HIBERNATE_CONTEXT)
            .and_then(|r| <[u8; 8]>::try_from(r).ok())
            .map(u64::from_be_bytes);
        match (m.get_msg_type(), round) {
            (MessageType::MsgHeartbeat, Some(_)) => Signal::SleepRequest,
            (MessageType::MsgHeartbeatResponse, Some(round)) => Signal::SleepAnswer { round },
            (MessageType::MsgHeartbeat, None) if context.is_empty() => Signal::Routine,
            (MessageType::MsgHeartbeatResponse, None) if context != WAKE_CONTEXT => Signal::Routine,
            _ => Signal::Activity,
        }
    }

    /// A follower's wake-up to its leader `to` in `term`, carrying its `commit`.
    pub fn wake_up(from: u64, to: u64, term: u64, commit: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeatResponse);
        m.from = from;
        m.to = to;
        m.term = term;
        m.commit = commit;
        m.set_context(WAKE_CONTEXT.to_vec().into());
        m
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Ticking; the leader has been idle for this many ticks in a row.
    Awake { idle_ticks: usize },
    /// The leader asked round `round`; `waiting` are the members that have not answered,
    /// `ticks` the ticks since it asked.
    Asking {
        round: u64,
        waiting: BTreeSet<u64>,
        ticks: usize,
    },
    /// Not ticking.
    Asleep,
}

/// One replica's hibernation state; see the module docs.
#[derive(Debug)]
pub struct Hibernation {
    /// Off (`[raft] hibernate = false`): never asks to sleep (it still sleeps when told).
    enabled: bool,
    phase: Phase,
    last_round: u64,
    idle_ticks_needed: usize,
}

/// What the leader's tick decided.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaderTick {
    /// Keep ticking.
    Stay,
    /// Ask the members to sleep: a ReadIndex round with this context.
    Ask(Vec<u8>),
    /// No other member to ask: sleep now.
    Sleep,
}

impl Hibernation {
    /// Awake; a leader asks its group to sleep after `idle_ticks_needed` idle ticks, if
    /// `enabled`.
    pub fn new(enabled: bool, idle_ticks_needed: usize) -> Self {
        Hibernation {
            enabled,
            phase: Phase::Awake { idle_ticks: 0 },
            last_round: 0,
            idle_ticks_needed: idle_ticks_needed.max(1),
        }
    }

    /// Whether the replica is asleep (its ticks stopped).
    pub fn is_asleep(&self) -> bool {
        self.phase == Phase::Asleep
    }

    /// A leader's tick: `idle` says whether it has nothing in flight; `members` are the other
    /// voters of its group. Learners never campaign, so their clocks do not matter; raft-rs
    /// heartbeats them with the round too, unless the leader is the only voter.
    pub fn leader_tick(&mut self, idle: bool, members: BTreeSet<u64>) -> LeaderTick {
        if !idle || !self.enabled {
            self.phase = Phase::Awake { idle_ticks: 0 };
            return LeaderTick::Stay;
        }
        match &mut self.phase {
            Phase::Awake { idle_ticks } => {
                *idle_ticks += 1;
                if *idle_ticks < self.idle_ticks_needed {
                    return LeaderTick::Stay;
                }
                if members.is_empty() {
                    self.phase = Phase::Asleep;
                    return LeaderTick::Sleep;
                }
                self.last_round += 1;
                self.phase = Phase::Asking {
                    round: self.last_round,
                    waiting: members,
                    ticks: 0,
                };
                let mut context = HIBERNATE_CONTEXT.to_vec();
                context.extend_from_slice(&self.last_round.to_be_bytes());
                LeaderTick::Ask(context)
            }
            Phase::Asking { ticks, .. } => {
                *ticks += 1;
                if *ticks >= self.idle_ticks_needed {
                    // Someone did not answer: stay awake, ask again after the next idle stretch.
                    self.phase = Phase::Awake { idle_ticks: 0 };
                }
                LeaderTick::Stay
            }
            Phase::Asleep => LeaderTick::Stay,
        }
    }

    /// The leader heard `from`'s answer to round `round`; whether every member has now
    /// answered, so it may sleep.
    pub fn answered(&mut self, from: u64, round: u64) -> bool {
        let Phase::Asking {
            round: asked,
            waiting,
            ..
        } = &mut self.phase
        else {
            return false;
        };
        if *asked != round {
            return false;
        }
        waiting.remove(&from);
        waiting.is_empty()
    }

    /// Stops the clock (a follower told to sleep, or a leader whose members all answered).
    pub fn fall_asleep(&mut self) {
        self.phase = Phase::Asleep;
    }

    /// A message arrived: a sleeping replica wakes (with the idle count at zero); an awake
    /// one keeps counting, since routine traffic (heartbeats and their answers) is what an
    /// idle group still exchanges. Whether it was asleep (so its ticks must start again).
    pub fn wake(&mut self) -> bool {
        let was_asleep = self.is_asleep();
        if was_asleep {
            self.phase = Phase::Awake { idle_ticks: 0 };
        }
        was_asleep
    }

    /// The replica's role changed: a round it was asking is void.
    pub fn forget_round(&mut self) {
        if matches!(self.phase, Phase::Asking { .. }) {
            self.phase = Phase::Awake { idle_ticks: 0 };
        }
    }

    /// Work arrived (a request, an admin change): awake, the idle count starts over and a
    /// round being asked is dropped. Whether it was asleep.
    pub fn busy(&mut self) -> bool {
        let was_asleep = self.is_asleep();
        self.phase = Phase::Awake { idle_ticks: 0 };
        was_asleep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn message(kind: MessageType, context: &[u8]) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.set_context(context.to_vec().into());
        m
    }

    fn ask(h: &mut Hibernation, ids: &[u64]) -> Vec<u8> {
        loop {
            match h.leader_tick(true, members(ids)) {
                LeaderTick::Stay => continue,
                LeaderTick::Ask(context) => return context,
                LeaderTick::Sleep => panic!("asleep without asking"),
            }
        }
    }

    #[test]
    fn a_leader_asks_after_the_idle_ticks_and_sleeps_once_every_member_answered() {
        let mut h = Hibernation::new(true, 3);
        assert_eq!(h.leader_tick(true, members(&[2, 3])), LeaderTick::Stay);
        assert_eq!(h.leader_tick(true, members(&[2, 3])), LeaderTick::Stay);
        let LeaderTick::Ask(context) = h.leader_tick(true, members(&[2, 3])) else {
            panic!("no round after 3 idle ticks");
        };
        let Signal::SleepAnswer { round } =
            Signal::of(&message(MessageType::MsgHeartbeatResponse, &context))
        else {
            panic!("the answer is not recognised");
        };
        assert!(!h.answered(2, round));
        assert!(!h.answered(2, round), "one member twice is still one");
        assert!(h.answered(3, round));
        h.fall_asleep();
        assert!(h.is_asleep());
        assert!(h.wake());
        assert!(!h.wake(), "waking twice restarts the clock once");
    }

    #[test]
    fn messages_keep_the_idle_count_and_work_restarts_it() {
        let mut h = Hibernation::new(true, 3);
        assert_eq!(h.leader_tick(true, members(&[2])), LeaderTick::Stay);
        assert_eq!(h.leader_tick(true, members(&[2])), LeaderTick::Stay);
        assert!(!h.wake(), "a heartbeat's answer while awake");
        assert!(matches!(
            h.leader_tick(true, members(&[2])),
            LeaderTick::Ask(_)
        ));
        assert!(!h.wake(), "routine traffic while asking");
        assert!(!h.busy(), "a request while asking");
        assert_eq!(h.leader_tick(true, members(&[2])), LeaderTick::Stay);
        assert_eq!(h.leader_tick(true, members(&[2])), LeaderTick::Stay);
        assert!(matches!(
            h.leader_tick(true, members(&[2])),
            LeaderTick::Ask(_)
        ));
        h.fall_asleep();
        assert!(h.busy(), "a request wakes a sleeper");
        assert!(!h.is_asleep());
    }

    #[test]
    fn activity_resets_the_idle_count_and_cancels_a_round() {
        let mut h = Hibernation::new(true, 2);
        assert_eq!(h.leader_tick(true, members(&[2])), LeaderTick::Stay);
        assert_eq!(h.leader_tick(false, members(&[2])), LeaderTick::Stay);
        assert_eq!(h.leader_tick(true, members(&[2])), LeaderTick::Stay);
        let context = ask(&mut h, &[2]);
        assert_eq!(h.leader_tick(false, members(&[2])), LeaderTick::Stay);
        let Signal::SleepAnswer { round } =
            Signal::of(&message(MessageType::MsgHeartbeatResponse, &context))
        else {
            panic!("the answer is not recognised");
        };
        assert!(!h.answered(2, round), "a cancelled round is not counted");
    }

    #[test]
    fn a_round_nobody_completes_runs_out_and_a_new_one_is_asked() {
        let mut h = Hibernation::new(true, 2);
        let first = ask(&mut h, &[2, 3]);
        let round_of = |c: &[u8]| match Signal::of(&message(MessageType::MsgHeartbeatResponse, c)) {
            Signal::SleepAnswer { round } => round,
            other => panic!("{other:?}"),
        };
        assert!(!h.answered(2, round_of(&first)));
        let second = ask(&mut h, &[2, 3]);
        assert_ne!(first, second);
        assert!(!h.answered(3, round_of(&first)), "an old round's answer");
        assert!(!h.answered(2, round_of(&second)));
        assert!(h.answered(3, round_of(&second)));
    }

    #[test]
    fn a_role_change_voids_the_round_being_asked() {
        let mut h = Hibernation::new(true, 1);
        let context = ask(&mut h, &[2]);
        h.forget_round();
        let Signal::SleepAnswer { round } =
            Signal::of(&message(MessageType::MsgHeartbeatResponse, &context))
        else {
            panic!("the answer is not recognised");
        };
        assert!(!h.answered(2, round));
    }

    #[test]
    fn a_leader_that_may_not_hibernate_never_asks() {
        let mut h = Hibernation::new(false, 1);
        for _ in 0..10 {
            assert_eq!(h.leader_tick(true, members(&[2])), LeaderTick::Stay);
            assert_eq!(h.leader_tick(true, BTreeSet::new()), LeaderTick::Stay);
        }
        assert!(!h.is_asleep());
    }

    #[test]
    fn a_single_replica_sleeps_without_asking() {
        let mut h = Hibernation::new(true, 1);
        assert_eq!(h.leader_tick(true, BTreeSet::new()), LeaderTick::Sleep);
        assert!(h.is_asleep());
    }

    #[test]
    fn only_heartbeats_and_their_answers_with_the_context_are_signals() {
        let mut context = HIBERNATE_CONTEXT.to_vec();
        context.extend_from_slice(&7u64.to_be_bytes());
        assert_eq!(
            Signal::of(&message(MessageType::MsgHeartbeat, &context)),
            Signal::SleepRequest
        );
        assert_eq!(
            Signal::of(&message(MessageType::MsgHeartbeatResponse, &context)),
            Signal::SleepAnswer { round: 7 }
        );
        for (kind, context) in [
            (MessageType::MsgHeartbeat, Vec::new()),
            (MessageType::MsgHeartbeatResponse, Vec::new()),
            (
                MessageType::MsgHeartbeatResponse,
                7u64.to_be_bytes().to_vec(),
            ),
        ] {
            assert_eq!(
                Signal::of(&message(kind, &context)),
                Signal::Routine,
                "{kind:?}"
            );
        }
        let wake_up = Signal::wake_up(2, 1, 5, 9);
        assert_eq!(
            (wake_up.from, wake_up.to, wake_up.term, wake_up.commit),
            (2, 1, 5, 9)
        );
        for m in [
            wake_up,
            message(MessageType::MsgAppend, &context),
            // A read round's heartbeat: the leader is busy, followers must be awake.
            message(MessageType::MsgHeartbeat, &7u64.to_be_bytes()),
            message(MessageType::MsgHeartbeat, HIBERNATE_CONTEXT),
            message(MessageType::MsgRequestPreVote, &context),
        ] {
            let kind = m.get_msg_type();
            assert_eq!(Signal::of(&m), Signal::Activity, "{kind:?}");
        }
        for (kind, context) in [(MessageType::MsgAppendResponse, Vec::new())] {
            assert_eq!(
                Signal::of(&message(kind, &context)),
                Signal::Activity,
                "{kind:?}"
            );
        }
    }
}
