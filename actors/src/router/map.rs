//! The router's side of the live cluster map: map reads and changes go to the local replica
//! of the meta group, the map the router routes by is answered from here (clients load their
//! routes from it), and the host's map watcher hands the router each newer map.

use actix::prelude::*;
use shardkv_transport::cluster_map::{MAP_KEY, META_SHARD};
use shardkv_transport::wire::{MapRequest, Op, ReadConsistency, Request, Response};
use shardkv_transport::{ClusterMap, HostId, MapError};
use tracing::info;

use super::RouterActor;
use crate::messages::ClientRequest;
use crate::replica::transfer::SetPreferredLeader;

/// To the RouterActor: read or change the live cluster map through the local replica of the
/// meta group, or answer the map this router routes by (see
/// [`shardkv_transport::wire::AdminRequest::Map`]).
#[derive(Message)]
#[rtype(result = "Response")]
pub struct MapOp(pub MapRequest);

impl Handler<MapOp> for RouterActor {
    type Result = ResponseFuture<Response>;

    fn handle(&mut self, msg: MapOp, _: &mut Self::Context) -> Self::Result {
        let op = match msg.0 {
            // No Raft round and no meta replica needed: any host answers from its own map.
            MapRequest::Current => {
                let resp = Response::Value(Some(self.settings.map.encode()));
                return Box::pin(async move { resp });
            }
            req => map_op(req),
        };
        let op = match op {
            Ok(op) => op,
            Err(resp) => return Box::pin(async move { resp }),
        };
        let meta = match self.local_replica(META_SHARD) {
            Ok(r) => r,
            Err(resp) => return Box::pin(async move { resp }),
        };
        let request = Request {
            client_id: 0,
            seq: 0,
            op,
        };
        let answer = ClientRequest::ask(&meta.requests, request);
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|| super::stopped(META_SHARD, &"it stopped before answering"))
        })
    }
}

/// To the RouterActor: a map read from the meta group. Taken only if its epoch is later
/// than the one the router routes by: maps never go back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetMap(pub ClusterMap);

impl Handler<SetMap> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: SetMap, _: &mut Self::Context) {
        let known = self.settings.map.epoch();
        if msg.0.epoch() > known {
            info!(
                from = known,
                to = msg.0.epoch(),
                "routing by a newer cluster map"
            );
            self.settings.map = msg.0;
            self.push_listed_incarnations();
            self.push_preferred_leaders();
        }
    }
}

impl RouterActor {
    /// Hands the incarnations the map lists to the peer admission check (the map rules over
    /// first contact: see [`crate::incarnations`]).
    pub(super) fn push_listed_incarnations(&mut self) {
        let listed: Vec<(HostId, u64)> = self
            .settings
            .map
            .hosts()
            .iter()
            .map(|(id, h)| (*id, h.incarnation))
            .collect();
        self.peers.set_listed(listed);
    }

    /// Tells every local replica which host the map prefers to lead its shard.
    pub(super) fn push_preferred_leaders(&self) {
        let preferred = self.settings.map.preferred_leaders();
        for (shard, replica) in &self.local {
            if let Some(&host) = preferred.get(shard) {
                replica.preferred.do_send(SetPreferredLeader { host });
            }
        }
    }
}

/// The meta group operation for a map request. A change must carry a valid map whose epoch
/// is past the one it replaces: the map's epoch never goes back, so a client or host that
/// caches maps by epoch never takes an old one for new. [`MapRequest::Current`] is no meta
/// group operation (the router answers it from its own map) and is `Invalid` here.
pub(super) fn map_op(req: MapRequest) -> Result<Op, Response> {
    let key = MAP_KEY.to_vec();
    let (expected, new) = match req {
        MapRequest::Read => {
            return Ok(Op::Get {
                key,
                consistency: ReadConsistency::Linearizable,
            })
        }
        MapRequest::Current => {
            return Err(Response::Invalid(
                "the current map is answered by the router, not the meta group".into(),
            ))
        }
        MapRequest::Cas { expected, new } => (expected, new),
    };
    let invalid = |e: MapError| Response::Invalid(format!("cluster map change refused: {e}"));
    let next = ClusterMap::decode(&new).map_err(invalid)?;
    let previous = match &expected {
        Some(bytes) => ClusterMap::decode(bytes).map_err(invalid)?.epoch(),
        None => 1,
    };
    if next.epoch() <= previous {
        return Err(Response::Invalid(format!(
            "cluster map change refused: epoch {} does not follow {previous}",
            next.epoch()
        )));
    }
    Ok(Op::Cas {
        key,
        expected,
        new: Some(new),
    })
}
