//! Routing by the live cluster map: the newest map the client has seen, and how it is loaded
//! and refreshed from the hosts.
//!
//! Replicas move and hosts join after day 0, so a client routes a key by the map, not by the
//! layout: slot -> shard by the map's slot ranges, the shard's replicas as candidates (voters
//! first), each host's address from the map's entry (the configuration's when the map has
//! none). Guarantees:
//! - **Epochs only go forward.** The cache takes a map only if its epoch is higher than the one
//!   it holds (`RouteCache::offer`); every map a host answers is one the meta group
//!   committed, so the newest seen is the best route known.
//! - **Cheap and bounded refreshes.** A map is loaded from any host without a Raft round
//!   ([`MapRequest::Current`], possibly stale), all hosts asked at once within the attempt
//!   timeout. A refresh runs when a host says the route is stale (`NoReplicaHere`,
//!   `WrongShard`, a reply from another shard than the one routed to, a leader the map does
//!   not place there, a host without an address), at most once per [`REFRESH_EVERY_MIN`];
//!   concurrent refreshes wait for the one under way instead of asking again.
//! - **No polling storm while the hosts lag.** Hosts take a new map up to a second after the
//!   meta group commits it, so a refresh often finds nothing newer; each one that does not
//!   doubles the wait before the next, up to [`REFRESH_EVERY_MAX`], and one that finds a newer
//!   map resets it (`RefreshGate`).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use shardkv_transport::slot::slot;
use shardkv_transport::wire::{AdminRequest, MapRequest, RequestFrame, Response};
use shardkv_transport::{ClusterMap, HostId, HostState, ShardId, TransportError};
use tracing::debug;

use crate::{Client, ClientError};

/// The shortest time between two refreshes of the map: a burst of stale answers (every
/// request in flight to a moved replica) costs the hosts one round of map requests, not one
/// per request.
pub const REFRESH_EVERY_MIN: Duration = Duration::from_millis(100);

/// The longest time between two refreshes while none finds a newer map. Under a second, the
/// interval at which hosts poll the meta group: a client that backed off all the way still
/// learns a new map within two seconds of its commit, and a host's watcher, which asks its
/// peers once a second while the meta group has no leader, is never turned away.
pub const REFRESH_EVERY_MAX: Duration = Duration::from_millis(800);

/// The newest cluster map seen; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct RouteCache {
    newest: Option<Arc<ClusterMap>>,
}

impl RouteCache {
    /// Takes `map` if its epoch is higher than the one held (or none is); answers whether it
    /// did. An older or equal map changes nothing.
    pub(crate) fn offer(&mut self, map: ClusterMap) -> bool {
        if self
            .newest
            .as_ref()
            .is_some_and(|m| m.epoch() >= map.epoch())
        {
            return false;
        }
        self.newest = Some(Arc::new(map));
        true
    }

    /// The newest map seen, if any.
    pub(crate) fn newest(&self) -> Option<Arc<ClusterMap>> {
        self.newest.clone()
    }

    /// The newest map seen if its epoch is higher than `epoch`: what a request routed by a
    /// map of `epoch` (or one a host said is stale as of `epoch`) moves on to.
    pub(crate) fn newer_than(&self, epoch: u64) -> Option<Arc<ClusterMap>> {
        self.newest.clone().filter(|m| m.epoch() > epoch)
    }
}

/// Where the requests of one shard go, by one map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub shard: ShardId,
    /// The shard's replicas: voters ascending, then learners ascending (a learner answers
    /// `NotLeader` with a hint, so it is worth asking only when no voter answers). Never empty:
    /// every shard of a valid map has a voter.
    pub candidates: Vec<HostId>,
}

impl Route {
    /// The route of `key` by `map`; `None` if the map owns no shard for its slot (a valid map
    /// always does).
    pub(crate) fn of_key(map: &ClusterMap, key: &[u8]) -> Option<Route> {
        Route::of_shard(map, map.shard_of_slot(slot(key))?)
    }

    /// The route of `shard` by `map`; `None` for a shard the map does not have.
    pub(crate) fn of_shard(map: &ClusterMap, shard: ShardId) -> Option<Route> {
        let entry = map.shard(shard)?;
        let candidates: Vec<HostId> = entry.voters().chain(entry.learners()).collect();
        (!candidates.is_empty()).then_some(Route { shard, candidates })
    }

    /// Whether `host` holds a replica of the shard by this route.
    pub(crate) fn lists(&self, host: HostId) -> bool {
        self.candidates.contains(&host)
    }

    /// Where `host` stands among the candidates, if it is one.
    pub(crate) fn position(&self, host: HostId) -> Option<usize> {
        self.candidates.iter().position(|h| *h == host)
    }
}

/// When the map was last refreshed and how long until the next refresh may run: at least
/// [`REFRESH_EVERY_MIN`] apart, doubling after each refresh that found no newer map (up to
/// [`REFRESH_EVERY_MAX`]), back to the minimum after one that found a newer map.
#[derive(Debug)]
pub(crate) struct RefreshGate {
    last: Option<Instant>,
    interval: Duration,
}

impl Default for RefreshGate {
    fn default() -> Self {
        RefreshGate {
            last: None,
            interval: REFRESH_EVERY_MIN,
        }
    }
}

impl RefreshGate {
    /// Whether a refresh may run at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|at| now.saturating_duration_since(at) >= self.interval)
    }

    /// Records a refresh that ended at `now`, and whether it found a map newer than the one
    /// held when it began.
    pub(crate) fn mark(&mut self, now: Instant, found_newer: bool) {
        self.last = Some(now);
        self.interval = if found_newer {
            REFRESH_EVERY_MIN
        } else {
            (self.interval * 2).min(REFRESH_EVERY_MAX)
        };
    }
}

/// The address of `host`: its entry in `map` (the map is the newer address book: hosts joined
/// after the configuration was written are there), else the configuration's.
pub(crate) fn address(
    map: Option<&ClusterMap>,
    configured: &HashMap<HostId, SocketAddr>,
    host: HostId,
) -> Option<SocketAddr> {
    map.and_then(|m| m.host(host))
        .and_then(|h| h.addr.parse().ok())
        .or_else(|| configured.get(&host).copied())
}

/// The hosts a refresh asks: every configured host and every member of `map` not removed.
fn hosts_to_ask(configured: &HashMap<HostId, SocketAddr>, map: Option<&ClusterMap>) -> Vec<HostId> {
    let mut hosts: BTreeSet<HostId> = configured.keys().copied().collect();
    if let Some(map) = map {
        hosts.extend(
            map.hosts()
                .iter()
                .filter(|(_, h)| h.state != HostState::Removed)
                .map(|(id, _)| *id),
        );
    }
    hosts.into_iter().collect()
}

impl Client {
    /// The newest map the hosts route by (asked of the configured hosts and of the members
    /// of the newest map known, at most one attempt timeout), without the meta group: how a
    /// host whose meta group has no leader learns a map its peers already took. Every map a
    /// host routes by was committed by the meta group, and epochs order them.
    pub async fn newest_known_map(&self) -> Option<ClusterMap> {
        let deadline = Instant::now() + self.settings().attempt_timeout;
        // A failed refresh leaves what the cache holds.
        let _ = self.refresh_routes(deadline).await;
        self.newest_map().map(|m| (*m).clone())
    }

    /// The newest cluster map this client has seen, if any.
    pub(crate) fn newest_map(&self) -> Option<Arc<ClusterMap>> {
        self.lock_routes().newest()
    }

    /// The newest map this client has seen if its epoch is higher than `epoch`.
    pub(crate) fn newer_map_than(&self, epoch: u64) -> Option<Arc<ClusterMap>> {
        self.lock_routes().newer_than(epoch)
    }

    /// Offers `map` to the route cache (taken only if newer, see [`RouteCache::offer`]).
    pub(crate) fn offer_map(&self, map: ClusterMap) {
        let epoch = map.epoch();
        if self.lock_routes().offer(map) {
            debug!(epoch, "routing by a newer cluster map");
        }
    }

    /// The address of `host` by the newest map, else the configuration.
    pub(crate) fn addr_of(&self, host: HostId) -> Option<SocketAddr> {
        address(
            self.newest_map().as_deref(),
            &self.inner.configured_addrs,
            host,
        )
    }

    /// The map to route by: the newest seen, loaded from the hosts on first use (retried
    /// until `deadline`).
    pub(crate) async fn route_map(
        &self,
        deadline: Instant,
    ) -> Result<Arc<ClusterMap>, ClientError> {
        let mut backoff = crate::retry::BACKOFF_MIN;
        let mut last = String::from("no host asked yet");
        loop {
            if let Some(map) = self.newest_map() {
                return Ok(map);
            }
            match self.refresh_routes(deadline).await {
                Err(e @ ClientError::Refused(_)) => return Err(e),
                Err(e) => last = e.to_string(),
                Ok(()) => {}
            }
            if let Some(map) = self.newest_map() {
                return Ok(map);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    deadline: self.settings().deadline,
                    last: format!("loading the cluster map: {last}"),
                });
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(crate::retry::BACKOFF_MAX);
        }
    }

    /// Asks every configured host and every member of the newest map for the map it routes
    /// by, at once, and keeps the newest answer. Returns once every host answered, or a
    /// majority did and one gave a map, or one gave a map newer than the one held when the
    /// refresh began, or the attempt timeout (bounded by `deadline`) passed; later answers
    /// still reach the cache. At most one refresh per interval of the [`RefreshGate`]: a call
    /// within it, or while another call refreshes, returns at once (after that one). `Refused` if a host
    /// refused our certificate and none gave a map; `Timeout` if none gave one.
    pub(crate) async fn refresh_routes(&self, deadline: Instant) -> Result<(), ClientError> {
        let mut gate = self.inner.refresh.lock().await;
        let now = Instant::now();
        if !gate.due(now) {
            return Ok(());
        }
        let budget = deadline
            .saturating_duration_since(now)
            .min(self.settings().attempt_timeout);
        let held = self.newest_map();
        let held_epoch = held.as_ref().map(|m| m.epoch());
        let hosts = hosts_to_ask(&self.inner.configured_addrs, held.as_deref());
        let majority = hosts.len() / 2 + 1;
        let mut asks: FuturesUnordered<_> = hosts
            .iter()
            .map(|&host| {
                let client = self.clone();
                async move {
                    let req = RequestFrame::Admin(AdminRequest::Map(MapRequest::Current));
                    let answer = tokio::time::timeout(budget, client.call_host(host, &req)).await;
                    (host, client.take_answer(host, answer, budget))
                }
            })
            .collect();
        let (mut answered, mut maps) = (0usize, 0usize);
        let (mut refused, mut last) = (None, String::from("no host to ask"));
        while let Some((host, answer)) = asks.next().await {
            answered += 1;
            match answer {
                Ok(epoch) => {
                    maps += 1;
                    if held_epoch.is_some_and(|held| epoch > held) {
                        break;
                    }
                }
                Err(MapAnswer::Refused(why)) => refused = Some(why),
                Err(MapAnswer::Other(why)) => last = format!("host {host}: {why}"),
            }
            if maps > 0 && answered >= majority {
                break;
            }
        }
        let found_newer = self.newest_map().map(|m| m.epoch()) > held_epoch;
        gate.mark(Instant::now(), found_newer);
        drop(gate);
        if !asks.is_empty() {
            // The rest still offer their maps, each within the attempt timeout.
            tokio::spawn(async move { while asks.next().await.is_some() {} });
        }
        match (maps, refused) {
            (0, Some(why)) => Err(ClientError::Refused(why)),
            (0, None) => Err(ClientError::Timeout {
                deadline: budget,
                last: format!("no host answered with its cluster map; {last}"),
            }),
            _ => Ok(()),
        }
    }

    /// Starts a refresh in the background, bounded by the attempt timeout, if one is due and
    /// none is under way: for a reply that shows the map is stale while the request it
    /// answered can go on without a newer one (the hosts route by slot, so the old route
    /// still reaches the key's shard).
    pub(crate) fn refresh_routes_soon(&self) {
        let due = self
            .inner
            .refresh
            .try_lock()
            .is_ok_and(|gate| gate.due(Instant::now()));
        if !due {
            return;
        }
        let client = self.clone();
        let deadline = Instant::now() + self.settings().attempt_timeout;
        tokio::spawn(async move {
            // A failed refresh leaves what the cache holds; the next stale reply asks again.
            let _ = client.refresh_routes(deadline).await;
        });
    }

    /// Offers the map in one host's answer to the cache: its epoch, or why there is none.
    fn take_answer(
        &self,
        host: HostId,
        answer: Result<Result<Response, TransportError>, tokio::time::error::Elapsed>,
        budget: Duration,
    ) -> Result<u64, MapAnswer> {
        match answer {
            Ok(Ok(Response::Value(Some(bytes)))) => match ClusterMap::decode(&bytes) {
                Ok(map) => {
                    let epoch = map.epoch();
                    self.offer_map(map);
                    Ok(epoch)
                }
                Err(e) => Err(MapAnswer::Other(format!("an invalid cluster map: {e}"))),
            },
            Ok(Ok(other)) => Err(MapAnswer::Other(format!("answered {other:?}"))),
            Ok(Err(TransportError::Refused { addr, reason })) => Err(MapAnswer::Refused(format!(
                "host {host} at {addr} refused us: {reason}"
            ))),
            Ok(Err(e)) => Err(MapAnswer::Other(e.to_string())),
            Err(_) => Err(MapAnswer::Other(format!("no answer within {budget:?}"))),
        }
    }

    fn lock_routes(&self) -> std::sync::MutexGuard<'_, RouteCache> {
        self.inner.routes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a host's answer to a map request held no map.
enum MapAnswer {
    /// It refused our certificate.
    Refused(String),
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardkv_transport::Layout;

    /// The day-0 map of hosts 1..=4, shard 1 on 1, 2, 3 and shard 2 on 2, 3, 4; then
    /// `changes` more epochs, each adding host 10 + i.
    fn map(changes: u64) -> ClusterMap {
        let layout = Layout {
            shards: 2,
            replicas: 3,
            pins: Vec::new(),
            placement: vec![(1, vec![1, 2, 3]), (2, vec![2, 3, 4])],
        };
        let addrs: Vec<(HostId, String)> = (1..=4)
            .map(|h| (h, format!("127.0.0.1:{}", 7000 + h)))
            .collect();
        let mut map = ClusterMap::day0(&layout, &addrs).expect("day-0 map");
        for i in 0..changes {
            map.add_host(10 + i, &format!("127.0.0.1:{}", 7010 + i))
                .expect("add");
        }
        map
    }

    #[test]
    fn a_newer_epoch_replaces_the_cached_map() {
        let mut cache = RouteCache::default();
        assert!(cache.newest().is_none());
        assert!(cache.offer(map(0)));
        assert!(cache.offer(map(2)));
        assert_eq!(cache.newest().expect("a map").epoch(), map(2).epoch());
    }

    #[test]
    fn an_older_or_equal_epoch_is_ignored() {
        let mut cache = RouteCache::default();
        assert!(cache.offer(map(2)));
        assert!(!cache.offer(map(1)), "an older map");
        let mut same_epoch = map(1);
        same_epoch.add_host(99, "127.0.0.1:9999").expect("add");
        assert!(!cache.offer(same_epoch), "another map of the same epoch");
        assert_eq!(*cache.newest().expect("a map"), map(2));
    }

    #[test]
    fn a_route_lists_the_shards_voters_first_then_its_learners() {
        let mut m = map(0);
        m.add_learner(1, 4).expect("learner");
        let route = Route::of_shard(&m, 1).expect("shard 1");
        assert_eq!(route.candidates, vec![1, 2, 3, 4]);
        m.promote(1, 4).expect("promote");
        m.remove_replica(1, 1, 3).expect("remove");
        let route = Route::of_shard(&m, 1).expect("shard 1");
        assert_eq!(
            route,
            Route {
                shard: 1,
                candidates: vec![2, 3, 4]
            }
        );
        assert!(route.lists(4) && !route.lists(1));
        assert_eq!(Route::of_shard(&m, 3), None, "no such shard");
    }

    #[test]
    fn a_key_routes_to_the_shard_owning_its_slot() {
        let m = map(0);
        for key in [&b"a"[..], b"foo", b"{user1}.x"] {
            let route = Route::of_key(&m, key).expect("every slot is owned");
            assert_eq!(Some(route.shard), m.shard_of_slot(slot(key)));
        }
    }

    #[test]
    fn refreshes_are_due_at_most_once_per_interval() {
        let mut gate = RefreshGate::default();
        let t0 = Instant::now();
        assert!(gate.due(t0), "the first refresh is due at once");
        gate.mark(t0, true);
        assert!(!gate.due(t0 + REFRESH_EVERY_MIN / 2));
        assert!(gate.due(t0 + REFRESH_EVERY_MIN));
    }

    #[test]
    fn refreshes_that_find_nothing_newer_back_off_up_to_the_maximum() {
        let mut gate = RefreshGate::default();
        let mut now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..6 {
            gate.mark(now, false);
            let wait = (1..=100u32)
                .map(|i| REFRESH_EVERY_MIN / 10 * i)
                .find(|d| gate.due(now + *d))
                .expect("due within ten minimum intervals");
            waits.push(wait);
            now += wait;
        }
        assert_eq!(
            waits,
            [200, 400, 800, 800, 800, 800].map(Duration::from_millis),
            "doubling from the minimum, capped"
        );
        assert!(REFRESH_EVERY_MAX < Duration::from_secs(1));
    }

    #[test]
    fn a_refresh_that_finds_a_newer_map_resets_the_backoff() {
        let mut gate = RefreshGate::default();
        let t0 = Instant::now();
        gate.mark(t0, false);
        gate.mark(t0, false);
        assert!(!gate.due(t0 + REFRESH_EVERY_MIN * 2));
        gate.mark(t0, true);
        assert!(gate.due(t0 + REFRESH_EVERY_MIN));
    }

    #[test]
    fn only_a_map_of_a_higher_epoch_is_newer_than_an_epoch() {
        let mut cache = RouteCache::default();
        assert!(cache.newer_than(0).is_none(), "nothing cached");
        assert!(cache.offer(map(2)));
        let held = map(2).epoch();
        assert_eq!(cache.newer_than(held - 1).map(|m| m.epoch()), Some(held));
        assert!(
            cache.newer_than(held).is_none(),
            "the same epoch is not newer"
        );
        assert!(
            cache.newer_than(held + 5).is_none(),
            "a host saw a later one"
        );
        assert!(!cache.offer(map(1)));
        assert!(
            cache.newer_than(held - 1).is_some(),
            "an older map offered later does not take the epoch back"
        );
    }

    #[test]
    fn addresses_come_from_the_map_before_the_configuration() {
        let m = map(1);
        let configured: HashMap<HostId, SocketAddr> = [
            (1, "10.0.0.1:1".parse().expect("addr")),
            (5, "10.0.0.5:5".parse().expect("addr")),
        ]
        .into();
        let addr = |host| address(Some(&m), &configured, host);
        assert_eq!(addr(1), "127.0.0.1:7001".parse().ok(), "the map's entry");
        assert_eq!(
            addr(10),
            "127.0.0.1:7010".parse().ok(),
            "a host joined later"
        );
        assert_eq!(addr(5), "10.0.0.5:5".parse().ok(), "the configuration's");
        assert_eq!(addr(6), None);
        assert_eq!(address(None, &configured, 1), "10.0.0.1:1".parse().ok());
    }

    #[test]
    fn a_refresh_asks_configured_hosts_and_every_member_not_removed() {
        let mut m = map(2);
        m.drain_host(11).expect("drain");
        m.remove_host(11).expect("remove");
        let configured: HashMap<HostId, SocketAddr> =
            [(1, "10.0.0.1:1".parse().expect("addr"))].into();
        assert_eq!(hosts_to_ask(&configured, Some(&m)), vec![1, 2, 3, 4, 10]);
        assert_eq!(hosts_to_ask(&configured, None), vec![1]);
    }
}
