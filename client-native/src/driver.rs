//! The tokio task that owns the socket and drives the sans-IO core.

use std::collections::HashMap;
use std::future::pending;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::value::RawValue;
use sss_core::client::{self as core, AskError, AskId, Config, Event, Recovery, Status};
use sss_core::protocol::{close, Member};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{
    connect_async_tls_with_config, Connector, MaybeTlsStream, WebSocketStream,
};
use tracing::{debug, warn};

use crate::subscription::{self, Publication, SubEvent};
use crate::{AuthSource, ConnectError, Options, RequestError};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connection attempt that worked: the socket, and the credentials its `hello` carries.
type Opened = (Ws, Option<Box<RawValue>>);

/// Why a connection attempt failed: a refusal (HTTP status and body) or anything else.
enum ConnectFail {
    Refused(u16, String),
    Other(String),
}

/// What client handles ask the driver.
pub(crate) enum Command {
    Ask {
        topic: String,
        msg: Box<RawValue>,
        /// Its own timeout (`None`: the client's).
        timeout: Option<std::time::Duration>,
        reply: oneshot::Sender<Result<Box<RawValue>, RequestError>>,
    },
    Tell {
        topic: String,
        msg: Box<RawValue>,
    },
    Subscribe {
        channel: String,
        options: core::SubscribeOptions,
        shared: Arc<subscription::Shared>,
        events: mpsc::UnboundedSender<SubEvent>,
        ready: oneshot::Sender<Result<Recovery, RequestError>>,
    },
    /// From the handle `sub` of `channel`'s subscription (ignored if it is not the current
    /// one's).
    Unsubscribe {
        channel: String,
        sub: Arc<subscription::Shared>,
    },
    /// `presence` (or `pstats` with `stats`) from the handle `sub`.
    Presence {
        channel: String,
        sub: Arc<subscription::Shared>,
        stats: bool,
        reply: oneshot::Sender<Result<Box<RawValue>, RequestError>>,
    },
    OnTell {
        topic: String,
        sink: mpsc::UnboundedSender<Box<RawValue>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
    /// The last client handle was dropped.
    Shutdown,
}

/// Held by every client handle; when the last goes, the driver closes the connection.
#[derive(Debug)]
pub(crate) struct Owner(mpsc::UnboundedSender<Command>);

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.0.send(Command::Shutdown);
    }
}

struct SubEntry {
    shared: Arc<subscription::Shared>,
    events: mpsc::UnboundedSender<SubEvent>,
    ready: Option<oneshot::Sender<Result<Recovery, RequestError>>>,
}

type FirstSender = oneshot::Sender<Result<(), ConnectError>>;

struct Driver {
    core: core::Client,
    start: Instant,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Extra headers (cookies included) of every upgrade request.
    headers: Arc<Vec<(String, String)>>,
    auth: Option<AuthSource>,
    ws: Option<Ws>,
    connecting: Option<BoxFuture<'static, Result<Opened, ConnectFail>>>,
    asks: HashMap<AskId, oneshot::Sender<Result<Box<RawValue>, RequestError>>>,
    subs: HashMap<String, SubEntry>,
    tells: HashMap<String, Vec<mpsc::UnboundedSender<Box<RawValue>>>>,
    status: watch::Sender<Status>,
    /// Who the current connection is, as its `welcome` said.
    identity: watch::Sender<Option<Identity>>,
    /// How the client closed, once it has.
    closed: watch::Sender<Option<Closed>>,
    first: Option<FirstSender>,
    refusal: Option<(u16, String)>,
    done: bool,
}

/// Who a connection is, as its `welcome` said: the socket's cluster-wide id (the `socket` of
/// its presence [`Member`](crate::Member)s), and the user and session the server's session
/// parser gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The socket's cluster-wide id.
    pub socket: String,
    /// The user id, if any.
    pub user: Option<String>,
    /// The session id, if any.
    pub session: Option<String>,
}

/// How a client closed for good: the close code and reason, and the server's error that caused
/// it, if any (a refused `hello`: [`codes::UNAUTHORIZED`](crate::codes::UNAUTHORIZED), ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// WebSocket close code.
    pub code: u16,
    /// Reason.
    pub reason: String,
    /// The server's `error` frame before the close.
    pub error: Option<AskError>,
}

/// What [`spawn`] hands to the client handle.
pub(crate) struct Spawned {
    pub(crate) cmd: mpsc::UnboundedSender<Command>,
    pub(crate) status: watch::Receiver<Status>,
    pub(crate) identity: watch::Receiver<Option<Identity>>,
    pub(crate) closed: watch::Receiver<Option<Closed>>,
    pub(crate) owner: Arc<Owner>,
    /// Resolves with the outcome of the first connection.
    pub(crate) first: oneshot::Receiver<Result<(), ConnectError>>,
}

/// Starts the driver task. `fail_first_connect`: a first connection that fails closes the client
/// (what [`Client::connect`](crate::Client::connect) reports) instead of being retried.
pub(crate) fn spawn(urls: Vec<String>, options: Options, fail_first_connect: bool) -> Spawned {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (status_tx, status_rx) = watch::channel(Status::Connecting);
    let (identity_tx, identity_rx) = watch::channel(None);
    let (closed_tx, closed_rx) = watch::channel(None);
    let mut headers = options.headers;
    if !options.cookies.is_empty() {
        let cookies: Vec<String> = options
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        headers.push(("Cookie".to_owned(), cookies.join("; ")));
    }
    let (first_tx, first_rx) = oneshot::channel();
    let seed = options.seed.unwrap_or_else(random_seed);
    let config = Config {
        urls,
        ask_timeout: options.ask_timeout,
        connect_timeout: options.connect_timeout,
        reconnect: options.reconnect,
        offline_queue: options.offline_queue,
        seed,
        fail_first_connect,
    };
    let start = Instant::now();
    let driver = Driver {
        core: core::Client::new(config, core::Instant::from_millis(0)),
        start,
        tls: options.tls,
        headers: Arc::new(headers),
        auth: options.auth,
        ws: None,
        connecting: None,
        asks: HashMap::new(),
        subs: HashMap::new(),
        tells: HashMap::new(),
        status: status_tx,
        identity: identity_tx,
        closed: closed_tx,
        first: Some(first_tx),
        refusal: None,
        done: false,
    };
    tokio::spawn(driver.run(cmd_rx));
    let owner = Arc::new(Owner(cmd_tx.clone()));
    Spawned {
        cmd: cmd_tx,
        status: status_rx,
        identity: identity_rx,
        closed: closed_rx,
        owner,
        first: first_rx,
    }
}

fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}

/// One connection attempt: fetches the credentials (if the client has a source), then opens the
/// socket with the extra headers.
async fn open(
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    headers: Arc<Vec<(String, String)>>,
    auth: Option<AuthSource>,
) -> Result<Opened, ConnectFail> {
    let auth = match auth {
        Some(source) => Some(
            source
                .fetch()
                .await
                .map_err(|e| ConnectFail::Other(format!("no credentials: {e}")))?,
        ),
        None => None,
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectFail::Other(e.to_string()))?;
    for (name, value) in headers.iter() {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|e| ConnectFail::Other(format!("header {name:?}: {e}")))?;
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|e| ConnectFail::Other(format!("header {name}: {e}")))?;
        request.headers_mut().append(name, value);
    }
    let connector = tls.map(Connector::Rustls);
    match connect_async_tls_with_config(request, Some(ws_config()), true, connector).await {
        Ok((ws, _)) => Ok((ws, auth)),
        Err(WsError::Http(res)) if res.status().is_client_error() => {
            let body = res
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(ConnectFail::Refused(res.status().as_u16(), body))
        }
        Err(e) => Err(ConnectFail::Other(e.to_string())),
    }
}

async fn next_message(ws: &mut Option<Ws>) -> Option<Result<Message, WsError>> {
    match ws {
        Some(ws) => ws.next().await,
        None => pending().await,
    }
}

async fn connected(
    c: &mut Option<BoxFuture<'static, Result<Opened, ConnectFail>>>,
) -> Result<Opened, ConnectFail> {
    match c {
        Some(f) => f.await,
        None => pending().await,
    }
}

impl Driver {
    fn now(&self) -> core::Instant {
        core::Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    fn deadline(&self) -> Option<Instant> {
        self.core
            .poll_timeout()
            .map(|t| self.start + std::time::Duration::from_millis(t.as_millis()))
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            self.pump().await;
            if self.done {
                break;
            }
            let deadline = self.deadline();
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => self.shutdown(),
                },
                r = connected(&mut self.connecting) => {
                    self.connecting = None;
                    let now = self.now();
                    match r {
                        Ok((ws, auth)) => {
                            self.ws = Some(ws);
                            self.core.set_auth(auth);
                            self.core.handle_open(now);
                        }
                        Err(ConnectFail::Refused(status, body)) => {
                            self.refusal = Some((status, body.clone()));
                            self.failed(close::HANDSHAKE_REFUSED, body);
                        }
                        Err(ConnectFail::Other(e)) => self.failed(close::ABNORMAL, e),
                    }
                }
                msg = next_message(&mut self.ws) => self.message(msg),
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
            }
        }
    }

    fn failed(&mut self, code: u16, reason: String) {
        debug!(code, reason, "connection failed");
        let now = self.now();
        self.core.handle_close(now, code, &reason);
    }

    fn message(&mut self, msg: Option<Result<Message, WsError>>) {
        let now = self.now();
        match msg {
            Some(Ok(Message::Text(text))) => self.core.handle_frame(now, &text),
            Some(Ok(Message::Close(frame))) => {
                self.ws = None;
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                self.failed(code, reason);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                self.ws = None;
                self.failed(close::ABNORMAL, e.to_string());
            }
            None => {
                self.ws = None;
                self.failed(close::ABNORMAL, "connection closed".into());
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Ask {
                topic,
                msg,
                timeout,
                reply,
            } => {
                let id = match timeout {
                    Some(t) => self.core.ask_with_timeout(now, &topic, msg, t),
                    None => self.core.ask(now, &topic, msg),
                };
                match id {
                    Ok(id) => {
                        self.asks.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::Tell { topic, msg } => {
                if let Err(e) = self.core.tell(now, &topic, msg) {
                    warn!(topic, error = %e, "tell dropped");
                }
            }
            Command::Subscribe {
                channel,
                options,
                shared,
                events,
                ready,
            } => match self.core.subscribe(now, &channel, options) {
                Ok(()) => {
                    self.subs.insert(
                        channel,
                        SubEntry {
                            shared,
                            events,
                            ready: Some(ready),
                        },
                    );
                }
                Err(e) => {
                    let _ = ready.send(Err(e.into()));
                }
            },
            Command::Unsubscribe { channel, sub } => {
                if self.is_current(&channel, &sub) {
                    self.core.unsubscribe(now, &channel);
                    self.subs.remove(&channel);
                }
            }
            Command::Presence {
                channel,
                sub,
                stats,
                reply,
            } => {
                let id = if !self.is_current(&channel, &sub) {
                    Err(AskError::not_subscribed().into())
                } else if stats {
                    self.core.presence_stats(now, &channel).map_err(Into::into)
                } else {
                    self.core.presence(now, &channel).map_err(Into::into)
                };
                match id {
                    Ok(id) => {
                        self.asks.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::OnTell { topic, sink } => self.tells.entry(topic).or_default().push(sink),
            Command::Close { done } => {
                self.core.close(now);
                let _ = done.send(());
            }
            Command::Shutdown => self.shutdown(),
        }
    }

    /// Whether `sub` is the handle of `channel`'s current subscription (not of one that ended
    /// before the channel was subscribed again).
    fn is_current(&self, channel: &str, sub: &Arc<subscription::Shared>) -> bool {
        self.subs
            .get(channel)
            .is_some_and(|entry| Arc::ptr_eq(&entry.shared, sub))
    }

    fn shutdown(&mut self) {
        let now = self.now();
        self.core.close(now);
        self.done = true;
    }

    /// Carries out what the core asks for: socket actions, frames to send, events to deliver.
    async fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(action) = self.core.poll_action() {
                progressed = true;
                self.action(action);
            }
            if let Some(ws) = self.ws.as_mut() {
                let mut wrote = false;
                let mut failed = None;
                while let Some(frame) = self.core.poll_transmit() {
                    progressed = true;
                    wrote = true;
                    if let Err(e) = ws.feed(Message::Text(frame.into())).await {
                        failed = Some(e);
                        break;
                    }
                }
                if wrote && failed.is_none() {
                    failed = ws.flush().await.err();
                }
                if let Some(e) = failed {
                    self.ws = None;
                    self.failed(close::ABNORMAL, e.to_string());
                }
            } else {
                // No socket: the core only transmits on an open one, but never keep stale frames.
                while self.core.poll_transmit().is_some() {}
            }
            while let Some(event) = self.core.poll_event() {
                progressed = true;
                self.event(event);
            }
            if !progressed {
                return;
            }
        }
    }

    fn action(&mut self, action: core::Action) {
        match action {
            core::Action::Connect { url } => {
                debug!(url, "connecting");
                self.ws = None;
                let (tls, headers, auth) =
                    (self.tls.clone(), self.headers.clone(), self.auth.clone());
                self.connecting = Some(open(url, tls, headers, auth).boxed());
            }
            core::Action::Close { code, reason } => {
                self.connecting = None;
                if let Some(mut ws) = self.ws.take() {
                    tokio::spawn(async move {
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        };
                        let close = ws.close(Some(frame));
                        let _ =
                            tokio::time::timeout(std::time::Duration::from_secs(1), close).await;
                    });
                }
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Status(s) => {
                // Before the status: a task woken by `Ready` finds the new identity.
                let identity = self.core.socket_id().map(|socket| Identity {
                    socket: socket.to_owned(),
                    user: self.core.user().map(str::to_owned),
                    session: self.core.session().map(str::to_owned),
                });
                self.identity.send_if_modified(|current| {
                    let changed = *current != identity;
                    *current = identity;
                    changed
                });
                self.status.send_replace(s);
                if s == Status::Ready {
                    if let Some(first) = self.first.take() {
                        let _ = first.send(Ok(()));
                    }
                }
            }
            Event::AskDone { id, result } => {
                if let Some(reply) = self.asks.remove(&id) {
                    let _ = reply.send(result.map_err(Into::into));
                }
            }
            Event::Tell { topic, msg } => {
                if let Some(sinks) = self.tells.get_mut(&topic) {
                    sinks.retain(|s| s.send(msg.clone()).is_ok());
                }
            }
            Event::Subscribed {
                channel, presence, ..
            } => {
                if let Some(entry) = self.subs.get_mut(&channel) {
                    entry.shared.set_presence(presence);
                    if let Some(ready) = entry.ready.take() {
                        let _ = ready.send(Ok(Recovery::New));
                    }
                }
            }
            Event::Resynced {
                channel,
                position,
                recovered,
                presence,
            } => {
                if let Some(entry) = self.subs.get_mut(&channel) {
                    entry.shared.set_presence(presence);
                    let _ = entry.events.send(if recovered {
                        SubEvent::Recovered { position }
                    } else {
                        SubEvent::Unrecoverable { position }
                    });
                }
            }
            Event::SubscribeFailed { channel, error } => {
                if let Some(entry) = self.subs.remove(&channel) {
                    match entry.ready {
                        Some(ready) => {
                            let _ = ready.send(Err(error.into()));
                        }
                        None => {
                            let _ = entry.events.send(SubEvent::Ended {
                                code: error.code,
                                reason: error.reason,
                            });
                        }
                    }
                }
            }
            Event::Publication {
                channel,
                topic,
                msg,
                position,
            } => {
                if let Some(entry) = self.subs.get(&channel) {
                    let _ = entry.events.send(SubEvent::Publication(Publication {
                        channel,
                        topic,
                        msg,
                        position,
                    }));
                }
            }
            Event::Join { channel, member } => self.member(&channel, &member, SubEvent::Join),
            Event::Leave { channel, member } => self.member(&channel, &member, SubEvent::Leave),
            Event::Unsubscribed {
                channel,
                code,
                reason,
            } => {
                if let Some(entry) = self.subs.remove(&channel) {
                    let _ = entry.events.send(SubEvent::Ended { code, reason });
                }
            }
            Event::Closed {
                code,
                reason,
                error,
            } => {
                if let Some(first) = self.first.take() {
                    let err = match (self.refusal.take(), &error) {
                        (_, Some(e)) if code == close::HANDSHAKE_REFUSED => {
                            ConnectError::Rejected {
                                code: e.code.clone(),
                                reason: e.reason.clone(),
                            }
                        }
                        (Some((status, reason)), _) if code == close::HANDSHAKE_REFUSED => {
                            ConnectError::Refused { status, reason }
                        }
                        _ => ConnectError::Closed {
                            code,
                            reason: reason.clone(),
                        },
                    };
                    let _ = first.send(Err(err));
                }
                self.closed.send_replace(Some(Closed {
                    code,
                    reason: reason.clone(),
                    error,
                }));
                self.done = true;
            }
        }
    }

    /// A join or leave for `channel`'s stream. A member that is not a [`Member`] breaks the
    /// protocol; it is logged and dropped rather than failing the subscription.
    fn member(&self, channel: &str, member: &RawValue, event: fn(Member) -> SubEvent) {
        let Some(entry) = self.subs.get(channel) else {
            return;
        };
        match serde_json::from_str(member.get()) {
            Ok(member) => {
                let _ = entry.events.send(event(member));
            }
            Err(e) => warn!(channel, error = %e, "presence member dropped: not a member"),
        }
    }
}
