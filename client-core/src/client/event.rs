//! What the client tells its driver and its application.

use std::fmt;

use serde_json::value::RawValue;

use super::AskError;
use crate::protocol::Position;

/// Identifies one ask; ids increase from 1 over the client's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AskId(pub(super) u64);

impl AskId {
    /// The id as sent on the wire.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for AskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Something the driver must do with the socket.
///
/// - After [`Action::Connect`] the driver opens a WebSocket to `url` and reports
///   [`Client::handle_open`](super::Client::handle_open) when it opens, or
///   [`Client::handle_close`](super::Client::handle_close) with code 1006 if it cannot.
/// - After [`Action::Close`] the core already considers that socket gone (it has moved on to
///   reconnecting, or is closed): the driver closes it with the given code and reason, drops it,
///   and must not report `handle_close` or any further frame for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a socket to this URL. At most one socket is wanted at any time.
    Connect {
        /// Server URL, from [`Config::urls`](super::Config::urls).
        url: String,
    },
    /// Close the current socket.
    Close {
        /// WebSocket close code (see [`close`](crate::protocol::close)).
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// The client's connection status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Making the first connection.
    Connecting,
    /// Connected, and every subscription is live.
    Ready,
    /// The connection was lost (or never made): waiting out the backoff before reconnect attempt
    /// `attempt` (0-based, reset by each `welcome`), or making it.
    Reconnecting {
        /// Which reconnect attempt this is since the last successful connection.
        attempt: u32,
    },
    /// Reconnected, and resubscribing: waiting for the server's answer to every subscription
    /// resent on reconnect. Asks and tells already flow.
    Syncing,
    /// Closed for good; every command now fails with [`ClientError::Closed`](super::ClientError::Closed).
    Closed,
}

/// How a subscription (re)started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// A fresh subscription: publications follow from the server's current position.
    New,
    /// Resynced with nothing lost: the publications missed since the last seen position follow,
    /// in order, before live ones.
    Recovered,
    /// Resynced, but the history no longer reaches back to the last seen position (trimmed, or
    /// the channel's epoch changed): publications were lost and the application must reload its
    /// state. Publications follow from the server's current position.
    Unrecoverable,
}

/// Something that happened, for the application.
///
/// Not `#[non_exhaustive]`, on purpose: drivers match it exhaustively, so an event added here
/// fails to compile in every driver until each handles it.
///
/// Payloads are of the client's payload type `P` (JSON text by default).
#[derive(Clone, Debug)]
pub enum Event<P = Box<RawValue>> {
    /// The status changed.
    Status(Status),
    /// An ask completed: answered, refused, timed out, or lost with its connection.
    AskDone {
        /// The ask, as returned by [`Client::ask`](super::Client::ask).
        id: AskId,
        /// The server's answer (`res`), or why there is none.
        result: Result<P, AskError>,
    },
    /// The server told this socket something.
    Tell {
        /// Topic.
        topic: String,
        /// Payload.
        msg: P,
    },
    /// A subscription started: the server's first `subok` for it ([`Recovery::New`]).
    Subscribed {
        /// Channel.
        channel: String,
        /// The server's position for the channel when the subscription started (its `subok`).
        position: Position,
        /// Whether the subscription has presence (the server's `subok` said so): presence
        /// requests are answered, and join / leave events follow if they were asked for.
        presence: bool,
    },
    /// A subscription that had started resynced (after a reconnect or a gap).
    ///
    /// `recovered` is the one policy both drivers follow: every missed publication follows
    /// ([`Recovery::Recovered`]), or some were lost and the application must reload its state
    /// ([`Recovery::Unrecoverable`]). Presence is not replayed by a resync: [`Event::Join`] /
    /// [`Event::Leave`] that happened while the client was away are not delivered, and an
    /// application that shows the channel's members asks for them again
    /// ([`Client::presence`](super::Client::presence)).
    Resynced {
        /// Channel.
        channel: String,
        /// The server's position for the channel at the resync (its `subok`).
        position: Position,
        /// Whether the missed publications follow (`true`), or were lost.
        recovered: bool,
        /// Whether the subscription has presence.
        presence: bool,
    },
    /// The server refused a subscription, or the client closed before its first answer
    /// ([`codes::CLOSED`](crate::protocol::codes::CLOSED)); it is removed.
    SubscribeFailed {
        /// Channel.
        channel: String,
        /// The server's code and reason.
        error: AskError,
    },
    /// A publication on a subscribed channel: each is delivered once, in order.
    Publication {
        /// Channel.
        channel: String,
        /// Topic.
        topic: String,
        /// Payload.
        msg: P,
        /// Position of the publication.
        position: Position,
    },
    /// A socket joined the presence of a subscribed channel. Delivered only to a subscription
    /// that asked for presence events ([`SubscribeOptions::presence`](super::SubscribeOptions)),
    /// while it is live (never between a `sub` and its `subok`); never for this client's own
    /// socket. A user with three tabs is three sockets: three joins.
    Join {
        /// Channel.
        channel: String,
        /// The member: a [`Member`](crate::protocol::Member) as raw JSON, passed through
        /// undecoded (a browser parses it with `JSON.parse`).
        member: P,
    },
    /// A socket left the presence of a subscribed channel (unsubscribed, booted, disconnected,
    /// or expired with its dead server instance). Delivered like [`Event::Join`].
    Leave {
        /// Channel.
        channel: String,
        /// The member, as raw JSON.
        member: P,
    },
    /// A subscription ended: the server ended it (the channel was booted), or the client closed
    /// for good ([`codes::CLOSED`](crate::protocol::codes::CLOSED), with the close's reason,
    /// just before [`Event::Closed`]). It is removed.
    Unsubscribed {
        /// Channel.
        channel: String,
        /// Error code.
        code: String,
        /// Reason.
        reason: String,
    },
    /// The client closed for good. This is the last event; the status is now
    /// [`Status::Closed`].
    Closed {
        /// WebSocket close code that ended it.
        code: u16,
        /// Reason.
        reason: String,
        /// The server's `error` frame that preceded the close, if any: why the server ended
        /// the connection, with its stable code (`unauthorized`, `forbidden` or the
        /// application's own for a refused `hello`, `protocol`, `unsupported_version`).
        error: Option<AskError>,
    },
}
