//! Worker mode: asks and tells handled by separate worker processes, through Redis Streams.
//!
//! A server that holds client connections (a **gateway**) can route chosen ask and tell topics
//! to **workers** instead of running their handlers in process. A worker is a process built
//! with the same API as any server (`Server::builder(..).on_ask(..).on_tell(..)`), started with
//! [`Worker::start`] instead of listening. Gateways and workers can be added, removed and
//! restarted independently while traffic flows; a slow or crashing handler never touches a
//! connection.
//!
//! ```text
//!   clients ──▶ gateway 1 ─┐                 ┌─▶ worker 1
//!   clients ──▶ gateway 2 ─┼─▶ Redis stream ─┼─▶ worker 2      (one consumer group:
//!   clients ──▶ gateway N ─┘   per group     └─▶ worker M       each job to one worker)
//!                   ▲                                 │
//!                   └── <prefix>:w:<group>:gw:<gateway> ◀─┘  replies, tells, boots
//! ```
//!
//! What runs where:
//! - On the gateway: the session parser, the subscription parser and the middleware (a
//!   worker trusts the identity the gateway attached: socket id, user, session), and the
//!   socket's limits (`max_concurrent_asks`, `max_concurrent_tells`).
//! - On a worker: the handler. Its [`Socket`](crate::Socket) has the gateway's socket id, user
//!   and session (no locals); [`Socket::tell`](crate::Socket::tell) and
//!   [`Socket::boot`](crate::Socket::boot) reach the client through its gateway, in the order
//!   the handler called them and before the ask's answer; [`Socket::server`](crate::Socket::server)
//!   is the worker's own server, for cluster-wide operations (publish, broadcast, tell a user,
//!   boot). A worker's server should use the same scaler (Redis) as the gateways.
//!
//! Delivery:
//! - **At least once to workers.** A job is acknowledged (and deleted from the stream) only
//!   after its handler finished and its answer was published. A worker that dies holding jobs
//!   has them claimed by another after [`WorkerOptions::claim_idle`]; their handlers then run
//!   again, so a tell handler may see a message twice.
//! - **An ask is answered at most once, and always.** The gateway keeps each ask it routed
//!   until its answer arrives or [`WorkerOptions::ask_timeout`] passes; a second answer (from a
//!   job run twice) finds nothing and is dropped. An ask no worker answered in time gets
//!   `unavailable`; a job whose ask deadline passed is acknowledged by the worker without
//!   running its handler.
//! - **Bounded.** A group's stream holds at most [`WorkerOptions::max_backlog`] jobs not yet
//!   acknowledged: beyond that, asks are refused with `busy` and tells are dropped (and
//!   counted), rather than Redis growing without limit while workers fall behind.
//! - A handler that panics answers `internal`; the worker keeps serving.
//! - Tells and asks of one socket may run on different workers at once: like in-process
//!   handlers, they are not ordered with each other.

mod consumer;
mod gateway;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub(crate) use consumer::RemoteSocket;
pub use consumer::Worker;
pub use gateway::Gateway;
pub(crate) use gateway::GatewayLink;

/// Settings shared by gateways and workers (both sides must agree on `prefix` and `group`).
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Prefix of every Redis key and pub/sub channel of worker mode (default `sss`).
    pub prefix: String,
    /// The consumer group, and the stream, that jobs go to (default `default`). Workers of
    /// one group must all handle every topic that gateways route to it; an unknown topic is
    /// answered `unknown_topic`.
    pub group: String,
    /// Gateway: how long an ask waits for a worker's answer before the client gets
    /// `unavailable` (default 8 s, under the clients' default ask timeout of 10 s, so that a
    /// client hears why).
    pub ask_timeout: Duration,
    /// Gateway: how long a routed tell may wait for a worker before it is dropped unrun
    /// (default 60 s); bounds how long a job that keeps failing is retried.
    pub tell_ttl: Duration,
    /// Gateway: most jobs the group's stream may hold before asks are refused with `busy` and
    /// tells dropped (default 10 000).
    pub max_backlog: usize,
    /// Worker: how long a job may stay with a worker that took it, unacknowledged, before
    /// another worker claims it (default 30 s). Shorter means a dead worker's jobs run again
    /// sooner, but a handler that runs longer than this may run twice.
    pub claim_idle: Duration,
    /// Worker: handlers run at once (default 256).
    pub concurrency: usize,
    /// Worker: jobs taken per read (default 64).
    pub batch: usize,
    /// Upper bound on each Redis command and connection attempt (default 5 s).
    pub command_timeout: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            prefix: "sss".to_owned(),
            group: "default".to_owned(),
            ask_timeout: Duration::from_secs(8),
            tell_ttl: Duration::from_secs(60),
            max_backlog: 10_000,
            claim_idle: Duration::from_secs(30),
            concurrency: 256,
            batch: 64,
            command_timeout: Duration::from_secs(5),
        }
    }
}

impl WorkerOptions {
    /// The group's job stream. The hash tag keeps it on one Redis Cluster slot.
    fn stream(&self) -> String {
        format!("{}:w:{{{}}}", self.prefix, self.group)
    }

    /// The pub/sub channel a gateway hears this group's answers on.
    fn gateway_channel(&self, gateway: &str) -> String {
        format!("{}:w:{}:gw:{gateway}", self.prefix, self.group)
    }
}

/// Why worker mode could not start.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Redis could not be reached, or refused a command.
    #[error("worker mode: redis: {0}")]
    Redis(String),
}

fn redis_error(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Redis(e.to_string())
}

/// One Redis operation within `limit`: a timeout fails like an error does.
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, WorkerError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(redis_error),
        Err(_) => Err(WorkerError::Redis("timed out".to_owned())),
    }
}

/// A command connection that reconnects by itself, each reply awaited at most `response`.
async fn connect(
    client: &::redis::Client,
    opts: &WorkerOptions,
    response: Duration,
) -> Result<::redis::aio::ConnectionManager, WorkerError> {
    let config = ::redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(opts.command_timeout))
        .set_response_timeout(Some(response))
        .set_max_delay(Duration::from_secs(2));
    ::redis::aio::ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(redis_error)
}

/// What a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    #[serde(rename = "a")]
    Ask,
    #[serde(rename = "t")]
    Tell,
}

/// One ask or tell as it travels in a group's stream (the entry's one field, `j`).
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    k: Kind,
    /// Topic.
    t: String,
    /// Payload.
    m: Box<RawValue>,
    /// Socket id.
    s: String,
    /// User.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    /// Session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    /// The gateway holding the socket.
    g: String,
    /// The ask's key at its gateway (0 for a tell).
    #[serde(default)]
    i: u64,
    /// Deadline, milliseconds since the Unix epoch: after it, the job is dropped unrun.
    d: u64,
}

/// A refusal as it travels back to the gateway.
#[derive(Debug, Serialize, Deserialize)]
struct WireRejection {
    code: String,
    reason: String,
}

/// What a worker sends to a gateway.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ToGateway {
    /// An ask's answer.
    Reply {
        /// The ask's key.
        i: u64,
        /// The answer.
        r: Result<Box<RawValue>, WireRejection>,
    },
    /// Tell the socket.
    Tell {
        /// Socket id.
        s: String,
        /// Topic.
        t: String,
        /// Payload.
        m: Box<RawValue>,
    },
    /// Close the socket with `booted`.
    Boot {
        /// Socket id.
        s: String,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_and_answers_roundtrip_as_json() {
        let m = sss_core::protocol::raw_json(r#"{"a":[1,"b"]}"#).expect("json");
        let job = Job {
            k: Kind::Ask,
            t: "add".into(),
            m: m.clone(),
            s: "gw-1".into(),
            u: Some("ann".into()),
            e: None,
            g: "gw".into(),
            i: 7,
            d: 123,
        };
        let json = serde_json::to_string(&job).expect("serializes");
        let back: Job = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(serde_json::to_string(&back).expect("serializes"), json);
        assert!(
            !json.contains("\"e\""),
            "absent session is left out: {json}"
        );
        for answer in [
            ToGateway::Reply {
                i: 7,
                r: Ok(m.clone()),
            },
            ToGateway::Reply {
                i: 8,
                r: Err(WireRejection {
                    code: "busy".into(),
                    reason: "x".into(),
                }),
            },
            ToGateway::Tell {
                s: "gw-1".into(),
                t: "t".into(),
                m,
            },
            ToGateway::Boot { s: "gw-1".into() },
        ] {
            let json = serde_json::to_string(&answer).expect("serializes");
            let back: ToGateway = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(serde_json::to_string(&back).expect("serializes"), json);
        }
    }
}
