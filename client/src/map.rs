//! The live cluster map as a client reads and changes it: through the meta group's leader,
//! by compare-and-swap of the whole encoded map.
//!
//! The meta group is a Raft group like any shard and can move off the hosts it started on, so
//! it is asked on the meta replicas of the newest map the client knows (the day-0 meta hosts
//! of the layout only while it knows none), following `NotLeader` and `NoReplicaHere` hints.
//! Every map read or written here feeds the client's route cache.
//!
//! A change is a read, a transition applied to the copy, and a CAS of the copy over the
//! bytes read. Transitions are idempotent (see [`ClusterMap`]), so a change whose answer was
//! lost, or a command re-run after a crash, re-reads, finds the change in effect and writes
//! nothing. A CAS that loses a race re-reads and applies the transition again.

use std::time::{Duration, Instant};

use shardkv_transport::cluster_map::META_SHARD;
use shardkv_transport::wire::{AdminRequest, MapRequest, Response};
use shardkv_transport::{ClusterMap, HostId, Layout, MapError};

use crate::route::Route;
use crate::{Client, ClientError};

/// The map as read, with the bytes it was read from (`None`: never written, the day-0 map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapVersion {
    pub map: ClusterMap,
    pub stored: Option<Vec<u8>>,
}

/// Pause between attempts while the meta group has no leader.
const MAP_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Hints followed in a row before a pause: hosts pointing at each other (stale views during
/// an election) are not asked in a tight loop.
const HINTS_IN_A_ROW_MAX: u32 = 3;

impl Client {
    /// The live cluster map (a linearizable read from the meta group's leader).
    pub async fn read_map(&self) -> Result<MapVersion, ClientError> {
        let deadline = Instant::now() + self.settings().deadline;
        let layout = self.layout(deadline).await?.clone();
        let resp = self.ask_meta(deadline, &layout, MapRequest::Read).await?;
        match resp {
            Response::Value(Some(bytes)) => {
                let map = ClusterMap::decode(&bytes).map_err(map_error)?;
                self.offer_map(map.clone());
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
                self.offer_map(map.clone());
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
            match self.ask_meta(deadline, &layout, req).await? {
                Response::CasOk => {
                    self.offer_map(next.clone());
                    return Ok(next);
                }
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

    /// Sends `req` to the meta group's leader, following hints and trying each meta replica
    /// in turn, until it answers or `deadline` passes.
    async fn ask_meta(
        &self,
        deadline: Instant,
        layout: &Layout,
        req: MapRequest,
    ) -> Result<Response, ClientError> {
        if self.newest_map().is_none() {
            // Where the meta group is now; without an answer, the layout's day-0 hosts.
            if let Err(e @ ClientError::Refused(_)) = self.refresh_routes(deadline).await {
                return Err(e);
            }
        }
        let mut candidates = self.meta_candidates(layout);
        let mut last = String::from("no meta host asked yet");
        let mut next = candidates.first().copied();
        let mut turn = 0usize;
        let mut hints = 0u32;
        while Instant::now() < deadline {
            let host = match next.take() {
                Some(h) => h,
                None => {
                    turn += 1;
                    hints = 0;
                    tokio::time::sleep(MAP_RETRY_PAUSE).await;
                    match candidates.get(turn % candidates.len().max(1)) {
                        Some(h) => *h,
                        None => break,
                    }
                }
            };
            let hinted = match self.admin(host, AdminRequest::Map(req.clone())).await {
                Ok(Response::NotLeader {
                    leader: Some(l), ..
                }) if l != host => {
                    last = format!("host {host} does not lead the meta group");
                    vec![l]
                }
                Ok(Response::NoReplicaHere { hosts, .. }) => {
                    last = format!("host {host} holds no replica of the meta group");
                    hosts.into_iter().filter(|h| *h != host).collect()
                }
                Ok(Response::Invalid(why)) => return Err(ClientError::Invalid(why)),
                Ok(resp @ (Response::Value(_) | Response::CasOk | Response::CasFailed { .. })) => {
                    return Ok(resp)
                }
                Ok(other) => {
                    last = format!("host {host} answered {other:?}");
                    Vec::new()
                }
                Err(ClientError::Refused(why)) => return Err(ClientError::Refused(why)),
                Err(e) => {
                    last = e.to_string();
                    Vec::new()
                }
            };
            if hinted.iter().any(|h| !candidates.contains(h)) {
                // The meta group is elsewhere than the map we hold says: look again.
                let _ = self.refresh_routes(deadline).await;
                for h in self
                    .meta_candidates(layout)
                    .into_iter()
                    .chain(hinted.iter().copied())
                {
                    if !candidates.contains(&h) {
                        candidates.push(h);
                    }
                }
            }
            if let Some(&h) = hinted.first() {
                hints += 1;
                if hints <= HINTS_IN_A_ROW_MAX {
                    next = Some(h);
                }
            }
        }
        Err(ClientError::Timeout {
            deadline: self.settings().deadline,
            last: format!("asking the meta group (shard {META_SHARD}): {last}"),
        })
    }

    /// The meta group's replicas by the newest map known (voters first), or the layout's
    /// day-0 meta hosts while no map is known.
    fn meta_candidates(&self, layout: &Layout) -> Vec<HostId> {
        self.newest_map()
            .and_then(|map| Route::of_shard(&map, META_SHARD))
            .map(|route| route.candidates)
            .unwrap_or_else(|| layout.meta_hosts())
    }
}

fn map_error(e: MapError) -> ClientError {
    ClientError::Internal(format!("the cluster map: {e}"))
}
