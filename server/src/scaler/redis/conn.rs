//! The command connection of an instance: one Redis, or a Redis Cluster routed by hash slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// A cluster connection that is replaced by a new one when a request fails for want of a
/// connection or times out.
///
/// Measured here: after a master was killed with SIGKILL and its replica took over, the
/// crate's cluster connection kept timing out every request, to every shard, for as long as
/// the test ran (over 60 s). A new connection learns the slot map afresh and works at once.
pub(super) struct Rebuilt {
    client: ClusterClient,
    conn: Mutex<ClusterConnection>,
    timeout: Duration,
    rebuilding: AtomicBool,
}

impl Rebuilt {
    /// Connects.
    pub(super) async fn connect(client: ClusterClient, timeout: Duration) -> RedisResult<Self> {
        let conn = match tokio::time::timeout(timeout, client.get_async_connection()).await {
            Ok(conn) => conn?,
            Err(_) => return Err(timed_out()),
        };
        Ok(Self {
            client,
            conn: Mutex::new(conn),
            timeout,
            rebuilding: AtomicBool::new(false),
        })
    }

    fn current(&self) -> ClusterConnection {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the connection in the background, once at a time.
    fn rebuild(self: &Arc<Self>) {
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(this.timeout, this.client.get_async_connection()).await {
                Ok(Ok(conn)) => {
                    *this.conn.lock().unwrap_or_else(|e| e.into_inner()) = conn;
                    tracing::info!("redis cluster command connection rebuilt");
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "rebuilding the redis cluster connection failed")
                }
                Err(_) => tracing::warn!("rebuilding the redis cluster connection timed out"),
            }
            this.rebuilding.store(false, Ordering::Release);
        });
    }

    /// Runs `f` on the current connection; a failure that says the connection is gone or
    /// stuck rebuilds it for the next request.
    async fn run<T>(
        self: &Arc<Self>,
        f: impl std::future::Future<Output = RedisResult<T>>,
    ) -> RedisResult<T> {
        let r = match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(timed_out()),
        };
        if let Err(e) = &r {
            if e.is_timeout()
                || e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
            {
                self.rebuild();
            }
        }
        r
    }
}

fn timed_out() -> RedisError {
    std::io::Error::from(std::io::ErrorKind::TimedOut).into()
}

/// Where an instance's commands and scripts go. Every script names its channel's keys, which
/// share one hash tag, so a Redis Cluster runs each on the master of that channel's slot (and
/// the connection follows `MOVED` / `ASK` across resharding and failover).
#[derive(Clone)]
pub(super) enum Commands {
    /// One Redis: a connection that reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster: one connection per master, refreshed with the slot map.
    Cluster(Arc<Rebuilt>),
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
            Self::Cluster(c) => {
                let c = c.clone();
                Box::pin(async move {
                    let mut conn = c.current();
                    c.run(conn.req_packed_command(cmd)).await
                })
            }
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
            Self::Cluster(c) => {
                let c = c.clone();
                Box::pin(async move {
                    let mut conn = c.current();
                    c.run(conn.req_packed_commands(pipeline, offset, count))
                        .await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.current().get_db(),
        }
    }
}
