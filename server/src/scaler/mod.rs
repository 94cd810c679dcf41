//! The scaler: what joins server instances into one cluster.
//!
//! A [`Scaler`] appends each publication to its channel's history and fans it out to every
//! instance interested in the channel, atomically per channel, so that every subscriber everywhere
//! sees the same sequence. It also carries cluster-wide control messages (broadcast, tell a user
//! or session, boot). One [`Scaler`] value is one server instance's link to the cluster.
//!
//! Implementations: [`MemoryScaler`] (embedded, one process); with the `redis` feature,
//! `RedisScaler` (a cluster joined through Redis); with the `mongo` feature, `MongoScaler`
//! (durable history in MongoDB, sequencing and fan-out through Redis). Others plug in through
//! this trait.

mod memory;
mod metered;
#[cfg(feature = "mongo")]
mod mongo;
#[cfg(feature = "redis")]
mod redis;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sss_core::protocol::Member;
use sss_core::Position;
use tokio::sync::mpsc;

#[cfg(feature = "mongo")]
pub use self::mongo::{MongoOptions, MongoScaler};
#[cfg(feature = "redis")]
pub use self::redis::{RedisOptions, RedisScaler};
pub use memory::{MemoryOptions, MemoryScaler};
pub(crate) use metered::Metered;

/// One publication as the scaler stores and delivers it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    /// Its place in the channel.
    pub position: Position,
    /// The topic it was published under.
    pub topic: String,
    /// Its payload (raw JSON).
    pub msg: Box<RawValue>,
}

/// What a history request found.
#[derive(Debug)]
pub enum History {
    /// Every publication after the requested position, oldest first (possibly none).
    Recovered(Vec<Arc<Record>>),
    /// The history no longer reaches back to the requested position (trimmed, expired or a new
    /// epoch). `head` is the channel's current position.
    Unrecoverable {
        /// The channel's current position.
        head: Position,
    },
}

/// A cluster-wide control message: every instance acts on the sockets it holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
// Externally tagged: serde cannot read a `RawValue` through an internally tagged enum.
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Control {
    /// Tell every socket.
    Broadcast {
        /// Topic.
        topic: String,
        /// Payload.
        msg: Box<RawValue>,
    },
    /// Tell every socket of a user.
    TellUser {
        /// User id.
        user: String,
        /// Topic.
        topic: String,
        /// Payload.
        msg: Box<RawValue>,
    },
    /// Tell every socket of a session.
    TellSession {
        /// Session id.
        session: String,
        /// Topic.
        topic: String,
        /// Payload.
        msg: Box<RawValue>,
    },
    /// Close one socket (by its cluster-wide id) with the `booted` close code.
    BootSocket {
        /// Socket id.
        socket: String,
    },
    /// Close every socket of a user.
    BootUser {
        /// User id.
        user: String,
    },
    /// Close every socket of a session.
    BootSession {
        /// Session id.
        session: String,
    },
    /// Remove every subscriber from a channel (they get an `unsubbed` frame).
    BootChannel {
        /// Channel.
        channel: String,
    },
}

/// What a scaler delivers to its instance.
#[derive(Debug)]
#[non_exhaustive]
pub enum ScalerEvent {
    /// A publication on a channel this instance subscribed to. Per channel, publications arrive in
    /// position order.
    Publication {
        /// Channel.
        channel: Arc<str>,
        /// The publication.
        record: Arc<Record>,
    },
    /// A control message.
    Control(Control),
    /// A member joined or left the presence of a channel this instance subscribed to. Per
    /// channel, presence events and publications arrive in the order the scaler saw them.
    Presence {
        /// Channel.
        channel: Arc<str>,
        /// `true` for a join, `false` for a leave.
        joined: bool,
        /// The member.
        member: Arc<Member>,
    },
}

/// Why a scaler operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ScalerError {
    /// The backing service could not be reached or failed.
    #[error("scaler unavailable: {0}")]
    Unavailable(String),
    /// The scaler was stopped.
    #[error("scaler stopped")]
    Stopped,
}

/// One server instance's link to the cluster. See the [module docs](self).
///
/// The server calls [`start`](Scaler::start) once, reference-counts channel interest itself (it
/// calls [`subscribe`](Scaler::subscribe) when its first local socket joins a channel and
/// [`unsubscribe`](Scaler::unsubscribe) when the last one leaves), and never reads history per
/// live message.
#[async_trait::async_trait]
pub trait Scaler: Send + Sync + 'static {
    /// Starts delivering this instance's events into `events`. The channel is unbounded: the
    /// server's dispatcher only encodes and queues each publication (it never waits on a
    /// socket), so it keeps up with any scaler that a network link feeds.
    async fn start(&self, events: mpsc::UnboundedSender<ScalerEvent>) -> Result<(), ScalerError>;
    /// Appends a publication to the channel's history and delivers it to every interested
    /// instance, atomically per channel. Returns its position.
    async fn publish(
        &self,
        channel: &str,
        topic: &str,
        msg: &RawValue,
    ) -> Result<Position, ScalerError>;
    /// Starts delivering the channel's publications to this instance.
    async fn subscribe(&self, channel: &str) -> Result<(), ScalerError>;
    /// Stops delivering the channel's publications to this instance.
    async fn unsubscribe(&self, channel: &str) -> Result<(), ScalerError>;
    /// The publications after `since`, or [`History::Unrecoverable`].
    async fn history(&self, channel: &str, since: &Position) -> Result<History, ScalerError>;
    /// The channel's current position (seq 0 for a channel never published to).
    async fn position(&self, channel: &str) -> Result<Position, ScalerError>;
    /// Sends a control message to every instance, this one included.
    async fn control(&self, msg: Control) -> Result<(), ScalerError>;
    /// Adds `joined` to the channel's presence and removes `left` from it (members are sockets
    /// of this instance, keyed by their socket id), and delivers a
    /// [`ScalerEvent::Presence`] for each change to every instance interested in the channel.
    /// Removing a member that is not there changes nothing and delivers nothing. A member stays
    /// until it is removed or this instance stops; a scaler that joins processes keeps it only
    /// while this instance is alive, and removes (with its leave event) the members of an
    /// instance that died, within a bound it documents.
    async fn presence_update(
        &self,
        channel: &str,
        joined: &[Arc<Member>],
        left: &[Arc<Member>],
    ) -> Result<(), ScalerError>;
    /// The channel's presence: its members on every instance, in no particular order.
    async fn presence(&self, channel: &str) -> Result<Vec<Member>, ScalerError>;
    /// Whether the backing services are reachable now: what the server's readiness check
    /// (`/readyz`, [`Server::ready`](crate::Server::ready)) asks. The server bounds the call
    /// with a short timeout of its own. The default, for a scaler with nothing to reach (the
    /// in-memory one), is always ready.
    async fn ready(&self) -> Result<(), ScalerError> {
        Ok(())
    }
    /// Stops delivering events; called on server shutdown.
    async fn stop(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_roundtrip_as_json() {
        let msg = sss_core::protocol::raw_json(r#"{"a":[1,"b"]}"#).expect("json");
        let all = [
            Control::Broadcast {
                topic: "t".into(),
                msg: msg.clone(),
            },
            Control::TellUser {
                user: "u".into(),
                topic: "t".into(),
                msg: msg.clone(),
            },
            Control::TellSession {
                session: "s".into(),
                topic: "t".into(),
                msg,
            },
            Control::BootSocket { socket: "x".into() },
            Control::BootUser { user: "u".into() },
            Control::BootSession {
                session: "s".into(),
            },
            Control::BootChannel {
                channel: "c".into(),
            },
        ];
        for c in all {
            let json = serde_json::to_string(&c).expect("serializes");
            let back: Control = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(serde_json::to_string(&back).expect("serializes"), json);
        }
    }
}
