//! The scaler conformance suite against the Redis scaler on a real local Redis Cluster (three
//! masters with a replica each): hash-tagged keys, sharded pub/sub, control messages and
//! presence across shards.

use std::sync::Arc;

use sss_server::scaler::{RedisOptions, RedisScaler, Scaler};
use sss_tests::conformance::{Backend, Cluster};
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
