//! [`Client`]: the public way to read and write.
//!
//! A [`Client`] is built from the cluster's description (hosts, CA and a client certificate),
//! routes each key to its shard by slot through the live cluster map (see [`crate::route`]),
//! talks to the shard's leader over QUIC with mutual TLS, follows `NotLeader` and
//! `NoReplicaHere` hints, moves on to a newer map when a shard answers `WrongShard` (it split),
//! and retries with backoff until a deadline (the rules are in the `retry` module). Writes carry a
//! session `(client_id, seq)` so that a retried write is applied once, also across a split.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shardkv_client::ClientError> {
//! use shardkv_client::{Client, ClientConfig};
//!
//! let cfg = ClientConfig::load("cluster.toml".as_ref()).expect("valid cluster.toml");
//! let client = Client::from_config(&cfg, "cli")?;
//! client.put(b"greeting", b"hello").await?;
//! assert_eq!(client.get(b"greeting").await?, Some(b"hello".to_vec()));
//! client.delete(b"greeting").await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use quinn::{Connection, Endpoint};
use shardkv_transport::endpoint::{call, client_endpoint, connect};
#[cfg(all(feature = "fault-injection", debug_assertions))]
use shardkv_transport::wire::FaultSpec;
use shardkv_transport::wire::{
    check_limits, AdminRequest, HostStatus, KeyUpdate, Op, ReplicaChange, Request, RequestFrame,
    Response, UpdateOutcome,
};
use shardkv_transport::{HostId, Layout, ShardId, TransportError};
use tokio::sync::OnceCell;
use tracing::debug;

use crate::config::ClientConfig;
use crate::retry::{Outcome, Refresh, Retry, BACKOFF_MAX, BACKOFF_MIN};
use crate::route::{RefreshGate, Route, RouteCache};
use crate::{ClientError, ClientSettings};

pub(crate) struct Inner {
    settings: ClientSettings,
    endpoint: Endpoint,
    /// The addresses in the configuration; a host's entry in the map comes first.
    pub(crate) configured_addrs: HashMap<HostId, SocketAddr>,
    conns: Mutex<HashMap<HostId, Connection>>,
    leaders: Mutex<HashMap<ShardId, HostId>>,
    /// The newest cluster map seen: keys are routed by it.
    pub(crate) routes: Mutex<RouteCache>,
    /// When the map was last refreshed; held while a refresh runs, so concurrent ones wait
    /// for it instead of asking the hosts again.
    pub(crate) refresh: tokio::sync::Mutex<RefreshGate>,
    /// The layout the cluster was bootstrapped with, loaded from a host before the first
    /// request is routed.
    layout: OnceCell<Layout>,
    /// Idle write sessions. A session carries one write at a time, so its sequence numbers
    /// reach the hosts in order and "seq <= last applied" safely means "already applied".
    sessions: Mutex<Vec<Session>>,
}

#[derive(Clone, Copy)]
struct Session {
    client_id: u64,
    next_seq: u64,
}

/// A handle to the cluster; cheap to clone and safe to use from many tasks at once.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl Client {
    /// A client for the cluster in `cfg` using client certificate `name` (e.g. "cli").
    /// Must be called inside a Tokio runtime.
    pub fn from_config(cfg: &ClientConfig, name: &str) -> Result<Self, ClientError> {
        Self::new(ClientSettings::from_config(cfg, name))
    }

    /// A client from explicit settings. Must be called inside a Tokio runtime. Settings that
    /// [`ClientSettings::validate`] refuses (a deadline past
    /// [`crate::settings::DEADLINE_MAX`]) are an error.
    pub fn new(settings: ClientSettings) -> Result<Self, ClientError> {
        settings.validate()?;
        let endpoint =
            client_endpoint(&settings.tls).map_err(|e| ClientError::Setup(e.to_string()))?;
        let configured_addrs = settings.hosts.iter().copied().collect();
        Ok(Client {
            inner: Arc::new(Inner {
                settings,
                endpoint,
                configured_addrs,
                conns: Mutex::new(HashMap::new()),
                leaders: Mutex::new(HashMap::new()),
                routes: Mutex::new(RouteCache::default()),
                refresh: tokio::sync::Mutex::new(RefreshGate::default()),
                layout: OnceCell::new(),
                sessions: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Reads `key`: `None` if absent. Linearizable unless the settings say otherwise.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let op = Op::Get {
            key: key.to_vec(),
            consistency: self.inner.settings.consistency,
        };
        match self.execute(op).await? {
            Response::Value(v) => Ok(v),
            other => Err(ClientError::Internal(format!(
                "unexpected reply to get: {other:?}"
            ))),
        }
    }

    /// Sets `key` to `value`; returns once a majority of the shard's replicas have it on disk
    /// and it is applied.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        let op = Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        self.execute(op).await.map(|_| ())
    }

    /// Removes `key` (succeeds whether or not it existed).
    pub async fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        self.execute(Op::Delete { key: key.to_vec() })
            .await
            .map(|_| ())
    }

    /// Compare-and-swap: if `key`'s value equals `expected` (`None`: absent), set it to `new`
    /// (`None`: delete). Returns `Ok(Ok(()))` on success, `Ok(Err(current))` with the value
    /// found otherwise. Applied exactly once even when retried.
    pub async fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), Option<Vec<u8>>>, ClientError> {
        let op = Op::Cas {
            key: key.to_vec(),
            expected: expected.map(|v| v.to_vec()),
            new: new.map(|v| v.to_vec()),
        };
        match self.execute(op).await? {
            Response::CasOk => Ok(Ok(())),
            Response::CasFailed { current } => Ok(Err(current)),
            other => Err(ClientError::Internal(format!(
                "unexpected reply to cas: {other:?}"
            ))),
        }
    }

    /// Reads `keys`, which must all hash to one slot, at one applied state: the values in
    /// the keys' order (`None`: absent). Linearizable unless the settings say otherwise.
    pub async fn get_many(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        let op = Op::GetMany {
            keys,
            consistency: self.inner.settings.consistency,
        };
        match self.execute(op).await? {
            Response::Values(values) => Ok(values.into_iter().map(|v| v.0).collect()),
            other => Err(ClientError::Internal(format!(
                "unexpected reply to get_many: {other:?}"
            ))),
        }
    }

    /// Changes the keys of `updates`, which must all hash to one slot, atomically and in
    /// order (see [`KeyUpdate`]): one outcome per key, or an error with nothing changed
    /// (`Invalid` for a counter that is no integer or would overflow, `TooLarge` for an
    /// append past the value limit). Applied exactly once even when retried.
    pub async fn update(&self, updates: Vec<KeyUpdate>) -> Result<Vec<UpdateOutcome>, ClientError> {
        match self.execute(Op::Update(updates)).await? {
            Response::Updated(outcomes) => Ok(outcomes),
            other => Err(ClientError::Internal(format!(
                "unexpected reply to update: {other:?}"
            ))),
        }
    }

    /// Asks host `host` for its replicas' Raft status (one attempt, bounded by the
    /// attempt timeout): for `shardkv status` and monitoring.
    pub async fn host_status(&self, host: HostId) -> Result<HostStatus, ClientError> {
        match self.admin(host, AdminRequest::Status).await? {
            Response::Status(s) => Ok(*s),
            other => Err(final_error(other)),
        }
    }

    /// Asks host `host`, which must lead `shard`, to change the shard's replicas by one Raft
    /// configuration change (see [`AdminRequest::ChangeReplicas`]); one attempt. Hosts accept
    /// it only from a client holding a host certificate.
    pub async fn change_replicas(
        &self,
        host: HostId,
        shard: ShardId,
        changes: Vec<ReplicaChange>,
    ) -> Result<Response, ClientError> {
        self.admin(host, AdminRequest::ChangeReplicas { shard, changes })
            .await
    }

    /// Asks host `host`, which must lead `shard`, to hand the shard's leadership to voter `to`
    /// (see [`AdminRequest::TransferLeader`]); one attempt. `Ok` means started (or already
    /// done): poll [`Client::host_status`] to see it complete. Hosts accept it only from a
    /// client holding a host certificate.
    pub async fn transfer_leader(
        &self,
        host: HostId,
        shard: ShardId,
        to: HostId,
    ) -> Result<Response, ClientError> {
        self.admin(host, AdminRequest::TransferLeader { shard, to })
            .await
    }

    /// Asks host `host`, which must lead `shard`, to split it as `split` says (see
    /// [`AdminRequest::SplitShard`]); one attempt. `Ok` once applied on that host. Hosts
    /// accept it only from a client holding a host certificate.
    pub async fn split_shard(
        &self,
        host: HostId,
        shard: ShardId,
        split: shardkv_transport::wire::SplitSpec,
    ) -> Result<Response, ClientError> {
        self.admin(host, AdminRequest::SplitShard { shard, split })
            .await
    }

    /// Test hook: switches on faults in host `host`. Only hosts built with the
    /// `fault-injection` feature understand it, and they accept it only from a client that
    /// holds a host certificate (the test harness); a client certificate is answered `Invalid`.
    #[cfg(all(feature = "fault-injection", debug_assertions))]
    pub async fn inject_fault(&self, host: HostId, spec: FaultSpec) -> Result<(), ClientError> {
        match self.admin(host, AdminRequest::Fault(spec)).await? {
            Response::Ok => Ok(()),
            other => Err(final_error(other)),
        }
    }

    pub(crate) async fn admin(
        &self,
        host: HostId,
        req: AdminRequest,
    ) -> Result<Response, ClientError> {
        let req = RequestFrame::Admin(req);
        let budget = self.inner.settings.attempt_timeout;
        match tokio::time::timeout(budget, self.call_host(host, &req)).await {
            Err(_) => Err(ClientError::Timeout {
                deadline: budget,
                last: format!("host {host} did not answer"),
            }),
            Ok(Err(TransportError::Refused { addr, reason })) => Err(ClientError::Refused(
                format!("host at {addr} refused us: {reason}"),
            )),
            Ok(Err(e)) => Err(ClientError::Timeout {
                deadline: budget,
                last: format!("host {host}: {e}"),
            }),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// The settings the client was made with.
    pub(crate) fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    /// The host this client last saw lead the shard of `key` (by the newest map it has),
    /// if any.
    pub fn cached_leader(&self, key: &[u8]) -> Option<HostId> {
        let map = self.newest_map()?;
        let route = Route::of_key(&map, key)?;
        self.lock_leaders().get(&route.shard).copied()
    }

    /// The layout the cluster was bootstrapped with: loaded once from the first host that
    /// answers, and checked against the configuration's, before anything is routed.
    pub(crate) async fn layout(&self, deadline: Instant) -> Result<&Layout, ClientError> {
        self.inner
            .layout
            .get_or_try_init(|| self.load_layout(deadline))
            .await
    }

    /// Asks every host at once and takes the layout that a majority of the configured hosts
    /// report: one host alone (say, one that started on a new data dir while its peers were
    /// down) cannot make the client route by a layout the cluster does not hold, whatever
    /// that layout says its members are.
    async fn load_layout(&self, deadline: Instant) -> Result<Layout, ClientError> {
        let settings = &self.inner.settings;
        if settings.hosts.is_empty() {
            return Err(ClientError::Setup("no hosts in the configuration".into()));
        }
        let majority = settings.hosts.len() / 2 + 1;
        let mut refused = None;
        let req = RequestFrame::Admin(AdminRequest::Status);
        let mut last = String::from("no host asked yet");
        let mut backoff = BACKOFF_MIN;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    deadline: settings.deadline,
                    last: format!("loading the cluster's layout: {last}"),
                });
            }
            let budget = (deadline - now).min(settings.attempt_timeout);
            let mut asks: FuturesUnordered<_> = settings
                .hosts
                .iter()
                .map(|&(host, _)| {
                    let req = &req;
                    async move {
                        (
                            host,
                            tokio::time::timeout(budget, self.call_host(host, req)).await,
                        )
                    }
                })
                .collect();
            let mut reported: Vec<(Layout, Vec<HostId>)> = Vec::new();
            while let Some((host, answer)) = asks.next().await {
                let layout = match answer {
                    Ok(Ok(Response::Status(status))) => status.layout,
                    Ok(Err(TransportError::Refused { addr, reason })) => {
                        // Final only if no host answers with a layout (see below).
                        last = format!("host at {addr} refused us: {reason}");
                        refused = Some(last.clone());
                        continue;
                    }
                    Ok(Ok(other)) => {
                        last = format!("host {host} answered {other:?}");
                        continue;
                    }
                    Ok(Err(e)) => {
                        last = format!("host {host}: {e}");
                        continue;
                    }
                    Err(_) => {
                        last = format!("host {host} did not answer within {budget:?}");
                        continue;
                    }
                };
                match reported.iter_mut().find(|(l, _)| *l == layout) {
                    Some((_, hosts)) => hosts.push(host),
                    None => reported.push((layout, vec![host])),
                }
                if let Some((layout, _)) = reported.iter().find(|(_, h)| h.len() >= majority) {
                    layout.check_declared(&settings.layout)?;
                    return Ok(layout.clone());
                }
            }
            if reported.is_empty() {
                if let Some(why) = refused.take() {
                    return Err(ClientError::Refused(why));
                }
            }
            if !reported.is_empty() {
                last = format!(
                    "no majority of the cluster's hosts agrees on its layout yet ({} answered)",
                    reported.iter().map(|(_, h)| h.len()).sum::<usize>()
                );
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn lock_leaders(&self) -> std::sync::MutexGuard<'_, HashMap<ShardId, HostId>> {
        self.inner.leaders.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_session(&self) -> Session {
        let mut pool = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pool.pop().unwrap_or_else(|| Session {
            client_id: rand::random::<u64>() | 1,
            next_seq: 1,
        })
    }

    fn return_session(&self, s: Session) {
        let mut pool = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pool.push(s);
    }

    async fn execute(&self, op: Op) -> Result<Response, ClientError> {
        if let Err(resp) = check_limits(&op, self.inner.settings.value_bytes_max) {
            return Err(final_error(resp));
        }
        let (client_id, seq, session) = if op.is_write() {
            let mut s = self.take_session();
            let seq = s.next_seq;
            s.next_seq += 1;
            (s.client_id, seq, Some(s))
        } else {
            (0, 0, None)
        };
        let res = self.retry(Request { client_id, seq, op }).await;
        if let Some(s) = session {
            self.return_session(s);
        }
        res
    }

    async fn retry(&self, req: Request) -> Result<Response, ClientError> {
        let settings = &self.inner.settings;
        let deadline = Instant::now() + settings.deadline;
        // The layout check refuses a configuration declaring another cluster shape; keys
        // are routed by the map.
        self.layout(deadline).await?;
        let key = req.op.key().to_vec();
        let mut map = self.route_map(deadline).await?;
        let route = route_of(&map, &key)?;
        let leader = self.lock_leaders().get(&route.shard).copied();
        let mut retry = Retry::new(route, leader);
        let req = RequestFrame::Data(req);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    deadline: settings.deadline,
                    last: retry.into_last(),
                });
            }
            // A newer map (refreshed by this request or another): route by it from now on.
            if let Some(newer) = self.newer_map_than(map.epoch()) {
                map = newer;
                let route = route_of(&map, &key)?;
                let leader = self.lock_leaders().get(&route.shard).copied();
                retry.reroute(route, leader);
            }
            let target = retry.target();
            if self.addr_of(target).is_none() {
                // A host the client has no address for: the map it routes by is older than
                // the one that sent it here.
                let _ = self.refresh_routes(deadline).await;
            }
            let budget = (deadline - now).min(settings.attempt_timeout);
            let attempt = tokio::time::timeout(budget, self.call_host(target, &req)).await;
            let step = match attempt {
                Err(_) => {
                    self.forget_connection(target);
                    retry.on_lost(format!("host {target} did not answer within {budget:?}"))
                }
                Ok(Err(TransportError::Refused { addr, reason })) => {
                    return Err(ClientError::Refused(format!(
                        "host at {addr} refused us: {reason}"
                    )));
                }
                Ok(Err(e)) => retry.on_lost(format!("host {target}: {e}")),
                Ok(Ok(resp)) => match retry.on_reply(resp) {
                    Outcome::Done { resp, leader } => {
                        self.lock_leaders().insert(leader.0, leader.1);
                        return Ok(resp);
                    }
                    Outcome::Fail(e) => return Err(e),
                    Outcome::Again(step) => step,
                },
            };
            if let Some((shard, leader)) = step.remember {
                self.lock_leaders().insert(shard, leader);
            }
            // A map newer than the one routed by that the key may be routed by: no need to
            // ask for one, nor to wait before using it.
            let routable = |client: &Client| {
                client
                    .newer_map_than(map.epoch())
                    .is_some_and(|m| retry.routable_by(m.epoch()))
            };
            match step.refresh {
                Refresh::No => {}
                Refresh::Background if !routable(self) => self.refresh_routes_soon(),
                Refresh::Background => {}
                Refresh::Wait => {
                    let _ = self.refresh_routes(deadline).await;
                }
            }
            if step.pause.is_zero() || routable(self) {
                continue;
            }
            debug!(
                shard = retry.shard(),
                target,
                last = retry.last(),
                "retrying"
            );
            tokio::time::sleep(
                step.pause
                    .min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    pub(crate) async fn call_host(
        &self,
        host: HostId,
        req: &RequestFrame,
    ) -> Result<Response, TransportError> {
        let conn = self.connection(host).await?;
        let res = call(&conn, req).await;
        if res.is_err() {
            // The connection may be dead; forget it so the next attempt dials afresh.
            let mut conns = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
            if conns
                .get(&host)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                conns.remove(&host);
            }
        }
        res
    }

    fn forget_connection(&self, host: HostId) {
        let mut conns = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.remove(&host);
    }

    async fn connection(&self, host: HostId) -> Result<Connection, TransportError> {
        {
            let conns = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = conns.get(&host) {
                if c.close_reason().is_none() {
                    return Ok(c.clone());
                }
            }
        }
        let addr = self.addr_of(host).ok_or_else(|| TransportError::Connect {
            addr: format!("host {host}"),
            reason: "host is neither in the cluster map nor in the configuration".into(),
        })?;
        let conn = connect(&self.inner.endpoint, addr, host).await?;
        let mut conns = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
        match conns.get(&host) {
            Some(existing) if existing.close_reason().is_none() => {
                // Another task connected first; share its connection.
                Ok(existing.clone())
            }
            _ => {
                conns.insert(host, conn.clone());
                Ok(conn)
            }
        }
    }
}

/// The route of `key` by `map`. A valid map owns every slot with a shard that has a voter,
/// so the error is a map the client should never have taken.
fn route_of(map: &shardkv_transport::ClusterMap, key: &[u8]) -> Result<Route, ClientError> {
    Route::of_key(map, key).ok_or_else(|| {
        ClientError::Internal(format!(
            "the cluster map of epoch {} routes no replica for this key",
            map.epoch()
        ))
    })
}

/// The error a reply that ends a request stands for.
pub(crate) fn final_error(resp: Response) -> ClientError {
    match resp {
        Response::TooLarge { what, len, limit } => ClientError::TooLarge { what, len, limit },
        Response::Invalid(m) => ClientError::Invalid(m),
        Response::Internal(m) => ClientError::Internal(m),
        other => ClientError::Internal(format!("unexpected reply: {other:?}")),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"client dropped");
    }
}
