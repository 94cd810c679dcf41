//! The scaler conformance suite against the Redis scaler on a real local Redis Cluster (three
//! masters with a replica each): hash-tagged keys, sharded pub/sub, control messages and
//! presence across shards; and a channel whose slot moves to another master mid-stream.

use std::sync::Arc;

use sss_server::scaler::{RedisOptions, RedisScaler, Scaler};
use sss_tests::conformance::{msg, publish_retrying, start, Backend, Cluster};
use sss_tests::services::{forget_redis_channel, unique_prefix, RedisCluster};
use sss_tests::within;

/// A Redis Cluster of the test's own; each scaler cluster gets its own key prefix.
struct Sharded {
    cluster: RedisCluster,
}

#[async_trait::async_trait]
impl Backend for Sharded {
    async fn cluster(&self, instances: usize, history_size: usize) -> Cluster {
        let prefix = unique_prefix();
        let opts = RedisOptions {
            history_size,
            prefix: prefix.clone(),
            ..RedisOptions::default()
        };
        let urls = self.cluster.urls();
        let first = within(
            "redis cluster connect",
            RedisScaler::connect_cluster(&urls, opts),
        )
        .await
        .expect("connects to the redis cluster");
        let mut all: Vec<Arc<dyn Scaler>> = Vec::with_capacity(instances);
        for _ in 1..instances {
            all.push(Arc::new(first.instance().expect("instance")));
        }
        all.insert(0, Arc::new(first));
        Cluster {
            instances: all,
            forget: Box::new(move |channel| {
                let (urls, prefix) = (urls.clone(), prefix.clone());
                Box::pin(async move {
                    let client = redis::cluster::ClusterClient::new(urls).expect("cluster client");
                    let mut conn = client
                        .get_async_connection()
                        .await
                        .expect("cluster connection");
                    forget_redis_channel(&mut conn, &prefix, &channel).await;
                })
            }),
        }
    }
}

async fn backend() -> Sharded {
    Sharded {
        cluster: RedisCluster::spawn().await,
    }
}

sss_tests::conformance_tests!(backend());

/// The slot of a channel moves to another master (MOVED / ASK for the scripts, a sharded
/// subscription ended by Redis) while it is published to: the subscriber instance delivers every
/// record once, in order, in one epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_slot_moves_loses_nothing() {
    sss_tests::init_tracing();
    let backend = backend().await;
    let mut started = start(&backend, 2, 1000).await;
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
    let (from, to) = within("the slot moves", backend.cluster.move_slot_of("{m}")).await;
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
    assert_eq!(backend.cluster.master_of("{m}").await, to);
    b.expect_quiet(a.scaler.as_ref(), "marker").await;
    a.scaler.stop().await;
    b.scaler.stop().await;
}
