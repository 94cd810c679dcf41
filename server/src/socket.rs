//! One connection: the driver around its [`Machine`], its bounded outbound queue, and the
//! [`Socket`] handle.
//!
//! The driver is thin: it reads frames and feeds them to the machine, carries out the machine's
//! commands in order (registry membership synchronously, everything that waits on a handler,
//! a parser or the scaler as a spawned task that reports a [`Verdict`] back through the
//! socket's queue), writes what the machine sends, and closes when it says so. It decides
//! nothing about the protocol.

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::Serialize;
use serde_json::value::RawValue;
use sss_core::protocol::{close, codes, encode_tell, Member, PresenceStats};
use sss_core::Position;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::field::Empty;
use tracing::{debug, debug_span, warn, Instrument, Span};

use crate::fifo::Fifo;
use crate::handshake::HandshakeRequest;
use crate::machine::{
    AskOutcome, Command, Config, Frame, Machine, Note, PresenceNote, Publication, SessionOutcome,
    Synced, Topics, Verdict,
};
use crate::metrics::{AskSeries, Metrics, Refused};
use crate::outbox::{Outbox, PushError};
use crate::scaler::ScalerError;
use crate::server::{Inbound, Inner};
use crate::wire::Writer;
use crate::{Rejection, Session};

/// Frames handled per wakeup beyond the first, when more are already read: bounds how long
/// a client that pipelines frames keeps its task from the kill notification and its queue.
const READ_BATCH: usize = 64;

/// What reaches a socket's task through its [`Outbox`].
///
/// Kept small: a burst of them is held in one contiguous buffer.
pub(crate) enum Out {
    /// A frame to send as is.
    Frame(Utf8Bytes),
    /// A publication, encoded once for every subscriber and shared by them; the socket drops it
    /// if it is not (or no longer) subscribed or already has it, and holds it while the
    /// subscription is syncing.
    Pub(Arc<Publication>),
    /// The channel was booted: drop the subscription and tell the client.
    BootChannel(Arc<str>),
    /// A presence event of a channel the socket joined, encoded once for every subscriber.
    Presence(Arc<PresenceNote>),
    /// The outcome of work the socket's task spawned (boxed: it is rare and large, and the
    /// queue's blocks are sized by the largest variant).
    Verdict(Box<Verdict>),
}

/// The part of a socket other tasks hold.
pub(crate) struct SocketShared {
    server: std::sync::Weak<Inner>,
    pub(crate) id: Arc<str>,
    pub(crate) key: u64,
    /// Set once, when the session parser accepts the `hello` (before the `welcome`): handlers
    /// and the registry only ever see the socket after that.
    session: OnceLock<Session>,
    outbox: Outbox,
    kill: Mutex<Option<(u16, String)>>,
    /// Set with `kill` and taken by the socket's task (see [`killed`](Self::killed)); the
    /// outbox's waker wakes it.
    killed: AtomicBool,
    /// The socket as a presence member, made when it first joins a presence.
    member: OnceLock<Arc<Member>>,
    /// Set when the WebSocket's read side or the heartbeat timer may be ready (see
    /// [`SideGate`]).
    side_woken: AtomicBool,
}

/// The waker of the socket's read side and its timer: notes that it fired, then wakes the
/// socket's task.
impl futures::task::ArcWake for SocketShared {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.side_woken.store(true, Ordering::Release);
        arc_self.outbox.wake();
    }
}

/// Polls the WebSocket's read side and the heartbeat timer only when they may be ready: not
/// yet polled, last ready, or woken since they last said `Pending`. One task reads and writes
/// a socket, and it is woken for its queue far more often than for anything else (every
/// publication it is sent): polling the read side at each wakeup went through tungstenite and
/// tokio's readiness check for nothing, twice per delivery, ~6 % of the server's CPU in
/// `sss-bench fanout` (perf), and the timer cost ~70 instructions more (callgrind).
struct SideGate {
    /// Their waker: `SocketShared`'s, which sets `side_woken`.
    waker: Waker,
    /// The read side's last poll said `Pending`.
    read_parked: bool,
    /// The timer's last poll said `Pending`, and its deadline has not moved since.
    timer_parked: bool,
}

impl SideGate {
    /// Polls the read side with the gate's waker.
    fn poll_read<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
    ) -> Poll<Option<Result<Message, WsError>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let got = ws.poll_next_unpin(&mut Context::from_waker(&self.waker));
        self.read_parked = got.is_pending();
        got
    }
}

/// What the socket's task is woken for, in the order it looks.
enum Event {
    /// The server closes the socket (see [`SocketShared::kill`]).
    Killed,
    /// A message from the peer, or the end of the stream.
    Read(Option<Result<Message, WsError>>),
    /// An item of the outbox, and whether more are queued.
    Out(Out, bool),
    /// A tell handler finished.
    TellDone,
    /// The machine's deadline passed.
    Timeout,
}

/// What a socket is before its session parser accepted it.
static NO_SESSION: LazyLock<Session> = LazyLock::new(Session::anonymous);

impl SocketShared {
    /// The session the parser gave (anonymous until it decided).
    pub(crate) fn session(&self) -> &Session {
        self.session.get().unwrap_or(&NO_SESSION)
    }

    /// The socket as a member of a channel's presence.
    pub(crate) fn member(&self) -> Arc<Member> {
        self.member
            .get_or_init(|| {
                let session = self.session();
                Arc::new(Member {
                    socket: self.id.to_string(),
                    user: session.user.clone(),
                    session: session.session.clone(),
                    info: session.info.clone(),
                })
            })
            .clone()
    }

    /// Reports the outcome of async work to the socket's task. Past the queue's bound:
    /// verdicts must not be lost (the state machine counts the work in flight), and there are
    /// at most as many as the machine's limits on asks, tells and subscriptions allow.
    fn report(&self, v: Verdict) {
        // Fails only once the socket's task is gone, and then nobody needs the verdict.
        self.outbox.push_unbounded(Out::Verdict(Box::new(v)));
    }

    /// Queues without waiting; a full queue means the client reads too slowly. Returns whether
    /// it was queued.
    pub(crate) fn push(&self, out: Out) -> bool {
        match self.outbox.try_push(out) {
            Ok(()) => true,
            Err(PushError::Full) => {
                let first = self.kill(close::SLOW_CONSUMER, "slow consumer: outbound queue full");
                if first {
                    if let Some(inner) = self.server.upgrade() {
                        inner.metrics.queue_overflows.inc();
                    }
                }
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// Asks the socket's task to close with `code`. The first request wins; returns whether
    /// this was it.
    pub(crate) fn kill(&self, code: u16, reason: &str) -> bool {
        let mut k = self.kill.lock().unwrap_or_else(|e| e.into_inner());
        if k.is_some() {
            return false;
        }
        *k = Some((code, reason.to_owned()));
        self.killed.store(true, Ordering::Release);
        self.outbox.wake();
        true
    }

    /// Ready once the socket is killed, and then never again: the kill is taken and handled
    /// once, as tokio's `Notify` permit was (a flag left set would also end any later flush).
    /// Waits with the outbox's waker: the socket's task.
    async fn killed(&self) {
        poll_fn(|cx| {
            if self.killed.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.outbox.register(cx.waker());
            if self.killed.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
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
///
/// In a worker (see [`worker`](crate::worker)), a handler's socket is connected to a gateway:
/// its id, user and session are the ones the gateway attached, and [`tell`](Self::tell) and
/// [`boot`](Self::boot) reach it through that gateway.
#[derive(Clone)]
pub struct Socket(pub(crate) Peer);

/// Where a [`Socket`] is connected.
#[derive(Clone)]
pub(crate) enum Peer {
    /// To this instance.
    Local(Arc<SocketShared>),
    /// To a gateway, for which this instance (a worker) runs a handler.
    #[cfg(feature = "redis")]
    Remote(Arc<crate::worker::RemoteSocket>),
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.id())
            .field("user", &self.user())
            .field("session", &self.session())
            .finish()
    }
}

impl Socket {
    pub(crate) fn connected(shared: Arc<SocketShared>) -> Self {
        Self(Peer::Local(shared))
    }

    fn identity(&self) -> &Session {
        match &self.0 {
            Peer::Local(s) => s.session(),
            #[cfg(feature = "redis")]
            Peer::Remote(r) => &r.session,
        }
    }

    /// Cluster-wide unique id.
    pub fn id(&self) -> &str {
        match &self.0 {
            Peer::Local(s) => &s.id,
            #[cfg(feature = "redis")]
            Peer::Remote(r) => &r.id,
        }
    }

    /// The user id the session parser gave.
    pub fn user(&self) -> Option<&str> {
        self.identity().user.as_deref()
    }

    /// The session id the session parser gave.
    pub fn session(&self) -> Option<&str> {
        self.identity().session.as_deref()
    }

    /// A value the session parser stored in the session's locals. (Locals stay on the
    /// instance that holds the connection: in a worker this is always `None`.)
    pub fn local<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.identity().locals.get::<T>()
    }

    /// The server this socket is connected to (in a worker: the worker's server), to publish
    /// or reach other sockets from a handler. `None` only once the server is gone.
    pub fn server(&self) -> Option<crate::Server> {
        let server = match &self.0 {
            Peer::Local(s) => &s.server,
            #[cfg(feature = "redis")]
            Peer::Remote(r) => &r.server,
        };
        server.upgrade().map(|inner| crate::Server { inner })
    }

    /// Tells this socket a message (fire-and-forget).
    pub fn tell<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        msg: &T,
    ) -> Result<(), serde_json::Error> {
        let msg = serde_json::value::to_raw_value(msg)?;
        match &self.0 {
            Peer::Local(s) => {
                s.push(Out::Frame(Utf8Bytes::from(encode_tell(topic, &msg))));
            }
            #[cfg(feature = "redis")]
            Peer::Remote(r) => r.tell(topic, msg),
        }
        Ok(())
    }

    /// Closes this socket with close code 4003: the client does not reconnect.
    pub fn boot(&self) {
        match &self.0 {
            Peer::Local(s) => {
                s.kill(close::BOOTED, "booted by the server");
            }
            #[cfg(feature = "redis")]
            Peer::Remote(r) => r.boot(),
        }
    }
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// A new socket's process-wide key and its cluster-wide id (`<instance>-<key>`).
pub(crate) fn new_socket_id(instance: &str) -> (u64, Arc<str>) {
    let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    (key, Arc::from(format!("{instance}-{key}")))
}

/// The span of one subscription's steps and outcome: socket and channel, so that a `sub` can
/// be followed through the log (`RUST_LOG=sss_server=debug`).
fn subscription_span(socket: &str, channel: &str) -> Span {
    debug_span!("subscription", socket, channel)
}

/// Why the socket's task stopped.
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The connection is gone; nothing to send.
    Gone,
}

impl Topics for Inner {
    fn has_ask(&self, topic: &str) -> bool {
        self.asks.contains_key(topic)
    }

    fn has_tell(&self, topic: &str) -> bool {
        self.tells.contains_key(topic)
    }
}

fn unavailable(e: ScalerError) -> Rejection {
    Rejection::new(codes::UNAVAILABLE, e.to_string())
}

/// What an ask's work (middleware and handler) gives.
type AskWork = BoxFuture<'static, Result<Box<RawValue>, Rejection>>;

/// A handler's work (an ask's or a tell's, with the middleware), made by `make` at once and run
/// with `span` entered: a panic while making the future or while running it is `Err`. Used by
/// a socket's task and by a worker.
pub(crate) fn guarded<T>(span: Span, make: impl FnOnce() -> BoxFuture<'static, T>) -> Guarded<T> {
    let work = std::panic::catch_unwind(AssertUnwindSafe(|| span.in_scope(make)));
    Guarded {
        work: work.ok().map(|w| AssertUnwindSafe(w).catch_unwind()),
        span,
    }
}

/// The handler panicked.
#[derive(Debug)]
pub(crate) struct Panicked;

/// See [`guarded`]. `Unpin` and made without an allocation of its own: a socket polls it once
/// where it reads the message, and keeps it (or spawns it) only if it waits.
pub(crate) struct Guarded<T> {
    /// `None`: making the work panicked.
    work: Option<futures::future::CatchUnwind<AssertUnwindSafe<BoxFuture<'static, T>>>>,
    span: Span,
}

impl<T> std::future::Future for Guarded<T> {
    type Output = Result<T, Panicked>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(work) = this.work.as_mut() else {
            return Poll::Ready(Err(Panicked));
        };
        let _entered = this.span.enter();
        work.poll_unpin(cx).map(|done| done.map_err(|_| Panicked))
    }
}

/// An ask's outcome from its guarded work.
pub(crate) fn ask_outcome(done: Result<Result<Box<RawValue>, Rejection>, Panicked>) -> AskOutcome {
    match done {
        Ok(Ok(msg)) => AskOutcome::Ok(msg),
        Ok(Err(r)) => AskOutcome::Err(r),
        Err(Panicked) => AskOutcome::Panicked,
    }
}

/// Counts and logs an answered ask of `socket` (its span records the outcome and the
/// duration, when on).
fn ask_answered(
    (metrics, series): (&Metrics, &AskSeries),
    socket: &str,
    span: &Span,
    outcome: &AskOutcome,
    start: std::time::Instant,
) {
    let elapsed = start.elapsed();
    let result = outcome.code();
    metrics.ask_answered(series, result, elapsed);
    if matches!(outcome, AskOutcome::Panicked) {
        span.in_scope(|| warn!(socket, "ask handler panicked"));
    }
    if !span.is_disabled() {
        let duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        span.record("outcome", result.err().unwrap_or("ok"));
        span.record("duration_us", duration_us);
        // The outcome is in the span's fields, which the event is logged with.
        span.in_scope(|| debug!("ask answered"));
    }
}

/// Runs one connection until it closes. `key` and `id` are from [`new_socket_id`]; `request`
/// is what the session parser sees of the upgrade.
///
/// The socket is set up here, before the future is made, so that the future (the task every
/// connection keeps for its whole life) holds only the driver, not also the arguments it was
/// built from.
pub(crate) fn run<S>(
    inner: Arc<Inner>,
    ws: WebSocketStream<S>,
    request: HandshakeRequest,
    (key, id): (u64, Arc<str>),
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(SocketShared {
        server: Arc::downgrade(&inner),
        id,
        key,
        session: OnceLock::new(),
        outbox: Outbox::new(inner.options.outbound_queue),
        kill: Mutex::new(None),
        killed: AtomicBool::new(false),
        member: OnceLock::new(),
        side_woken: AtomicBool::new(false),
    });
    inner.registry.add_socket(&shared);
    inner.metrics.connections.inc();
    let opts = &inner.options;
    let config = Config {
        heartbeat: opts.heartbeat,
        handshake_timeout: opts.handshake_timeout,
        sync_buffer: opts.sync_buffer,
        max_concurrent_asks: opts.max_concurrent_asks,
        max_concurrent_tells: opts.max_concurrent_tells,
        max_subscriptions: opts.max_subscriptions,
    };
    let topics: Arc<dyn Topics> = inner.clone();
    let machine = Machine::new(
        Instant::now().into_std(),
        config,
        shared.id.to_string(),
        topics,
    );
    let gate = SideGate {
        waker: futures::task::waker(shared.clone()),
        read_parked: false,
        timer_parked: false,
    };
    let driver = Driver {
        inner,
        shared,
        gate,
        request: Some(Box::new(request)),
        machine,
        ws,
        writer: Writer::default(),
        ws_owes: false,
        read_at: std::time::Instant::now(),
        tells: None,
    };
    driver.serve()
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Runs the socket until it ends, then leaves the registry and closes.
    ///
    /// Not an `async fn`: one would keep its argument and the body's copy of it both in the
    /// future (the driver twice, 1.1 KiB more per connection, measured); the block uses the
    /// captured driver in place.
    #[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
    fn serve(mut self) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let end = self.run().await;
            let (inner, shared) = (self.inner.clone(), self.shared.clone());
            // Pushes from now on are refused, and what is queued is dropped.
            shared.outbox.close();
            // Tells already read are handled even though the socket is gone, as a spawned
            // task would have; they no longer hold up anything.
            for tell in self.tells.take().into_iter().flatten() {
                tokio::spawn(tell);
            }
            inner.registry.remove_socket(&shared);
            inner.metrics.connections.dec();
            match end {
                End::Close(code, reason) => {
                    inner.metrics.socket_closed(Some(code));
                    debug!(socket = %shared.id, code, reason, "closing socket");
                    // Boxed, in a statement of its own: its 2 KiB read buffer would otherwise
                    // be part of every socket's task for all of its life.
                    let linger = inner.options.close_linger;
                    let tail = (self.writer, std::mem::take(self.machine.frames_mut()));
                    let closing = Box::pin(linger_close(self.ws, tail, code, reason, linger));
                    closing.await;
                }
                End::Gone => {
                    inner.metrics.socket_closed(None);
                    debug!(socket = %shared.id, "socket gone");
                }
            }
        }
    }
}

/// Writes what is left of a frame that a kill cut short (the close frame would land inside
/// it), sends the close frame, then half-closes and reads and discards what the peer still
/// sends until it closes too, or `linger` has passed. Closing a TCP socket that has unread input makes
/// the kernel answer with a reset, and a reset destroys what the peer had not read yet: a client
/// that wrote many asks and was closed for slow consumption got a reset instead of its 4004
/// (and the replies queued before it).
async fn linger_close<S>(
    mut ws: WebSocketStream<S>,
    (mut writer, mut tail): (Writer, Fifo<Frame>),
    code: u16,
    reason: String,
    linger: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + linger;
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let close = async {
        poll_fn(|cx| writer.poll_write(ws.get_mut(), &mut tail, &mut 0, cx)).await?;
        ws.close(Some(frame)).await
    };
    if !matches!(timeout_at(deadline, close).await, Ok(Ok(()))) {
        return;
    }
    // Raw bytes, not frames: after a 1009 the rest of the oversized message is still in
    // flight and is not a frame boundary.
    let io = ws.get_mut();
    let drain = async {
        let _ = io.shutdown().await;
        let mut scratch = [0u8; 2048];
        while matches!(io.read(&mut scratch).await, Ok(n) if n > 0) {}
    };
    let _ = timeout_at(deadline, drain).await;
}

struct Driver<S> {
    inner: Arc<Inner>,
    shared: Arc<SocketShared>,
    gate: SideGate,
    /// The upgrade request, until the session parser takes it (boxed: 350 bytes the socket's
    /// task would otherwise keep for its whole life).
    request: Option<Box<HandshakeRequest>>,
    machine: Machine,
    ws: WebSocketStream<S>,
    /// Writes the machine's frames past tungstenite.
    writer: Writer,
    /// tungstenite may hold a reply of its own (to a ping or a close) not yet written.
    ws_owes: bool,
    /// When the last message was read: the start of the asks it carries (one clock read less
    /// per ask; each costs ~40 ns in this VM).
    read_at: std::time::Instant,
    /// The socket's tell handlers, polled by its own task: a spawned task per tell cost
    /// 3.2 µs of server CPU per tell against 1.1 µs for a raw server that drops them
    /// (`sss-bench tells`), and its completion had to come back through the queue. Made at
    /// the first tell: an empty one allocates ~200 bytes, which a socket that never tells
    /// would keep for nothing.
    tells: Option<FuturesUnordered<BoxFuture<'static, ()>>>,
}

fn tell_panicked(socket: &str) {
    warn!(socket, "tell handler panicked");
}

/// Writes `frames` (the machine's) and flushes them, as far as the connection takes them now;
/// adds their length to `bytes`. Resumable: its state is the machine's queue and the
/// [`Writer`]'s offset, so the socket's task holds no write future.
///
/// The frames go straight to the connection ([`crate::wire`]); first, when `owed`, tungstenite
/// writes what it queued itself (a pong, a close reply), which may be half-written: a frame
/// written before it would land inside it.
fn poll_write<S>(
    ws: &mut WebSocketStream<S>,
    writer: &mut Writer,
    owed: &mut bool,
    frames: &mut Fifo<Frame>,
    bytes: &mut u64,
    cx: &mut Context<'_>,
) -> Poll<Result<(), WsError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if *owed {
        ready!(ws.poll_flush_unpin(cx))?;
        *owed = false;
    }
    writer
        .poll_write(ws.get_mut(), frames, bytes, cx)
        .map_err(WsError::Io)
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(&mut self) -> End {
        // One timer for the socket's life, moved only when its deadline changes: creating a
        // `Sleep` per event registered and removed a timer-wheel entry for every message.
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        loop {
            let close = self.carry_out();
            // Frames commanded before a close (an `error` frame) still go out. One `flush` call
            // site: each one reserves room for the flush future in this long-lived future. A
            // frame a kill left half-written is the close's to finish (`linger_close`, within
            // its linger): writing it here would wait for the write timeout.
            let flushed = if self.machine.has_frames() && !self.writer.started() {
                self.flush().await
            } else {
                Ok(())
            };
            if self.machine.is_closed() {
                return match close {
                    Some((code, reason)) if flushed.is_ok() => End::Close(code, reason),
                    _ => End::Gone,
                };
            }
            match flushed {
                Ok(()) => {}
                Err(Some((code, reason))) => {
                    self.machine.handle_kill(code, &reason);
                    continue;
                }
                Err(None) => {
                    self.machine.handle_gone();
                    continue;
                }
            }
            let deadline = self.machine.poll_timeout().map(Instant::from_std);
            if let Some(d) = deadline {
                if timer.deadline() != d {
                    timer.as_mut().reset(d);
                    self.gate.timer_parked = false;
                }
            }
            let reading = self.machine.wants_read();
            let timed = deadline.is_some();
            let event = poll_fn(|cx| self.poll_event(cx, timer.as_mut(), reading, timed)).await;
            match event {
                Event::Killed => {
                    let (code, reason) = self.shared.kill_reason();
                    self.machine.handle_kill(code, &reason);
                }
                Event::Read(msg) => {
                    let now = Instant::now().into_std();
                    self.on_message(now, msg);
                    // The frames already read (a client pipelines many in one TCP write) are
                    // handled in the same wakeup, up to a bound, while the machine wants more:
                    // a turn of this loop per frame polled the kill notification and the queue
                    // each time (`sss-bench tells`: 100 tells and an ask per write).
                    for _ in 0..READ_BATCH {
                        if !self.machine.wants_read() {
                            break;
                        }
                        match self.gate.poll_read(&mut self.ws) {
                            Poll::Ready(msg) => self.on_message(now, msg),
                            Poll::Pending => break,
                        }
                    }
                }
                Event::Out(out, mut more) => {
                    self.on_out(out);
                    // Drain what else is queued, so it goes out in one write.
                    for _ in 0..64 {
                        if !more {
                            break;
                        }
                        match self.shared.outbox.try_recv() {
                            Some((out, m)) => {
                                self.on_out(out);
                                more = m;
                            }
                            None => break,
                        }
                    }
                }
                Event::TellDone => {
                    self.machine.handle_verdict(Verdict::TellDone);
                    // Others that finished meanwhile, in the same wakeup.
                    if let Some(tells) = self.tells.as_mut() {
                        while let Some(Some(())) = tells.next().now_or_never() {
                            self.machine.handle_verdict(Verdict::TellDone);
                        }
                    }
                }
                Event::Timeout => self.machine.handle_timeout(Instant::now().into_std()),
            }
        }
    }

    /// What the task is woken for, looked at in order: a kill first, so that a socket busy
    /// with its peer or its queue still closes when told. One function rather than a
    /// `select!` over five futures: the task's waker is registered once, and each source
    /// costs a plain load while it has nothing; the `select!` registered it three times and
    /// swapped two flags per wait (~370 instructions per wakeup of its own, callgrind).
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        timer: std::pin::Pin<&mut tokio::time::Sleep>,
        reading: bool,
        timed: bool,
    ) -> Poll<Event> {
        let shared = &*self.shared;
        // Registered before looking: whatever happens from now on wakes the task again.
        shared.outbox.register(cx.waker());
        if shared.killed.load(Ordering::Acquire) && shared.killed.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Event::Killed);
        }
        // A wake from now on is for what the polls below do not see.
        if shared.side_woken.load(Ordering::Acquire)
            && shared.side_woken.swap(false, Ordering::AcqRel)
        {
            self.gate.read_parked = false;
            self.gate.timer_parked = false;
        }
        if reading && !self.gate.read_parked {
            if let Poll::Ready(msg) = self.gate.poll_read(&mut self.ws) {
                return Poll::Ready(Event::Read(msg));
            }
        }
        if let Some((out, more)) = shared.outbox.try_recv() {
            return Poll::Ready(Event::Out(out, more));
        }
        if let Some(tells) = self.tells.as_mut().filter(|t| !t.is_empty()) {
            if let Poll::Ready(Some(())) = tells.poll_next_unpin(cx) {
                return Poll::Ready(Event::TellDone);
            }
        }
        if timed && !self.gate.timer_parked {
            let gate = &mut self.gate;
            if std::future::Future::poll(timer, &mut Context::from_waker(&gate.waker)).is_ready() {
                return Poll::Ready(Event::Timeout);
            }
            gate.timer_parked = true;
        }
        Poll::Pending
    }

    /// Carries out the machine's commands, in order; returns the close it asked for, if any.
    fn carry_out(&mut self) -> Option<(u16, String)> {
        let mut close = None;
        while let Some(cmd) = self.machine.poll_command() {
            match cmd {
                Command::AuthorizeSession { op, auth } => self.authorize_session(op, auth),
                Command::Admit(session) => {
                    debug!(
                        socket = &*self.shared.id,
                        user = session.user.as_deref(),
                        session = session.session.as_deref(),
                        "session accepted"
                    );
                    self.inner.metrics.accepted.inc();
                    // Set once: the machine admits a socket once.
                    let _ = self.shared.session.set(session);
                    self.inner.registry.add_identity(&self.shared);
                }
                Command::Authorize { op, channel, query } => self.authorize(op, channel, query),
                Command::Join {
                    op,
                    channel,
                    presence,
                } => {
                    let members = self.inner.registry.insert(&channel, &self.shared, presence);
                    self.inner.metrics.presence_members.inc_by(members);
                    self.inner.metrics.subscriptions.inc();
                    let span = subscription_span(&self.shared.id, &channel);
                    let inner = self.inner.clone();
                    let shared = self.shared.clone();
                    let join = async move {
                        let result = inner
                            .registry
                            .reconcile(&channel, inner.scaler.as_ref())
                            .await
                            .map_err(unavailable);
                        shared.report(Verdict::Joined { op, result });
                    };
                    tokio::spawn(join.instrument(span));
                }
                Command::Leave { channel } => {
                    let members = self.inner.registry.remove(&channel, self.shared.key);
                    self.inner.metrics.presence_members.inc_by(members);
                    self.inner.metrics.subscriptions.dec();
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        let _ = inner
                            .registry
                            .reconcile(&channel, inner.scaler.as_ref())
                            .await;
                    });
                }
                Command::Sync { op, channel, since } => self.sync(op, channel, since),
                Command::Ask { id, topic, msg } => self.ask(id, topic, msg),
                Command::Presence { id, channel, stats } => self.presence(id, channel, stats),
                Command::Tell { topic, msg } => self.tell(topic, msg),
                Command::Close { code, reason } => close = Some((code, reason)),
                Command::Note(note) => self.note(note),
            }
        }
        close
    }

    /// Counts and logs what the machine decided on its own.
    fn note(&self, note: Note) {
        let metrics = &self.inner.metrics;
        let socket = &*self.shared.id;
        match note {
            Note::Subscribed { channel, recovered } => {
                if let Some(recovered) = recovered {
                    metrics.resynced(recovered);
                }
                subscription_span(socket, &channel)
                    .in_scope(|| debug!(outcome = "ok", ?recovered, "subscribed"));
            }
            Note::SubRefused { channel, code } => {
                metrics.subscription_refused(&code);
                subscription_span(socket, &channel)
                    .in_scope(|| debug!(outcome = code, "subscription refused"));
            }
            Note::AskRefused { topic, code } => {
                let route = self.inner.asks.get(&topic);
                metrics.ask_refused(route.map(|r| &r.series), code);
                debug!(socket, topic, outcome = code, "ask refused");
            }
            Note::PresenceRefused { channel, code } => {
                metrics.presence_answered(Err(code));
                subscription_span(socket, &channel)
                    .in_scope(|| debug!(outcome = code, "presence request refused"));
            }
            Note::TellDropped { topic } => {
                metrics.unknown_tell();
                debug!(socket, topic, "tell dropped: no handler");
            }
        }
    }

    /// Runs the session parser on the upgrade request and the `hello`'s `auth` (none set:
    /// every socket is anonymous, answered at once).
    fn authorize_session(&mut self, op: u64, auth: Option<Box<RawValue>>) {
        let request = self.request.take().map(|r| (*r).with_auth(auth));
        let (Some(parser), Some(request)) = (self.inner.session_parser.clone(), request) else {
            let outcome = SessionOutcome::Accepted(Session::anonymous());
            return self
                .machine
                .handle_verdict(Verdict::Session { op, outcome });
        };
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        let authorize = async move {
            let outcome = match AssertUnwindSafe(parser(request)).catch_unwind().await {
                Ok(Ok(session)) => SessionOutcome::Accepted(session),
                Ok(Err(refusal)) => {
                    debug!(%refusal, "session parser refused");
                    inner.metrics.refused(Refused::SessionParser);
                    SessionOutcome::Refused(refusal)
                }
                Err(_) => {
                    warn!(socket = &*shared.id, "session parser panicked");
                    SessionOutcome::Panicked
                }
            };
            shared.report(Verdict::Session { op, outcome });
        };
        tokio::spawn(authorize);
    }

    fn authorize(&self, op: u64, channel: String, query: Option<Box<RawValue>>) {
        let span = subscription_span(&self.shared.id, &channel);
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        let socket = Socket::connected(shared.clone());
        let authorize = async move {
            let work = inner.authorize(&socket, &channel, query);
            let result = match AssertUnwindSafe(work).catch_unwind().await {
                Ok(r) => r,
                Err(_) => {
                    warn!(
                        socket = socket.id(),
                        channel, "subscription parser panicked"
                    );
                    Err(Rejection::new(
                        codes::INTERNAL,
                        "the subscription parser failed",
                    ))
                }
            };
            shared.report(Verdict::Authorized { op, result });
        };
        tokio::spawn(authorize.instrument(span));
    }

    fn sync(&self, op: u64, channel: String, since: Option<Position>) {
        let span = subscription_span(&self.shared.id, &channel);
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        let sync = async move {
            let scaler = inner.scaler.as_ref();
            let result = match since {
                None => scaler.position(&channel).await.map(Synced::Head),
                Some(since) => scaler.history(&channel, &since).await.map(Synced::History),
            };
            let result = result.map_err(unavailable);
            shared.report(Verdict::Synced { op, result });
        };
        tokio::spawn(sync.instrument(span));
    }

    fn presence(&self, id: u64, channel: String, stats: bool) {
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let outcome = match inner.scaler.presence(&channel).await {
                Ok(members) => {
                    let json = if stats {
                        serde_json::value::to_raw_value(&PresenceStats::of(&members))
                    } else {
                        serde_json::value::to_raw_value(&members)
                    };
                    match json {
                        Ok(json) => AskOutcome::Ok(json),
                        Err(e) => AskOutcome::Err(Rejection::new(codes::INTERNAL, e.to_string())),
                    }
                }
                Err(e) => AskOutcome::Err(unavailable(e)),
            };
            inner.metrics.presence_answered(outcome.code());
            shared.report(Verdict::AskDone { id, outcome });
        });
    }

    fn ask(&mut self, id: u64, topic: String, msg: Box<RawValue>) {
        let Some(route) = self.inner.asks.get(&topic) else {
            return;
        };
        // Fields are recorded lazily: with no subscriber interested, the span is a no-op.
        let span = debug_span!(
            "ask",
            socket = &*self.shared.id,
            id,
            topic = topic.as_str(),
            outcome = Empty,
            duration_us = Empty
        );
        let socket = Socket::connected(self.shared.clone());
        // Asks are commanded by the message just read.
        let start = self.read_at;
        // The work is made here, borrowing the route and the server: they are cloned only for
        // an ask that waits. Cloned for every ask, they were four atomic operations on
        // reference counts that every socket on every core shares.
        let mut ask = guarded(span, || match &self.inner.middleware {
            None => (route.handler)(socket, msg),
            Some(mw) => {
                let (mw, handler) = (mw.clone(), route.handler.clone());
                Box::pin(async move {
                    match mw(socket.clone(), Inbound::Ask { topic, msg }).await? {
                        Inbound::Ask { msg, .. } => handler(socket, msg).await,
                        _ => Err(Rejection::new(codes::REFUSED, "middleware")),
                    }
                }) as AskWork
            }
        });
        // Run at once: a handler that answers without waiting (most do) is answered in this
        // wakeup, without a task, a trip through the queue and a wakeup of this one (a round
        // trip cost 9.7 µs of server CPU with them against 6.7-7.5 µs for the raw echo server,
        // `sss-bench rpc baseline`). One that waits goes on in a task of its own.
        match (&mut ask).now_or_never().map(ask_outcome) {
            Some(outcome) => {
                let route = (&*self.inner.metrics, &route.series);
                ask_answered(route, &self.shared.id, &ask.span, &outcome, start);
                if self.shared.outbox.is_empty() {
                    self.machine
                        .handle_verdict(Verdict::AskDone { id, outcome });
                } else {
                    // What the handler sent this socket meanwhile (its tells, a publication) is
                    // queued: the answer goes behind it, as from a task of its own.
                    self.shared.report(Verdict::AskDone { id, outcome });
                }
            }
            None => {
                let (inner, route) = (self.inner.clone(), route.clone());
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let outcome = ask_outcome((&mut ask).await);
                    let metrics = (&*inner.metrics, &route.series);
                    ask_answered(metrics, &shared.id, &ask.span, &outcome, start);
                    shared.report(Verdict::AskDone { id, outcome });
                });
            }
        }
    }

    fn tell(&mut self, topic: String, msg: Box<RawValue>) {
        let Some(route) = self.inner.tells.get(&topic) else {
            return;
        };
        route.series.inc();
        let socket = Socket::connected(self.shared.clone());
        let mut tell = guarded(Span::none(), || match &self.inner.middleware {
            None => (route.handler)(socket, msg),
            Some(mw) => {
                let (mw, handler) = (mw.clone(), route.handler.clone());
                Box::pin(async move {
                    if let Ok(Inbound::Tell { msg, .. }) =
                        mw(socket.clone(), Inbound::Tell { topic, msg }).await
                    {
                        handler(socket, msg).await;
                    }
                }) as BoxFuture<'static, ()>
            }
        });
        // Run at once: a handler that does not wait for anything (most tell handlers) is done
        // here, without a slot in `tells` or a wakeup. One that waits is polled from then on by
        // `tells` with the task's waker (a future registers its waker anew at every poll).
        match (&mut tell).now_or_never() {
            Some(done) => {
                if done.is_err() {
                    tell_panicked(&self.shared.id);
                }
                self.machine.handle_verdict(Verdict::TellDone);
            }
            None => {
                let id = self.shared.id.clone();
                let tell = tell.map(move |done| {
                    if done.is_err() {
                        tell_panicked(&id);
                    }
                });
                let tells = self.tells.get_or_insert_with(FuturesUnordered::new);
                tells.push(Box::pin(tell));
            }
        }
    }

    /// Writes the machine's frames. `Err(Some(close))` when the socket was killed meanwhile,
    /// `Err(None)` when the connection failed. Either way, the frames it did not start are
    /// dropped; after a kill, a frame half-written stays, for the close frame to follow it.
    async fn flush(&mut self) -> Result<(), Option<(u16, String)>> {
        let written = self.write().await;
        match written {
            Ok(()) => {}
            Err(Some(_)) => self.writer.drop_unstarted(self.machine.frames_mut()),
            Err(None) => self.writer.drop_all(self.machine.frames_mut()),
        }
        written
    }

    /// [`flush`](Self::flush)'s write. Polled once first: almost every write fits in the
    /// kernel's send buffer and is done then, without a timer (arming one per flush, a clock
    /// read, a timer-wheel entry and its removal, was ~1.7 % of the server's CPU in
    /// `sss-bench fanout`, perf). The rest, for a write that blocks, is boxed: inline, its
    /// timer and `select!` made every socket's task ~300 bytes larger for its whole life.
    async fn write(&mut self) -> Result<(), Option<(u16, String)>> {
        let mut bytes = 0;
        let (ws, writer, owed, machine) = (
            &mut self.ws,
            &mut self.writer,
            &mut self.ws_owes,
            &mut self.machine,
        );
        let first = poll_fn(|cx| {
            Poll::Ready(poll_write(
                ws,
                writer,
                owed,
                machine.frames_mut(),
                &mut bytes,
                cx,
            ))
        })
        .await;
        let written = match first {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => {
                let (limit, shared) = (self.inner.options.write_timeout, &self.shared);
                // A client that stops reading blocks the write; its queue then overflows and
                // the socket is killed as a slow consumer, which must not wait for the write
                // timeout.
                let blocked = Box::pin(async {
                    let rest = poll_fn(|cx| {
                        poll_write(ws, writer, owed, machine.frames_mut(), &mut bytes, cx)
                    });
                    tokio::select! {
                        r = timeout(limit, rest) => Some(r),
                        () = shared.killed() => None,
                    }
                });
                match blocked.await {
                    Some(r) => r,
                    None => {
                        self.inner.metrics.sent_bytes.inc_by(bytes);
                        return Err(Some(self.shared.kill_reason()));
                    }
                }
            }
        };
        self.inner.metrics.sent_bytes.inc_by(bytes);
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                debug!(error = %e, "write failed");
                Err(None)
            }
            Err(_) => {
                debug!("write timed out");
                Err(None)
            }
        }
    }

    /// One message (or the end of the stream), read at `now`.
    fn on_message(&mut self, now: std::time::Instant, msg: Option<Result<Message, WsError>>) {
        self.read_at = now;
        let m = &mut self.machine;
        let received_bytes = &self.inner.metrics.received_bytes;
        match msg {
            Some(Ok(Message::Text(text))) => {
                received_bytes.inc_by(text.len() as u64);
                m.handle_text(now, &text);
            }
            Some(Ok(Message::Binary(bytes))) => {
                received_bytes.inc_by(bytes.len() as u64);
                m.handle_binary(now);
            }
            // Pings are answered by tungstenite; a close is answered and then ends the stream.
            // Either reply is queued in tungstenite, to be written before the next frame.
            Some(Ok(_)) => {
                self.ws_owes = true;
                m.handle_activity(now);
            }
            Some(Err(WsError::Capacity(e))) => m.handle_oversized(&e.to_string()),
            Some(Err(e)) => {
                debug!(error = %e, "read failed");
                m.handle_gone();
            }
            None => m.handle_gone(),
        }
    }

    fn on_out(&mut self, out: Out) {
        let m = &mut self.machine;
        match out {
            Out::Frame(frame) => m.handle_told(frame),
            Out::Pub(p) => m.handle_publication(p),
            Out::BootChannel(channel) => m.handle_boot_channel(&channel),
            Out::Presence(note) => m.handle_presence(&note),
            Out::Verdict(v) => m.handle_verdict(*v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// tungstenite answers a ping by itself, and writes the pong at its next read, as far as
    /// the connection takes it. A frame written past tungstenite while that pong is
    /// half-written would land inside it.
    #[tokio::test]
    async fn a_pong_half_written_by_tungstenite_is_finished_before_the_next_frame() {
        let (server_io, client_io) = tokio::io::duplex(64);
        let mut server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        // 42 of the pipe's 64 bytes taken.
        let text = "x".repeat(40);
        server
            .send(Message::text(text.clone()))
            .await
            .expect("the text fits in the pipe");
        let ping = vec![7u8; 50];
        client
            .send(Message::Ping(ping.clone().into()))
            .await
            .expect("the ping fits in the pipe");
        assert!(matches!(server.next().await, Some(Ok(Message::Ping(_)))));
        // The next read writes the pong: 22 of its 52 bytes fit, the rest waits.
        let waker = futures::task::noop_waker();
        assert!(server
            .poll_next_unpin(&mut Context::from_waker(&waker))
            .is_pending());

        let mut frames = Fifo::default();
        for text in ["one", "two", "three"] {
            frames.push(Frame::Own(Utf8Bytes::from_static(text)));
        }
        let (mut writer, mut owed, mut bytes) = (Writer::default(), true, 0);
        let write = poll_fn(|cx| {
            poll_write(
                &mut server,
                &mut writer,
                &mut owed,
                &mut frames,
                &mut bytes,
                cx,
            )
        });
        let read = async {
            let mut got = Vec::new();
            while got.len() < 5 {
                match client.next().await {
                    Some(Ok(Message::Pong(p))) => got.push(format!("pong {}", p == ping)),
                    Some(Ok(Message::Text(t))) => got.push(t.to_string()),
                    other => panic!("the stream broke: {other:?}"),
                }
            }
            got
        };
        let both = async { tokio::join!(write, read) };
        let (written, got) = timeout(Duration::from_secs(10), both)
            .await
            .expect("the pong and the frames arrive");
        assert!(written.is_ok());
        assert_eq!(got, [text.as_str(), "pong true", "one", "two", "three"]);
        assert_eq!(bytes, 11);
    }
}
