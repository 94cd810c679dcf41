//! The gateway side of worker mode: routed topics become jobs in a Redis stream, and answers
//! come back on the gateway's own pub/sub channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use ::redis::{Client, Script};
use futures::StreamExt;
use serde_json::value::RawValue;
use sss_core::protocol::{codes, encode_tell};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::consumer::stopped;
use super::{
    bounded, connect, millis, now_ms, redis_error, Job, Kind, ToGateway, WorkerError, WorkerOptions,
};
use crate::metrics::WorkerEvent;
use crate::scaler::Control;
use crate::server::{AskHandler, Inner, TellHandler};
use crate::socket::Out;
use crate::{Rejection, Socket};

/// Adds a job to a group's stream unless it holds `max_backlog` already (see `enqueue.lua`).
static ENQUEUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("enqueue.lua")));

/// First and largest delay between attempts to reconnect the answers' pub/sub connection.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// How often an idle answers' connection is checked with a PING (a connection that died
/// silently would otherwise lose every answer until the kernel notices).
const KEEPALIVE: Duration = Duration::from_secs(10);

type Halves = (PubSubSink, PubSubStream);

/// Routes chosen ask and tell topics of a server to workers (see the [module docs](super)).
/// Given to [`ServerBuilder::gateway`](crate::ServerBuilder::gateway).
///
/// ```no_run
/// use sss_server::worker::{Gateway, WorkerOptions};
/// use sss_server::{MemoryScaler, Server};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let gateway = Gateway::new("redis://127.0.0.1/", WorkerOptions::default())
///     .asks(["orders.place"])
///     .tells(["activity"]);
/// let server = Server::builder(MemoryScaler::default()).gateway(gateway).build().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Gateway {
    url: String,
    opts: WorkerOptions,
    asks: Vec<String>,
    tells: Vec<String>,
}

impl Gateway {
    /// Worker mode through the Redis at `redis_url`, routing no topic yet.
    pub fn new(redis_url: impl Into<String>, opts: WorkerOptions) -> Self {
        Self {
            url: redis_url.into(),
            opts,
            asks: Vec::new(),
            tells: Vec::new(),
        }
    }

    /// Routes asks on these topics to the workers.
    pub fn asks<I: IntoIterator<Item = S>, S: Into<String>>(mut self, topics: I) -> Self {
        self.asks.extend(topics.into_iter().map(Into::into));
        self
    }

    /// Routes tells on these topics to the workers.
    pub fn tells<I: IntoIterator<Item = S>, S: Into<String>>(mut self, topics: I) -> Self {
        self.tells.extend(topics.into_iter().map(Into::into));
        self
    }

    /// Connects to Redis and subscribes the gateway's answer channel (before any ask can be
    /// routed, so no answer is missed), and returns the link with a handler per routed topic.
    pub(crate) async fn start(
        self,
        instance: &str,
    ) -> Result<(Arc<GatewayLink>, Routes), WorkerError> {
        let client = Client::open(self.url.as_str()).map_err(redis_error)?;
        let conn = connect(&client, &self.opts, self.opts.command_timeout).await?;
        let (stop, _) = watch::channel(false);
        let link = Arc::new(GatewayLink {
            channel: self.opts.gateway_channel(instance),
            stream: self.opts.stream(),
            gateway: instance.to_owned(),
            opts: self.opts,
            client,
            conn,
            next: AtomicU64::new(1),
            pending: Mutex::default(),
            server: OnceLock::new(),
            up: AtomicBool::new(false),
            stop,
        });
        let answers = link.subscribe().await?;
        tokio::spawn(link.clone().run(answers));
        let mut routes = Routes::default();
        for topic in self.asks {
            let (link, name) = (link.clone(), topic.clone());
            let handler: AskHandler = Arc::new(move |socket, msg| {
                let (link, name) = (link.clone(), name.clone());
                Box::pin(async move { link.ask(&name, &socket, msg).await })
            });
            routes.asks.push((topic, handler));
        }
        for topic in self.tells {
            let (link, name) = (link.clone(), topic.clone());
            let handler: TellHandler = Arc::new(move |socket, msg| {
                let (link, name) = (link.clone(), name.clone());
                Box::pin(async move { link.tell(&name, &socket, msg).await })
            });
            routes.tells.push((topic, handler));
        }
        Ok((link, routes))
    }
}

/// The handlers a gateway registers for the topics it routes.
#[derive(Default)]
pub(crate) struct Routes {
    pub(crate) asks: Vec<(String, AskHandler)>,
    pub(crate) tells: Vec<(String, TellHandler)>,
}

type Answer = Result<Box<RawValue>, Rejection>;

/// A running gateway: its Redis connections and the asks waiting for an answer.
pub(crate) struct GatewayLink {
    opts: WorkerOptions,
    client: Client,
    conn: ConnectionManager,
    /// This gateway's answer channel.
    channel: String,
    /// The group's job stream.
    stream: String,
    /// This gateway's id (its server's instance id).
    gateway: String,
    next: AtomicU64,
    /// Asks routed and not answered yet, by key.
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    /// The server, for the tells and boots workers send to its sockets; set once built.
    server: OnceLock<Weak<Inner>>,
    /// Whether the answer channel is subscribed now.
    up: AtomicBool,
    stop: watch::Sender<bool>,
}

/// Removes an ask from the pending ones however its wait ends (answer, timeout, error).
struct PendingAsk<'a> {
    link: &'a GatewayLink,
    key: u64,
}

impl Drop for PendingAsk<'_> {
    fn drop(&mut self) {
        self.link.pending().remove(&self.key);
    }
}

impl GatewayLink {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Answer>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the link its server, once built.
    pub(crate) fn attach(&self, server: Weak<Inner>) {
        let _ = self.server.set(server);
    }

    /// Whether answers can arrive now (for the server's readiness).
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Stops hearing answers; asks still waiting time out.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    fn job(&self, kind: Kind, topic: &str, socket: &Socket, msg: Box<RawValue>, i: u64) -> Job {
        let ttl = match kind {
            Kind::Ask => self.opts.ask_timeout,
            Kind::Tell => self.opts.tell_ttl,
        };
        Job {
            k: kind,
            t: topic.to_owned(),
            m: msg,
            s: socket.id().to_owned(),
            u: socket.user().map(str::to_owned),
            e: socket.session().map(str::to_owned),
            g: self.gateway.clone(),
            i,
            d: now_ms().saturating_add(millis(ttl)),
        }
    }

    /// Adds a job to the stream. `Ok(false)` when the backlog is full.
    async fn enqueue(&self, job: &Job) -> Result<bool, Rejection> {
        let json = serde_json::to_string(job)
            .map_err(|e| Rejection::new(codes::INTERNAL, e.to_string()))?;
        let mut invoke = ENQUEUE.prepare_invoke();
        invoke
            .key(&self.stream)
            .arg(self.opts.max_backlog)
            .arg(json);
        let mut conn = self.conn.clone();
        bounded(self.opts.command_timeout, invoke.invoke_async(&mut conn))
            .await
            .map_err(|e| Rejection::new(codes::UNAVAILABLE, e.to_string()))
    }

    /// Routes an ask and waits for its answer, at most `ask_timeout`.
    async fn ask(&self, topic: &str, socket: &Socket, msg: Box<RawValue>) -> Answer {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(key, tx);
        let _pending = PendingAsk { link: self, key };
        let job = self.job(Kind::Ask, topic, socket, msg, key);
        if !self.enqueue(&job).await? {
            return Err(Rejection::new(codes::BUSY, "workers are behind; try again"));
        }
        match tokio::time::timeout(self.opts.ask_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            _ => Err(Rejection::new(
                codes::UNAVAILABLE,
                "no worker answered in time",
            )),
        }
    }

    /// Routes a tell. A tell the workers have no room for is dropped (logged and counted).
    async fn tell(&self, topic: &str, socket: &Socket, msg: Box<RawValue>) {
        let job = self.job(Kind::Tell, topic, socket, msg, 0);
        match self.enqueue(&job).await {
            Ok(true) => return,
            Ok(false) => tracing::warn!(topic, "tell dropped: the workers' backlog is full"),
            Err(e) => tracing::warn!(topic, error = %e, "tell dropped: workers unreachable"),
        }
        self.count(WorkerEvent::TellDropped);
    }

    fn count(&self, event: WorkerEvent) {
        if let Some(inner) = self.server.get().and_then(Weak::upgrade) {
            inner.metrics.worker_event(event);
        }
    }

    /// Opens the answers' pub/sub connection, subscribed.
    async fn subscribe(&self) -> Result<Halves, WorkerError> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, ::redis::RedisError>(pubsub.split())
        };
        let stream = bounded(self.opts.command_timeout, connect).await?;
        self.up.store(true, Ordering::Relaxed);
        Ok(stream)
    }

    /// Hears answers until stopped, resubscribing whenever the connection drops. Answers sent
    /// while it is down are lost: their asks time out as `unavailable`.
    async fn run(self: Arc<Self>, (mut sink, mut answers): Halves) {
        let mut stop = self.stop.subscribe();
        loop {
            let mut keepalive =
                tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
            loop {
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    msg = answers.next() => match msg {
                        Some(msg) => {
                            if !self.on_message(msg.get_payload_bytes()) {
                                return;
                            }
                        }
                        None => break,
                    },
                    _ = keepalive.tick() => {
                        let ping = sink.ping::<::redis::Value>();
                        if !matches!(tokio::time::timeout(self.opts.command_timeout, ping).await, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            self.up.store(false, Ordering::Relaxed);
            tracing::warn!("workers' answer channel lost; reconnecting");
            let mut delay = BACKOFF.0;
            (sink, answers) = loop {
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    () = tokio::time::sleep(delay) => {}
                }
                match self.subscribe().await {
                    Ok(s) => break s,
                    Err(e) => {
                        tracing::warn!(error = %e, ?delay, "workers' answer channel: reconnection failed");
                        delay = (delay * 2).min(BACKOFF.1);
                    }
                }
            };
        }
    }

    /// Acts on one message from a worker. Returns `false` once the server is gone.
    fn on_message(&self, payload: &[u8]) -> bool {
        let msg = match serde_json::from_slice::<ToGateway>(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an undecodable message from a worker");
                return true;
            }
        };
        if let ToGateway::Reply { i, r } = msg {
            // A job run twice (claimed from a worker that was slow, not dead) answers twice:
            // the first answer took the ask, the second finds nothing.
            match self.pending().remove(&i) {
                Some(tx) => {
                    let _ = tx.send(r.map_err(|w| Rejection::new(w.code, w.reason)));
                }
                None => {
                    tracing::debug!(ask = i, "dropping a late or second answer");
                    self.count(WorkerEvent::AnswerDropped);
                }
            }
            return true;
        }
        let Some(inner) = self.server.get().and_then(Weak::upgrade) else {
            return self.server.get().is_none();
        };
        match msg {
            ToGateway::Tell { s, t, m } => {
                if let Some(socket) = inner.registry.socket(&s) {
                    socket.push(Out::Frame(Utf8Bytes::from(encode_tell(&t, &m))));
                }
            }
            ToGateway::Boot { s } => inner.registry.control(Control::BootSocket { socket: s }),
            ToGateway::Reply { .. } => {}
        }
        true
    }
}
