//! RouterActor tests: stopped replicas, and replicas added and removed while it runs.

use shardkv_transport::wire::{MapRequest, ReadConsistency, Request};

use super::map::map_op;
use super::*;
use crate::fatal::FatalReporter;
use crate::replica::transfer::SetPreferredLeader;

/// An actor that stops as soon as it starts: a replica that failed.
struct Stopped;

impl Actor for Stopped {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

macro_rules! refuse {
    ($($msg:ty => $result:ty),*) => {$(
        impl Handler<$msg> for Stopped {
            type Result = $result;
            fn handle(&mut self, _: $msg, _: &mut Self::Context) -> Self::Result {
                unreachable!("a stopped actor handles nothing")
            }
        }
    )*};
}
refuse!(ClientRequest => (), StepRaft => (),
    TransferLeadership => bool, StepSnapshot => (),
    ChangeReplicas => MessageResult<ChangeReplicas>,
    ProposeSplit => MessageResult<ProposeSplit>,
    TransferLeaderTo => MessageResult<TransferLeaderTo>, StopReplica => (),
    GetStatus => MessageResult<GetStatus>);

/// A replica that answers every client request `Ok` (and nothing else is sent to it here).
struct Answering;

impl Actor for Answering {
    type Context = Context<Self>;
}

impl Handler<ClientRequest> for Answering {
    type Result = ();
    fn handle(&mut self, msg: ClientRequest, _: &mut Self::Context) {
        let _ = msg.reply.send(Response::Ok);
    }
}

macro_rules! ignore {
    ($($msg:ty => $result:ty),*) => {$(
        impl Handler<$msg> for Answering {
            type Result = $result;
            fn handle(&mut self, _: $msg, _: &mut Self::Context) -> Self::Result {
                unreachable!("the test sends only client requests")
            }
        }
    )*};
}
ignore!(StepRaft => (), TransferLeadership => bool, StepSnapshot => (),
    ChangeReplicas => MessageResult<ChangeReplicas>,
    ProposeSplit => MessageResult<ProposeSplit>,
    TransferLeaderTo => MessageResult<TransferLeaderTo>, StopReplica => (),
    GetStatus => MessageResult<GetStatus>);

// The router tells every replica its preferred leader as it starts: taken and ignored.
impl Handler<SetPreferredLeader> for Stopped {
    type Result = ();
    fn handle(&mut self, _: SetPreferredLeader, _: &mut Self::Context) {}
}
impl Handler<SetPreferredLeader> for Answering {
    type Result = ();
    fn handle(&mut self, _: SetPreferredLeader, _: &mut Self::Context) {}
}

/// The router's view of a replica played by `actor`.
fn local_replica<A>(actor: Addr<A>) -> LocalReplica
where
    A: Actor<Context = Context<A>>
        + Handler<ClientRequest>
        + Handler<StepRaft>
        + Handler<GetStatus>
        + Handler<TransferLeadership>
        + Handler<TransferLeaderTo>
        + Handler<SetPreferredLeader>
        + Handler<StepSnapshot>
        + Handler<ChangeReplicas>
        + Handler<ProposeSplit>
        + Handler<StopReplica>,
{
    LocalReplica {
        requests: actor.clone().recipient(),
        raft: actor.clone().recipient(),
        status: actor.clone().recipient(),
        transfer: actor.clone().recipient(),
        transfer_to: actor.clone().recipient(),
        preferred: actor.clone().recipient(),
        snapshots: actor.clone().recipient(),
        changes: actor.clone().recipient(),
        split: actor.clone().recipient(),
        slots: crate::shard::PublishedSlots::default(),
        stop: actor.clone().recipient(),
        stop_shard: actor.recipient(),
    }
}

/// A router of host 1 of a one-shard cluster delivering to `local`, with its storage in `dir`.
fn router(dir: &std::path::Path, local: HashMap<ShardId, LocalReplica>) -> Addr<RouterActor> {
    let schema = crate::schema::Schema::open(dir, 1 << 24, "t", 1).expect("schema");
    let storage = crate::storage::StorageActor::new(schema, FatalReporter::channel().0)
        .expect("storage")
        .start();
    let layout = Layout {
        shards: 1,
        replicas: 3,
        pins: Vec::new(),
        placement: vec![(1, vec![1, 2, 3])],
    };
    let addrs: Vec<(HostId, String)> = (1..=3).map(|h| (h, format!("127.0.0.1:{h}"))).collect();
    let settings = RouterSettings {
        host: 1,
        cluster: "t".into(),
        value_bytes_max: 1024,
        map: ClusterMap::day0(&layout, &addrs).expect("day-0 map"),
        layout,
        incarnation: 1,
        peer_incarnations: Vec::new(),
    };
    RouterActor::new(settings, local, storage.recipient()).start()
}

/// What `router` answers to `request`.
async fn ask(router: &Addr<RouterActor>, request: Request) -> Response {
    ClientRequest::ask(&router.clone().recipient(), request)
        .await
        .expect("router answers")
}

fn get() -> Request {
    Request {
        client_id: 0,
        seq: 0,
        op: Op::Get {
            key: b"k".to_vec(),
            consistency: ReadConsistency::Linearizable,
        },
    }
}

#[actix_rt::test]
async fn a_stopped_replica_is_answered_retryable_so_the_client_tries_another() {
    let stopped = Stopped.start();
    while stopped.connected() {
        tokio::task::yield_now().await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let router = router(dir.path(), HashMap::from([(1, local_replica(stopped))]));
    let resp = ask(&router, get()).await;
    assert!(matches!(resp, Response::Unavailable(_)), "{resp:?}");
}

#[actix_rt::test]
async fn a_replica_added_at_runtime_serves_and_once_removed_the_shard_is_not_hosted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let router = router(dir.path(), HashMap::new());
    let resp = ask(&router, get()).await;
    assert!(
        matches!(resp, Response::NoReplicaHere { shard: 1, .. }),
        "{resp:?}"
    );

    let added = router
        .send(AddLocalReplica {
            shard: 1,
            replica: local_replica(Answering.start()),
        })
        .await
        .expect("router answers");
    assert!(added.is_ok());
    assert_eq!(ask(&router, get()).await, Response::Ok);

    let second = router
        .send(AddLocalReplica {
            shard: 1,
            replica: local_replica(Answering.start()),
        })
        .await
        .expect("router answers");
    assert!(
        second.is_err(),
        "a second replica of a hosted shard is refused"
    );

    let removed = router
        .send(RemoveLocalReplica { shard: 1 })
        .await
        .expect("router answers");
    assert!(removed.is_some());
    let resp = ask(&router, get()).await;
    assert!(
        matches!(resp, Response::NoReplicaHere { shard: 1, .. }),
        "{resp:?}"
    );
    let transfer = router
        .send(TransferShardLeader { shard: 1, to: 2 })
        .await
        .expect("router answers");
    assert!(
        matches!(transfer, Response::NoReplicaHere { shard: 1, .. }),
        "{transfer:?}"
    );
    let again = router
        .send(RemoveLocalReplica { shard: 1 })
        .await
        .expect("router answers");
    assert!(again.is_none());
}

fn map_at(epoch: u64) -> Vec<u8> {
    let layout = Layout {
        shards: 1,
        replicas: 1,
        pins: Vec::new(),
        placement: vec![(1, vec![1])],
    };
    let mut map = ClusterMap::day0(&layout, &[(1, "127.0.0.1:1".into())]).expect("day-0 map");
    for h in 2..=epoch {
        map.add_host(h, &format!("127.0.0.1:{h}")).expect("add");
    }
    assert_eq!(map.epoch(), epoch);
    map.encode()
}

#[test]
fn a_map_change_must_be_a_valid_map_with_a_later_epoch() {
    let ok = map_op(MapRequest::Cas {
        expected: Some(map_at(2)),
        new: map_at(3),
    });
    assert!(matches!(ok, Ok(Op::Cas { .. })), "{ok:?}");
    assert!(map_op(MapRequest::Cas {
        expected: None,
        new: map_at(2)
    })
    .is_ok());
    for (expected, new) in [
        (Some(map_at(3)), map_at(3)),
        (Some(map_at(3)), map_at(2)),
        (None, map_at(1)),
        (None, b"not a map".to_vec()),
    ] {
        let refused = map_op(MapRequest::Cas { expected, new });
        assert!(matches!(refused, Err(Response::Invalid(_))), "{refused:?}");
    }
}

#[actix_rt::test]
async fn the_current_map_is_answered_by_any_host_even_without_a_meta_replica() {
    let dir = tempfile::tempdir().expect("temp dir");
    let router = router(dir.path(), HashMap::new());
    let read = router
        .send(MapOp(MapRequest::Read))
        .await
        .expect("router answers");
    assert!(
        matches!(read, Response::NoReplicaHere { shard: 0, .. }),
        "a read needs the meta group: {read:?}"
    );

    let mut newer = ClusterMap::decode(&map_at(1)).expect("a map");
    newer.add_host(9, "127.0.0.1:9").expect("add");
    router.do_send(SetMap(newer.clone()));
    let current = router
        .send(MapOp(MapRequest::Current))
        .await
        .expect("router answers");
    let Response::Value(Some(bytes)) = current else {
        panic!("the current map: {current:?}");
    };
    assert_eq!(ClusterMap::decode(&bytes).expect("valid"), newer);
}

/// A replica that answers every client request with its shard's id (as `Invalid`), so a test
/// sees which replica a request reached.
struct Named(ShardId);

impl Actor for Named {
    type Context = Context<Self>;
}

impl Handler<ClientRequest> for Named {
    type Result = ();
    fn handle(&mut self, msg: ClientRequest, _: &mut Self::Context) {
        let _ = msg
            .reply
            .send(Response::Invalid(format!("shard {}", self.0)));
    }
}

macro_rules! ignore_named {
    ($($msg:ty => $result:ty),*) => {$(
        impl Handler<$msg> for Named {
            type Result = $result;
            fn handle(&mut self, _: $msg, _: &mut Self::Context) -> Self::Result {
                unreachable!("the test sends only client requests")
            }
        }
    )*};
}
ignore_named!(StepRaft => (), TransferLeadership => bool, StepSnapshot => (),
    ChangeReplicas => MessageResult<ChangeReplicas>,
    ProposeSplit => MessageResult<ProposeSplit>,
    TransferLeaderTo => MessageResult<TransferLeaderTo>, StopReplica => (),
    GetStatus => MessageResult<GetStatus>);

impl Handler<SetPreferredLeader> for Named {
    type Result = ();
    fn handle(&mut self, _: SetPreferredLeader, _: &mut Self::Context) {}
}

#[actix_rt::test]
async fn a_key_goes_to_the_local_replica_owning_its_slot_before_the_map_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = slot(b"k");
    // The map (day 0, one shard) routes every key to shard 1; a split applied here handed
    // the slot of "k" to shard 9, whose replica runs here too.
    let parent = local_replica(Named(1).start());
    parent.slots.publish(vec![(0, s - 1)]);
    let child = local_replica(Named(9).start());
    child.slots.publish(vec![(s, 16383)]);
    let routed = router(dir.path(), HashMap::from([(1, parent), (9, child)]));
    let resp = ask(&routed, get()).await;
    assert_eq!(resp, Response::Invalid("shard 9".into()));

    // No local replica owns it (the map's one is still joining): the map decides.
    let dir = tempfile::tempdir().expect("temp dir");
    let joining = local_replica(Named(1).start());
    let routed = router(dir.path(), HashMap::from([(1, joining)]));
    let resp = ask(&routed, get()).await;
    assert_eq!(resp, Response::Invalid("shard 1".into()));
}
