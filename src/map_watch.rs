//! Keeps a host on the live cluster map: it reads the map from the meta group every
//! [`MAP_POLL_EVERY`], stores each newer one in the host's data dir (a restart starts from it,
//! see [`map_at_start`]), links the host to every member it has no Raft link to, hands the map
//! to the router (which routes keys and admits Raft traffic by it), and makes the host's
//! replicas follow it. Storing (tried; a failure is retried at the next poll) and linking come
//! before the router takes the map, so a host that reports an epoch links every host it lists.
//! Without a meta leader it takes the newest map a peer routes by, for routing, admission and
//! links only (see `follow_peers`).
//!
//! A shard the map places on this host and the host does not hold gets a joining replica,
//! which waits, configured as nothing, until the shard's leader adds it as a learner and
//! sends it a snapshot; not while another local replica still owns some of its slots.
//!
//! A split applied here starts the child's replica at once, from the state the split stored.
//!
//! A replica the map no longer places here is destroyed only once its
//! own configuration no longer lists this host: the map drops a replica only after the
//! shard's Raft group has removed it, and a replica that missed its removal (it was away)
//! keeps its data rather than risk deleting a copy its group still counts.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use crate::client::{Client, ClientSettings};
use actix::prelude::*;
use shardkv_actors::messages::{Persist, WriteBatch};
use shardkv_actors::peer::links::PeerDialer;
use shardkv_actors::router::{
    AddLocalReplica, GetHostStatus, RemoveLocalReplica, RouterActor, SetMap,
};
use shardkv_actors::schema::{meta, owned_record, raft_records};
use shardkv_actors::shard::SplitApplied;
use shardkv_actors::ActorError;
use shardkv_transport::slot::Slot;
use shardkv_transport::wire::ReplicaInfo;
use shardkv_transport::{ClusterMap, HostId, ShardId};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, error, info, warn};

use crate::certs::CLI_CLIENT;
use crate::config::{ClusterConfig, HostConfig};
use crate::replicas::ReplicaFactory;

/// How often a host reads the live map. Changes are rare and every step of a move waits
/// for the hosts concerned to show it, so a second costs moves little and the meta group
/// one linearizable read per host per second.
pub const MAP_POLL_EVERY: Duration = Duration::from_secs(1);

/// Whether `info`'s configuration lists `host` (voter, leaving voter or learner).
fn lists(info: &ReplicaInfo, host: HostId) -> bool {
    info.voters.contains(&host)
        || info.voters_outgoing.contains(&host)
        || info.learners.contains(&host)
}

/// The map a host starts from: the one it stored last (`stored`, read from its data dir) if
/// that is past `day0`, else `day0`.
///
/// A stored map that cannot be read is logged loudly and `day0` is used: the stored map is
/// only this host's copy of what the meta group holds, so the cost is routing by day 0 until
/// the meta group answers (how every start went before maps were stored), and the watcher
/// overwrites it with the next map it takes. Refusing to start would keep a host down over a
/// copy the cluster can give it again.
pub fn map_at_start(
    day0: ClusterMap,
    stored: Result<Option<ClusterMap>, ActorError>,
) -> ClusterMap {
    match stored {
        Ok(Some(map)) if map.epoch() > day0.epoch() => {
            info!(
                epoch = map.epoch(),
                "starting from the cluster map stored last"
            );
            map
        }
        Ok(_) => day0,
        Err(e) => {
            error!(
                error = %e,
                "the cluster map stored in the data dir cannot be used; starting from the \
                 day-0 map until the meta group answers (the next map taken replaces it)"
            );
            day0
        }
    }
}

/// See the module docs.
pub struct MapWatcher {
    host: HostId,
    client: Client,
    router: Addr<RouterActor>,
    factory: Rc<ReplicaFactory>,
    /// Adds the Raft links a newer map needs.
    dialer: PeerDialer,
    /// The shards this host holds a replica of.
    hosted: BTreeSet<ShardId>,
    /// The epoch of the last map acted on.
    epoch: u64,
    /// The epoch of the map stored in the data dir.
    stored: u64,
    /// Replicas the map dropped that still list this host (logged once each).
    kept: BTreeSet<ShardId>,
    /// Replicas taken out of service whose deletion failed: never started again by this
    /// process (two replicas over the same rows would corrupt them); a restart, which starts
    /// them from their rows, retries the removal.
    failed: BTreeSet<ShardId>,
    /// This data dir replaced a lost one: no replica joins until the map lists this data
    /// dir's incarnation (see `meta::is_awaiting_replace`).
    awaiting_replace: bool,
}

impl MapWatcher {
    /// A watcher for host `me`, reading the map with the host's own certificate; the host
    /// started from map `start` (stored, routed by and linked).
    pub fn new(
        cfg: &ClusterConfig,
        me: &HostConfig,
        router: Addr<RouterActor>,
        factory: Rc<ReplicaFactory>,
        dialer: PeerDialer,
        hosted: BTreeSet<ShardId>,
        start: &ClusterMap,
    ) -> Result<Self, crate::client::ClientError> {
        let mut settings = ClientSettings::from_config(&cfg.cluster, CLI_CLIENT);
        settings.tls.cert = me.cert.clone();
        settings.tls.key = me.key.clone();
        settings.deadline = MAP_POLL_EVERY * 3;
        settings.attempt_timeout = MAP_POLL_EVERY;
        Ok(MapWatcher {
            host: me.host.id,
            client: Client::new(settings)?,
            router,
            factory,
            dialer,
            hosted,
            epoch: start.epoch(),
            stored: start.epoch(),
            kept: BTreeSet::new(),
            failed: BTreeSet::new(),
            awaiting_replace: false,
        })
    }

    /// For a data dir that replaced a lost one: no replica joins until the map lists it.
    pub fn awaiting_replace(mut self, awaiting: bool) -> Self {
        self.awaiting_replace = awaiting;
        self
    }

    /// Runs the watcher on the host's actor system until the host stops. A split this host's
    /// replicas apply (`splits`) starts the child's replica at once, before the map lists it.
    pub fn spawn(mut self, mut splits: UnboundedReceiver<SplitApplied>) {
        actix::spawn(async move {
            let mut failures = 0u64;
            let mut polls = tokio::time::interval(MAP_POLL_EVERY);
            polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            polls.tick().await;
            loop {
                tokio::select! {
                    _ = polls.tick() => {}
                    Some(split) = splits.recv() => {
                        let (parent, child) = (split.parent, split.child);
                        info!(parent, child, "split applied: starting the new shard's replica");
                        self.join(split.child).await;
                        continue;
                    }
                }
                match self.poll().await {
                    Ok(()) => failures = 0,
                    Err(why) => {
                        failures += 1;
                        // Once a minute while it lasts: routing goes on by the last map.
                        if failures % 60 == 1 {
                            warn!(host = self.host, %why, "cannot read the cluster map from the meta group");
                        } else {
                            debug!(host = self.host, %why, "cluster map not read");
                        }
                    }
                }
            }
        });
    }

    async fn poll(&mut self) -> Result<(), String> {
        let map = match self.client.read_map().await {
            Ok(read) => read.map,
            Err(e) => {
                self.follow_peers().await;
                return Err(e.to_string());
            }
        };
        if map.epoch() > self.stored {
            self.store(&map).await;
        }
        if map.epoch() > self.epoch {
            self.dialer.follow(&map);
            self.router.do_send(SetMap(map.clone()));
            self.epoch = map.epoch();
        }
        if self.awaiting_replace && !self.replaced(&map).await {
            return Ok(());
        }
        // Every time, not only on a new epoch: a step that failed is retried.
        self.reconcile(&map).await;
        Ok(())
    }

    /// Without a meta leader, routes, admits and links by the newest map a peer routes by: a
    /// host that restarts with a map older than a move of the meta group would otherwise drop
    /// the traffic of the meta group's new voters, and the meta group could not elect the
    /// leader that would tell it the new map. Replicas are not joined or retired on it: that
    /// waits for a linearizable read.
    async fn follow_peers(&mut self) {
        let Some(map) = self.client.newest_known_map().await else {
            return;
        };
        if map.epoch() > self.epoch {
            info!(
                epoch = map.epoch(),
                "taking a newer cluster map from a peer"
            );
            if map.epoch() > self.stored {
                self.store(&map).await;
            }
            self.dialer.follow(&map);
            self.router.do_send(SetMap(map.clone()));
            self.epoch = map.epoch();
        }
    }

    /// Whether `map` lists this data dir's incarnation for this host, so that a data dir that
    /// replaced a lost one may hold replicas; records it durably once it does.
    async fn replaced(&mut self, map: &ClusterMap) -> bool {
        let mine = self.factory.schema.incarnation;
        if map.host(self.host).map(|h| h.incarnation) != Some(mine) {
            return false;
        }
        let ops = vec![meta::replaced_op()];
        match self.factory.storage.send(Persist(WriteBatch { ops })).await {
            Ok(Ok(())) => {
                info!(
                    host = self.host,
                    "the cluster map lists this data dir: joining the shards placed here"
                );
                self.awaiting_replace = false;
                true
            }
            Ok(Err(e)) => {
                warn!(error = %e, "cannot record the replacement; retrying");
                false
            }
            Err(e) => {
                warn!(error = %e, "storage unreachable");
                false
            }
        }
    }

    /// Stores `map` as the one to start from; a failure is logged and retried at the next
    /// poll (routing goes on by the map meanwhile).
    async fn store(&mut self, map: &ClusterMap) {
        let ops = vec![meta::last_map_op(map)];
        match self.factory.storage.send(Persist(WriteBatch { ops })).await {
            Ok(Ok(())) => self.stored = map.epoch(),
            Ok(Err(e)) => warn!(epoch = map.epoch(), error = %e, "cannot store the cluster map"),
            Err(e) => warn!(epoch = map.epoch(), error = %e, "storage unreachable"),
        }
    }

    async fn reconcile(&mut self, map: &ClusterMap) {
        let want: BTreeSet<ShardId> = map.shards_of_host(self.host).collect();
        for shard in want.difference(&self.hosted.clone()) {
            let slots = map
                .shard(*shard)
                .map(|s| s.slots.clone())
                .unwrap_or_default();
            if self.owned_here(*shard, &slots) {
                continue;
            }
            self.join(*shard).await;
        }
        // A shard this map does not know is newer than it (a split applied here first).
        for shard in self.hosted.clone().difference(&want) {
            if map.shard(*shard).is_some() {
                self.retire(map, *shard).await;
            }
        }
    }

    /// Whether a joining replica of `shard`, which owns `slots` in the map, must wait: it
    /// holds nothing here yet, and another replica on this host still owns some of its slots
    /// (a parent that has not applied the split yet, which then creates it with its rows; or
    /// a replica whose removal is pending). Two state machines over the same rows would
    /// corrupt them. A replica with state here starts from it and never waits.
    fn owned_here(&self, shard: ShardId, slots: &[(Slot, Slot)]) -> bool {
        let schema = &self.factory.schema;
        let owners = match raft_records::has_state(schema, shard) {
            Ok(true) => return false,
            Ok(false) => raft_records::hosted_shards(schema),
            Err(e) => Err(e),
        };
        let owners = match owners {
            Ok(o) => o,
            Err(e) => {
                warn!(shard, error = %e, "cannot read which shards this host holds");
                return true;
            }
        };
        for other in owners {
            match owned_record::stored_owned(schema, other) {
                Ok(owned) if owned.overlaps(slots) => {
                    debug!(
                        shard,
                        other, "not joining yet: slots still owned by a local replica"
                    );
                    return true;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(shard, other, error = %e, "cannot read a shard's owned slots");
                    return true;
                }
            }
        }
        false
    }

    /// Starts a replica of `shard` from what the data dir holds of it (nothing: a joining
    /// replica; a split's child: its stored state) and hands it to the router. Never while
    /// the host holds one: two replicas over the same rows would corrupt them.
    async fn join(&mut self, shard: ShardId) {
        if self.failed.contains(&shard) || self.hosted.contains(&shard) {
            return;
        }
        let Ok(status) = self.router.send(GetHostStatus).await else {
            return;
        };
        if status.replicas.iter().any(|r| r.shard == shard) {
            self.hosted.insert(shard);
            return;
        }
        let replica = match self.factory.start_joining(shard) {
            Ok(r) => r,
            Err(e) => return warn!(shard, error = %e, "cannot start a replica the map places here"),
        };
        match self.router.send(AddLocalReplica { shard, replica }).await {
            Ok(Ok(())) => {
                info!(
                    shard,
                    "joining: waiting for the shard's leader to add this replica"
                );
                self.hosted.insert(shard);
            }
            // Already held: the router's replica goes on; the new one stops, its data kept.
            Ok(Err(extra)) => {
                if let Err(e) = self.factory.stop_unused(shard, extra).await {
                    warn!(shard, error = %e, "could not stop a replica started twice");
                }
                self.hosted.insert(shard);
            }
            Err(e) => warn!(shard, error = %e, "router unreachable"),
        }
    }

    /// Whether the leader of `shard` (among its replicas in `map`) still lists this host; true
    /// when no leader answers, so that nothing is deleted on a guess.
    async fn leader_lists_me(&self, map: &ClusterMap, shard: ShardId) -> bool {
        let hosts: Vec<HostId> = map
            .replicas_of(shard)
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default();
        for h in hosts {
            let Ok(status) = self.client.host_status(h).await else {
                continue;
            };
            if let Some(r) = status
                .replicas
                .iter()
                .find(|r| r.shard == shard && r.is_leader)
            {
                return lists(r, self.host);
            }
        }
        true
    }

    /// Destroys this host's replica of `shard` once neither its own configuration nor its
    /// group's leader lists this host.
    async fn retire(&mut self, map: &ClusterMap, shard: ShardId) {
        let Ok(status) = self.router.send(GetHostStatus).await else {
            return;
        };
        let Some(info) = status.replicas.iter().find(|r| r.shard == shard) else {
            self.hosted.remove(&shard);
            return;
        };
        // A replica removed by a leave it never heard of (the leader stops sending to it once
        // it is out) still lists itself; the group's leader then says.
        let listed = lists(info, self.host) && self.leader_lists_me(map, shard).await;
        if listed {
            if self.kept.insert(shard) {
                warn!(
                    shard,
                    "the map no longer places this shard here, but this replica's configuration \
                     still lists this host (it has not applied its removal): keeping its data"
                );
            }
            return;
        }
        let Ok(Some(replica)) = self.router.send(RemoveLocalReplica { shard }).await else {
            self.hosted.remove(&shard);
            return;
        };
        match self.factory.destroy(shard, replica).await {
            Ok(()) => {
                self.hosted.remove(&shard);
                self.kept.remove(&shard);
            }
            Err(e) => {
                error!(
                    shard,
                    error = %e,
                    "could not delete a removed replica's data; it is out of service, and a \
                     restart of this host retries the removal"
                );
                self.failed.insert(shard);
                self.hosted.remove(&shard);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardkv_transport::Layout;

    fn day0() -> ClusterMap {
        let layout = Layout {
            shards: 1,
            replicas: 1,
            pins: vec![],
            placement: vec![(1, vec![1])],
        };
        ClusterMap::day0(&layout, &[(1, "127.0.0.1:7101".into())]).expect("a day-0 map")
    }

    #[test]
    fn a_stored_map_past_day_0_is_the_one_to_start_from() {
        let mut later = day0();
        later.add_host(2, "127.0.0.1:7102").expect("add");
        assert_eq!(map_at_start(day0(), Ok(Some(later.clone()))), later);
    }

    #[test]
    fn without_a_later_stored_map_or_with_an_unreadable_one_day_0_is_used() {
        assert_eq!(map_at_start(day0(), Ok(None)), day0());
        assert_eq!(map_at_start(day0(), Ok(Some(day0()))), day0());
        let corrupt = ActorError::Corrupt {
            what: "stored cluster map".into(),
            detail: "truncated".into(),
        };
        assert_eq!(map_at_start(day0(), Err(corrupt)), day0());
    }
}
