//! The scaler conformance suite against the Redis scaler on a real local Redis Cluster (three
//! masters with a replica each): hash-tagged keys, sharded pub/sub, control messages and
//! presence across shards; and a channel whose slot moves to another master mid-stream.

use std::sync::Arc;

use sss_server::scaler::{RedisOptions, RedisScaler, Scaler};
use sss_tests::conformance::{msg, publish_retrying, Backend, Cluster, Node};
use sss_tests::services::{unique_prefix, RedisCluster};
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
                let urls = urls.clone();
                let base = format!("{prefix}:{{{channel}}}");
                Box::pin(async move {
                    // The scaler's keys for one channel share its slot: one DEL on its master.
                    let client = redis::cluster::ClusterClient::new(urls).expect("cluster client");
                    let mut conn = client
                        .get_async_connection()
                        .await
                        .expect("cluster connection");
                    let keys = ["epoch", "seq", "hist"].map(|k| format!("{base}:{k}"));
                    let deleted: u64 = redis::cmd("DEL")
                        .arg(&keys)
                        .query_async(&mut conn)
                        .await
                        .expect("DEL");
                    assert_eq!(deleted, 3, "the channel's keys existed");
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
    let cluster = RedisCluster::spawn().await;
    let prefix = unique_prefix();
    let opts = RedisOptions {
        prefix: prefix.clone(),
        ..RedisOptions::default()
    };
    let a = RedisScaler::connect_cluster(&cluster.urls(), opts)
        .await
        .expect("connects");
    let b = a.instance().expect("instance");
    let mut nodes = Vec::new();
    for s in [a, b] {
        let scaler: Arc<dyn Scaler> = Arc::new(s);
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        scaler.start(tx).await.expect("starts");
        nodes.push(Node { scaler, events });
    }
    let mut b = nodes.pop().expect("b");
    let a = nodes.pop().expect("a");
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
    let (from, to) = within(
        "the slot moves",
        cluster.move_slot_of(&format!("{prefix}:{{m}}:seq")),
    )
    .await;
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
    assert_eq!(cluster.master_of(&format!("{prefix}:{{m}}:seq")).await, to);
    b.expect_quiet(a.scaler.as_ref(), "marker").await;
    a.scaler.stop().await;
    b.scaler.stop().await;
}
