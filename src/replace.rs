//! `shardkv host replace ID`: a host whose data dir was lost comes back as a new incarnation
//! of itself, its replicas re-added as learners and promoted once caught up.
//!
//! A host started on an empty data dir that its peers knew by another incarnation holds no
//! replica and is refused by its peers (see `shardkv::bootstrap` and
//! `shardkv_actors::incarnations`), so it never votes with what its predecessor forgot. The
//! replacement, in this order, each step a no-op once done so a re-run continues it:
//! 1. every shard the host held takes the lost replica out of its Raft group (a group of
//!    three runs on two voters meanwhile): from here on no configuration counts the old
//!    incarnation;
//! 2. the live map records the new incarnation and makes the host's replicas learners
//!    ([`ClusterMap::replace_host`]); peers now accept the new incarnation, and the host's
//!    map watcher starts an empty replica of each of its shards;
//! 3. per shard: the leader adds it as a learner, it catches up by snapshot, the leader makes
//!    it a voter again, and the map records it a voter.
//!
//! Step 1 comes first because a replica of the new incarnation, once admitted, answers vote
//! requests with an empty log: it must never be a voter of a configuration until it has
//! caught up.

use shardkv_transport::wire::ReplicaTarget;
use shardkv_transport::{ClusterMap, HostId, ReplicaRole, ShardId};

use crate::client::Client;
use crate::moves::{
    change_until, lists, replica_on, target, wait_caught_up, wait_for, wait_leader, MoveError,
};

/// Replaces host `host`, which runs on a new data dir (see the module docs). `say` reports
/// each step.
pub async fn replace_host(
    admin: &Client,
    host: HostId,
    say: &dyn Fn(&str),
) -> Result<(), MoveError> {
    let map = admin.read_map().await?.map;
    if map.host(host).is_none() {
        return Err(MoveError::Refused(format!(
            "host {host} is not a member of the cluster"
        )));
    }
    let status = admin.host_status(host).await.map_err(|e| {
        MoveError::Refused(format!(
            "host {host} does not answer ({e}): start it on its new data dir first"
        ))
    })?;
    let incarnation = status.incarnation;
    let shards: Vec<ShardId> = map.shards_of_host(host).collect();
    let recorded = map.host(host).map(|h| h.incarnation) == Some(incarnation);
    if !recorded {
        if !status.replicas.is_empty() {
            return Err(MoveError::Refused(format!(
                "host {host} holds replicas under its new data dir (it started while no peer \
                 could tell it had lost its data): stop it, empty its data dir, start it again \
                 with its peers up, then re-run"
            )));
        }
        for &shard in &shards {
            say(&format!(
                "shard {shard}: taking the lost replica out of its group"
            ));
            take_out(admin, &map, shard, host).await?;
        }
        say("recording the new incarnation in the cluster map");
        admin
            .change_map(|m: &mut ClusterMap| m.replace_host(host, incarnation))
            .await?;
    }
    let map = admin.read_map().await?.map;
    for &shard in &shards {
        if map.replicas_of(shard).and_then(|r| r.get(&host)) == Some(&ReplicaRole::Voter) {
            continue;
        }
        say(&format!(
            "shard {shard}: adding the new replica as a learner"
        ));
        wait_for(
            &format!("host {host} to start its replica of shard {shard}"),
            || async { Ok(replica_on(admin, host, shard).await.is_some()) },
        )
        .await?;
        let learner = [target(host, ReplicaTarget::Learner)];
        change_until(admin, &map, shard, host, &learner, |l| lists(l, host)).await?;
        say(&format!("shard {shard}: waiting for it to catch up"));
        wait_caught_up(admin, &map, shard, host).await?;
        let voter = [target(host, ReplicaTarget::Voter)];
        change_until(admin, &map, shard, host, &voter, |l| {
            l.voters.contains(&host)
        })
        .await?;
        admin
            .change_map(|m: &mut ClusterMap| m.promote(shard, host))
            .await?;
        say(&format!("shard {shard}: a voter again"));
    }
    say("done");
    Ok(())
}

/// Takes `host` out of `shard`'s Raft configuration (as voter or learner), unless it is not
/// in it. Refused while the group is joint (an interrupted move: finish it first).
async fn take_out(
    admin: &Client,
    map: &ClusterMap,
    shard: ShardId,
    host: HostId,
) -> Result<(), MoveError> {
    let (_, leader) = wait_leader(admin, map, shard, host).await?;
    if !leader.voters_outgoing.is_empty() {
        return Err(MoveError::Refused(format!(
            "shard {shard} is in the middle of a replica move (joint configuration): finish it \
             with `shardkv replica move` first"
        )));
    }
    let removed = [target(host, ReplicaTarget::Removed)];
    change_until(admin, map, shard, host, &removed, |l| !lists(l, host)).await
}
