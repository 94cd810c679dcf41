//! The scaler conformance suite against the Redis scaler on a real local Redis Cluster (three
//! masters with a replica each): hash-tagged keys, sharded pub/sub, control messages and
//! presence across shards; and a channel whose slot moves to another master mid-stream.

use sss_tests::conformance::{msg, publish_retrying, start};
use sss_tests::redis_backend::RedisBackend;
use sss_tests::services::RedisCluster;
use sss_tests::within;

/// A Redis Cluster of the test's own.
async fn backend() -> RedisBackend {
    RedisBackend::Cluster(RedisCluster::spawn().await)
}

sss_tests::conformance_tests!(backend());

/// The slot of a channel moves to another master (MOVED / ASK for the scripts, a sharded
/// subscription ended by Redis) while it is published to: the subscriber instance delivers every
/// record once, in order, in one epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_slot_moves_loses_nothing() {
    sss_tests::init_tracing();
    let cluster = RedisBackend::Cluster(RedisCluster::spawn().await);
    let mut started = start(&cluster, 2, 1000).await;
    let RedisBackend::Cluster(cluster) = &cluster else {
        unreachable!("a cluster")
    };
    let mut b = started.nodes.pop().expect("b");
    let a = started.nodes.pop().expect("a");
    b.scaler.subscribe("m").await.expect("subscribe");
    let first = a.scaler.publish("m", "t", &msg(1)).await.expect("publish");
    assert_eq!(b.next_pub().await.1.position, first);
    let publisher = a.scaler.clone();
    let publishing = tokio::spawn(async move {
        let mut positions = Vec::new();
        for n in 2..=200 {
            positions.push(publish_retrying(publisher.as_ref(), "m", n).await);
        }
        positions
    });
    // "{m}": any key with the hash tag of channel m's keys is in their slot.
    let (from, to) = within("the slot moves", cluster.move_slot_of("{m}")).await;
    assert_ne!(from, to);
    let positions = within("publishing", publishing).await.expect("publisher");
    for (p, seq) in positions.iter().zip(2..) {
        assert_eq!(
            *p,
            sss_server::Position::new(first.epoch.clone(), seq),
            "one epoch"
        );
    }
    for p in &positions {
        let (channel, record) = b.next_pub().await;
        assert_eq!((&*channel, &record.position), ("m", p));
    }
    assert_eq!(cluster.master_of("{m}").await, to);
    b.expect_quiet(a.scaler.as_ref(), "marker").await;
    a.scaler.stop().await;
    b.scaler.stop().await;
}
