//! `sss-client`: the native Rust client of Super Scaled Sockets.
//!
//! A thin tokio driver around the sans-IO state machine of [`sss_core::client`]: the same core
//! runs in the browser package. It reconnects by itself (exponential backoff, full jitter,
//! rotating over the given URLs), resubscribes every channel and recovers what it missed, or
//! tells the application plainly that a channel could not be recovered.
//!
//! ```no_run
//! use futures::StreamExt;
//! use sss_client::{Client, Options, SubEvent};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("ws://127.0.0.1:8080/ws", Options::default()).await?;
//! let sum: i64 = client.ask("add", &(2, 3)).await?;
//! client.tell("typing", &"room:1")?;
//! let mut room = client.subscribe("room:1", None::<()>).await?;
//! while let Some(event) = room.next().await {
//!     match event {
//!         SubEvent::Publication(p) => println!("{} {}: {}", p.position, p.topic, p.msg.get()),
//!         SubEvent::Unrecoverable { .. } => println!("missed messages: reload the room"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! **Typed topics.** [`Subscription::topic`] turns a subscription into a stream of one topic's
//! publications, each deserialized: `room.topic::<Msg>("msg")` yields `Result<Msg, TopicError>`
//! (the error: a payload that is not a `Msg`, lost publications to reload, or the end).
//!
//! **Presence.** A subscription the server grants presence answers
//! [`Subscription::presence`] (the channel's members, cluster-wide) and
//! [`Subscription::presence_stats`]; made with [`Client::subscribe_with`] and
//! `SubscribeOptions::default().presence(true)`, its stream also yields [`SubEvent::Join`] and
//! [`SubEvent::Leave`]. Presence is not replayed after a reconnect: on
//! [`SubEvent::Recovered`] or [`SubEvent::Unrecoverable`], an application that shows the members
//! asks for them again.
#![forbid(unsafe_code)]

mod driver;
mod subscription;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use sss_core::client::{AskError, ClientError, Config, Status};
use tokio::sync::{mpsc, oneshot, watch};

pub use sss_core::client::{Reconnect, Recovery, Status as ClientStatus};
pub use sss_core::protocol::{close, codes, Member, PresenceStats};
pub use sss_core::Position;
pub use subscription::{Publication, SubEvent, SubscribeOptions, Subscription, Topic, TopicError};

use driver::Command;
pub use driver::{Closed, Identity};

/// Fetches the credentials of one connection attempt (see [`Options::auth_with`]).
type AuthFn = Arc<dyn Fn() -> BoxFuture<'static, Result<Box<RawValue>, String>> + Send + Sync>;

/// Where each `hello`'s credentials come from: called before every connection attempt.
#[derive(Clone)]
pub(crate) struct AuthSource(AuthFn);

impl AuthSource {
    /// The credentials for the next attempt, or why there are none.
    pub(crate) fn fetch(&self) -> BoxFuture<'static, Result<Box<RawValue>, String>> {
        (self.0)()
    }
}

impl std::fmt::Debug for AuthSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthSource(..)")
    }
}

/// Client settings. `Options::default()` reconnects forever with 250 ms .. 10 s backoff.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// How long an ask waits for its answer (default 10 s).
    pub ask_timeout: Duration,
    /// How long a connection attempt may take until the server's welcome (default 10 s).
    pub connect_timeout: Duration,
    /// The reconnect policy (backoff base, ceiling, attempts).
    pub reconnect: Reconnect,
    /// Asks and tells held while disconnected (default 1024).
    pub offline_queue: usize,
    /// TLS settings for `wss://` URLs. Default: the Mozilla root certificates (webpki-roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Jitter seed; default: random.
    pub seed: Option<u64>,
    /// Extra HTTP headers of every upgrade request (the server's session parser sees them).
    pub headers: Vec<(String, String)>,
    /// Cookies of every upgrade request, sent in one `Cookie` header.
    pub cookies: Vec<(String, String)>,
    /// The credentials of every `hello` ([`Options::auth`], [`Options::auth_with`]).
    auth: Option<AuthSource>,
}

impl Default for Options {
    fn default() -> Self {
        let core = Config::default();
        Self {
            ask_timeout: core.ask_timeout,
            connect_timeout: core.connect_timeout,
            reconnect: core.reconnect,
            offline_queue: core.offline_queue,
            tls: None,
            seed: None,
            headers: Vec::new(),
            cookies: Vec::new(),
            auth: None,
        }
    }
}

impl Options {
    /// Sets the ask timeout.
    pub fn ask_timeout(mut self, t: Duration) -> Self {
        self.ask_timeout = t;
        self
    }
    /// Sets the reconnect policy.
    pub fn reconnect(mut self, r: Reconnect) -> Self {
        self.reconnect = r;
        self
    }
    /// Sets the TLS client configuration for `wss://`.
    pub fn tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }
    /// Sets the offline queue bound.
    pub fn offline_queue(mut self, n: usize) -> Self {
        self.offline_queue = n;
        self
    }
    /// Adds an HTTP header to every upgrade request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Adds a cookie to every upgrade request.
    pub fn cookie(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.cookies.push((name.into(), value.into()));
        self
    }
    /// Sends `auth` (a token, or any JSON) in every `hello`, for the server's session parser
    /// ([`HandshakeRequest::auth`] on the server).
    ///
    /// [`HandshakeRequest::auth`]: https://docs.rs/sss-server/latest/sss_server/struct.HandshakeRequest.html#method.auth
    pub fn auth(self, auth: serde_json::Value) -> Self {
        self.auth_with(move || {
            let auth = auth.clone();
            async move { Ok::<_, std::convert::Infallible>(auth) }
        })
    }
    /// Calls `fetch` before every connection attempt (the first and each reconnect) and sends
    /// what it returns in that attempt's `hello`: a token that expires is refreshed. An error
    /// fails the attempt (the client retries with backoff; [`Client::connect`] reports it).
    pub fn auth_with<F, Fut, T, E>(mut self, fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
        T: Serialize,
        E: std::fmt::Display,
    {
        let fetch = Arc::new(fetch);
        self.auth = Some(AuthSource(Arc::new(move || {
            let fut = fetch();
            async move {
                let auth = fut.await.map_err(|e| e.to_string())?;
                serde_json::value::to_raw_value(&auth).map_err(|e| e.to_string())
            }
            .boxed()
        })));
        self
    }
}

/// Why [`Client::connect`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server refused the HTTP upgrade (a forbidden origin, or a proxy in front of it) with
    /// this HTTP status and reason.
    #[error("handshake refused with HTTP {status}: {reason}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's reason (response body).
        reason: String,
    },
    /// The server refused the `hello` (its session parser): the `error` frame's code
    /// ([`codes::UNAUTHORIZED`], [`codes::FORBIDDEN`] or the application's own) and reason.
    /// The client does not retry: the same credentials would be refused again.
    #[error("refused by the server: {code}: {reason}")]
    Rejected {
        /// The server's error code.
        code: String,
        /// The server's reason.
        reason: String,
    },
    /// The connection closed before it was ready (code and reason of the close).
    #[error("connection closed ({code}): {reason}")]
    Closed {
        /// WebSocket close code, or 1006 when the server could not be reached.
        code: u16,
        /// Reason.
        reason: String,
    },
    /// No URL was given.
    #[error("no server URL given")]
    NoUrl,
}

/// Why an ask failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The server refused it, it timed out, or its connection was lost: see the code.
    #[error(transparent)]
    Ask(#[from] AskError),
    /// The client did not accept the command (closed, queue full, invalid topic or channel).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The request did not serialize, or the response did not deserialize into the wanted type.
    #[error("json: {0}")]
    Json(String),
}

impl RequestError {
    /// The stable code of the failure (see [`codes`]).
    pub fn code(&self) -> &str {
        match self {
            Self::Ask(e) => &e.code,
            Self::Client(e) => e.code(),
            Self::Json(_) => codes::INVALID,
        }
    }
}

fn to_raw<T: Serialize + ?Sized>(v: &T) -> Result<Box<RawValue>, RequestError> {
    serde_json::value::to_raw_value(v).map_err(|e| RequestError::Json(e.to_string()))
}

/// A server's answer, deserialized.
fn from_raw<T: DeserializeOwned>(raw: &RawValue) -> Result<T, RequestError> {
    serde_json::from_str(raw.get()).map_err(|e| RequestError::Json(e.to_string()))
}

/// The answer the driver sends back for a request (a dropped sender: the driver stopped).
async fn answer<T>(rx: oneshot::Receiver<Result<T, RequestError>>) -> Result<T, RequestError> {
    rx.await.unwrap_or_else(|_| Err(ClientError::Closed.into()))
}

/// A connection to a Super Scaled Sockets server (or cluster). Cheap to clone; all clones
/// drive the same connection. Dropping the last clone closes it.
#[derive(Clone, Debug)]
pub struct Client {
    cmd: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Status>,
    identity: watch::Receiver<Option<Identity>>,
    closed: watch::Receiver<Option<Closed>>,
    _owner: Arc<driver::Owner>,
}

impl Client {
    /// Connects to `url` and waits until the connection is ready.
    pub async fn connect(url: impl Into<String>, options: Options) -> Result<Client, ConnectError> {
        Self::connect_any(vec![url.into()], options).await
    }

    /// Connects to the first of `urls` and waits until ready. Each reconnect attempt moves to
    /// the next URL (round-robin), as a client behind no load balancer would.
    pub async fn connect_any(urls: Vec<String>, options: Options) -> Result<Client, ConnectError> {
        if urls.is_empty() {
            return Err(ConnectError::NoUrl);
        }
        let (client, first) = Self::start(urls, options, true);
        match first.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::Closed {
                code: close::ABNORMAL,
                reason: "client stopped".into(),
            }),
        }
    }

    /// Starts a client without waiting: it connects (and reconnects) in the background; watch
    /// [`Client::status_stream`]. Commands issued before it is ready wait in the offline queue.
    pub fn new(urls: Vec<String>, options: Options) -> Client {
        Self::start(urls, options, false).0
    }

    fn start(
        urls: Vec<String>,
        options: Options,
        fail_first_connect: bool,
    ) -> (Client, oneshot::Receiver<Result<(), ConnectError>>) {
        let s = driver::spawn(urls, options, fail_first_connect);
        (
            Client {
                cmd: s.cmd,
                status: s.status,
                identity: s.identity,
                closed: s.closed,
                _owner: s.owner,
            },
            s.first,
        )
    }

    fn command(&self, c: Command) -> Result<(), ClientError> {
        self.cmd.send(c).map_err(|_| ClientError::Closed)
    }

    /// Asks the server's handler for `topic` and waits for its answer.
    pub async fn ask<Req, Resp>(&self, topic: &str, req: &Req) -> Result<Resp, RequestError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        from_raw(&self.ask_inner(topic, to_raw(req)?, None).await?)
    }

    /// [`Client::ask`] with its own timeout instead of [`Options::ask_timeout`] (shorter or
    /// longer). To give up earlier on some other condition, drop the future: the answer, if
    /// any, is then ignored (the server may still run the handler).
    pub async fn ask_with_timeout<Req, Resp>(
        &self,
        topic: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RequestError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        from_raw(&self.ask_inner(topic, to_raw(req)?, Some(timeout)).await?)
    }

    /// [`Client::ask`] with raw JSON in and out.
    pub async fn ask_raw(
        &self,
        topic: &str,
        msg: Box<RawValue>,
    ) -> Result<Box<RawValue>, RequestError> {
        self.ask_inner(topic, msg, None).await
    }

    async fn ask_inner(
        &self,
        topic: &str,
        msg: Box<RawValue>,
        timeout: Option<Duration>,
    ) -> Result<Box<RawValue>, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Ask {
            topic: topic.to_owned(),
            msg,
            timeout,
            reply: tx,
        })?;
        answer(rx).await
    }

    /// Tells the server's handler for `topic` (fire-and-forget). While disconnected, the tell
    /// waits in the offline queue; when that queue is full the tell is dropped (and logged), as
    /// a fire-and-forget message may be. An error here means it was never accepted: the client
    /// is closed or the message does not serialize.
    pub fn tell<T: Serialize + ?Sized>(&self, topic: &str, msg: &T) -> Result<(), RequestError> {
        let msg = to_raw(msg)?;
        self.command(Command::Tell {
            topic: topic.to_owned(),
            msg,
        })?;
        Ok(())
    }

    /// Subscribes to a channel with an optional query for the server's subscription parser,
    /// and waits for the server's answer. The [`Subscription`] streams the channel's
    /// publications, in order, each once, across reconnects.
    ///
    /// The same as [`Client::subscribe_with`] with the default [`SubscribeOptions`] (no
    /// presence events).
    pub async fn subscribe<Q: Serialize>(
        &self,
        channel: &str,
        query: Option<Q>,
    ) -> Result<Subscription, RequestError> {
        self.subscribe_with(channel, query, SubscribeOptions::default())
            .await
    }

    /// [`Client::subscribe`] with options: `SubscribeOptions::default().presence(true)` also
    /// streams the channel's join and leave events ([`SubEvent::Join`], [`SubEvent::Leave`]),
    /// when the server grants the subscription presence.
    ///
    /// ```no_run
    /// # use sss_client::{Client, SubscribeOptions};
    /// # async fn run(client: Client) -> Result<(), sss_client::RequestError> {
    /// let room = client
    ///     .subscribe_with("room:1", None::<()>, SubscribeOptions::default().presence(true))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with<Q: Serialize>(
        &self,
        channel: &str,
        query: Option<Q>,
        options: SubscribeOptions,
    ) -> Result<Subscription, RequestError> {
        let query = query.map(|q| to_raw(&q)).transpose()?;
        let (tx, rx) = oneshot::channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(subscription::Shared::default());
        self.command(Command::Subscribe {
            channel: channel.to_owned(),
            options: sss_core::client::SubscribeOptions {
                query,
                presence: options.presence,
            },
            shared: shared.clone(),
            events: events_tx,
            ready: tx,
        })?;
        let recovery = answer(rx).await?;
        Ok(Subscription::new(
            channel.to_owned(),
            recovery,
            shared,
            events_rx,
            self.cmd.clone(),
        ))
    }

    /// A stream of the messages the server tells this client on `topic`.
    pub fn on_tell(&self, topic: &str) -> BoxStream<'static, Box<RawValue>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.command(Command::OnTell {
            topic: topic.to_owned(),
            sink: tx,
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
            .boxed()
    }

    /// The current connection status.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Who the current connection is (socket id, user, session), from its `welcome`; `None`
    /// before the first one. The socket id changes with every reconnection; it is how an
    /// application finds itself among a channel's presence members.
    pub fn identity(&self) -> Option<Identity> {
        self.identity.borrow().clone()
    }

    /// The stream of status changes, starting with the current status.
    pub fn status_stream(&self) -> BoxStream<'static, Status> {
        let mut rx = self.status.clone();
        rx.mark_changed();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            let s = *rx.borrow_and_update();
            Some((s, rx))
        })
        .boxed()
    }

    /// Waits until the status satisfies `f` (or the client closes).
    pub async fn wait_status(&self, f: impl Fn(Status) -> bool) -> Status {
        let mut rx = self.status.clone();
        let result = rx.wait_for(|s| f(*s) || *s == Status::Closed).await;
        result.map_or(Status::Closed, |s| *s)
    }

    /// How the client closed for good (`None` while it is not closed): after a reconnect the
    /// server refused (an expired token), `error` holds the server's code and reason.
    pub fn closed(&self) -> Option<Closed> {
        self.closed.borrow().clone()
    }

    /// Closes the connection for good; pending asks fail with `closed`.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.command(Command::Close { done: tx }).is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable<T: Send + Sync + Clone + 'static>() {}
    fn sendable<T: Send + 'static>() {}

    #[test]
    fn handles_cross_tasks() {
        shareable::<Client>();
        sendable::<Subscription>();
        sendable::<RequestError>();
        sendable::<ConnectError>();
    }

    #[tokio::test]
    async fn connect_needs_a_url() {
        assert!(matches!(
            Client::connect_any(Vec::new(), Options::default()).await,
            Err(ConnectError::NoUrl)
        ));
    }

    #[tokio::test]
    async fn unreachable_server_fails_the_first_connect() {
        // Bind then drop a listener: nothing listens on that port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let r = Client::connect(format!("ws://127.0.0.1:{port}/"), Options::default()).await;
        assert!(
            matches!(
                r,
                Err(ConnectError::Closed {
                    code: close::ABNORMAL,
                    ..
                })
            ),
            "{r:?}"
        );
    }
}
