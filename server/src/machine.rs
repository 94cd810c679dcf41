//! The per-socket protocol logic as a sans-IO state machine.
//!
//! [`Machine`] is to a server socket what `sss_core::client::Client` is to a client: it holds
//! no socket, spawns nothing and reads no clock. The driver (`socket.rs`) feeds it what happened
//! (a text frame, a timer, a publication for the socket, the verdict of async work it asked
//! for) and carries out what it asks, in order, through [`Machine::poll_command`]:
//! send a frame, run the subscription parser, join or leave a channel in the registry, read a
//! channel's history, run an ask or tell handler, close. A [`Note`] among the commands reports
//! an outcome the machine decided on its own (a subscription answered, an ask or a presence
//! request refused before any work), for the driver's metrics and logs.
//!
//! The connection itself first moves `Hello ─hello─► Authenticating ─accepted─► Open`: the
//! `hello` (with its `auth`) becomes a [`Command::AuthorizeSession`], and only the session
//! parser's [`Verdict::Session`] for that operation opens the socket (`welcome`) or refuses it
//! (`error` with the parser's code, then close [`close::HANDSHAKE_REFUSED`]).
//!
//! Every subscription moves through explicit states:
//!
//! ```text
//!   sub ─► Authorizing ──accepted──► Joining ──joined──► Syncing ──synced──► Live
//!              │ refused               │ failed            │ failed            │ sub (resync)
//!              ▼                       ▼                   ▼                   ▼
//!           subrej                 subrej+leave        subrej+leave         Syncing
//! ```
//!
//! Only a subscription the parser accepted leaves `Authorizing`, so a `sub` for a channel that
//! is not yet accepted always goes through the parser, however frames are pipelined. A `sub`
//! for an accepted channel (joining, syncing or live) is a resync: the parser is not asked
//! again. Registry membership changes are commands, carried out by the driver in the order the
//! machine emits them; async work reports back with the operation id it was given, and a verdict
//! for an operation that was superseded is ignored. Every `sub` gets exactly one answer:
//! `subok`, or `subrej` (with [`codes::SUPERSEDED`] when a newer `sub` for the same channel
//! replaced it, [`codes::CANCELLED`] when an `unsub` came first).
//!
//! It is public so that it can be fuzzed and model-tested from outside the crate; applications
//! do not need it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use sss_core::protocol::{
    classify_channel, close, codes, encode_pub, ChannelKind, ClientFrame, ServerFrame,
    PROTOCOL_VERSION,
};
use sss_core::Position;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::fifo::Fifo;
use crate::scaler::{History, Record};
use crate::{Grant, Refusal, Rejection, Session};

/// Limits and timers of one socket (from [`ServerOptions`](crate::ServerOptions)).
#[derive(Clone, Debug)]
pub struct Config {
    /// The server pings this often; a socket silent for twice this is closed with 4005.
    pub heartbeat: Duration,
    /// Time the socket has to send `hello`.
    pub handshake_timeout: Duration,
    /// Publications held per subscription while it joins and syncs; past that, 4004.
    pub sync_buffer: usize,
    /// Asks handled at once; more are refused with `busy`.
    pub max_concurrent_asks: usize,
    /// Tells handled at once; at this many the driver stops reading the socket.
    pub max_concurrent_tells: usize,
    /// Subscriptions (pending or live) a socket may hold; more are refused with `limit`.
    pub max_subscriptions: usize,
}

/// Who the socket is: its id, and the user and session the session parser gave it.
#[derive(Clone, Debug, Default)]
struct Identity {
    socket: String,
    user: Option<String>,
    session: Option<String>,
}

/// Which ask and tell topics have handlers.
pub trait Topics: Send + Sync {
    /// Whether an ask handler is registered for `topic`.
    fn has_ask(&self, topic: &str) -> bool;
    /// Whether a tell handler is registered for `topic`.
    fn has_tell(&self, topic: &str) -> bool;
}

/// Identifies one piece of async work the machine asked for; its verdict carries it back.
pub type OpId = u64;

/// One publication as every local subscriber of its channel receives it.
#[derive(Debug)]
pub struct Publication {
    /// Channel.
    pub channel: Arc<str>,
    /// Its position's epoch.
    pub epoch: Arc<str>,
    /// Its position's seq.
    pub seq: u64,
    /// The `pub` frame, encoded once for every subscriber.
    pub frame: Utf8Bytes,
}

/// A frame the machine sends: its own, or a publication that every local subscriber of its
/// channel shares. A publication is queued as it came, not as a copy of its frame's handle:
/// that handle's reference count was one more that every subscriber's task, on every core,
/// incremented and decremented per delivery.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A frame encoded for this socket (an answer, an error) or handed to it whole.
    Own(Utf8Bytes),
    /// A publication's `pub` frame.
    Pub(Arc<Publication>),
}

impl Frame {
    /// The frame's text.
    pub fn as_str(&self) -> &str {
        match self {
            Frame::Own(text) => text,
            Frame::Pub(p) => &p.frame,
        }
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl std::ops::Deref for Frame {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One presence event as every local subscriber of its channel receives it.
#[derive(Debug)]
pub struct PresenceNote {
    /// Channel.
    pub channel: Arc<str>,
    /// The socket that joined or left (a socket is not told of itself).
    pub socket: String,
    /// The `join` or `leave` frame, encoded once for every subscriber.
    pub frame: Utf8Bytes,
}

/// What the machine asks its driver to do, in order.
#[derive(Debug)]
pub enum Command {
    /// Run the session parser on the handshake request and the `hello`'s `auth`; answer with
    /// [`Verdict::Session`].
    AuthorizeSession {
        /// Operation id.
        op: OpId,
        /// The `hello`'s credentials, if any.
        auth: Option<Box<RawValue>>,
    },
    /// The session parser accepted: the socket now belongs to this session (the driver makes
    /// it reachable by user and session id). Comes right before the `welcome`.
    Admit(Session),
    /// Run the middleware and the subscription parser; answer with [`Verdict::Authorized`].
    Authorize {
        /// Operation id.
        op: OpId,
        /// Channel.
        channel: String,
        /// The client's query.
        query: Option<Box<RawValue>>,
    },
    /// Add the socket to the channel's local subscribers now (and to its presence, with
    /// `presence`), then make sure the scaler delivers the channel to this instance; answer
    /// with [`Verdict::Joined`].
    Join {
        /// Operation id.
        op: OpId,
        /// Channel.
        channel: String,
        /// The socket becomes a member of the channel's presence.
        presence: bool,
    },
    /// Remove the socket from the channel's local subscribers (and its presence) now (no
    /// answer).
    Leave {
        /// Channel.
        channel: String,
    },
    /// Read the channel's head (`since` absent) or its history after `since`; answer with
    /// [`Verdict::Synced`].
    Sync {
        /// Operation id.
        op: OpId,
        /// Channel.
        channel: String,
        /// The client's last position.
        since: Option<Position>,
    },
    /// Run the ask handler; answer with [`Verdict::AskDone`].
    Ask {
        /// The ask's id.
        id: u64,
        /// Topic (it has a handler).
        topic: String,
        /// Payload.
        msg: Box<RawValue>,
    },
    /// Read the channel's presence: its members, or with `stats` their counts; answer with
    /// [`Verdict::AskDone`] (it counts as an ask).
    Presence {
        /// The request's id.
        id: u64,
        /// Channel.
        channel: String,
        /// Counts instead of members.
        stats: bool,
    },
    /// Run the tell handler; answer with [`Verdict::TellDone`].
    Tell {
        /// Topic (it has a handler).
        topic: String,
        /// Payload.
        msg: Box<RawValue>,
    },
    /// Close the connection with this code (after sending what was commanded before).
    Close {
        /// Close code.
        code: u16,
        /// Reason.
        reason: String,
    },
    /// Nothing to carry out: what the machine just decided on its own, for the driver's
    /// metrics and logs.
    Note(Note),
}

/// An outcome the machine decided without the driver seeing it in a verdict, reported with
/// the frame that tells the client (polled with [`Machine::poll_frame`], in the same order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// `subok` was sent: the subscription is live.
    Subscribed {
        /// Channel.
        channel: String,
        /// As in the `subok` frame: `Some` for a resync (`since` given), `true` when every
        /// missed publication is replayed.
        recovered: Option<bool>,
    },
    /// `subrej` was sent.
    SubRefused {
        /// Channel.
        channel: String,
        /// The `subrej` code.
        code: String,
    },
    /// `rej` was sent for an ask no handler saw: its topic has none ([`codes::UNKNOWN_TOPIC`])
    /// or the socket has too many asks in flight ([`codes::BUSY`]).
    AskRefused {
        /// Topic.
        topic: String,
        /// The `rej` code.
        code: &'static str,
    },
    /// `rej` was sent for a presence request: the socket is not subscribed to the channel
    /// ([`codes::NOT_SUBSCRIBED`]), its subscription has no presence ([`codes::NO_PRESENCE`]),
    /// or it has too many asks in flight ([`codes::BUSY`]).
    PresenceRefused {
        /// Channel.
        channel: String,
        /// The `rej` code.
        code: &'static str,
    },
    /// A tell on a topic without a handler was dropped.
    TellDropped {
        /// Topic.
        topic: String,
    },
}

/// How an ask handler ended.
#[derive(Debug)]
pub enum AskOutcome {
    /// It answered.
    Ok(Box<RawValue>),
    /// It (or the middleware) refused.
    Err(Rejection),
    /// It panicked.
    Panicked,
}

impl AskOutcome {
    /// `Ok(())`, or the code the client is answered with (for metrics and logs).
    pub fn code(&self) -> Result<(), &str> {
        match self {
            AskOutcome::Ok(_) => Ok(()),
            AskOutcome::Err(r) => Err(r.code.as_str()),
            AskOutcome::Panicked => Err(codes::INTERNAL),
        }
    }

    /// The answer the client gets: a panic is `internal`.
    pub fn into_answer(self) -> Result<Box<RawValue>, Rejection> {
        match self {
            AskOutcome::Ok(msg) => Ok(msg),
            AskOutcome::Err(r) => Err(r),
            AskOutcome::Panicked => Err(Rejection::new(codes::INTERNAL, "the handler failed")),
        }
    }
}

/// What a channel's sync read.
#[derive(Debug)]
pub enum Synced {
    /// The channel's head (for a `sub` without `since`).
    Head(Position),
    /// The history after `since`.
    History(History),
}

/// How the session parser ended.
#[derive(Debug)]
pub enum SessionOutcome {
    /// It accepted, with this session.
    Accepted(Session),
    /// It refused.
    Refused(Refusal),
    /// It panicked.
    Panicked,
}

/// The outcome of async work the machine asked for.
#[derive(Debug)]
pub enum Verdict {
    /// The session parser decided.
    Session {
        /// The [`Command::AuthorizeSession`] operation.
        op: OpId,
        /// How.
        outcome: SessionOutcome,
    },
    /// The middleware and subscription parser decided.
    Authorized {
        /// The [`Command::Authorize`] operation.
        op: OpId,
        /// Accepted (with what), or the rejection.
        result: Result<Grant, Rejection>,
    },
    /// The registry join finished.
    Joined {
        /// The [`Command::Join`] operation.
        op: OpId,
        /// Joined, or why the scaler could not deliver the channel.
        result: Result<(), Rejection>,
    },
    /// The position or history was read.
    Synced {
        /// The [`Command::Sync`] operation.
        op: OpId,
        /// What was read, or why not.
        result: Result<Synced, Rejection>,
    },
    /// An ask handler (or a presence read) finished.
    AskDone {
        /// The ask's id.
        id: u64,
        /// How.
        outcome: AskOutcome,
    },
    /// A tell handler finished.
    TellDone,
}

/// A subscription's presence: granted by the server, events asked for by the client.
#[derive(Clone, Copy, Debug, Default)]
struct Presence {
    granted: bool,
    events: bool,
}

/// A subscription's state.
#[derive(Debug)]
enum Sub {
    /// The parser is deciding; the socket is not in the registry. `events`: the client asked
    /// for presence events.
    Authorizing {
        id: u64,
        op: OpId,
        since: Option<Position>,
        events: bool,
    },
    /// Accepted; the registry join is running. Publications are held.
    Joining {
        id: u64,
        op: OpId,
        since: Option<Position>,
        held: Vec<Arc<Publication>>,
        presence: Presence,
    },
    /// Joined; the position or history is being read. Publications are held.
    Syncing {
        id: u64,
        op: OpId,
        since: Option<Position>,
        held: Vec<Arc<Publication>>,
        presence: Presence,
    },
    /// Publications after `last` are sent.
    Live { last: Last, presence: Presence },
}

impl Sub {
    /// The unanswered `sub` id, if any.
    fn pending(&self) -> Option<u64> {
        match self {
            Sub::Authorizing { id, .. } | Sub::Joining { id, .. } | Sub::Syncing { id, .. } => {
                Some(*id)
            }
            Sub::Live { .. } => None,
        }
    }

    /// Whether the socket is in the channel's registry entry.
    fn joined(&self) -> bool {
        !matches!(self, Sub::Authorizing { .. })
    }

    /// The presence of an accepted subscription (`None` while authorizing).
    fn presence(&self) -> Option<Presence> {
        match self {
            Sub::Authorizing { .. } => None,
            Sub::Joining { presence, .. }
            | Sub::Syncing { presence, .. }
            | Sub::Live { presence, .. } => Some(*presence),
        }
    }
}

/// The last publication sent on a live subscription.
#[derive(Debug)]
struct Last {
    epoch: Arc<str>,
    seq: u64,
}

impl Last {
    /// Whether a publication is new to the client: later in the same epoch, or from another
    /// epoch (the scaler lost its history; the client notices and resyncs).
    fn admits(&mut self, epoch: &Arc<str>, seq: u64) -> bool {
        // The registry hands every publication of an epoch the same `Arc`: once adopted here,
        // the pointer says "same epoch" without reading the string or touching the reference
        // count that every subscriber, on every core, shares.
        if !Arc::ptr_eq(&self.epoch, epoch) {
            let same_epoch = *self.epoch == **epoch;
            self.epoch = epoch.clone();
            if !same_epoch {
                self.seq = seq;
                return true;
            }
        }
        if seq <= self.seq {
            return false;
        }
        self.seq = seq;
        true
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for `hello`.
    Hello,
    /// The session parser runs for operation `op`.
    Authenticating {
        op: OpId,
    },
    Open,
    Closed,
}

/// The protocol state of one server socket. See the [module docs](self).
pub struct Machine {
    config: Config,
    identity: Identity,
    topics: Arc<dyn Topics>,
    phase: Phase,
    /// By channel. foldhash, not SipHash: the lookup is on every delivery, where SipHash cost
    /// ~160 instructions of the server's ~3 800 (callgrind, `sss-bench fanout`); the keys are
    /// the client's, but the map is its own and bounded by `max_subscriptions`, and foldhash
    /// is seeded per map all the same.
    subs: HashMap<String, Sub, foldhash::fast::RandomState>,
    /// The channel each operation in flight was started for (a verdict is matched in O(1);
    /// an entry lives until its verdict arrives, so there are at most as many as work in
    /// flight).
    ops: HashMap<OpId, String>,
    next_op: OpId,
    asks: usize,
    tells: usize,
    hello_deadline: Instant,
    last_recv: Instant,
    next_ping: Instant,
    commands: Fifo<Command>,
    /// Frames to send: apart from the commands, so that a delivery goes from the machine to
    /// the socket without being wrapped, queued and unwrapped as a command twice (2 791 ->
    /// 2 749 instructions per fan-out delivery, `scripts/bench-instructions.sh`).
    frames: Fifo<Frame>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("socket", &self.identity.socket)
            .field("phase", &self.phase)
            .field("subs", &self.subs)
            .field("asks", &self.asks)
            .field("tells", &self.tells)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// A socket that just upgraded at `now`, with its cluster-wide id `socket`.
    pub fn new(now: Instant, config: Config, socket: String, topics: Arc<dyn Topics>) -> Self {
        Self {
            hello_deadline: now + config.handshake_timeout,
            last_recv: now,
            next_ping: now + config.heartbeat,
            config,
            identity: Identity {
                socket,
                ..Identity::default()
            },
            topics,
            phase: Phase::Hello,
            subs: HashMap::default(),
            ops: HashMap::new(),
            next_op: 0,
            asks: 0,
            tells: 0,
            commands: Fifo::default(),
            frames: Fifo::default(),
        }
    }

    /// The next thing to do, in order.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop()
    }

    /// The next frame to send, in order. The driver carries out the commands polled with it
    /// first: no command waits for a frame to be written, and a [`Command::Close`] closes
    /// after the frames sent before it.
    pub fn poll_frame(&mut self) -> Option<Frame> {
        self.frames.pop()
    }

    /// The frames waiting for [`poll_frame`](Self::poll_frame), for the driver to write
    /// them where they are and take each once written.
    pub(crate) fn frames_mut(&mut self) -> &mut Fifo<Frame> {
        &mut self.frames
    }

    /// Whether a frame is waiting for [`poll_frame`](Self::poll_frame).
    pub fn has_frames(&self) -> bool {
        !self.frames.is_empty()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Hello | Phase::Authenticating { .. } => Some(self.hello_deadline),
            // While reading is paused the silence is the server's doing, not the client's.
            Phase::Open if !self.wants_read() => Some(self.next_ping),
            Phase::Open => Some(
                self.next_ping
                    .min(self.last_recv + self.config.heartbeat * 2),
            ),
            Phase::Closed => None,
        }
    }

    /// Whether the driver should read the socket. `false` while the socket's tell handlers are
    /// at their limit: backpressure instead of unbounded tasks.
    pub fn wants_read(&self) -> bool {
        self.phase != Phase::Closed && self.tells < self.config.max_concurrent_tells
    }

    /// Whether the machine has closed (after [`Command::Close`], or the peer went away).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Channels the socket is in the registry of (what must be left when it goes away).
    pub fn joined_channels(&self) -> impl Iterator<Item = &str> {
        self.subs
            .iter()
            .filter(|(_, s)| s.joined())
            .map(|(c, _)| c.as_str())
    }

    fn op(&mut self, channel: &str) -> OpId {
        self.next_op += 1;
        self.ops.insert(self.next_op, channel.to_owned());
        self.next_op
    }

    fn send(&mut self, f: &ServerFrame) {
        self.frames.push(Frame::Own(Utf8Bytes::from(f.encode())));
    }

    fn subrej(&mut self, id: u64, ch: &str, code: &str, reason: impl Into<String>) {
        self.send(&ServerFrame::Subrej {
            id,
            ch: ch.to_owned(),
            code: code.to_owned(),
            reason: reason.into(),
        });
        self.note(Note::SubRefused {
            channel: ch.to_owned(),
            code: code.to_owned(),
        });
    }

    fn note(&mut self, note: Note) {
        self.commands.push(Command::Note(note));
    }

    /// Closes: leaves every joined channel, then tells the driver to close with `code`.
    fn close(&mut self, code: u16, reason: impl Into<String>) {
        if self.phase == Phase::Closed {
            return;
        }
        self.leave_all();
        self.commands.push(Command::Close {
            code,
            reason: reason.into(),
        });
    }

    fn leave_all(&mut self) {
        self.phase = Phase::Closed;
        let channels: Vec<String> = self.joined_channels().map(str::to_owned).collect();
        self.subs.clear();
        for channel in channels {
            self.commands.push(Command::Leave { channel });
        }
    }

    /// A protocol violation: an `error` frame, then close 4000.
    fn protocol_error(&mut self, reason: impl Into<String>) {
        let reason = reason.into();
        self.send(&ServerFrame::Error {
            code: "protocol".into(),
            reason: reason.clone(),
        });
        self.close(close::PROTOCOL_ERROR, reason);
    }

    /// The peer sent something (a frame of any kind, including WebSocket pings): it is alive.
    pub fn handle_activity(&mut self, now: Instant) {
        self.last_recv = now;
    }

    /// A text frame arrived.
    pub fn handle_text(&mut self, now: Instant, text: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        self.last_recv = now;
        let frame = match ClientFrame::decode(text) {
            Ok(f) => f,
            Err(e) => return self.protocol_error(e.to_string()),
        };
        match self.phase {
            Phase::Hello => return self.on_hello(frame),
            Phase::Authenticating { .. } => {
                return self.protocol_error("frame sent before welcome");
            }
            _ => {}
        }
        match frame {
            ClientFrame::Hello { .. } => self.protocol_error("hello sent twice"),
            ClientFrame::Ask { id, topic, msg } => self.on_ask(id, topic, msg),
            ClientFrame::Tell { topic, msg } => self.on_tell(topic, msg),
            ClientFrame::Sub {
                id,
                ch,
                q,
                since,
                presence,
            } => self.on_sub(id, ch, q, since, presence),
            ClientFrame::Presence { id, ch } => self.on_presence(id, &ch, false),
            ClientFrame::PresenceStats { id, ch } => self.on_presence(id, &ch, true),
            ClientFrame::Unsub { ch } => self.on_unsub(&ch),
            ClientFrame::Ping {} => self.send(&ServerFrame::Pong {}),
            ClientFrame::Pong {} => {}
            _ => self.protocol_error("unexpected frame"),
        }
    }

    /// A binary frame arrived: not part of protocol version 1.
    pub fn handle_binary(&mut self, now: Instant) {
        if self.phase != Phase::Closed {
            self.last_recv = now;
            self.protocol_error("binary frames are not supported");
        }
    }

    /// The peer sent a message larger than the server's maximum.
    pub fn handle_oversized(&mut self, detail: &str) {
        self.close(close::MESSAGE_TOO_BIG, detail.to_owned());
    }

    /// The connection is gone (read or write failed, or the peer closed): nothing more is sent.
    pub fn handle_gone(&mut self) {
        if self.phase != Phase::Closed {
            self.leave_all();
        }
    }

    /// The server closes the socket (boot, slow consumer, shutdown): `code` is sent.
    pub fn handle_kill(&mut self, code: u16, reason: &str) {
        self.close(code, reason.to_owned());
    }

    /// A timer set by [`poll_timeout`](Self::poll_timeout) fired.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Hello if now >= self.hello_deadline => {
                self.close(close::HANDSHAKE_TIMEOUT, "no hello in time");
            }
            Phase::Authenticating { .. } if now >= self.hello_deadline => {
                self.close(
                    close::HANDSHAKE_TIMEOUT,
                    "the session parser did not decide in time",
                );
            }
            Phase::Open => {
                if self.wants_read() && now >= self.last_recv + self.config.heartbeat * 2 {
                    self.close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                } else if now >= self.next_ping {
                    self.next_ping = now + self.config.heartbeat;
                    self.send(&ServerFrame::Ping {});
                }
            }
            _ => {}
        }
    }

    fn on_hello(&mut self, frame: ClientFrame) {
        match frame {
            ClientFrame::Hello { v, auth } if v == PROTOCOL_VERSION => {
                self.next_op += 1;
                let op = self.next_op;
                self.phase = Phase::Authenticating { op };
                self.commands.push(Command::AuthorizeSession { op, auth });
            }
            ClientFrame::Hello { v, .. } => {
                let reason = format!(
                    "protocol version {v} is not supported; this server speaks {PROTOCOL_VERSION}"
                );
                self.send(&ServerFrame::Error {
                    code: "unsupported_version".into(),
                    reason: reason.clone(),
                });
                self.close(close::UNSUPPORTED_VERSION, reason);
            }
            _ => self.protocol_error("expected hello first"),
        }
    }

    fn on_ask(&mut self, id: u64, topic: String, msg: Box<RawValue>) {
        if !self.topics.has_ask(&topic) {
            let reason = format!("no ask handler for topic {topic:?}");
            return self.ask_refused(id, topic, codes::UNKNOWN_TOPIC, reason);
        }
        if self.asks >= self.config.max_concurrent_asks {
            let reason = "too many asks in flight on this socket".into();
            return self.ask_refused(id, topic, codes::BUSY, reason);
        }
        self.asks += 1;
        self.commands.push(Command::Ask { id, topic, msg });
    }

    /// A presence request: answered like an ask, and counted with them.
    fn on_presence(&mut self, id: u64, ch: &str, stats: bool) {
        let refusal = match self.subs.get(ch).and_then(Sub::presence) {
            None => Some((codes::NOT_SUBSCRIBED, "not subscribed to this channel")),
            Some(p) if !p.granted => {
                Some((codes::NO_PRESENCE, "this subscription has no presence"))
            }
            Some(_) if self.asks >= self.config.max_concurrent_asks => {
                Some((codes::BUSY, "too many asks in flight on this socket"))
            }
            Some(_) => None,
        };
        if let Some((code, reason)) = refusal {
            self.send(&ServerFrame::Rej {
                id,
                code: code.into(),
                reason: reason.into(),
            });
            return self.note(Note::PresenceRefused {
                channel: ch.to_owned(),
                code,
            });
        }
        self.asks += 1;
        self.commands.push(Command::Presence {
            id,
            channel: ch.to_owned(),
            stats,
        });
    }

    fn ask_refused(&mut self, id: u64, topic: String, code: &'static str, reason: String) {
        self.send(&ServerFrame::Rej {
            id,
            code: code.into(),
            reason,
        });
        self.note(Note::AskRefused { topic, code });
    }

    fn on_tell(&mut self, topic: String, msg: Box<RawValue>) {
        // Unknown topics are dropped: a tell has no answer to carry an error.
        if self.topics.has_tell(&topic) {
            self.tells += 1;
            self.commands.push(Command::Tell { topic, msg });
        } else {
            self.note(Note::TellDropped { topic });
        }
    }

    fn on_sub(
        &mut self,
        id: u64,
        ch: String,
        q: Option<Box<RawValue>>,
        since: Option<Position>,
        events: bool,
    ) {
        let Some(current) = self.subs.remove(&ch) else {
            return self.new_sub(id, ch, q, since, events);
        };
        if let Some(old) = current.pending() {
            self.subrej(
                old,
                &ch,
                codes::SUPERSEDED,
                format!("superseded by sub {id}"),
            );
        }
        let next = match current {
            // Not accepted yet: the newer `sub` is decided by the parser afresh (its query may
            // differ); the older verdict will be ignored.
            Sub::Authorizing { .. } => {
                let op = self.op(&ch);
                self.commands.push(Command::Authorize {
                    op,
                    channel: ch.clone(),
                    query: q,
                });
                Sub::Authorizing {
                    id,
                    op,
                    since,
                    events,
                }
            }
            // Accepted: a resync. The join in flight carries on for the newer `sub`; the grant
            // stands, the newer `sub` says whether it wants presence events.
            Sub::Joining {
                op, held, presence, ..
            } => Sub::Joining {
                id,
                op,
                since,
                held,
                presence: Presence { events, ..presence },
            },
            Sub::Syncing { held, presence, .. } => {
                let op = self.sync(&ch, since.clone());
                Sub::Syncing {
                    id,
                    op,
                    since,
                    held,
                    presence: Presence { events, ..presence },
                }
            }
            Sub::Live { presence, .. } => {
                let op = self.sync(&ch, since.clone());
                Sub::Syncing {
                    id,
                    op,
                    since,
                    held: Vec::new(),
                    presence: Presence { events, ..presence },
                }
            }
        };
        self.subs.insert(ch, next);
    }

    fn new_sub(
        &mut self,
        id: u64,
        ch: String,
        q: Option<Box<RawValue>>,
        since: Option<Position>,
        events: bool,
    ) {
        if self.subs.len() >= self.config.max_subscriptions {
            let reason = format!(
                "a socket may hold {} subscriptions",
                self.config.max_subscriptions
            );
            return self.subrej(id, &ch, codes::LIMIT, reason);
        }
        let own = |id: &str, mine: &Option<String>| mine.as_deref() == Some(id);
        let needs_parser = match classify_channel(&ch) {
            Err(e) => return self.subrej(id, &ch, codes::INVALID_CHANNEL, e.to_string()),
            Ok(ChannelKind::User(u)) if own(u, &self.identity.user) => false,
            Ok(ChannelKind::Session(s)) if own(s, &self.identity.session) => false,
            Ok(ChannelKind::Public) => true,
            Ok(_) => {
                return self.subrej(
                    id,
                    &ch,
                    codes::RESERVED_CHANNEL,
                    "reserved channel of someone else",
                )
            }
        };
        let op = self.op(&ch);
        let sub = if needs_parser {
            self.commands.push(Command::Authorize {
                op,
                channel: ch.clone(),
                query: q,
            });
            Sub::Authorizing {
                id,
                op,
                since,
                events,
            }
        } else {
            // A socket's own user or session channel: no parser, and no presence.
            self.commands.push(Command::Join {
                op,
                channel: ch.clone(),
                presence: false,
            });
            Sub::Joining {
                id,
                op,
                since,
                held: Vec::new(),
                presence: Presence::default(),
            }
        };
        self.subs.insert(ch, sub);
    }

    fn sync(&mut self, channel: &str, since: Option<Position>) -> OpId {
        let op = self.op(channel);
        self.commands.push(Command::Sync {
            op,
            channel: channel.to_owned(),
            since,
        });
        op
    }

    fn on_unsub(&mut self, ch: &str) {
        let Some(sub) = self.subs.remove(ch) else {
            return;
        };
        if sub.joined() {
            self.commands.push(Command::Leave {
                channel: ch.to_owned(),
            });
        }
        if let Some(id) = sub.pending() {
            self.subrej(id, ch, codes::CANCELLED, "unsubscribed before the answer");
        }
    }

    /// A publication for a channel the socket joined (or did, before a queued leave).
    pub fn handle_publication(&mut self, p: Arc<Publication>) {
        let overflow = match self.subs.get_mut(&*p.channel) {
            Some(Sub::Live { last, .. }) => {
                if last.admits(&p.epoch, p.seq) {
                    self.frames.push(Frame::Pub(p));
                }
                false
            }
            Some(Sub::Joining { held, .. } | Sub::Syncing { held, .. }) => {
                if held.len() >= self.config.sync_buffer {
                    true
                } else {
                    held.push(p);
                    false
                }
            }
            // Not joined (yet, or any more): a publication queued before a leave.
            Some(Sub::Authorizing { .. }) | None => false,
        };
        if overflow {
            self.close(close::SLOW_CONSUMER, "too many publications while syncing");
        }
    }

    /// A presence event of a channel the socket joined: sent to a live subscription that asked
    /// for presence events, unless it is the socket's own.
    pub fn handle_presence(&mut self, note: &PresenceNote) {
        let wanted = matches!(
            self.subs.get(&*note.channel),
            Some(Sub::Live { presence, .. }) if presence.granted && presence.events
        );
        if wanted && note.socket != self.identity.socket {
            self.frames.push(Frame::Own(note.frame.clone()));
        }
    }

    /// A frame the server tells this socket (`Socket::tell`, `tell_user`, `broadcast`, ...).
    /// Sent once the socket is open; before `welcome` it is dropped (the client is not ready
    /// for anything but `welcome`), and after the close there is no one to send it to.
    pub fn handle_told(&mut self, frame: Utf8Bytes) {
        if self.phase == Phase::Open {
            self.frames.push(Frame::Own(frame));
        }
    }

    /// The server removed every subscriber of `channel`.
    pub fn handle_boot_channel(&mut self, channel: &str) {
        let reason = "removed from the channel by the server";
        match self.subs.get(channel) {
            // Not in the registry: the boot was for an earlier membership, already left.
            None | Some(Sub::Authorizing { .. }) => {}
            Some(sub) => {
                let pending = sub.pending();
                self.subs.remove(channel);
                self.commands.push(Command::Leave {
                    channel: channel.to_owned(),
                });
                match pending {
                    Some(id) => self.subrej(id, channel, codes::BOOTED, reason),
                    None => self.send(&ServerFrame::Unsubbed {
                        ch: channel.to_owned(),
                        code: codes::BOOTED.into(),
                        reason: reason.into(),
                    }),
                }
            }
        }
    }

    /// Async work finished.
    pub fn handle_verdict(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Session { op, outcome } => self.on_session(op, outcome),
            Verdict::AskDone { id, outcome } => {
                self.asks = self.asks.saturating_sub(1);
                if self.phase == Phase::Closed {
                    return;
                }
                let f = match outcome.into_answer() {
                    Ok(msg) => ServerFrame::Res { id, msg },
                    Err(r) => ServerFrame::Rej {
                        id,
                        code: r.code,
                        reason: r.reason,
                    },
                };
                self.send(&f);
            }
            Verdict::TellDone => self.tells = self.tells.saturating_sub(1),
            Verdict::Authorized { op, result } => self.on_authorized(op, result),
            Verdict::Joined { op, result } => self.on_joined(op, result),
            Verdict::Synced { op, result } => self.on_synced(op, result),
        }
    }

    /// The session parser's verdict: `welcome`, or an `error` frame and a close.
    fn on_session(&mut self, op: OpId, outcome: SessionOutcome) {
        if self.phase != (Phase::Authenticating { op }) {
            return;
        }
        match outcome {
            SessionOutcome::Accepted(session) => {
                self.phase = Phase::Open;
                self.identity.user.clone_from(&session.user);
                self.identity.session.clone_from(&session.session);
                self.commands.push(Command::Admit(session));
                // The heartbeat starts from the `hello` (or anything the client sent since).
                self.next_ping = self.last_recv + self.config.heartbeat;
                let welcome = ServerFrame::Welcome {
                    v: PROTOCOL_VERSION,
                    socket: self.identity.socket.clone(),
                    user: self.identity.user.clone(),
                    session: self.identity.session.clone(),
                    hb: u64::try_from(self.config.heartbeat.as_millis()).unwrap_or(u64::MAX),
                };
                self.send(&welcome);
            }
            SessionOutcome::Refused(refusal) => {
                self.send(&ServerFrame::Error {
                    code: refusal.code,
                    reason: refusal.reason.clone(),
                });
                self.close(close::HANDSHAKE_REFUSED, refusal.reason);
            }
            SessionOutcome::Panicked => {
                let reason = "the session parser failed";
                self.send(&ServerFrame::Error {
                    code: codes::INTERNAL.into(),
                    reason: reason.into(),
                });
                self.close(close::INTERNAL_ERROR, reason);
            }
        }
    }

    /// The channel whose current state waits for operation `op` (`None` for a verdict that
    /// was overtaken: superseded, cancelled, booted).
    fn waiting_for(&mut self, op: OpId) -> Option<String> {
        let ch = self.ops.remove(&op)?;
        let current = match self.subs.get(&ch)? {
            Sub::Authorizing { op, .. } | Sub::Joining { op, .. } | Sub::Syncing { op, .. } => *op,
            Sub::Live { .. } => return None,
        };
        (current == op).then_some(ch)
    }

    /// Ends a pending subscription with a rejection (leaving the registry if it joined).
    fn refuse(&mut self, ch: &str, r: Rejection) {
        if let Some(sub) = self.subs.remove(ch) {
            if sub.joined() {
                self.commands.push(Command::Leave {
                    channel: ch.to_owned(),
                });
            }
            if let Some(id) = sub.pending() {
                self.subrej(id, ch, &r.code, r.reason);
            }
        }
    }

    fn on_authorized(&mut self, op: OpId, result: Result<Grant, Rejection>) {
        let Some(ch) = self.waiting_for(op) else {
            return;
        };
        let grant = match result {
            Ok(g) => g,
            Err(r) => return self.refuse(&ch, r),
        };
        if let Some(Sub::Authorizing {
            id, since, events, ..
        }) = self.subs.remove(&ch)
        {
            let op = self.op(&ch);
            self.commands.push(Command::Join {
                op,
                channel: ch.clone(),
                presence: grant.presence,
            });
            let joining = Sub::Joining {
                id,
                op,
                since,
                held: Vec::new(),
                presence: Presence {
                    granted: grant.presence,
                    events,
                },
            };
            self.subs.insert(ch, joining);
        }
    }

    fn on_joined(&mut self, op: OpId, result: Result<(), Rejection>) {
        let Some(ch) = self.waiting_for(op) else {
            return;
        };
        if let Err(r) = result {
            return self.refuse(&ch, r);
        }
        if let Some(Sub::Joining {
            id,
            since,
            held,
            presence,
            ..
        }) = self.subs.remove(&ch)
        {
            let op = self.sync(&ch, since.clone());
            let syncing = Sub::Syncing {
                id,
                op,
                since,
                held,
                presence,
            };
            self.subs.insert(ch, syncing);
        }
    }

    fn on_synced(&mut self, op: OpId, result: Result<Synced, Rejection>) {
        let Some(ch) = self.waiting_for(op) else {
            return;
        };
        let synced = match result {
            Ok(s) => s,
            Err(r) => return self.refuse(&ch, r),
        };
        let Some(Sub::Syncing {
            id,
            since,
            held,
            presence,
            ..
        }) = self.subs.remove(&ch)
        else {
            return;
        };
        let (pos, recovered, replay) = match (synced, since) {
            (Synced::Head(pos), _) => (pos, None, Vec::new()),
            (Synced::History(History::Unrecoverable { head }), _) => {
                (head, Some(false), Vec::new())
            }
            // `pos` is the last replayed position, or `since` itself when nothing was missed.
            (Synced::History(History::Recovered(replay)), Some(since)) => {
                let pos = replay.last().map_or(since, |r| r.position.clone());
                (pos, Some(true), replay)
            }
            (Synced::History(History::Recovered(_)), None) => {
                // A driver answering a head read with a history: refuse rather than guess.
                self.commands.push(Command::Leave {
                    channel: ch.clone(),
                });
                let reason = "sync answered the wrong question";
                return self.subrej(id, &ch, codes::INTERNAL, reason);
            }
        };
        let synced = SyncedSub {
            id,
            pos,
            recovered,
            presence,
        };
        self.go_live(ch, synced, replay, held);
    }

    fn go_live(
        &mut self,
        ch: String,
        synced: SyncedSub,
        replay: Vec<Arc<Record>>,
        held: Vec<Arc<Publication>>,
    ) {
        let SyncedSub {
            id,
            pos,
            recovered,
            presence,
        } = synced;
        self.send(&ServerFrame::Subok {
            id,
            ch: ch.clone(),
            pos: pos.clone(),
            recovered,
            presence: presence.granted,
        });
        self.note(Note::Subscribed {
            channel: ch.clone(),
            recovered,
        });
        let mut last = Last {
            epoch: Arc::from(pos.epoch.as_str()),
            seq: pos.seq,
        };
        for r in &replay {
            let f = encode_pub(&ch, &r.topic, &r.position, &r.msg);
            self.frames.push(Frame::Own(Utf8Bytes::from(f)));
        }
        for h in held {
            if last.admits(&h.epoch, h.seq) {
                self.frames.push(Frame::Pub(h));
            }
        }
        self.subs.insert(ch, Sub::Live { last, presence });
    }
}

/// What a subscription that finished syncing answers with.
struct SyncedSub {
    id: u64,
    pos: Position,
    recovered: Option<bool>,
    presence: Presence,
}
