//! The Redis scaler as a conformance [`Backend`]: on one `redis-server` or on a local Redis
//! Cluster, each scaler cluster with a key prefix of its own.

use sss_server::scaler::{RedisOptions, RedisScaler};

use crate::conformance::{instances, Backend, Cluster};
use crate::services::{
    forget_redis_channel, redis_admin, unique_prefix, RedisCluster, RedisServer,
};
use crate::within;

/// Where the scalers' Redis is.
#[derive(Debug)]
pub enum RedisBackend {
    /// One Redis server (see [`RedisServer::start`]).
    Single(RedisServer),
    /// A local Redis Cluster (see [`RedisCluster::spawn`]).
    Cluster(RedisCluster),
}

/// What `forget` connects to.
#[derive(Clone)]
enum Target {
    Url(String),
    Nodes(Vec<String>),
}

#[async_trait::async_trait]
impl Backend for RedisBackend {
    async fn cluster(&self, n: usize, history_size: usize) -> Cluster {
        let prefix = unique_prefix();
        let opts = RedisOptions {
            history_size,
            prefix: prefix.clone(),
            ..RedisOptions::default()
        };
        let connect = async {
            match self {
                Self::Single(server) => RedisScaler::connect(server.url(), opts).await,
                Self::Cluster(cluster) => RedisScaler::connect_cluster(&cluster.urls(), opts).await,
            }
        };
        let first = within("redis connect", connect)
            .await
            .expect("connects to redis");
        let target = match self {
            Self::Single(server) => Target::Url(server.url().to_owned()),
            Self::Cluster(cluster) => Target::Nodes(cluster.urls()),
        };
        Cluster {
            instances: instances(first, n, |s| s.instance().expect("instance")),
            forget: Box::new(move |channel| {
                let (target, prefix) = (target.clone(), prefix.clone());
                Box::pin(async move {
                    match target {
                        Target::Url(url) => {
                            let mut admin = redis_admin(&url).await;
                            forget_redis_channel(&mut admin, &prefix, &channel).await;
                        }
                        Target::Nodes(urls) => {
                            let client =
                                redis::cluster::ClusterClient::new(urls).expect("cluster client");
                            let mut conn = client
                                .get_async_connection()
                                .await
                                .expect("cluster connection");
                            forget_redis_channel(&mut conn, &prefix, &channel).await;
                        }
                    }
                })
            }),
        }
    }
}
