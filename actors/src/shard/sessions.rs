//! Client sessions: the rules that make a retried write apply exactly once and keep the
//! session table bounded.
//!
//! A client numbers its writes within a session (`seq`). For each session the shard keeps the
//! last applied seq, the log time of that write and the reply it got, written in the same
//! transaction as the write itself, so a retry that reaches a new leader (or a host after a
//! crash) is answered with the first reply instead of being applied twice. Both rules run
//! inside the apply step over log data only, so every replica keeps the same sessions; time
//! is the shard's log clock ([`super::LogClock`]), which no leader's clock offset can move
//! forward, so a live session is never forgotten early.

use shardkv_transport::wire::Response;

use super::effects::Effects;
use super::view::AppliedView;
use crate::error::ActorError;
use crate::schema::session_record::SessionRecord;

/// How long a client session may stay idle (in log time) before it is forgotten. A client
/// retries a write only within its deadline (at most `shardkv_client::DEADLINE_MAX`, a
/// minute), so a session this old can have no retry in flight; forgetting it keeps the table
/// bounded by the clients active recently.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// Sessions are swept at every log index divisible by this.
pub const SESSION_SWEEP_EVERY: u64 = 4096;

/// A session's last activity, all that a sweep needs to judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionActivity {
    pub client: u64,
    pub last_ms: u64,
}

/// Dedup of a retried write: the reply to write `seq` (non-zero) of a client whose session is
/// `session`, if that write was already applied; `None` if it is new and must be applied.
/// The latest write gets its first reply again; an older one cannot be answered truthfully
/// any more and is told so.
pub fn retried_reply(session: Option<&SessionRecord>, seq: u64) -> Option<Response> {
    let session = session?;
    if seq > session.seq {
        return None;
    }
    Some(match &session.reply {
        Some(reply) if seq == session.seq => reply.clone(),
        _ => superseded(),
    })
}

/// The answer to a retry the session cannot answer truthfully any more.
fn superseded() -> Response {
    Response::Unavailable("superseded by a later write of this session".into())
}

/// Whether the apply step sweeps idle sessions before the entry at `index`.
pub fn sweeps_at(index: u64) -> bool {
    index.is_multiple_of(SESSION_SWEEP_EVERY)
}

/// Whether a session last written at `last_ms` is idle past [`SESSION_TTL_MS`] at `now_ms`.
pub fn is_idle(last_ms: u64, now_ms: u64) -> bool {
    last_ms.saturating_add(SESSION_TTL_MS) < now_ms
}

/// Expiry of idle sessions: forgets (in `effects`) every session idle past
/// [`SESSION_TTL_MS`] as of log time `now_ms`, and returns how many. It judges the logical
/// session table (this batch's effects over `view`), never what happens to be on disk yet, so
/// every replica forgets the same sessions however far its storage lags; later entries of the
/// batch see the forgotten sessions gone.
///
/// A session stamped ahead of the log clock was stamped with a leader's wall clock by an
/// earlier version; its age cannot be told, so it is stamped `now_ms` (keeping its seq and
/// reply) and forgotten one TTL later, never early.
pub fn expire_idle(
    now_ms: u64,
    view: &impl AppliedView,
    effects: &mut Effects,
) -> Result<usize, ActorError> {
    // A session this batch already wrote (or forgot) is judged by that record.
    let stored = view.session_activity(&|client| effects.has_session(client))?;
    let planned = effects
        .sessions()
        .filter_map(|(client, s)| s.map(|s| (client, s.last_ms)));
    let mut idle = Vec::new();
    let mut ahead = Vec::new();
    for (client, last_ms) in stored
        .into_iter()
        .map(|a| (a.client, a.last_ms))
        .chain(planned)
    {
        if last_ms > now_ms {
            ahead.push(client);
        } else if is_idle(last_ms, now_ms) {
            idle.push(client);
        }
    }
    for client in &idle {
        effects.forget_session(*client);
    }
    for client in ahead {
        if let Some(s) = effects.session(view, client)? {
            let reply = s.reply.unwrap_or_else(superseded);
            effects.record_session(client, s.seq, now_ms, reply)?;
        }
    }
    Ok(idle.len())
}

/// A session, tersely, for tests.
#[cfg(test)]
pub fn session(seq: u64, last_ms: u64, reply: Option<Response>) -> SessionRecord {
    SessionRecord {
        seq,
        last_ms,
        reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::view::MemoryView;

    #[test]
    fn a_write_newer_than_the_session_is_applied() {
        assert_eq!(retried_reply(None, 1), None);
        assert_eq!(
            retried_reply(Some(&session(3, 0, Some(Response::Ok))), 4),
            None
        );
    }

    #[test]
    fn a_retry_of_the_last_write_gets_its_first_reply() {
        let first = Response::CasFailed { current: None };
        assert_eq!(
            retried_reply(Some(&session(3, 0, Some(first.clone()))), 3),
            Some(first)
        );
    }

    #[test]
    fn an_older_write_or_a_lost_reply_is_answered_as_superseded() {
        for (s, seq) in [
            (session(3, 0, Some(Response::Ok)), 2),
            (session(3, 0, None), 3),
        ] {
            assert!(
                matches!(retried_reply(Some(&s), seq), Some(Response::Unavailable(m)) if m.contains("superseded")),
                "{s:?} seq {seq}"
            );
        }
    }

    #[test]
    fn sweeps_run_at_fixed_log_indexes() {
        assert!(sweeps_at(0) && sweeps_at(SESSION_SWEEP_EVERY) && sweeps_at(3 * 4096));
        assert!(!sweeps_at(1) && !sweeps_at(SESSION_SWEEP_EVERY - 1));
    }

    #[test]
    fn a_session_is_idle_only_strictly_past_its_ttl() {
        assert!(!is_idle(1000, 1000 + SESSION_TTL_MS));
        assert!(is_idle(1000, 1001 + SESSION_TTL_MS));
        assert!(
            !is_idle(u64::MAX, u64::MAX),
            "no overflow at the end of time"
        );
    }

    #[test]
    fn expiry_forgets_idle_sessions_and_judges_the_batch_record_first() {
        let now = 10 * SESSION_TTL_MS;
        let mut view = MemoryView::default();
        view.sessions.insert(1, session(1, 0, None)); // idle, untouched: forgotten
        view.sessions.insert(2, session(1, now, None)); // live: kept
        view.sessions.insert(3, session(1, 0, None)); // idle on disk, rewritten by the batch
        let mut effects = Effects::new(1);
        effects.record_session(3, 2, now, Response::Ok).unwrap();
        // An idle record written earlier in the batch: forgotten.
        effects.record_session(4, 1, 0, Response::Ok).unwrap();

        let mut forgotten = vec![];
        assert_eq!(expire_idle(now, &view, &mut effects).unwrap(), 2);
        for client in 1..=4 {
            if effects.session(&view, client).unwrap().is_none() {
                forgotten.push(client);
            }
        }
        assert_eq!(forgotten, vec![1, 4]);
        // A second sweep finds nothing more: forgotten sessions are gone for the batch too.
        assert_eq!(expire_idle(now, &view, &mut effects).unwrap(), 0);
    }

    #[test]
    fn a_session_stamped_ahead_of_the_log_clock_is_restamped_not_forgotten() {
        // Written by a version that stamped sessions with a leader's wall clock.
        let wall = 1_700_000_000_000;
        let now = 3 * SESSION_TTL_MS;
        let mut view = MemoryView::default();
        view.sessions
            .insert(1, session(4, wall, Some(Response::CasOk)));
        view.sessions.insert(2, session(2, wall, None));
        let mut effects = Effects::new(1);
        assert_eq!(expire_idle(now, &view, &mut effects).unwrap(), 0);
        let kept = effects.session(&view, 1).unwrap();
        assert_eq!(kept, Some(session(4, now, Some(Response::CasOk))));
        // A retry of its last write is answered as it was before the restamp.
        let before = retried_reply(view.sessions.get(&2), 2);
        let after = retried_reply(effects.session(&view, 2).unwrap().as_ref(), 2);
        assert_eq!(after, before);

        // One TTL of log time later it is idle like any other.
        assert_eq!(
            expire_idle(now + SESSION_TTL_MS, &view, &mut effects).unwrap(),
            0
        );
        assert_eq!(
            expire_idle(now + SESSION_TTL_MS + 1, &view, &mut effects).unwrap(),
            2
        );
    }

    #[test]
    fn sessions_outlive_every_retry_a_client_may_send() {
        let deadline_max_ms = u64::try_from(shardkv_client::DEADLINE_MAX.as_millis()).unwrap();
        assert!(
            deadline_max_ms * 5 <= SESSION_TTL_MS,
            "a write retried at the end of the longest deadline must find its session"
        );
    }
}
