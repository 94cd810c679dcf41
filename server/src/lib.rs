//! `sss-server`: the Super Scaled Sockets WebSocket server.
//!
//! Many instances of a server run behind any load balancer, joined by a [`Scaler`]; on one
//! machine the embedded [`MemoryScaler`] needs nothing else.
//!
//! ```no_run
//! use sss_server::{MemoryScaler, Rejection, Server, Session, Refusal};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder(MemoryScaler::default())
//!     .session_parser(|req| async move {
//!         match req.cookie("user") {
//!             Some(user) => Ok(Session::user(user)),
//!             None => Err(Refusal::unauthorized("log in first")),
//!         }
//!     })
//!     .subscription_parser(|_socket, channel, _query| async move {
//!         if channel.starts_with("room:") { Ok(()) } else { Err(Rejection::refused("no such room")) }
//!     })
//!     .on_ask("add", |_socket, (a, b): (i64, i64)| async move { Ok::<_, Rejection>(a + b) })
//!     .build()
//!     .await?;
//! let listening = server.listen("127.0.0.1:8080").await?;
//! server.publish("room:1", "news", &"hello").await?;
//! listening.stopped().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod endpoints;
mod fifo;
mod handshake;
pub mod machine;
mod metrics;
mod outbox;
mod registry;
pub mod scaler;
mod server;
mod socket;
mod subscription;
mod wire;
#[cfg(feature = "redis")]
pub mod worker;

pub use endpoints::NotReady;
pub use handshake::{is_upgrade_request, Body, HandshakeRequest, Listening, Refusal};
pub use scaler::{MemoryOptions, MemoryScaler, Scaler};
pub use server::{Inbound, Server, ServerBuilder, ServerError, ServerOptions};
pub use socket::Socket;
pub use sss_core::protocol::{close, codes, session_channel, user_channel, Member, PresenceStats};
pub use sss_core::Position;
pub use subscription::{ChannelEvent, ChannelStream};

/// Who a socket belongs to, as the session parser decided.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// User id: every socket of a user can be reached with `tell_user` / `boot_user`, and may
    /// subscribe to `#user:<id>`.
    pub user: Option<String>,
    /// Session id (typically one browser session): reached with `tell_session` /
    /// `boot_session`, channel `#session:<id>`.
    pub session: Option<String>,
    /// Values for handlers and parsers, read with [`Socket::local`].
    pub locals: http::Extensions,
    /// What other members of a channel's presence see of this session (a display name, an
    /// avatar, ...): the `info` of its sockets' [`Member`]s.
    pub info: Option<Box<serde_json::value::RawValue>>,
}

impl Session {
    /// No user, no session.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// A session of a user.
    pub fn user(id: impl Into<String>) -> Self {
        Self {
            user: Some(id.into()),
            ..Self::default()
        }
    }

    /// Sets the session id.
    pub fn with_session(mut self, id: impl Into<String>) -> Self {
        self.session = Some(id.into());
        self
    }

    /// Sets the [`info`](Self::info) that other members of a channel's presence see.
    pub fn with_info<T: serde::Serialize + ?Sized>(
        mut self,
        info: &T,
    ) -> Result<Self, serde_json::Error> {
        self.info = Some(serde_json::value::to_raw_value(info)?);
        Ok(self)
    }

    /// Stores a value in the locals.
    pub fn with_local<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.locals.insert(value);
        self
    }
}

/// The subscription parser's acceptance of a subscription, and what comes with it.
///
/// A parser that returns `Ok(())` grants the default (no presence unless the server's
/// [`presence_prefixes`](ServerOptions::presence_prefixes) match the channel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Grant {
    /// The subscription has presence: the socket is a member of the channel's presence, may
    /// ask for its members, and receives its join and leave events if the client asked.
    pub presence: bool,
}

impl Grant {
    /// An acceptance with presence.
    pub fn with_presence() -> Self {
        Self { presence: true }
    }
}

impl From<()> for Grant {
    fn from((): ()) -> Self {
        Self::default()
    }
}

/// A refusal by a handler, the middleware or the subscription parser; the client gets its code
/// and reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Rejection {
    /// Stable code (see [`codes`]) or an application code.
    pub code: String,
    /// Human-readable reason.
    pub reason: String,
}

impl Rejection {
    /// A rejection with an application code.
    pub fn new(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            reason: reason.into(),
        }
    }

    /// A rejection with code `refused`.
    pub fn refused(reason: impl Into<String>) -> Self {
        Self::new(codes::REFUSED, reason)
    }
}
