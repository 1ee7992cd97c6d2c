//! The live cluster map as a client reads and changes it: through the meta group's leader,
//! by compare-and-swap of the whole encoded map.
//!
//! A change is a read, a transition applied to the copy, and a CAS of the copy over the
//! bytes read. Transitions are idempotent (see [`ClusterMap`]), so a change whose answer was
//! lost, or a command re-run after a crash, re-reads, finds the change in effect and writes
//! nothing. A CAS that loses a race re-reads and applies the transition again.

use std::time::{Duration, Instant};

use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::wire::{AdminRequest, MapRequest, Response};
use shardkv_transport::{ClusterMap, HostId, MapError};

use crate::{Client, ClientError};

/// The map as read, with the bytes it was read from (`None`: never written, the day-0 map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapVersion {
    pub map: ClusterMap,
    pub stored: Option<Vec<u8>>,
}

/// Pause between attempts while the meta group has no leader.
const MAP_RETRY_PAUSE: Duration = Duration::from_millis(100);

impl Client {
    /// The live cluster map (a linearizable read from the meta group's leader).
    pub async fn read_map(&self) -> Result<MapVersion, ClientError> {
        let deadline = Instant::now() + self.settings().deadline;
        let layout = self.layout(deadline).await?.clone();
        let resp = self
            .ask_meta(deadline, &layout.meta_hosts(), MapRequest::Read)
            .await?;
        match resp {
            Response::Value(Some(bytes)) => {
                let map = ClusterMap::decode(&bytes).map_err(map_error)?;
                Ok(MapVersion {
                    map,
                    stored: Some(bytes),
                })
            }
            Response::Value(None) => {
                let hosts: Vec<(HostId, String)> = self
                    .settings()
                    .hosts
                    .iter()
                    .map(|(id, addr)| (*id, addr.to_string()))
                    .collect();
                let map = ClusterMap::day0(&layout, &hosts).map_err(map_error)?;
                Ok(MapVersion { map, stored: None })
            }
            other => Err(ClientError::Internal(format!(
                "unexpected answer to a map read: {other:?}"
            ))),
        }
    }

    /// Applies `change` to the live map and stores the result, unless it is already in
    /// effect; answers the map as it then stands. Needs a host certificate.
    pub async fn change_map(
        &self,
        change: impl Fn(&mut ClusterMap) -> Result<(), MapError>,
    ) -> Result<ClusterMap, ClientError> {
        let deadline = Instant::now() + self.settings().deadline;
        loop {
            let current = self.read_map().await?;
            let mut next = current.map.clone();
            change(&mut next).map_err(|e| ClientError::Invalid(e.to_string()))?;
            if next == current.map {
                return Ok(next);
            }
            let layout = self.layout(deadline).await?.clone();
            let req = MapRequest::Cas {
                expected: current.stored,
                new: next.encode(),
            };
            match self.ask_meta(deadline, &layout.meta_hosts(), req).await? {
                Response::CasOk => return Ok(next),
                // Another change came first: apply ours to the map it made.
                Response::CasFailed { .. } => continue,
                other => {
                    return Err(ClientError::Internal(format!(
                        "unexpected answer to a map change: {other:?}"
                    )))
                }
            }
        }
    }

    /// Sends `req` to the meta group's leader, following hints and trying each meta host,
    /// until it answers or `deadline` passes.
    async fn ask_meta(
        &self,
        deadline: Instant,
        meta_hosts: &[HostId],
        req: MapRequest,
    ) -> Result<Response, ClientError> {
        let mut last = String::from("no meta host asked yet");
        let mut next = meta_hosts.first().copied();
        let mut turn = 0usize;
        while Instant::now() < deadline {
            let host = match next.take() {
                Some(h) => h,
                None => {
                    turn += 1;
                    tokio::time::sleep(MAP_RETRY_PAUSE).await;
                    match meta_hosts.get(turn % meta_hosts.len().max(1)) {
                        Some(h) => *h,
                        None => break,
                    }
                }
            };
            match self.admin(host, AdminRequest::Map(req.clone())).await {
                Ok(Response::NotLeader {
                    leader: Some(l), ..
                }) if l != host => {
                    last = format!("host {host} does not lead the meta group");
                    next = Some(l);
                }
                Ok(Response::Invalid(why)) => return Err(ClientError::Invalid(why)),
                Ok(resp @ (Response::Value(_) | Response::CasOk | Response::CasFailed { .. })) => {
                    return Ok(resp)
                }
                Ok(other) => last = format!("host {host} answered {other:?}"),
                Err(ClientError::Refused(why)) => return Err(ClientError::Refused(why)),
                Err(e) => last = e.to_string(),
            }
        }
        Err(ClientError::Timeout {
            deadline: self.settings().deadline,
            last: format!("asking the meta group (shard {META_SHARD}): {last}"),
        })
    }
}

fn map_error(e: MapError) -> ClientError {
    ClientError::Internal(format!("the cluster map: {e}"))
}
