//! The server value, its builder, and the cluster-wide operations.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use sss_core::protocol::{classify_channel, codes, Member, PresenceStats};
use sss_core::Position;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::warn;

use crate::handshake::{Body, ConnectionCounts, HandshakeRequest, Refusal};
use crate::metrics::{AskSeries, Metrics, TellSeries};
use crate::registry::Registry;
use crate::scaler::{Control, Metered, Scaler, ScalerError, ScalerEvent};
use crate::socket::Socket;
use crate::{Grant, Rejection, Session};

/// Tunables of a server. `ServerOptions::default()` is a sensible production start.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerOptions {
    /// When set, handshakes whose `Origin` header is present and not in this list are refused
    /// with 403. Non-browser clients send no `Origin` and are not affected.
    pub allowed_origins: Option<Vec<String>>,
    /// Largest accepted inbound message in bytes (default 1 MiB). A larger one closes the socket
    /// with 1009.
    pub max_message_size: usize,
    /// Frames a socket's outbound queue holds (default 1024). A socket whose queue is full is a
    /// slow consumer and is closed with 4004.
    pub outbound_queue: usize,
    /// How often the server pings each socket (default 25 s). A socket silent for twice this is
    /// closed with 4005.
    pub heartbeat: Duration,
    /// Time a new socket has to send `hello` (default 10 s), else it is closed with 4006.
    pub handshake_timeout: Duration,
    /// Time a write to a socket may take (default 10 s) before the socket is dropped.
    pub write_timeout: Duration,
    /// Publications buffered per subscription while its history is being read (default 1024);
    /// past that the socket is a slow consumer.
    pub sync_buffer: usize,
    /// Asks of one socket handled at once (default 128); more are refused with `busy`.
    pub max_concurrent_asks: usize,
    /// Tells of one socket handled at once (default 64). At the limit the server stops reading
    /// that socket until one finishes: backpressure reaches the client through TCP, nothing is
    /// dropped, and a flood of tells at a slow handler holds a bounded number of tasks.
    pub max_concurrent_tells: usize,
    /// Subscriptions one socket may hold, pending or live (default 1000); more are refused with
    /// `subrej` code `limit`.
    pub max_subscriptions: usize,
    /// After a close frame, how long the server keeps reading (and discarding) what the client
    /// still sends before it closes the connection (default 2 s): closing with unread input
    /// makes the kernel send a reset, which would destroy the close frame in flight.
    pub close_linger: Duration,
    /// Time a new connection on the server's listeners has to send its complete HTTP request
    /// head (default 10 s), and the time a TLS handshake may take on a `listen_tls` listener;
    /// past it the connection is closed. Also closes idle keep-alive connections of the HTTP
    /// fallback after this long. Without it, a client that sends half a request line held its
    /// connection forever (2000 of them held for 71 s, none reaped, ~23 KB each).
    pub header_read_timeout: Duration,
    /// TCP connections the server's listeners hold at once (default 100 000), counting those
    /// still in the HTTP phase and open WebSockets, on all of this server's listeners.
    /// A connection beyond it is answered `503 Service Unavailable` at once and closed (on a
    /// TLS listener: closed without an answer). Keep it below the process's file-descriptor
    /// limit (`RLIMIT_NOFILE`), so the server refuses before `accept` itself starts failing.
    /// Connections passed to [`Server::serve_io`] by the application are not counted.
    pub max_connections: usize,
    /// When set, TCP connections from one client IP address held at once (default: no limit).
    /// A connection beyond it is answered `429 Too Many Requests` at once and closed (on a TLS
    /// listener: closed without an answer). Behind a reverse proxy every client has the proxy's
    /// address, so leave this unset there and limit at the proxy.
    pub max_connections_per_ip: Option<usize>,
    /// Subscriptions to channels whose names start with one of these prefixes have presence
    /// (default: none), whatever the subscription parser grants. See
    /// [`Grant`](crate::Grant) for deciding per subscription.
    pub presence_prefixes: Vec<String>,
    /// When set (default: off), the server's own listeners answer `GET /metrics`, `/healthz`
    /// and `/readyz` (see [`Server::observability_response`]) before the
    /// [`http_fallback`](ServerBuilder::http_fallback). Off by default because the metrics
    /// describe the whole instance to whoever can reach the listener; to serve them to
    /// operators only, use [`Server::listen_observability`] on another address.
    pub observability_endpoints: bool,
    /// Time the scaler's readiness check may take (default 1 s) before [`Server::ready`]
    /// (`/readyz`) answers "not ready": a Redis that stopped answering must not hold the probe
    /// for the scaler's whole command timeout.
    pub ready_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            allowed_origins: None,
            max_message_size: 1 << 20,
            outbound_queue: 1024,
            heartbeat: Duration::from_secs(25),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            sync_buffer: 1024,
            max_concurrent_asks: 128,
            max_concurrent_tells: 64,
            max_subscriptions: 1000,
            close_linger: Duration::from_secs(2),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_connections_per_ip: None,
            presence_prefixes: Vec::new(),
            observability_endpoints: false,
            ready_timeout: Duration::from_secs(1),
        }
    }
}

impl ServerOptions {
    /// Sets [`presence_prefixes`](Self::presence_prefixes).
    pub fn presence_prefixes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, p: I) -> Self {
        self.presence_prefixes = p.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`allowed_origins`](Self::allowed_origins).
    pub fn allowed_origins<I: IntoIterator<Item = S>, S: Into<String>>(mut self, o: I) -> Self {
        self.allowed_origins = Some(o.into_iter().map(Into::into).collect());
        self
    }
    /// Sets [`max_message_size`](Self::max_message_size).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
    /// Sets [`outbound_queue`](Self::outbound_queue).
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.outbound_queue = frames.max(1);
        self
    }
    /// Sets [`heartbeat`](Self::heartbeat).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }
    /// Sets [`write_timeout`](Self::write_timeout).
    pub fn write_timeout(mut self, t: Duration) -> Self {
        self.write_timeout = t;
        self
    }
    /// Sets [`sync_buffer`](Self::sync_buffer).
    pub fn sync_buffer(mut self, publications: usize) -> Self {
        self.sync_buffer = publications;
        self
    }
    /// Sets [`max_concurrent_asks`](Self::max_concurrent_asks).
    pub fn max_concurrent_asks(mut self, n: usize) -> Self {
        self.max_concurrent_asks = n;
        self
    }
    /// Sets [`max_concurrent_tells`](Self::max_concurrent_tells) (at least 1).
    pub fn max_concurrent_tells(mut self, n: usize) -> Self {
        self.max_concurrent_tells = n.max(1);
        self
    }
    /// Sets [`max_subscriptions`](Self::max_subscriptions).
    pub fn max_subscriptions(mut self, n: usize) -> Self {
        self.max_subscriptions = n;
        self
    }
    /// Sets [`close_linger`](Self::close_linger).
    pub fn close_linger(mut self, t: Duration) -> Self {
        self.close_linger = t;
        self
    }
    /// Sets [`handshake_timeout`](Self::handshake_timeout).
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }
    /// Sets [`header_read_timeout`](Self::header_read_timeout).
    pub fn header_read_timeout(mut self, t: Duration) -> Self {
        self.header_read_timeout = t;
        self
    }
    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }
    /// Sets [`max_connections_per_ip`](Self::max_connections_per_ip); `None` removes the limit.
    pub fn max_connections_per_ip(mut self, n: impl Into<Option<usize>>) -> Self {
        self.max_connections_per_ip = n.into();
        self
    }
    /// Sets [`observability_endpoints`](Self::observability_endpoints).
    pub fn observability_endpoints(mut self, on: bool) -> Self {
        self.observability_endpoints = on;
        self
    }
    /// Sets [`ready_timeout`](Self::ready_timeout).
    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }
}

/// What the inbound middleware sees: one ask, tell or subscription of a socket, before its
/// handler or parser. The middleware returns it (possibly changed) to let it through.
#[derive(Debug)]
#[non_exhaustive]
pub enum Inbound {
    /// An ask.
    Ask {
        /// Topic.
        topic: String,
        /// Request payload.
        msg: Box<RawValue>,
    },
    /// A tell.
    Tell {
        /// Topic.
        topic: String,
        /// Payload.
        msg: Box<RawValue>,
    },
    /// A subscription (also a resubscription after a reconnect).
    Subscribe {
        /// Channel.
        channel: String,
        /// The client's query.
        query: Option<Box<RawValue>>,
    },
}

pub(crate) type SessionParser =
    Arc<dyn Fn(HandshakeRequest) -> BoxFuture<'static, Result<Session, Refusal>> + Send + Sync>;
pub(crate) type SubscriptionParser = Arc<
    dyn Fn(Socket, String, Option<Box<RawValue>>) -> BoxFuture<'static, Result<Grant, Rejection>>
        + Send
        + Sync,
>;
pub(crate) type Middleware =
    Arc<dyn Fn(Socket, Inbound) -> BoxFuture<'static, Result<Inbound, Rejection>> + Send + Sync>;
pub(crate) type AskHandler = Arc<
    dyn Fn(Socket, Box<RawValue>) -> BoxFuture<'static, Result<Box<RawValue>, Rejection>>
        + Send
        + Sync,
>;
pub(crate) type TellHandler =
    Arc<dyn Fn(Socket, Box<RawValue>) -> BoxFuture<'static, ()> + Send + Sync>;
pub(crate) type HttpFallback =
    Arc<dyn Fn(Request<Incoming>) -> BoxFuture<'static, Response<Body>> + Send + Sync>;

/// A handler's message as its type `T`. A handler that takes the raw JSON (`Box<RawValue>`:
/// to store or forward it) gets it as it is: the frame decoder has checked it already, and
/// parsing it again was a second serde_json pass over every payload (serde_json took 8 % of
/// the server's CPU under `sss-bench tells`, perf, this pass included).
fn from_raw<T: DeserializeOwned + 'static>(msg: Box<RawValue>) -> serde_json::Result<T> {
    let mut slot = Some(msg);
    match take_same::<_, T>(&mut slot) {
        Some(t) => Ok(t),
        None => serde_json::from_str(slot.as_deref().map_or("null", RawValue::get)),
    }
}

/// What `slot` holds, as a `U`, when `T` is `U`; otherwise `None`, and `slot` keeps it.
fn take_same<T: 'static, U: 'static>(slot: &mut Option<T>) -> Option<U> {
    (slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
}

/// A handler's answer as raw JSON. One that is raw JSON already (`Box<RawValue>`: a stored or
/// forwarded message) is taken as it is: serializing it copied its text into a new string,
/// shrunk with one more allocation (an ask answered with the raw JSON it came with, `rpc` in
/// `scripts/bench-instructions.sh`: 10 624–10 918 instructions before, 9 823–9 911 after). The
/// same text either way.
fn to_raw<T: Serialize + 'static>(answer: T) -> serde_json::Result<Box<RawValue>> {
    let mut slot = Some(answer);
    match take_same::<_, Box<RawValue>>(&mut slot) {
        Some(raw) => Ok(raw),
        // Still in `slot`: `Some(answer)` serializes as the answer.
        None => serde_json::value::to_raw_value(&slot),
    }
}

/// An ask topic's handler and its metrics.
pub(crate) struct AskRoute {
    pub(crate) handler: AskHandler,
    pub(crate) series: AskSeries,
}

/// A tell topic's handler and its metrics.
pub(crate) struct TellRoute {
    pub(crate) handler: TellHandler,
    pub(crate) series: TellSeries,
}

/// The routes of one kind, by topic.
pub(crate) type Routes<R> = HashMap<String, Arc<R>, foldhash::fast::RandomState>;

/// Builds a [`Server`]: `Server::builder(scaler)`, then parsers and handlers, then `build()`.
pub struct ServerBuilder {
    scaler: Arc<dyn Scaler>,
    options: ServerOptions,
    session_parser: Option<SessionParser>,
    subscription_parser: Option<SubscriptionParser>,
    middleware: Option<Middleware>,
    asks: HashMap<String, AskHandler>,
    tells: HashMap<String, TellHandler>,
    http_fallback: Option<HttpFallback>,
    #[cfg(feature = "redis")]
    gateways: Vec<crate::worker::Gateway>,
}

fn bad_request(e: serde_json::Error) -> Rejection {
    Rejection::new(codes::BAD_REQUEST, e.to_string())
}

impl ServerBuilder {
    /// Sets the options.
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the session parser, run on every connection once the client's `hello` arrived. It
    /// sees the HTTP upgrade request and the `hello`'s credentials
    /// ([`HandshakeRequest::auth`]) and returns the socket's [`Session`] or a [`Refusal`] (the
    /// client gets an `error` frame with its code, then close 4010, and does not retry).
    /// Without one, every connection is accepted anonymously.
    pub fn session_parser<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(HandshakeRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Session, Refusal>> + Send + 'static,
    {
        self.session_parser = Some(Arc::new(move |r| Box::pin(f(r))));
        self
    }

    /// Sets the subscription parser: it accepts or refuses each subscription to an ordinary
    /// channel, given the socket, the channel and the client's query. It accepts with `Ok(())`,
    /// or with a [`Grant`] that says more (`Ok(Grant::with_presence())`). Without one, every
    /// valid channel is accepted. (User and session channels are never passed to it: a socket
    /// may subscribe to its own and to no one else's.)
    pub fn subscription_parser<F, Fut, G>(mut self, f: F) -> Self
    where
        F: Fn(Socket, String, Option<Box<RawValue>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<G, Rejection>> + Send + 'static,
        G: Into<Grant> + 'static,
    {
        let f = Arc::new(f);
        self.subscription_parser = Some(Arc::new(move |s, c, q| {
            let fut = f(s, c, q);
            Box::pin(async move { fut.await.map(Into::into) })
        }));
        self
    }

    /// Sets the inbound middleware: it sees every ask, tell and subscription of every socket
    /// before its handler or parser, and may refuse it (the client gets a `refused` error, or
    /// the middleware's own code).
    pub fn middleware<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Socket, Inbound) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Inbound, Rejection>> + Send + 'static,
    {
        self.middleware = Some(Arc::new(move |s, i| Box::pin(f(s, i))));
        self
    }

    /// Registers the handler of asks on `topic`. The request is deserialized into `Req` (a
    /// failure answers `bad_request`; `Req = Box<RawValue>` takes the JSON as it came); the
    /// handler's `Ok` is serialized as the response (`Resp = Box<RawValue>` is sent as it is),
    /// its `Err` reaches the client as a typed error.
    ///
    /// The handler starts on its socket's task: one that answers without waiting is answered
    /// there, at once; one that waits goes on in a task of its own, so a socket's asks run
    /// concurrently (up to [`max_concurrent_asks`](ServerOptions::max_concurrent_asks)). Long
    /// blocking work belongs in `tokio::task::spawn_blocking`.
    pub fn on_ask<Req, Resp, F, Fut>(mut self, topic: impl Into<String>, f: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Socket, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Rejection>> + Send + 'static,
    {
        // As for tells: the request parsed and the handler's future made here, without a
        // clone of `f` per ask.
        let handler: AskHandler = Arc::new(move |socket, msg| {
            let answer = from_raw::<Req>(msg).map(|req| f(socket, req));
            Box::pin(async move {
                let resp = answer.map_err(bad_request)?.await?;
                to_raw(resp).map_err(|e| Rejection::new(codes::INTERNAL, e.to_string()))
            })
        });
        self.asks.insert(topic.into(), handler);
        self
    }

    /// Registers the handler of tells on `topic`. A message that does not deserialize into
    /// `Msg` is dropped and logged; `Msg = Box<RawValue>` takes the message's JSON as it came,
    /// without parsing it again.
    ///
    /// Tell handlers run on their socket's own task (up to
    /// [`max_concurrent_tells`](ServerOptions::max_concurrent_tells) of a socket at once): cheap
    /// for the short handlers tells are for. A handler that does long blocking work should move
    /// it to `tokio::task::spawn_blocking` or its own task, or it holds up that socket. A tell
    /// read before its socket closed still runs to the end.
    pub fn on_tell<Msg, F, Fut>(mut self, topic: impl Into<String>, f: F) -> Self
    where
        Msg: DeserializeOwned + Send + 'static,
        F: Fn(Socket, Msg) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let topic = topic.into();
        let name = topic.clone();
        // The message is parsed and the handler's future made here, not in a future of ours:
        // that future had to own clones of `f` and the name, two reference counts that every
        // socket's tells touched, from every core.
        let handler: TellHandler = Arc::new(move |socket, msg| match from_raw::<Msg>(msg) {
            Ok(m) => Box::pin(f(socket, m)),
            Err(e) => {
                warn!(topic = name, error = %e, "tell dropped: bad message");
                Box::pin(std::future::ready(()))
            }
        });
        self.tells.insert(topic, handler);
        self
    }

    /// Routes the gateway's topics to workers (see [`worker`](crate::worker)): their asks and
    /// tells go through Redis to worker processes instead of handlers of this server. A topic
    /// routed this way replaces an `on_ask` or `on_tell` handler of the same name. Call it once
    /// per group of workers (each [`WorkerOptions::group`](crate::worker::WorkerOptions::group)
    /// is a stream and a consumer group of its own), with distinct topics.
    #[cfg(feature = "redis")]
    pub fn gateway(mut self, gateway: crate::worker::Gateway) -> Self {
        self.gateways.push(gateway);
        self
    }

    /// Answers plain HTTP requests (those that are not WebSocket upgrades) on the server's own
    /// listener, e.g. to serve a web app next to the socket endpoint.
    pub fn http_fallback<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        self.http_fallback = Some(Arc::new(move |r| Box::pin(f(r))));
        self
    }

    /// Starts the server: connects it to the scaler and starts dispatching what the scaler
    /// delivers. Listen with [`Server::listen`] or mount [`Server::upgrade`] in an HTTP app.
    // Routes are added to `self` only when worker mode is compiled in.
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
    pub async fn build(mut self) -> Result<Server, ScalerError> {
        if self.session_parser.is_some() && self.options.allowed_origins.is_none() {
            // The parser reads who the user is from the handshake (typically a cookie), and
            // browsers send cookies with a WebSocket upgrade from any page: without an origin
            // check, any web site the user visits can open a socket as that user (cross-site
            // WebSocket hijacking).
            warn!(
                "a session parser is set but allowed_origins is not: any web page can open a \
                 socket with the user's cookies; set ServerOptions::allowed_origins"
            );
        }
        let instance = new_instance_id();
        #[cfg(feature = "redis")]
        let mut gateways = Vec::new();
        #[cfg(feature = "redis")]
        for g in std::mem::take(&mut self.gateways) {
            let (link, routes) = g
                .start(&instance)
                .await
                .map_err(|e| ScalerError::Unavailable(e.to_string()))?;
            self.asks.extend(routes.asks);
            self.tells.extend(routes.tells);
            gateways.push(link);
        }
        let metrics = Arc::new(Metrics::new());
        let scaler: Arc<dyn Scaler> = Arc::new(Metered::new(self.scaler, metrics.clone()));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        scaler.start(events_tx).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let asks = self
            .asks
            .into_iter()
            .map(|(topic, handler)| {
                let series = metrics.ask_series(&topic);
                (topic, Arc::new(AskRoute { handler, series }))
            })
            .collect();
        let tells = self
            .tells
            .into_iter()
            .map(|(topic, handler)| {
                let series = metrics.tell_series(&topic);
                (topic, Arc::new(TellRoute { handler, series }))
            })
            .collect();
        let inner = Arc::new(Inner {
            instance,
            scaler,
            options: self.options,
            session_parser: self.session_parser,
            subscription_parser: self.subscription_parser,
            middleware: self.middleware,
            asks,
            tells,
            http_fallback: self.http_fallback,
            registry: Registry::default(),
            connections: Arc::default(),
            observability_connections: Arc::default(),
            metrics,
            #[cfg(feature = "redis")]
            gateways,
            stop_tx,
            stop_rx,
        });
        #[cfg(feature = "redis")]
        for link in &inner.gateways {
            link.attach(Arc::downgrade(&inner));
        }
        tokio::spawn(dispatch(Arc::downgrade(&inner), events_rx));
        Ok(Server { inner })
    }
}

fn new_instance_id() -> String {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    std::time::SystemTime::now().hash(&mut h);
    std::process::id().hash(&mut h);
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

pub(crate) struct Inner {
    pub(crate) instance: String,
    /// The application's scaler, wrapped to count and time every operation.
    pub(crate) scaler: Arc<dyn Scaler>,
    pub(crate) options: ServerOptions,
    pub(crate) session_parser: Option<SessionParser>,
    pub(crate) subscription_parser: Option<SubscriptionParser>,
    pub(crate) middleware: Option<Middleware>,
    /// Looked up for every ask and tell a client sends: foldhash, not SipHash, which took
    /// ~300 instructions per tell (callgrind, `sss-bench tells`). The keys are the
    /// application's, and foldhash is seeded per map all the same.
    pub(crate) asks: Routes<AskRoute>,
    pub(crate) tells: Routes<TellRoute>,
    pub(crate) http_fallback: Option<HttpFallback>,
    pub(crate) registry: Registry,
    /// TCP connections held by the listeners, for `max_connections(_per_ip)`.
    pub(crate) connections: Arc<ConnectionCounts>,
    /// TCP connections held by the observability listeners (a limit of their own, so that a
    /// server at `max_connections` still answers its health checks).
    pub(crate) observability_connections: Arc<ConnectionCounts>,
    pub(crate) metrics: Arc<Metrics>,
    /// Worker mode's links, one per group of workers this server routes topics to.
    #[cfg(feature = "redis")]
    pub(crate) gateways: Vec<Arc<crate::worker::GatewayLink>>,
    stop_tx: watch::Sender<bool>,
    pub(crate) stop_rx: watch::Receiver<bool>,
}

impl Inner {
    pub(crate) fn shutting_down(&self) -> bool {
        *self.stop_rx.borrow()
    }

    /// tungstenite's settings for every socket. The read buffer is allocated and zero-filled up
    /// front for each connection (at 4 KiB it was 40 % of an idle connection's memory, at 1 KiB
    /// still 11 %); frames are small, and a larger one grows the buffer and is read in 512-byte
    /// steps.
    pub(crate) fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(512)
            .write_buffer_size(4096)
            .max_message_size(Some(self.options.max_message_size))
            .max_frame_size(Some(self.options.max_message_size))
    }

    /// Runs the middleware and the subscription parser on a subscription to an ordinary
    /// channel. (The rules for reserved channels are the socket state machine's, applied before
    /// this is asked.)
    pub(crate) async fn authorize(
        &self,
        socket: &Socket,
        channel: &str,
        query: Option<Box<RawValue>>,
    ) -> Result<Grant, Rejection> {
        let query = match &self.middleware {
            Some(mw) => {
                let ev = Inbound::Subscribe {
                    channel: channel.to_owned(),
                    query,
                };
                match mw(socket.clone(), ev).await? {
                    Inbound::Subscribe { query, .. } => query,
                    _ => return Err(Rejection::new(codes::REFUSED, "middleware")),
                }
            }
            None => query,
        };
        let mut grant = match &self.subscription_parser {
            Some(parser) => parser(socket.clone(), channel.to_owned(), query).await?,
            None => Grant::default(),
        };
        let prefixes = &self.options.presence_prefixes;
        grant.presence |= prefixes.iter().any(|p| channel.starts_with(p.as_str()));
        Ok(grant)
    }
}

/// Reads what the scaler delivers and fans it out to this instance's sockets. Each publication
/// is encoded once; every subscriber gets the same bytes.
async fn dispatch(inner: std::sync::Weak<Inner>, mut events: mpsc::UnboundedReceiver<ScalerEvent>) {
    while let Some(event) = events.recv().await {
        let Some(inner) = inner.upgrade() else { break };
        match event {
            ScalerEvent::Publication { channel, record } => {
                let queued = inner.registry.fan_out(&channel, &record);
                inner.metrics.deliveries.inc_by(queued);
            }
            ScalerEvent::Control(c) => inner.registry.control(c),
            ScalerEvent::Presence {
                channel,
                joined,
                member,
            } => inner.registry.presence(&channel, joined, &member),
        }
    }
}

/// A running server. Cheap to clone; every clone is the same server.
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

fn raw<T: Serialize + ?Sized>(msg: &T) -> Result<Box<RawValue>, ServerError> {
    serde_json::value::to_raw_value(msg).map_err(|e| ServerError::Encode(e.to_string()))
}

/// Why a server-side operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The message could not be serialized as JSON.
    #[error("message does not serialize: {0}")]
    Encode(String),
    /// The channel name is invalid.
    #[error("invalid channel: {0}")]
    InvalidChannel(#[from] sss_core::protocol::ChannelError),
    /// The scaler failed.
    #[error(transparent)]
    Scaler(#[from] ScalerError),
}

impl Server {
    /// Starts building a server on a scaler.
    pub fn builder(scaler: impl Scaler) -> ServerBuilder {
        ServerBuilder {
            scaler: Arc::new(scaler),
            options: ServerOptions::default(),
            session_parser: None,
            subscription_parser: None,
            middleware: None,
            asks: HashMap::new(),
            tells: HashMap::new(),
            http_fallback: None,
            #[cfg(feature = "redis")]
            gateways: Vec::new(),
        }
    }

    /// This instance's id (a prefix of every socket id it hands out).
    pub fn instance_id(&self) -> &str {
        &self.inner.instance
    }

    /// Publishes on a channel, cluster-wide: appended to its history, delivered to every
    /// subscriber on every instance, in order. Returns the publication's position.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        topic: &str,
        msg: &T,
    ) -> Result<Position, ServerError> {
        classify_channel(channel)?;
        let msg = raw(msg)?;
        let position = self.inner.scaler.publish(channel, topic, &msg).await?;
        self.inner.metrics.publications.inc();
        Ok(position)
    }

    async fn control(&self, c: Control) -> Result<(), ServerError> {
        Ok(self.inner.scaler.control(c).await?)
    }

    /// Tells every socket of the cluster.
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        msg: &T,
    ) -> Result<(), ServerError> {
        let msg = raw(msg)?;
        self.control(Control::Broadcast {
            topic: topic.to_owned(),
            msg,
        })
        .await
    }

    /// Tells every socket of a user, cluster-wide.
    pub async fn tell_user<T: Serialize + ?Sized>(
        &self,
        user: &str,
        topic: &str,
        msg: &T,
    ) -> Result<(), ServerError> {
        let msg = raw(msg)?;
        self.control(Control::TellUser {
            user: user.to_owned(),
            topic: topic.to_owned(),
            msg,
        })
        .await
    }

    /// Tells every socket of a browser session, cluster-wide.
    pub async fn tell_session<T: Serialize + ?Sized>(
        &self,
        session: &str,
        topic: &str,
        msg: &T,
    ) -> Result<(), ServerError> {
        let msg = raw(msg)?;
        self.control(Control::TellSession {
            session: session.to_owned(),
            topic: topic.to_owned(),
            msg,
        })
        .await
    }

    /// Closes one socket, wherever it is, with close code 4003 (the client does not reconnect).
    pub async fn boot_socket(&self, socket_id: &str) -> Result<(), ServerError> {
        self.control(Control::BootSocket {
            socket: socket_id.to_owned(),
        })
        .await
    }

    /// Closes every socket of a user, cluster-wide, with close code 4003.
    pub async fn boot_user(&self, user: &str) -> Result<(), ServerError> {
        self.control(Control::BootUser {
            user: user.to_owned(),
        })
        .await
    }

    /// Closes every socket of a session, cluster-wide, with close code 4003.
    pub async fn boot_session(&self, session: &str) -> Result<(), ServerError> {
        self.control(Control::BootSession {
            session: session.to_owned(),
        })
        .await
    }

    /// Removes every subscriber of a channel, cluster-wide; each gets an `unsubbed` frame with
    /// code `booted`.
    pub async fn boot_channel(&self, channel: &str) -> Result<(), ServerError> {
        self.control(Control::BootChannel {
            channel: channel.to_owned(),
        })
        .await
    }

    /// The members of a channel's presence, on every instance (in no particular order).
    pub async fn presence(&self, channel: &str) -> Result<Vec<Member>, ServerError> {
        classify_channel(channel)?;
        Ok(self.inner.scaler.presence(channel).await?)
    }

    /// A channel's presence counts: sockets, and distinct users among them.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ServerError> {
        Ok(PresenceStats::of(&self.presence(channel).await?))
    }

    /// Number of channels this instance holds local subscribers for (a structure count: it
    /// returns to zero when every socket has left every channel).
    pub fn local_channels(&self) -> usize {
        self.inner.registry.channel_count()
    }

    /// Number of sockets connected to this instance.
    pub fn local_sockets(&self) -> usize {
        self.inner.registry.socket_count()
    }

    /// Number of TCP connections this server's listeners hold (HTTP phase and WebSockets): the
    /// count [`ServerOptions::max_connections`] limits.
    pub fn open_connections(&self) -> usize {
        self.inner.connections.total()
    }

    /// Graceful shutdown: stops accepting, closes every socket with 1001 so clients reconnect
    /// (to another instance) and resync, waits up to `grace` for them to go, and detaches from
    /// the scaler.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stop_tx.send_replace(true);
        self.inner.registry.close_all(
            sss_core::protocol::close::GOING_AWAY,
            "server shutting down",
        );
        let deadline = tokio::time::Instant::now() + grace;
        while self.inner.registry.socket_count() > 0 && tokio::time::Instant::now() < deadline {
            let mut changed = self.inner.registry.watch_count();
            let _ = tokio::time::timeout_at(deadline, changed.changed()).await;
        }
        #[cfg(feature = "redis")]
        for link in &self.inner.gateways {
            link.stop();
        }
        self.inner.scaler.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_message_is_taken_as_it_came() {
        let raw = RawValue::from_string(r#"{ "a" : 1 }"#.to_owned()).expect("json");
        let text_at = raw.get().as_ptr();
        let taken: Box<RawValue> = from_raw(raw).expect("json");
        assert_eq!(
            taken.get().as_ptr(),
            text_at,
            "raw JSON is taken, not parsed again"
        );
        let seven = RawValue::from_string("7".to_owned()).expect("json");
        assert_eq!(from_raw::<u32>(seven).expect("json"), 7);
    }

    #[test]
    fn an_answer_is_the_same_json_raw_or_serialized() {
        for text in [r#"{ "a" : [1, 2.5, "x"] }"#, "42", r#""s\u00e9""#, "null"] {
            let raw = RawValue::from_string(text.to_owned()).expect("json");
            let serialized = serde_json::value::to_raw_value(&raw).expect("json");
            let text_at = raw.get().as_ptr();
            let taken = to_raw(raw).expect("json");
            assert_eq!(taken.get(), serialized.get());
            assert_eq!(
                taken.get().as_ptr(),
                text_at,
                "raw JSON is taken, not copied"
            );
        }
        assert_eq!(to_raw(vec![1, 2]).expect("json").get(), "[1,2]");
        let value = serde_json::json!({"k": [true, null]});
        assert_eq!(to_raw(value).expect("json").get(), r#"{"k":[true,null]}"#);
        assert_eq!(to_raw(None::<u8>).expect("json").get(), "null");
    }
}
