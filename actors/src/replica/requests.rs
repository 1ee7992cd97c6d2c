//! Client requests at the replica: reads by their consistency, writes as proposals.
//!
//! A stale read is served from whatever is applied; a lease read from the leader's state while
//! its lease holds; any other linearizable read joins the next ReadIndex round. A write becomes
//! a [`Command`] in the log and its reply waits in the ShardActor until it is applied.

use std::time::Instant;

use actix::prelude::*;
use shardkv_transport::wire::{Op, ReadConsistency, Request, Response};
use tokio::sync::oneshot;

use super::membership::is_joint;
use super::reads::PendingRead;
use super::ReplicaActor;
use crate::messages::{AwaitApply, ClientRequest, ProposeSplit, ReadAt, ReadKeys};
use crate::metrics::{metrics, ShardLabels};
use crate::shard::{leader_stamp_ms, Action, Command};

impl Handler<ClientRequest> for ReplicaActor {
    type Result = ();

    /// Takes the request in mailbox order (a write's place in the log); its reply is awaited
    /// off the actor, bounded by the request timeout.
    fn handle(&mut self, msg: ClientRequest, ctx: &mut Self::Context) {
        let rx = self.handle_request(msg.request, ctx);
        let timeout = self.settings.request_timeout;
        actix::spawn(async move {
            let resp = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(_)) => Response::Unavailable("request dropped by the replica; retry".into()),
                Err(_) => Response::Unavailable(format!("not committed within {timeout:?}; retry")),
            };
            let _ = msg.reply.send(resp);
        });
    }
}

impl Handler<ProposeSplit> for ReplicaActor {
    type Result = ResponseFuture<Response>;

    /// A split is a command in the shard's log like a write, with no session: a re-proposal
    /// after a crash finds the split done and changes nothing.
    /// Proposed only by a leader whose configuration is the split's voters, none joining or
    /// leaving: the new shard's group must be the hosts that hold the rows.
    fn handle(&mut self, msg: ProposeSplit, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let conf = self.conf_state();
        let mut voters = conf.voters.clone();
        voters.sort_unstable();
        let mut wanted = msg.0.voters.clone();
        wanted.sort_unstable();
        if self.is_leader() && (voters != wanted || !conf.learners.is_empty() || is_joint(&conf)) {
            let why = format!(
                "shard {} is changing its replicas (voters {voters:?}, learners {:?}), or they \
                 are not the split's {wanted:?}; split it once the change is done",
                self.shard, conf.learners
            );
            return Box::pin(async move { Response::Invalid(why) });
        }
        self.propose(0, 0, Action::Split(msg.0), tx, ctx);
        let timeout = self.settings.request_timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(_)) => Response::Unavailable("split dropped by the replica; retry".into()),
                Err(_) => {
                    Response::Unavailable(format!("split not applied within {timeout:?}; retry"))
                }
            }
        })
    }
}

impl ReplicaActor {
    fn handle_request(
        &mut self,
        req: Request,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        match req.op {
            Op::Get { key, consistency } => self.read(ReadKeys::One(key), consistency, tx, ctx),
            Op::GetMany { keys, consistency } => {
                self.read(ReadKeys::Many(keys), consistency, tx, ctx)
            }
            Op::Put { key, value } => {
                self.propose(req.client_id, req.seq, Action::Put { key, value }, tx, ctx)
            }
            Op::Delete { key } => {
                self.propose(req.client_id, req.seq, Action::Delete { key }, tx, ctx)
            }
            Op::Cas { key, expected, new } => {
                let action = Action::Cas { key, expected, new };
                self.propose(req.client_id, req.seq, action, tx, ctx)
            }
            Op::Update(updates) => {
                let value_bytes_max = self.settings.value_bytes_max;
                let action = Action::Update {
                    updates,
                    value_bytes_max,
                };
                self.propose(req.client_id, req.seq, action, tx, ctx)
            }
        }
        rx
    }

    fn read(
        &mut self,
        keys: ReadKeys,
        consistency: ReadConsistency,
        reply: oneshot::Sender<Response>,
        ctx: &mut Context<Self>,
    ) {
        if consistency == ReadConsistency::Stale {
            self.links.read_at.do_send(ReadAt {
                index: 0,
                keys,
                reply,
            });
            return;
        }
        // Wakes a follower too: its leader may be gone unnoticed.
        self.busy(ctx);
        if !self.is_leader() {
            let _ = reply.send(self.not_leader());
            return;
        }
        let now = Instant::now();
        if consistency == ReadConsistency::Lease
            && self.node.raft.commit_to_current_term()
            && self.lease.valid(now)
        {
            // Everything acknowledged so far is committed at or below this index.
            let index = self.node.raft.raft_log.committed;
            self.links.read_at.do_send(ReadAt { index, keys, reply });
            return;
        }
        // Joins the next ReadIndex round (asked when the mailbox has drained).
        self.reads.push(PendingRead {
            issued: now,
            keys,
            reply,
            deadline: now + self.settings.request_timeout,
        });
        self.schedule_drive(ctx);
    }

    fn propose(
        &mut self,
        client_id: u64,
        seq: u64,
        action: Action,
        reply: oneshot::Sender<Response>,
        ctx: &mut Context<Self>,
    ) {
        self.busy(ctx);
        if !self.is_leader() {
            let _ = reply.send(self.not_leader());
            return;
        }
        let cmd = Command {
            client_id,
            seq,
            time_ms: leader_stamp_ms(),
            action,
        };
        let data = match postcard::to_allocvec(&cmd) {
            Ok(d) => d,
            Err(e) => {
                let _ = reply.send(Response::Internal(format!("cannot encode command: {e}")));
                return;
            }
        };
        if let Err(e) = self.node.propose(vec![], data) {
            let _ = reply.send(Response::Unavailable(format!(
                "proposal dropped: {e}; retry"
            )));
            return;
        }
        let index = self.node.raft.raft_log.last_index();
        let term = self.node.raft.term;
        metrics()
            .raft_proposals
            .get_or_create(&ShardLabels { shard: self.shard })
            .inc();
        self.links
            .await_apply
            .do_send(AwaitApply { index, term, reply });
        self.schedule_drive(ctx);
    }
}
