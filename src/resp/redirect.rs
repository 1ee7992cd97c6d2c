//! What a shardkv answer means to a Redis client: a final answer is passed on, a shard
//! that moved is asked once more, a shard led elsewhere is redirected to with
//! `-MOVED slot ip:port` (the leader's RESP address) or, with `[resp] forward = true`,
//! forwarded to, and the rest become Redis error replies (`TRYAGAIN` while a shard elects a
//! leader or has no quorum, `ERR` for what the client must change).

use std::future::Future;
use std::sync::Arc;

use shardkv_actors::messages::ClientRequest;
use shardkv_transport::slot::{slot, Slot};
use shardkv_transport::wire::{Op, Request, Response};
use shardkv_transport::HostId;

use super::exec::Shared;
use super::reply::Reply;
use super::topology::Topology;

/// The answer to `op` once redirections are dealt with: a shard that moved is asked once
/// more, a shard led elsewhere is forwarded to (with `forward`) or redirected to.
pub async fn settle(
    shared: Arc<Shared>,
    client_id: u64,
    op: Op,
    first: impl Future<Output = Response>,
) -> Result<Response, Reply> {
    let key_slot = slot(op.key());
    let write = op.is_write();
    let mut resp = first.await;
    if matches!(resp, Response::WrongShard { .. }) {
        // The router's map or its replicas moved the slot meanwhile: one more try here.
        let again = Request {
            client_id,
            seq: 0,
            op: op.clone(),
        };
        resp = ClientRequest::ask(&shared.router, again)
            .await
            .unwrap_or_else(|| Response::Internal("router stopped before answering".into()));
    }
    let target = match &resp {
        Response::NotLeader {
            shard,
            leader: Some(leader),
        } if *leader != shared.topology.host() => {
            shared.topology.note_leader(*shard, *leader);
            *leader
        }
        Response::NoReplicaHere { shard, hosts } => {
            let picture = shared.topology.picture();
            let me = shared.topology.host();
            match picture
                .leader_of(*shard)
                .filter(|l| hosts.contains(l))
                .or_else(|| hosts.iter().copied().find(|h| *h != me))
                .filter(|h| *h != me)
            {
                Some(h) => h,
                None => return Err(error_reply(resp, write)),
            }
        }
        _ => return answer(resp, write),
    };
    if let Some(forwarder) = &shared.forward {
        return answer(forwarder.forward(op).await, write);
    }
    Err(moved(&shared.topology, key_slot, target))
}

/// `-MOVED slot ip:port` to `host`'s RESP address.
fn moved(topology: &Topology, key_slot: Slot, host: HostId) -> Reply {
    match topology.resp_addr(host) {
        // `ip:port` with a bare IPv6 address, as Redis writes it and clients split it (on
        // the last colon), and as `CLUSTER NODES` lists the host.
        Some(addr) => Reply::Error(format!("MOVED {key_slot} {}:{}", addr.ip(), addr.port())),
        None => Reply::Error(format!(
            "CLUSTERDOWN slot {key_slot} is served by host {host}, which has no resp address \
             in cluster.toml"
        )),
    }
}

/// A final answer: a value or acknowledgement, or the error reply it means (`write`: the
/// answer is to a write).
fn answer(resp: Response, write: bool) -> Result<Response, Reply> {
    match resp {
        Response::Value(_)
        | Response::Ok
        | Response::CasOk
        | Response::CasFailed { .. }
        | Response::Updated(_)
        | Response::Values(_) => Ok(resp),
        other => Err(error_reply(other, write)),
    }
}

/// The Redis error for `resp`. `TRYAGAIN` makes cluster clients retry on their own, so it is
/// answered only where nothing was applied, or for a read: a write that timed out or was
/// dropped with its leader may still commit, and a retried `INCR` would count twice.
fn error_reply(resp: Response, write: bool) -> Reply {
    match resp {
        Response::NotLeader { shard, leader: _ } => {
            Reply::Error(format!("TRYAGAIN shard {shard} is electing a leader"))
        }
        Response::NoReplicaHere { shard, .. } => {
            Reply::Error(format!("CLUSTERDOWN shard {shard} has no replica"))
        }
        Response::WrongShard { shard, epoch } => Reply::Error(format!(
            "TRYAGAIN shard {shard} no longer owns the key as of map epoch {epoch}"
        )),
        Response::Unavailable(m) if write => Reply::err(format!(
            "outcome unknown, the write may or may not have been applied: {m}"
        )),
        Response::LeaderLost { shard, .. } => Reply::err(format!(
            "outcome unknown, the write may or may not have been applied: the leader of \
             shard {shard} stepped down before it committed"
        )),
        Response::Unavailable(m) => Reply::Error(format!("TRYAGAIN {m}")),
        Response::TooLarge { what, len, limit } => Reply::err(format!(
            "{what} of {len} bytes exceeds the limit of {limit} bytes"
        )),
        Response::Invalid(m) => Reply::err(m),
        Response::Internal(m) => Reply::err(format!("internal: {m}")),
        other => unexpected(&other),
    }
}

/// The reply for an answer nothing else expects.
pub fn unexpected(resp: &Response) -> Reply {
    Reply::err(format!("internal: unexpected answer {resp:?}"))
}

#[cfg(test)]
mod tests;
