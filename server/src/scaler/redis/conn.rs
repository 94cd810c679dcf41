//! The command connection of an instance: one Redis, or a Redis Cluster routed by hash slot.

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisFuture, Value};

/// Where an instance's commands and scripts go. Every script names its channel's keys, which
/// share one hash tag, so a Redis Cluster runs each on the master of that channel's slot (and
/// the connection follows `MOVED` / `ASK` across resharding and failover).
#[derive(Clone)]
pub(super) enum Commands {
    /// One Redis: a connection that reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster: one connection per master, refreshed with the slot map.
    Cluster(ClusterConnection),
}

impl Commands {
    /// The command that publishes on a pub/sub channel from a script: sharded pub/sub on a
    /// cluster (a publication then crosses only its shard), plain pub/sub on one Redis.
    pub(super) fn publish_command(&self) -> &'static str {
        match self {
            Self::Single(_) => "PUBLISH",
            Self::Cluster(_) => "SPUBLISH",
        }
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
