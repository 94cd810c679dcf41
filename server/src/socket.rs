//! One connection: its task, its bounded outbound queue, and the [`Socket`] handle.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::{FutureExt, SinkExt, StreamExt};
use serde::Serialize;
use serde_json::value::RawValue;
use sss_core::protocol::{
    close, codes, encode_pub, encode_tell, ClientFrame, ServerFrame, PROTOCOL_VERSION,
};
use sss_core::Position;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Notify};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use crate::scaler::History;
use crate::server::{Inbound, Inner};
use crate::{Rejection, Session};

/// What reaches a socket's task through its bounded queue.
///
/// Kept small: tokio allocates the queue in blocks of 32 slots, the first one up front, so every
/// byte of `Out` costs 32 bytes of memory per connection, idle or not.
pub(crate) enum Out {
    /// A frame to send as is.
    Frame(Utf8Bytes),
    /// A publication, encoded once for every subscriber and shared by them; the socket drops it
    /// if it is not (or no longer) subscribed or already has it, and holds it while the
    /// subscription is syncing.
    Pub(Arc<Publication>),
    /// The channel was booted: drop the subscription and tell the client.
    BootChannel(Arc<str>),
    /// The outcome of work the socket's task spawned (boxed: it is rare and large, and the
    /// queue's blocks are sized by the largest variant).
    Internal(Box<Internal>),
}

/// One publication as every local subscriber of its channel receives it.
pub(crate) struct Publication {
    pub(crate) channel: Arc<str>,
    pub(crate) epoch: Arc<str>,
    pub(crate) seq: u64,
    /// The `pub` frame, encoded once.
    pub(crate) frame: Utf8Bytes,
}

/// The part of a socket other tasks hold.
pub(crate) struct SocketShared {
    server: std::sync::Weak<Inner>,
    pub(crate) id: Arc<str>,
    pub(crate) key: u64,
    pub(crate) session: Session,
    tx: mpsc::Sender<Out>,
    /// Asks being handled.
    asks: AtomicUsize,
    kill: Mutex<Option<(u16, String)>>,
    killed: Notify,
}

impl SocketShared {
    /// Queues without waiting; a full queue means the client reads too slowly.
    pub(crate) fn push(&self, out: Out) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(out) {
            self.kill(close::SLOW_CONSUMER, "slow consumer: outbound queue full");
        }
    }

    /// Asks the socket's task to close with `code` (the first request wins).
    pub(crate) fn kill(&self, code: u16, reason: &str) {
        let mut k = self.kill.lock().unwrap_or_else(|e| e.into_inner());
        if k.is_none() {
            *k = Some((code, reason.to_owned()));
            self.killed.notify_one();
        }
    }

    fn kill_reason(&self) -> (u16, String) {
        self.kill
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or((close::NORMAL, String::new()))
    }
}

/// A connected socket, as handlers and parsers see it. Cheap to clone.
#[derive(Clone)]
pub struct Socket(pub(crate) Arc<SocketShared>);

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.0.id)
            .field("user", &self.0.session.user)
            .field("session", &self.0.session.session)
            .finish()
    }
}

impl Socket {
    /// Cluster-wide unique id.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The user id the session parser gave.
    pub fn user(&self) -> Option<&str> {
        self.0.session.user.as_deref()
    }

    /// The session id the session parser gave.
    pub fn session(&self) -> Option<&str> {
        self.0.session.session.as_deref()
    }

    /// A value the session parser stored in the session's locals.
    pub fn local<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.session.locals.get::<T>()
    }

    /// The server this socket is connected to, to publish or reach other sockets from a
    /// handler. `None` only once the server is gone.
    pub fn server(&self) -> Option<crate::Server> {
        self.0.server.upgrade().map(|inner| crate::Server { inner })
    }

    /// Tells this socket a message (fire-and-forget).
    pub fn tell<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        msg: &T,
    ) -> Result<(), serde_json::Error> {
        let msg = serde_json::value::to_raw_value(msg)?;
        self.0
            .push(Out::Frame(Utf8Bytes::from(encode_tell(topic, &msg))));
        Ok(())
    }

    /// Closes this socket with close code 4003: the client does not reconnect.
    pub fn boot(&self) {
        self.0.kill(close::BOOTED, "booted by the server");
    }
}

/// Per-channel state of a socket's subscription, owned by its task.
enum Sub {
    /// Waiting for the parser and the history; publications are held in order.
    Syncing {
        id: u64,
        held: Vec<Arc<Publication>>,
    },
    /// Live: publications after `last` are sent.
    Live { last: Last },
}

/// The last publication sent on a live subscription.
struct Last {
    epoch: Arc<str>,
    seq: u64,
}

impl Last {
    /// Whether a publication is new to the client: later in the same epoch, or from another
    /// epoch (the scaler lost its history; the client notices and resyncs).
    fn admits(&mut self, epoch: &Arc<str>, seq: u64) -> bool {
        let fresh = if Arc::ptr_eq(&self.epoch, epoch) || *self.epoch == **epoch {
            seq > self.seq
        } else {
            true
        };
        if fresh {
            self.epoch = epoch.clone();
            self.seq = seq;
        }
        fresh
    }
}

/// Results of work a socket's task spawned.
pub(crate) enum Internal {
    /// The subscription `id` was accepted and its history read.
    Synced {
        id: u64,
        channel: String,
        pos: Position,
        recovered: Option<bool>,
        replay: Vec<Arc<crate::scaler::Record>>,
    },
    /// The subscription `id` was refused.
    Refused {
        id: u64,
        channel: String,
        rejection: Rejection,
    },
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// Why the socket's task stopped.
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The connection is gone; nothing to send.
    Gone,
}

fn protocol_error(reason: impl Into<String>) -> End {
    End::Close(close::PROTOCOL_ERROR, reason.into())
}

struct Conn<S> {
    inner: Arc<Inner>,
    socket: Socket,
    subs: HashMap<String, Sub>,
    welcomed: bool,
    ws: WebSocketStream<S>,
    /// Frames produced while handling one event, written together.
    outgoing: Vec<Message>,
}

/// Runs one connection until it closes.
pub(crate) async fn run<S>(inner: Arc<Inner>, ws: WebSocketStream<S>, session: Session)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel(inner.options.outbound_queue);
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    let shared = Arc::new(SocketShared {
        server: Arc::downgrade(&inner),
        id: Arc::from(format!("{}-{key}", inner.instance)),
        key,
        session,
        tx,
        asks: AtomicUsize::new(0),
        kill: Mutex::new(None),
        killed: Notify::new(),
    });
    inner.registry.add_socket(&shared);
    let mut conn = Conn {
        inner: inner.clone(),
        socket: Socket(shared.clone()),
        subs: HashMap::new(),
        welcomed: false,
        ws,
        outgoing: Vec::new(),
    };
    let end = conn.run(&mut rx).await;
    if let End::Close(code, reason) = &end {
        debug!(socket = %shared.id, code, reason, "closing socket");
        let frame = CloseFrame {
            code: CloseCode::from(*code),
            reason: reason.as_str().into(),
        };
        let _ = timeout(inner.options.write_timeout, conn.ws.close(Some(frame))).await;
    }
    inner.registry.remove_socket(&shared);
    for channel in conn.subs.keys() {
        inner
            .registry
            .leave(channel, key, inner.scaler.as_ref())
            .await;
    }
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(&mut self, rx: &mut mpsc::Receiver<Out>) -> End {
        // Borrowed, not cloned: this future lives as long as the connection.
        let inner = self.inner.clone();
        let opts = &inner.options;
        let shared = self.socket.0.clone();
        let mut last_recv = Instant::now();
        let hello_deadline = last_recv + opts.handshake_timeout;
        let mut next_ping = last_recv + opts.heartbeat;
        // One timer for the socket's life, moved only when its deadline changes: creating a
        // `Sleep` per event registered and removed a timer-wheel entry for every message.
        let timer = sleep_until(hello_deadline);
        tokio::pin!(timer);
        loop {
            let deadline = if self.welcomed {
                next_ping.min(last_recv + opts.heartbeat * 2)
            } else {
                hello_deadline
            };
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            let step = tokio::select! {
                biased;
                () = shared.killed.notified() => {
                    let (code, reason) = shared.kill_reason();
                    Err(End::Close(code, reason))
                }
                msg = self.ws.next() => {
                    last_recv = Instant::now();
                    self.on_message(msg)
                }
                Some(out) = rx.recv() => {
                    self.on_out(out);
                    // Drain what else is queued, so it goes out in one write.
                    while self.outgoing.len() < 64 {
                        match rx.try_recv() {
                            Ok(out) => self.on_out(out),
                            Err(_) => break,
                        }
                    }
                    Ok(())
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if !self.welcomed {
                        Err(End::Close(close::HANDSHAKE_TIMEOUT, "no hello in time".into()))
                    } else if now >= last_recv + opts.heartbeat * 2 {
                        Err(End::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout".into()))
                    } else {
                        next_ping = now + opts.heartbeat;
                        self.send(&ServerFrame::Ping {});
                        Ok(())
                    }
                }
            };
            // Frames produced just before a close (an `error` frame) still go out. One `flush`
            // call site: each one reserves room for the flush future in this long-lived future.
            let flushed = match step {
                Err(End::Gone) => Ok(()),
                _ => self.flush(opts.write_timeout).await,
            };
            match (step, flushed) {
                (Err(end), _) | (Ok(()), Err(end)) => return end,
                (Ok(()), Ok(())) => {}
            }
        }
    }

    fn send(&mut self, frame: &ServerFrame) {
        self.outgoing.push(Message::Text(frame.encode().into()));
    }

    async fn flush(&mut self, limit: std::time::Duration) -> Result<(), End> {
        if self.outgoing.is_empty() {
            return Ok(());
        }
        let ws = &mut self.ws;
        let outgoing = &mut self.outgoing;
        let write = async {
            for m in outgoing.drain(..) {
                ws.feed(m).await?;
            }
            ws.flush().await
        };
        let shared = &self.socket.0;
        // A client that stops reading blocks the write; its queue then overflows and the
        // socket is killed as a slow consumer, which must not wait for the write timeout.
        tokio::select! {
            r = timeout(limit, write) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    debug!(error = %e, "write failed");
                    Err(End::Gone)
                }
                Err(_) => {
                    debug!("write timed out");
                    Err(End::Gone)
                }
            },
            () = shared.killed.notified() => {
                let (code, reason) = shared.kill_reason();
                Err(End::Close(code, reason))
            }
        }
    }

    fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), End> {
        match msg {
            None => Err(End::Gone),
            Some(Err(WsError::Capacity(e))) => {
                Err(End::Close(close::MESSAGE_TOO_BIG, e.to_string()))
            }
            Some(Err(e)) => {
                debug!(error = %e, "read failed");
                Err(End::Gone)
            }
            Some(Ok(Message::Text(text))) => self.on_frame(&text),
            Some(Ok(Message::Binary(_))) => Err(protocol_error("binary frames are not supported")),
            // Pings are answered by tungstenite; a close is answered and then ends the stream.
            Some(Ok(_)) => Ok(()),
        }
    }

    fn on_frame(&mut self, text: &str) -> Result<(), End> {
        let frame = match ClientFrame::decode(text) {
            Ok(f) => f,
            Err(e) => {
                self.send(&ServerFrame::Error {
                    code: "protocol".into(),
                    reason: e.to_string(),
                });
                return Err(protocol_error(e.to_string()));
            }
        };
        if !self.welcomed {
            return match frame {
                ClientFrame::Hello { v } if v == PROTOCOL_VERSION => {
                    self.welcomed = true;
                    let s = &self.socket;
                    let welcome = ServerFrame::Welcome {
                        v: PROTOCOL_VERSION,
                        socket: s.id().to_owned(),
                        user: s.user().map(str::to_owned),
                        session: s.session().map(str::to_owned),
                        hb: self.inner.options.heartbeat.as_millis() as u64,
                    };
                    self.send(&welcome);
                    Ok(())
                }
                ClientFrame::Hello { v } => {
                    let reason = format!(
                        "protocol version {v} is not supported; this server speaks {PROTOCOL_VERSION}"
                    );
                    self.send(&ServerFrame::Error {
                        code: "unsupported_version".into(),
                        reason: reason.clone(),
                    });
                    Err(End::Close(close::UNSUPPORTED_VERSION, reason))
                }
                _ => Err(protocol_error("expected hello first")),
            };
        }
        match frame {
            ClientFrame::Hello { .. } => return Err(protocol_error("hello sent twice")),
            ClientFrame::Ask { id, topic, msg } => self.on_ask(id, topic, msg),
            ClientFrame::Tell { topic, msg } => self.on_tell(topic, msg),
            ClientFrame::Sub { id, ch, q, since } => self.on_sub(id, ch, q, since),
            ClientFrame::Unsub { ch } => {
                if self.subs.remove(&ch).is_some() {
                    self.leave(ch);
                }
            }
            ClientFrame::Ping {} => self.send(&ServerFrame::Pong {}),
            ClientFrame::Pong {} => {}
            _ => return Err(protocol_error("unexpected frame")),
        }
        Ok(())
    }

    fn leave(&self, channel: String) {
        let inner = self.inner.clone();
        let key = self.socket.0.key;
        tokio::spawn(async move {
            inner
                .registry
                .leave(&channel, key, inner.scaler.as_ref())
                .await;
        });
    }

    fn on_ask(&mut self, id: u64, topic: String, msg: Box<RawValue>) {
        let Some(handler) = self.inner.asks.get(&topic).cloned() else {
            self.send(&ServerFrame::Rej {
                id,
                code: codes::UNKNOWN_TOPIC.into(),
                reason: format!("no ask handler for topic {topic:?}"),
            });
            return;
        };
        if self.socket.0.asks.load(Ordering::Relaxed) >= self.inner.options.max_concurrent_asks {
            self.send(&ServerFrame::Rej {
                id,
                code: codes::BUSY.into(),
                reason: "too many asks in flight on this socket".into(),
            });
            return;
        }
        self.socket.0.asks.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        let socket = self.socket.clone();
        tokio::spawn(async move {
            let work = async {
                let msg = match &inner.middleware {
                    Some(mw) => match mw(socket.clone(), Inbound::Ask { topic, msg }).await? {
                        Inbound::Ask { msg, .. } => msg,
                        _ => return Err(Rejection::new(codes::REFUSED, "middleware")),
                    },
                    None => msg,
                };
                handler(socket.clone(), msg).await
            };
            let result = AssertUnwindSafe(work).catch_unwind().await;
            let frame = match result {
                Ok(Ok(msg)) => ServerFrame::Res { id, msg },
                Ok(Err(r)) => ServerFrame::Rej {
                    id,
                    code: r.code,
                    reason: r.reason,
                },
                Err(_) => {
                    warn!(socket = socket.id(), "ask handler panicked");
                    ServerFrame::Rej {
                        id,
                        code: codes::INTERNAL.into(),
                        reason: "the handler failed".into(),
                    }
                }
            };
            socket.0.asks.fetch_sub(1, Ordering::Relaxed);
            socket.0.push(Out::Frame(frame.encode().into()));
        });
    }

    fn on_tell(&mut self, topic: String, msg: Box<RawValue>) {
        let Some(handler) = self.inner.tells.get(&topic).cloned() else {
            debug!(topic, "tell dropped: no handler");
            return;
        };
        let inner = self.inner.clone();
        let socket = self.socket.clone();
        tokio::spawn(async move {
            let work = async {
                let msg = match &inner.middleware {
                    Some(mw) => match mw(socket.clone(), Inbound::Tell { topic, msg }).await {
                        Ok(Inbound::Tell { msg, .. }) => msg,
                        _ => return,
                    },
                    None => msg,
                };
                handler(socket.clone(), msg).await;
            };
            if AssertUnwindSafe(work).catch_unwind().await.is_err() {
                warn!(socket = socket.id(), "tell handler panicked");
            }
        });
    }

    fn on_sub(&mut self, id: u64, ch: String, q: Option<Box<RawValue>>, since: Option<Position>) {
        // A `sub` for a channel this socket already has is a resync: the parser already
        // accepted it, only the history is read again.
        let resync = self.subs.contains_key(&ch);
        self.subs.insert(
            ch.clone(),
            Sub::Syncing {
                id,
                held: Vec::new(),
            },
        );
        let inner = self.inner.clone();
        let socket = self.socket.clone();
        tokio::spawn(async move {
            let scaler = inner.scaler.as_ref();
            let unavailable =
                |e: crate::scaler::ScalerError| Rejection::new(codes::UNAVAILABLE, e.to_string());
            let work = async {
                if !resync {
                    inner.check_subscription(&socket, &ch, q).await?;
                    inner
                        .registry
                        .join(&ch, &socket.0, scaler)
                        .await
                        .map_err(unavailable)?;
                }
                Ok(match since {
                    None => (
                        scaler.position(&ch).await.map_err(unavailable)?,
                        None,
                        Vec::new(),
                    ),
                    Some(since) => match scaler.history(&ch, &since).await.map_err(unavailable)? {
                        History::Recovered(replay) => {
                            let pos = replay.last().map_or(since, |r| r.position.clone());
                            (pos, Some(true), replay)
                        }
                        History::Unrecoverable { head } => (head, Some(false), Vec::new()),
                    },
                })
            };
            let ev = match work.await {
                Ok((pos, recovered, replay)) => Internal::Synced {
                    id,
                    channel: ch,
                    pos,
                    recovered,
                    replay,
                },
                Err(rejection) => Internal::Refused {
                    id,
                    channel: ch,
                    rejection,
                },
            };
            // Waits for room in the queue; fails only once the socket's task is gone.
            let _ = socket.0.tx.send(Out::Internal(Box::new(ev))).await;
        });
    }

    fn on_internal(&mut self, ev: Internal) {
        match ev {
            Internal::Synced {
                id,
                channel,
                pos,
                recovered,
                replay,
            } => {
                let held = match self.subs.get_mut(&channel) {
                    Some(Sub::Syncing { id: current, held }) if *current == id => {
                        std::mem::take(held)
                    }
                    Some(_) => return, // superseded by a newer `sub` for the channel
                    None => {
                        // Unsubscribed while the history was read.
                        self.leave(channel);
                        return;
                    }
                };
                self.send(&ServerFrame::Subok {
                    id,
                    ch: channel.clone(),
                    pos: pos.clone(),
                    recovered,
                });
                let mut last = Last {
                    epoch: Arc::from(pos.epoch.as_str()),
                    seq: match recovered {
                        Some(true) => replay.first().map_or(pos.seq, |r| r.position.seq - 1),
                        _ => pos.seq,
                    },
                };
                for r in &replay {
                    let frame = encode_pub(&channel, &r.topic, &r.position, &r.msg);
                    self.outgoing.push(Message::Text(frame.into()));
                    last.seq = r.position.seq;
                }
                for h in held {
                    if last.admits(&h.epoch, h.seq) {
                        self.outgoing.push(Message::Text(h.frame.clone()));
                    }
                }
                self.subs.insert(channel, Sub::Live { last });
            }
            Internal::Refused {
                id,
                channel,
                rejection,
            } => {
                if matches!(self.subs.get(&channel), Some(Sub::Syncing { id: current, .. }) if *current == id)
                {
                    self.subs.remove(&channel);
                    self.leave(channel.clone());
                }
                self.send(&ServerFrame::Subrej {
                    id,
                    ch: channel,
                    code: rejection.code,
                    reason: rejection.reason,
                });
            }
        }
    }

    fn on_out(&mut self, out: Out) {
        match out {
            Out::Frame(frame) => self.outgoing.push(Message::Text(frame)),
            Out::Pub(p) => match self.subs.get_mut(&*p.channel) {
                Some(Sub::Live { last }) => {
                    let fresh = last.admits(&p.epoch, p.seq);
                    if fresh {
                        self.outgoing.push(Message::Text(p.frame.clone()));
                    }
                }
                Some(Sub::Syncing { held, .. }) => {
                    if held.len() >= self.inner.options.sync_buffer {
                        self.socket
                            .0
                            .kill(close::SLOW_CONSUMER, "too many publications while syncing");
                    } else {
                        held.push(p);
                    }
                }
                _ => {}
            },
            Out::Internal(ev) => self.on_internal(*ev),
            Out::BootChannel(channel) => {
                if self.subs.remove(&*channel).is_some() {
                    self.send(&ServerFrame::Unsubbed {
                        ch: channel.to_string(),
                        code: codes::BOOTED.into(),
                        reason: "removed from the channel by the server".into(),
                    });
                    self.leave(channel.to_string());
                }
            }
        }
    }
}
