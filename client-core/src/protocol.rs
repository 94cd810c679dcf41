//! The wire protocol: frames, their JSON codec, error codes and close codes.
//!
//! Every frame is one JSON object in one WebSocket text frame, with its kind in the field `"t"`.
//! `docs/PROTOCOL.md` is the normative description; this module is its implementation, shared by
//! the server and the client core. It has no async code and no clock.
//!
//! Application payloads (`msg`, `q`, `m`, `auth`) travel as raw JSON ([`RawValue`]): the codec
//! never parses them into a tree, so a publication is encoded once and its payload bytes are
//! copied, not re-serialized. The frames are generic over the payload's type ([`Payload`]): a
//! driver that parses frames itself (the browser's, with `JSON.parse`) keeps payloads in its own
//! representation, builds frames from an [`Envelope`] and never hands their bytes to the core.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The protocol version this crate speaks. A client announces it in its `hello` frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// An application payload as the client core carries it: opaque, except that a frame the client
/// sends writes it out as JSON.
///
/// [`Box<RawValue>`] (the native client and the server) is JSON text. The browser driver's
/// payloads are JS values that never enter the core as bytes: a received one is already parsed
/// by `JSON.parse`, one to send is the text `JSON.stringify` made of it.
pub trait Payload: Clone {
    /// The JSON `null` (a frame without its payload field carries it).
    fn null() -> Self;
    /// Appends the payload's JSON text to `out`.
    fn write_json(&self, out: &mut String);
}

impl Payload for Box<RawValue> {
    fn null() -> Self {
        // "null" is valid JSON; this cannot fail.
        RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!())
    }

    fn write_json(&self, out: &mut String) {
        out.push_str(self.get());
    }
}

/// Longest accepted channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Longest accepted topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;
/// Channels whose name starts with this prefix are reserved for the server (user and session
/// channels); a client may subscribe only to its own.
pub const RESERVED_PREFIX: char = '#';
/// Prefix of a user's channel: `#user:<user id>`.
pub const USER_CHANNEL_PREFIX: &str = "#user:";
/// Prefix of a browser session's channel: `#session:<session id>`.
pub const SESSION_CHANNEL_PREFIX: &str = "#session:";

/// A place in a channel's stream of publications.
///
/// `seq` increases by exactly one per publication on a channel. `epoch` names one life of the
/// channel's history: when the history is lost (a scaler restarted without its data), the epoch
/// changes and positions from the old epoch can no longer be recovered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The history's epoch.
    #[serde(rename = "e")]
    pub epoch: String,
    /// The publication's sequence number in that epoch (the first publication has 1).
    #[serde(rename = "s")]
    pub seq: u64,
}

impl Position {
    /// A position from its parts.
    pub fn new(epoch: impl Into<String>, seq: u64) -> Self {
        Self {
            epoch: epoch.into(),
            seq,
        }
    }
}

/// One member of a channel's presence: one subscribed socket. A user with three tabs open is
/// three members with the same `user`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Member {
    /// The socket's cluster-wide id.
    pub socket: String,
    /// The user id the session parser gave, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The session id the session parser gave, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// What the session parser attached to the session for others to see (a display name, an
    /// avatar, ...), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

impl PartialEq for Member {
    /// Field by field; `info` by its JSON text.
    fn eq(&self, other: &Self) -> bool {
        self.socket == other.socket
            && self.user == other.user
            && self.session == other.session
            && self.info.as_deref().map(RawValue::get) == other.info.as_deref().map(RawValue::get)
    }
}

/// A channel's presence counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStats {
    /// Members (subscribed sockets with presence).
    pub sockets: u64,
    /// Distinct users among them (anonymous sockets are not counted).
    pub users: u64,
}

impl PresenceStats {
    /// The counts of `members`.
    pub fn of<'a>(members: impl IntoIterator<Item = &'a Member>) -> Self {
        let mut users = std::collections::HashSet::new();
        let mut sockets = 0;
        for m in members {
            sockets += 1;
            if let Some(u) = &m.user {
                users.insert(u.as_str());
            }
        }
        Self {
            sockets,
            users: users.len() as u64,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

/// Stable error codes carried by `rej` and `subrej` frames (and used by the clients for errors
/// they raise themselves). Applications may use their own codes too.
pub mod codes {
    /// No handler is registered for the topic.
    pub const UNKNOWN_TOPIC: &str = "unknown_topic";
    /// The message did not deserialize into the handler's request type.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The inbound middleware or a parser refused the ask, tell or subscription.
    pub const REFUSED: &str = "refused";
    /// The channel name is empty, too long or has characters outside the allowed set.
    pub const INVALID_CHANNEL: &str = "invalid_channel";
    /// The channel is reserved for the server (`#...`) and is not this socket's own.
    pub const RESERVED_CHANNEL: &str = "reserved_channel";
    /// The handler failed unexpectedly (it panicked); details are in the server log.
    pub const INTERNAL: &str = "internal";
    /// Too many asks of this socket are being handled at once; try again later.
    pub const BUSY: &str = "busy";
    /// The scaler could not be reached; try again later.
    pub const UNAVAILABLE: &str = "unavailable";
    /// The server was removed from the channel by the server (`boot` of a channel).
    pub const BOOTED: &str = "booted";
    /// A per-socket limit was reached (e.g. the maximum number of subscriptions).
    pub const LIMIT: &str = "limit";
    /// A newer `sub` for the same channel arrived before this one was answered; the newer one
    /// gets its own answer.
    pub const SUPERSEDED: &str = "superseded";
    /// An `unsub` for the channel arrived before this `sub` was answered.
    pub const CANCELLED: &str = "cancelled";
    /// A presence request for a channel whose subscription has no presence (the subscription
    /// parser or the server's options did not grant it).
    pub const NO_PRESENCE: &str = "no_presence";
    /// A presence request for a channel this socket is not subscribed to.
    pub const NOT_SUBSCRIBED: &str = "not_subscribed";
    /// Client side: no reply arrived within the ask timeout.
    pub const TIMEOUT: &str = "timeout";
    /// Client side: the connection dropped after the ask was sent; its outcome is unknown.
    pub const DISCONNECTED: &str = "disconnected";
    /// Client side: the offline queue is full.
    pub const QUEUE_FULL: &str = "queue_full";
    /// Client side: the client was closed.
    pub const CLOSED: &str = "closed";
    /// Client side: the frame could not be encoded (message or topic invalid).
    pub const INVALID: &str = "invalid";
    /// Client side: the application gave up on the ask (its `AbortSignal` fired); the server
    /// may still have run the handler.
    pub const ABORTED: &str = "aborted";
    /// The session parser refused the `hello`: no or bad credentials (close
    /// [`close::HANDSHAKE_REFUSED`](super::close::HANDSHAKE_REFUSED) follows).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The session parser refused the `hello`: the credentials are valid but not allowed here
    /// (close [`close::HANDSHAKE_REFUSED`](super::close::HANDSHAKE_REFUSED) follows).
    pub const FORBIDDEN: &str = "forbidden";
}

/// WebSocket close codes used by the server and understood by the clients.
pub mod close {
    /// Normal closure: the peer closed on purpose. Clients do not reconnect.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down; reconnect (to another instance).
    pub const GOING_AWAY: u16 = 1001;
    /// The connection dropped without a close frame (never sent, only reported).
    pub const ABNORMAL: u16 = 1006;
    /// A message larger than the server's maximum was received.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server hit an internal error.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The peer sent a frame that is not valid protocol (bad JSON, unknown kind, missing field,
    /// binary frame, or anything before `hello`). Clients do not reconnect.
    pub const PROTOCOL_ERROR: u16 = 4000;
    /// The client's protocol version is not supported. Clients do not reconnect.
    pub const UNSUPPORTED_VERSION: u16 = 4001;
    /// The socket was booted by the server (`boot` of a socket, user or session). Clients do not
    /// reconnect.
    pub const BOOTED: u16 = 4003;
    /// The socket's outbound queue overflowed: it read too slowly. Clients reconnect and resync.
    pub const SLOW_CONSUMER: u16 = 4004;
    /// No frame arrived within the heartbeat timeout. Clients reconnect and resync.
    pub const HEARTBEAT_TIMEOUT: u16 = 4005;
    /// The handshake did not complete in time (`hello` missing). Clients reconnect.
    pub const HANDSHAKE_TIMEOUT: u16 = 4006;
    /// The handshake was refused: sent by the server after the `error` frame that answers a
    /// `hello` its session parser refused ([`codes::UNAUTHORIZED`](super::codes::UNAUTHORIZED),
    /// [`codes::FORBIDDEN`](super::codes::FORBIDDEN) or the application's code); drivers also
    /// report an upgrade refused with an HTTP client error (a forbidden origin) with this code.
    /// Clients do not reconnect: the same credentials would be refused again.
    pub const HANDSHAKE_REFUSED: u16 = 4010;

    /// Whether a client should reconnect after the connection closed with `code`.
    ///
    /// Normal closure, protocol violations, unsupported versions and boots are final; every
    /// other code (including codes this version does not know) is treated as transient.
    pub fn should_reconnect(code: u16) -> bool {
        !matches!(
            code,
            NORMAL | PROTOCOL_ERROR | UNSUPPORTED_VERSION | BOOTED | HANDSHAKE_REFUSED
        )
    }
}

/// Why a peer's frame could not be decoded. The receiver of such a frame closes the connection
/// with [`close::PROTOCOL_ERROR`].
///
/// Its message (the close reason the client core sends) is built by hand, as are those of the
/// client core's errors: a `thiserror` message with an argument formats it through
/// `core::fmt`'s padding, integer and `dyn Write` machinery, ~3.4 KB of the browser's wasm,
/// which prints nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame is not a JSON object of the expected shape.
    Malformed(String),
    /// The frame's kind (`"t"`) is unknown to this version.
    UnknownKind(String),
    /// A field the frame kind requires is missing.
    MissingField {
        /// The frame kind.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The frame arrived in a state where it is not allowed.
    Unexpected(&'static str),
}

impl ProtocolError {
    /// What [`Display`](fmt::Display) writes, built without `core::fmt`'s machinery (which the
    /// browser's wasm does not carry): the client core's close reason.
    pub fn message(&self) -> String {
        match self {
            Self::Malformed(what) => join(&["malformed frame: ", what]),
            Self::UnknownKind(kind) => join(&["unknown frame kind \"", kind, "\""]),
            Self::MissingField { kind, field } => {
                join(&["frame \"", kind, "\" is missing field \"", field, "\""])
            }
            Self::Unexpected(kind) => join(&["unexpected frame \"", kind, "\""]),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// The parts, one after the other (`[..].concat()` links a generic join: 0.9 KB of wasm).
pub(crate) fn join(parts: &[&str]) -> String {
    let mut out = String::new();
    for part in parts {
        out.push_str(part);
    }
    out
}

impl std::error::Error for ProtocolError {}

/// `n` in decimal, without `core::fmt` (see [`ProtocolError`]).
pub(crate) fn decimal(n: u64) -> String {
    let mut out = String::new();
    push_decimal(&mut out, n);
    out
}

/// Appends `n` in decimal to `out`: no `String` of its own (an allocation per `id` in every
/// `res` the server encoded).
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| char::from(d)));
}

/// Frames a client sends.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
#[non_exhaustive]
pub enum ClientFrame<P = Box<RawValue>> {
    /// First frame on every connection: the client's protocol version.
    Hello {
        /// Protocol version ([`PROTOCOL_VERSION`]).
        v: u32,
        /// Credentials for the server's session parser (a token, or any JSON), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        auth: Option<P>,
    },
    /// A request; the server answers with `res` or `rej` carrying the same id.
    Ask {
        /// Client-chosen id, unique among the connection's pending asks.
        id: u64,
        /// Handler topic.
        topic: String,
        /// Request payload (any JSON).
        msg: P,
    },
    /// A fire-and-forget message to the server's tell handler for `topic`.
    Tell {
        /// Handler topic.
        topic: String,
        /// Payload (any JSON).
        msg: P,
    },
    /// Subscribe to a channel (or resync it when `since` is given).
    Sub {
        /// Client-chosen id echoed in `subok` / `subrej`.
        id: u64,
        /// Channel name.
        ch: String,
        /// Query for the server's subscription parser.
        #[serde(skip_serializing_if = "Option::is_none")]
        q: Option<P>,
        /// Last position the client has seen; the server replays what followed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
        /// Whether the client wants the channel's presence events (`join` / `leave`), when the
        /// subscription has presence.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        presence: bool,
    },
    /// Asks for the members of a channel the socket is subscribed to with presence; answered
    /// by `res` (an array of [`Member`]s) or `rej`, with the same id.
    Presence {
        /// Client-chosen id, from the same space as the asks' ids.
        id: u64,
        /// Channel.
        ch: String,
    },
    /// Asks for a channel's presence counts ([`PresenceStats`]); answered like `presence`.
    #[serde(rename = "pstats")]
    PresenceStats {
        /// Client-chosen id, from the same space as the asks' ids.
        id: u64,
        /// Channel.
        ch: String,
    },
    /// Leave a channel.
    Unsub {
        /// Channel name.
        ch: String,
    },
    /// Heartbeat request; the peer answers `pong`.
    Ping {},
    /// Heartbeat answer.
    Pong {},
}

/// Frames a server sends.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
#[non_exhaustive]
pub enum ServerFrame<P = Box<RawValue>> {
    /// Answer to `hello`: the connection is ready.
    Welcome {
        /// Protocol version the server speaks on this connection.
        v: u32,
        /// This socket's cluster-wide id.
        socket: String,
        /// The user id the session parser gave, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The session id the session parser gave, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        session: Option<String>,
        /// Heartbeat interval in milliseconds: the server pings this often, and a client that
        /// hears nothing for longer than twice this may consider the connection dead.
        hb: u64,
    },
    /// Successful answer to `ask`.
    Res {
        /// The ask's id.
        id: u64,
        /// Response payload.
        msg: P,
    },
    /// Failed answer to `ask`.
    Rej {
        /// The ask's id.
        id: u64,
        /// Stable error code (see [`codes`]) or an application code.
        code: String,
        /// Human-readable reason.
        reason: String,
    },
    /// A message told to this socket by the server.
    Tell {
        /// Topic.
        topic: String,
        /// Payload.
        msg: P,
    },
    /// The subscription is active. Replayed publications (if `since` was given) follow this frame,
    /// then live ones.
    Subok {
        /// The `sub` frame's id.
        id: u64,
        /// Channel.
        ch: String,
        /// The channel's position when the subscription started: the last replayed publication,
        /// or the current head when nothing was replayed.
        pos: Position,
        /// Present when `since` was given: `true` if every publication after `since` follows,
        /// `false` if the history no longer reaches back that far (or its epoch changed).
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Whether the subscription has presence: `presence` and `pstats` requests are
        /// answered, and `join` / `leave` follow if the `sub` asked for them.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        presence: bool,
    },
    /// The subscription was refused.
    Subrej {
        /// The `sub` frame's id.
        id: u64,
        /// Channel.
        ch: String,
        /// Error code.
        code: String,
        /// Reason.
        reason: String,
    },
    /// A publication on a subscribed channel.
    Pub {
        /// Channel.
        ch: String,
        /// Topic.
        topic: String,
        /// Position of this publication.
        pos: Position,
        /// Payload.
        msg: P,
    },
    /// A socket joined the presence of a subscribed channel (sent only to subscriptions that
    /// asked for presence events).
    Join {
        /// Channel.
        ch: String,
        /// The member ([`Member`] as JSON, passed through as is).
        m: P,
    },
    /// A socket left the presence of a subscribed channel.
    Leave {
        /// Channel.
        ch: String,
        /// The member ([`Member`] as JSON, passed through as is).
        m: P,
    },
    /// The server ended a subscription (the channel was booted).
    Unsubbed {
        /// Channel.
        ch: String,
        /// Error code.
        code: String,
        /// Reason.
        reason: String,
    },
    /// A fatal error, sent just before the server closes the connection.
    Error {
        /// Error code.
        code: String,
        /// Reason.
        reason: String,
    },
    /// Heartbeat request.
    Ping {},
    /// Heartbeat answer.
    Pong {},
}

/// The fields of a server frame, as read from its JSON object, before its kind's required
/// fields are checked: what [`ServerFrame::from_envelope`] turns into a frame.
///
/// [`ServerFrame::decode`] fills it from the frame's text; a driver that parses frames itself
/// (the browser's, with `JSON.parse`) fills it from the parsed object, with its payloads in its
/// own [`Payload`] type, and the kind's rules stay here, in one place. A field of the wrong JSON
/// type is malformed to the text decoder; a driver that reads a parsed object may treat it as
/// absent instead (a required one is then missing: a protocol error either way).
#[derive(Debug)]
pub struct Envelope<'a, P> {
    /// The frame kind (`"t"`).
    pub t: Cow<'a, str>,
    /// `v`: the protocol version.
    pub v: Option<u32>,
    /// `id`.
    pub id: Option<u64>,
    /// `topic`.
    pub topic: Option<String>,
    /// `ch`: the channel.
    pub ch: Option<String>,
    /// `pos`.
    pub pos: Option<Position>,
    /// `recovered`.
    pub recovered: Option<bool>,
    /// `presence`.
    pub presence: Option<bool>,
    /// `socket`.
    pub socket: Option<String>,
    /// `user`.
    pub user: Option<String>,
    /// `session`.
    pub session: Option<String>,
    /// `hb`: the heartbeat interval in milliseconds.
    pub hb: Option<u64>,
    /// `code`.
    pub code: Option<String>,
    /// `reason`.
    pub reason: Option<String>,
    /// `msg`, unless absent or `null`.
    pub msg: Option<P>,
    /// `m`: a presence member, unless absent or `null`.
    pub m: Option<P>,
}

/// The flat shape every frame is decoded through: every field any frame kind has (a client
/// frame's own beside a server frame's [`Envelope`]).
///
/// It is filled by a small hand-written reader ([`parse_wire`]) rather than a serde derive: the
/// derive pulls serde's whole typed-deserialization machinery (and float formatting for its
/// error messages) into the browser build. The reader accepts what the derive accepted (unknown
/// keys ignored, repeated keys refused), which the tests check against the derive, with two
/// documented differences:
///
/// - a frame, and a position in it, must be a JSON object (docs/PROTOCOL.md); the derive also
///   took an array of the fields in order, which no peer sends and which let a malformed frame
///   pass as a valid one;
/// - `v` (the protocol version) is any non-negative integer, saturated to `u32::MAX` beyond
///   `u32`: a version nobody speaks, so a `hello` announcing it is answered
///   `unsupported_version` (close 4001) rather than `protocol` (4000).
#[derive(Debug)]
struct Wire<'a> {
    env: Envelope<'a, &'a RawValue>,
    q: Option<&'a RawValue>,
    since: Option<Position>,
    auth: Option<&'a RawValue>,
}

/// The keys of [`Wire`], in field order.
const WIRE_KEYS: [&str; 19] = [
    "t",
    "v",
    "id",
    "topic",
    "msg",
    "ch",
    "q",
    "since",
    "pos",
    "recovered",
    "socket",
    "user",
    "session",
    "hb",
    "code",
    "reason",
    "presence",
    "m",
    "auth",
];

/// The payloads among [`WIRE_KEYS`] (`msg`, `q`, `m`, `auth`), kept as raw JSON.
const WIRE_PAYLOADS: u32 = 1 << 4 | 1 << 6 | 1 << 17 | 1 << 18;

fn malformed(what: &str, at: usize) -> ProtocolError {
    ProtocolError::Malformed(format!("{what} at byte {at}"))
}

/// A short description of a JSON syntax error, without formatting serde_json's own message
/// (which would link its float formatting into the browser build).
fn json_error(e: &serde_json::Error, offset: usize) -> ProtocolError {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Eof => "unexpected end of JSON",
        Category::Syntax => "invalid JSON",
        Category::Data | Category::Io => "invalid JSON value",
    };
    ProtocolError::Malformed(format!(
        "{what} (line {}, column {}) at byte {offset}",
        e.line(),
        e.column()
    ))
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

/// Where the string literal whose opening quote is at `i` ends (after its closing quote), found
/// by its quotes and backslashes only: [`string`] then checks and unescapes it.
fn string_end(b: &[u8], mut i: usize) -> usize {
    i += 1;
    while let Some(&c) = b.get(i) {
        i += 1;
        match c {
            b'\\' => i += 1,
            b'"' => return i,
            _ => {}
        }
    }
    b.len()
}

/// Where the JSON number at `i` ends, by JSON's grammar (`-? (0 | [1-9][0-9]*) (. [0-9]+)?
/// ([eE] [+-]? [0-9]+)?`); `None` if there is none.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: usize| {
        i + b
            .get(i..)
            .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i),
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

/// A field's value in a frame, as JSON text. The frame reader reads the values of the fields
/// it decodes itself when they are strings, numbers or literals ([`Val::Text`]: found by their
/// grammar, and checked by whoever decodes them, [`string`], [`opt_u64`], ...); serde_json reads
/// everything else: objects and arrays, unknown fields, and the payloads, which stay raw JSON
/// ([`Val::Raw`]). serde_json per value took ~1 000 instructions, most of an `ask`'s decoding
/// (callgrind, `sss-bench rpc`).
#[derive(Clone, Copy, Debug)]
enum Val<'a> {
    Text(&'a str),
    Raw(&'a RawValue),
}

impl<'a> Val<'a> {
    fn text(self) -> &'a str {
        match self {
            Self::Text(t) => t,
            Self::Raw(r) => r.get(),
        }
    }
}

/// A cursor over one JSON text.
struct Reader<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Reader<'a> {
    /// The next byte after whitespace (not consumed).
    fn peek(&mut self) -> Option<u8> {
        let b = self.s.as_bytes();
        while b.get(self.i).copied().is_some_and(is_ws) {
            self.i += 1;
        }
        b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(c);
        self.i += usize::from(found);
        found
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<(), ProtocolError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(malformed(what, self.i))
        }
    }

    /// One JSON value, borrowed from the text. serde_json finds where it ends and checks it in
    /// one pass: finding the end by brackets and quotes first, then checking the slice, was two
    /// passes, the first 6 % of the server's CPU per tell (`sss-bench tells`).
    fn value(&mut self) -> Result<&'a RawValue, ProtocolError> {
        if self.peek().is_none() {
            return Err(malformed("expected a value", self.i));
        }
        let start = self.i;
        let rest = self.s.get(start..).unwrap_or_default();
        // A stream of values: the first one, and where it ended (what follows is this
        // reader's to check).
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<&RawValue>();
        match values.next() {
            Some(Ok(v)) => {
                self.i = start + values.byte_offset();
                Ok(v)
            }
            Some(Err(e)) => Err(json_error(&e, start)),
            None => Err(malformed("expected a value", start)),
        }
    }

    /// One value of a field the caller decodes: a string, a number or a literal as text (see
    /// [`Val`]), anything else through [`value`](Self::value).
    fn scalar(&mut self) -> Result<Val<'a>, ProtocolError> {
        let b = self.s.as_bytes();
        let start = match self.peek() {
            Some(_) => self.i,
            None => return Err(malformed("expected a value", self.i)),
        };
        let rest = b.get(start..).unwrap_or_default();
        let end = match rest.first() {
            Some(b'"') => string_end(b, start),
            Some(b'-' | b'0'..=b'9') => {
                number_end(b, start).ok_or_else(|| malformed("invalid number", start))?
            }
            _ if rest.starts_with(b"true") || rest.starts_with(b"null") => start + 4,
            _ if rest.starts_with(b"false") => start + 5,
            _ => return self.value().map(Val::Raw),
        };
        self.i = end;
        Ok(Val::Text(self.s.get(start..end).unwrap_or_default()))
    }

    /// An object's key.
    fn key(&mut self) -> Result<Cow<'a, str>, ProtocolError> {
        if self.peek() != Some(b'"') {
            return Err(malformed("expected a key", self.i));
        }
        let start = self.i;
        self.i = string_end(self.s.as_bytes(), start);
        string(self.s.get(start..self.i).unwrap_or_default(), start)
    }
}

/// The values of the JSON object `json` for these `keys` (unknown keys are checked and
/// ignored, a repeated key is an error); the keys in the `raw` mask (bit `n` for `keys[n]`) are
/// payloads, read by serde_json. `json` may have whitespace around the object, nothing else.
/// Anything but an object (an array of the values in order included) is malformed.
fn fields<'a, const N: usize>(
    json: &'a str,
    keys: &[&str; N],
    raw: u32,
) -> Result<[Option<Val<'a>>; N], ProtocolError> {
    let mut out = [None; N];
    let mut r = Reader { s: json, i: 0 };
    r.expect(b'{', "expected an object")?;
    if !r.eat(b'}') {
        loop {
            let at = r.i;
            let key = r.key()?;
            r.expect(b':', "expected `:`")?;
            let n = keys.iter().position(|k| *k == key);
            let value = match n {
                Some(n) if raw & 1 << n == 0 => r.scalar()?,
                _ => Val::Raw(r.value()?),
            };
            if let Some(n) = n {
                if out[n].replace(value).is_some() {
                    return Err(malformed("repeated key", at));
                }
            }
            if r.eat(b'}') {
                break;
            }
            r.expect(b',', "expected `,` or `}`")?;
        }
    }
    match r.peek() {
        None => Ok(out),
        Some(_) => Err(malformed("trailing characters", r.i)),
    }
}

/// Where a value starts in the frame (for error messages).
fn offset(frame: &str, v: Option<Val<'_>>) -> usize {
    v.map_or(0, |v| {
        (v.text().as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize)
    })
}

/// A JSON string literal (its end found by [`string_end`]), checked and unescaped with the same
/// rules as serde_json for strings: no control characters, valid escapes, surrogates paired.
fn string(lit: &str, at: usize) -> Result<Cow<'_, str>, ProtocolError> {
    let bad = || malformed("invalid string", at);
    let body = lit
        .strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .filter(|_| lit.len() >= 2)
        .ok_or_else(bad)?;
    // One pass for the common case: nothing to unescape or refuse.
    if !body.bytes().any(|b| b < 0x20 || b == b'\\') {
        return Ok(Cow::Borrowed(body));
    }
    if body.bytes().any(|b| b < 0x20) {
        return Err(bad());
    }
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    let hex = |chars: &mut std::str::Chars<'_>| -> Option<u32> {
        let mut n = 0;
        for _ in 0..4 {
            n = n * 16 + chars.next()?.to_digit(16)?;
        }
        Some(n)
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next().ok_or_else(bad)? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let n = hex(&mut chars).ok_or_else(bad)?;
                let n = if (0xD800..0xDC00).contains(&n) {
                    let low = match (chars.next(), chars.next()) {
                        (Some('\\'), Some('u')) => hex(&mut chars).ok_or_else(bad)?,
                        _ => return Err(bad()),
                    };
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(bad());
                    }
                    0x1_0000 + ((n - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    n
                };
                char::from_u32(n).ok_or_else(bad)?
            }
            _ => return Err(bad()),
        });
    }
    Ok(Cow::Owned(out))
}

/// `None` for a missing field or `null`.
fn non_null(v: Option<Val<'_>>) -> Option<Val<'_>> {
    v.filter(|v| v.text() != "null")
}

/// A payload: `None` for a missing field or `null`.
fn payload(v: Option<Val<'_>>) -> Option<&RawValue> {
    match non_null(v)? {
        Val::Raw(r) => Some(r),
        // Payload keys are read by serde_json (see `fields`): not reached.
        Val::Text(t) => serde_json::from_str(t).ok(),
    }
}

fn opt_string<'a>(
    frame: &'a str,
    v: Option<Val<'a>>,
) -> Result<Option<Cow<'a, str>>, ProtocolError> {
    non_null(v)
        .map(|v| string(v.text(), offset(frame, Some(v))))
        .transpose()
}

/// A non-negative integer that fits in a `u64` (serde_json refuses `-0`, fractions and
/// exponents for integers too).
fn opt_u64(frame: &str, v: Option<Val<'_>>) -> Result<Option<u64>, ProtocolError> {
    let Some(v) = non_null(v) else {
        return Ok(None);
    };
    let digits = v.text();
    let mut n: u64 = 0;
    for b in digits.bytes() {
        n = b
            .is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
            .ok_or_else(|| malformed("expected a non-negative integer", offset(frame, Some(v))))?;
    }
    Ok(Some(n))
}

/// A protocol version: any non-negative integer, read as `u32::MAX` beyond `u32` (even beyond
/// `u64`). Such a version is one nobody speaks: a `hello` with it must reach the server as a
/// `hello` (answered `unsupported_version`, close 4001), not as a malformed frame (4000).
fn opt_version(frame: &str, v: Option<Val<'_>>) -> Result<Option<u32>, ProtocolError> {
    let Some(v) = non_null(v) else {
        return Ok(None);
    };
    let digits = v.text();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(
            "expected a non-negative integer",
            offset(frame, Some(v)),
        ));
    }
    // Only digits: parsing fails on overflow alone.
    Ok(Some(digits.parse().unwrap_or(u32::MAX)))
}

fn opt_bool(frame: &str, v: Option<Val<'_>>) -> Result<Option<bool>, ProtocolError> {
    match non_null(v).map(Val::text) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(malformed("expected a boolean", offset(frame, v))),
    }
}

fn opt_position(frame: &str, v: Option<Val<'_>>) -> Result<Option<Position>, ProtocolError> {
    let Some(v) = non_null(v) else {
        return Ok(None);
    };
    let [e, s] = fields(v.text(), &["e", "s"], 0)?;
    let at = offset(frame, Some(v));
    let missing = || malformed("position needs `e` and `s`", at);
    Ok(Some(Position {
        epoch: opt_string(frame, e)?.ok_or_else(missing)?.into_owned(),
        seq: opt_u64(frame, s)?.ok_or_else(missing)?,
    }))
}

fn parse_wire(frame: &str) -> Result<Wire<'_>, ProtocolError> {
    let [t, v, id, topic, msg, ch, q, since, pos, recovered, socket, user, session, hb, code, reason, presence, m, auth] =
        fields(frame, &WIRE_KEYS, WIRE_PAYLOADS)?;
    let f = frame;
    let env = Envelope {
        t: opt_string(f, t)?.ok_or_else(|| malformed("missing frame kind `t`", 0))?,
        v: opt_version(f, v)?,
        id: opt_u64(f, id)?,
        topic: opt_string(f, topic)?.map(Cow::into_owned),
        msg: payload(msg),
        ch: opt_string(f, ch)?.map(Cow::into_owned),
        pos: opt_position(f, pos)?,
        recovered: opt_bool(f, recovered)?,
        socket: opt_string(f, socket)?.map(Cow::into_owned),
        user: opt_string(f, user)?.map(Cow::into_owned),
        session: opt_string(f, session)?.map(Cow::into_owned),
        hb: opt_u64(f, hb)?,
        code: opt_string(f, code)?.map(Cow::into_owned),
        reason: opt_string(f, reason)?.map(Cow::into_owned),
        presence: opt_bool(f, presence)?,
        m: payload(m),
    };
    Ok(Wire {
        env,
        q: payload(q),
        since: opt_position(f, since)?,
        auth: payload(auth),
    })
}

fn raw(v: Option<&RawValue>) -> Box<RawValue> {
    v.map_or_else(Payload::null, RawValue::to_owned)
}

fn req<T>(v: Option<T>, kind: &'static str, field: &'static str) -> Result<T, ProtocolError> {
    v.ok_or(ProtocolError::MissingField { kind, field })
}

impl ClientFrame {
    /// Decodes one frame sent by a client.
    pub fn decode(frame: &str) -> Result<Self, ProtocolError> {
        let Wire {
            env: w,
            q,
            since,
            auth,
        } = parse_wire(frame)?;
        Ok(match &*w.t {
            "hello" => Self::Hello {
                v: req(w.v, "hello", "v")?,
                auth: auth.map(RawValue::to_owned),
            },
            "ask" => Self::Ask {
                id: req(w.id, "ask", "id")?,
                topic: req(w.topic, "ask", "topic")?,
                msg: raw(w.msg),
            },
            "tell" => Self::Tell {
                topic: req(w.topic, "tell", "topic")?,
                msg: raw(w.msg),
            },
            "sub" => Self::Sub {
                id: req(w.id, "sub", "id")?,
                ch: req(w.ch, "sub", "ch")?,
                q: q.map(RawValue::to_owned),
                since,
                presence: w.presence.unwrap_or(false),
            },
            "presence" => Self::Presence {
                id: req(w.id, "presence", "id")?,
                ch: req(w.ch, "presence", "ch")?,
            },
            "pstats" => Self::PresenceStats {
                id: req(w.id, "pstats", "id")?,
                ch: req(w.ch, "pstats", "ch")?,
            },
            "unsub" => Self::Unsub {
                ch: req(w.ch, "unsub", "ch")?,
            },
            "ping" => Self::Ping {},
            "pong" => Self::Pong {},
            other => return Err(ProtocolError::UnknownKind(other.to_owned())),
        })
    }
}

impl<P: Payload> ClientFrame<P> {
    /// Encodes the frame as the JSON text of one WebSocket text frame.
    ///
    /// Written out by hand (byte for byte what the `Serialize` derive gives, which the tests
    /// check): the browser build then carries no serde serializer.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64);
        let kind = match self {
            Self::Hello { .. } => "hello",
            Self::Ask { .. } => "ask",
            Self::Tell { .. } => "tell",
            Self::Sub { .. } => "sub",
            Self::Presence { .. } => "presence",
            Self::PresenceStats { .. } => "pstats",
            Self::Unsub { .. } => "unsub",
            Self::Ping {} => "ping",
            Self::Pong {} => "pong",
        };
        out.push_str("{\"t\":");
        push_str(&mut out, kind);
        match self {
            Self::Hello { v, auth } => {
                push_u64(&mut out, "v", (*v).into());
                if let Some(auth) = auth {
                    push_raw(&mut out, "auth", auth);
                }
            }
            Self::Ask { id, topic, msg } => {
                push_u64(&mut out, "id", *id);
                push_key(&mut out, "topic");
                push_str(&mut out, topic);
                push_raw(&mut out, "msg", msg);
            }
            Self::Tell { topic, msg } => {
                push_key(&mut out, "topic");
                push_str(&mut out, topic);
                push_raw(&mut out, "msg", msg);
            }
            Self::Sub {
                id,
                ch,
                q,
                since,
                presence,
            } => {
                push_u64(&mut out, "id", *id);
                push_key(&mut out, "ch");
                push_str(&mut out, ch);
                if let Some(q) = q {
                    push_raw(&mut out, "q", q);
                }
                if let Some(since) = since {
                    push_position(&mut out, "since", since);
                }
                if *presence {
                    out.push_str(",\"presence\":true");
                }
            }
            Self::Presence { id, ch } | Self::PresenceStats { id, ch } => {
                push_u64(&mut out, "id", *id);
                push_key(&mut out, "ch");
                push_str(&mut out, ch);
            }
            Self::Unsub { ch } => {
                push_key(&mut out, "ch");
                push_str(&mut out, ch);
            }
            Self::Ping {} | Self::Pong {} => {}
        }
        out.push('}');
        out
    }
}

/// `,"key":`.
fn push_key(out: &mut String, key: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
}

fn push_u64(out: &mut String, key: &str, n: u64) {
    push_key(out, key);
    push_decimal(out, n);
}

/// `,"key":{"e":…,"s":…}`.
fn push_position(out: &mut String, key: &str, pos: &Position) {
    push_key(out, key);
    out.push_str("{\"e\":");
    push_str(out, &pos.epoch);
    push_u64(out, "s", pos.seq);
    out.push('}');
}

fn push_raw(out: &mut String, key: &str, raw: &impl Payload) {
    push_key(out, key);
    raw.write_json(out);
}

/// A JSON string literal, escaped exactly as serde_json escapes it.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    while let Some(i) = rest.find(|c: char| c < ' ' || c == '"' || c == '\\') {
        out.push_str(&rest[..i]);
        let c = rest.as_bytes()[i];
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(c >> 4)]));
                out.push(char::from(HEX[usize::from(c & 0xf)]));
            }
        }
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

impl ServerFrame {
    /// Decodes one frame sent by a server.
    pub fn decode(frame: &str) -> Result<Self, ProtocolError> {
        let w = parse_wire(frame)?.env;
        Self::from_envelope(Envelope {
            t: w.t,
            v: w.v,
            id: w.id,
            topic: w.topic,
            ch: w.ch,
            pos: w.pos,
            recovered: w.recovered,
            presence: w.presence,
            socket: w.socket,
            user: w.user,
            session: w.session,
            hb: w.hb,
            code: w.code,
            reason: w.reason,
            msg: w.msg.map(RawValue::to_owned),
            m: w.m.map(RawValue::to_owned),
        })
    }

    /// Encodes the frame as the JSON text of one WebSocket text frame.
    ///
    /// The frames of the hot paths (`res`, `tell`, `pub`) are written out by hand, byte for
    /// byte what the `Serialize` derive gives (the tests check): serde_json's serializer took
    /// ~1 200 instructions per `res`, growing its buffer twice on the way (callgrind,
    /// `sss-bench rpc`).
    pub fn encode(&self) -> String {
        match self {
            Self::Res { id, msg } => {
                // Sized exactly: a `String` with spare room becomes `Bytes` through one more
                // allocation (its shared header), and one frame per ask paid it.
                let digits = id.checked_ilog10().unwrap_or(0) as usize + 1;
                let len = r#"{"t":"res","id":,"msg":}"#.len() + digits + msg.get().len();
                let mut out = String::with_capacity(len);
                out.push_str("{\"t\":\"res\"");
                push_u64(&mut out, "id", *id);
                push_raw(&mut out, "msg", msg);
                out.push('}');
                out
            }
            Self::Tell { topic, msg } => encode_tell(topic, msg),
            Self::Pub {
                ch,
                topic,
                pos,
                msg,
            } => encode_pub(ch, topic, pos, msg),
            _ => encode(self),
        }
    }
}

impl<P: Payload> ServerFrame<P> {
    /// The frame of these fields, once its kind's required fields are checked
    /// (the table of docs/PROTOCOL.md; a missing `msg` is `null`).
    pub fn from_envelope(w: Envelope<'_, P>) -> Result<Self, ProtocolError> {
        let Some(k) = SERVER_KINDS.iter().position(|(kind, _)| *kind == w.t) else {
            return Err(ProtocolError::UnknownKind(w.t.into_owned()));
        };
        let (kind, required) = SERVER_KINDS[k];
        let present = [
            w.v.is_some(),
            w.id.is_some(),
            w.ch.is_some(),
            w.topic.is_some(),
            w.pos.is_some(),
            w.socket.is_some(),
            w.hb.is_some(),
            w.code.is_some(),
            w.m.is_some(),
        ];
        if let Some(f) = (0..FIELDS.len()).find(|&f| required & 1 << f != 0 && !present[f]) {
            let field = FIELDS[f];
            return Err(ProtocolError::MissingField { kind, field });
        }
        // Checked: the defaults below stand for nothing. (Built without an error path per
        // field, this is a fifth of the size of a match of `?`s in the browser's wasm.)
        let id = w.id.unwrap_or_default();
        let (ch, topic) = (w.ch.unwrap_or_default(), w.topic.unwrap_or_default());
        let code = w.code.unwrap_or_default();
        let reason = w.reason.unwrap_or_default();
        let pos = w.pos.unwrap_or_default();
        let msg = w.msg.unwrap_or_else(P::null);
        let m = w.m.unwrap_or_else(P::null);
        Ok(match k {
            0 => Self::Welcome {
                v: w.v.unwrap_or_default(),
                socket: w.socket.unwrap_or_default(),
                user: w.user,
                session: w.session,
                hb: w.hb.unwrap_or_default(),
            },
            1 => Self::Res { id, msg },
            2 => Self::Rej { id, code, reason },
            3 => Self::Tell { topic, msg },
            4 => Self::Subok {
                id,
                ch,
                pos,
                recovered: w.recovered,
                presence: w.presence.unwrap_or(false),
            },
            5 => Self::Subrej {
                id,
                ch,
                code,
                reason,
            },
            6 => Self::Pub {
                ch,
                topic,
                pos,
                msg,
            },
            7 => Self::Join { ch, m },
            8 => Self::Leave { ch, m },
            9 => Self::Unsubbed { ch, code, reason },
            10 => Self::Error { code, reason },
            11 => Self::Ping {},
            _ => Self::Pong {},
        })
    }
}

/// The fields a server frame kind may require, in the order they are checked: bit `i` of a
/// [`SERVER_KINDS`] mask is `FIELDS[i]`.
const FIELDS: [&str; 9] = ["v", "id", "ch", "topic", "pos", "socket", "hb", "code", "m"];
const V: u16 = 1;
const ID: u16 = 1 << 1;
const CH: u16 = 1 << 2;
const TOPIC: u16 = 1 << 3;
const POS: u16 = 1 << 4;
const SOCKET: u16 = 1 << 5;
const HB: u16 = 1 << 6;
const CODE: u16 = 1 << 7;
const M: u16 = 1 << 8;

/// Every server frame kind, with the fields it requires (docs/PROTOCOL.md), in the order of
/// [`ServerFrame::from_envelope`]'s match.
const SERVER_KINDS: [(&str, u16); 13] = [
    ("welcome", V | SOCKET | HB),
    ("res", ID),
    ("rej", ID | CODE),
    ("tell", TOPIC),
    ("subok", ID | CH | POS),
    ("subrej", ID | CH | CODE),
    ("pub", CH | TOPIC | POS),
    ("join", CH | M),
    ("leave", CH | M),
    ("unsubbed", CH | CODE),
    ("error", CODE),
    ("ping", 0),
    ("pong", 0),
];

/// Encodes a `pub` frame from borrowed parts: the server's fan-out path encodes each publication
/// once with this and hands the same bytes to every local subscriber.
pub fn encode_pub(ch: &str, topic: &str, pos: &Position, msg: &RawValue) -> String {
    let len = 64 + ch.len() + topic.len() + pos.epoch.len() + msg.get().len();
    let mut out = String::with_capacity(len);
    out.push_str("{\"t\":\"pub\"");
    push_key(&mut out, "ch");
    push_str(&mut out, ch);
    push_key(&mut out, "topic");
    push_str(&mut out, topic);
    push_position(&mut out, "pos", pos);
    push_key(&mut out, "msg");
    out.push_str(msg.get());
    out.push('}');
    out
}

/// Encodes a server `tell` frame from borrowed parts.
pub fn encode_tell(topic: &str, msg: &RawValue) -> String {
    let mut out = String::with_capacity(40 + topic.len() + msg.get().len());
    out.push_str("{\"t\":\"tell\"");
    push_key(&mut out, "topic");
    push_str(&mut out, topic);
    push_key(&mut out, "msg");
    out.push_str(msg.get());
    out.push('}');
    out
}

fn encode<T: Serialize>(frame: &T) -> String {
    // Frames hold only strings, integers, booleans and already-valid raw JSON, so serializing
    // them cannot fail.
    serde_json::to_string(frame).unwrap_or_else(|e| unreachable!("frame serialization: {e}"))
}

/// Parses `json` as a raw JSON payload, checking only that it is valid JSON.
pub fn raw_json(json: impl Into<String>) -> Result<Box<RawValue>, ProtocolError> {
    RawValue::from_string(json.into()).map_err(|e| json_error(&e, 0))
}

/// Serializes any value as a raw JSON payload.
pub fn to_raw<T: Serialize + ?Sized>(value: &T) -> Result<Box<RawValue>, serde_json::Error> {
    serde_json::value::to_raw_value(value)
}

/// What kind of channel a valid channel name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind<'a> {
    /// An ordinary channel, checked by the server's subscription parser.
    Public,
    /// `#user:<id>`: the channel of one user id.
    User(&'a str),
    /// `#session:<id>`: the channel of one browser session.
    Session(&'a str),
    /// Any other `#...` name: reserved, never subscribable by clients.
    Reserved,
}

/// Why a channel name was rejected. (`Display` by hand: see [`ProtocolError`].)
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelError {
    /// Empty name.
    Empty,
    /// Longer than [`MAX_CHANNEL_LEN`] bytes.
    TooLong,
    /// A character outside `A-Z a-z 0-9 _ - . : @ / = + ! ~ #`.
    BadChar(char),
}

impl ChannelError {
    /// What [`Display`](fmt::Display) writes (see [`ProtocolError::message`]).
    pub fn message(&self) -> String {
        match self {
            Self::Empty => "channel name is empty".to_owned(),
            Self::TooLong => join(&[
                "channel name is longer than ",
                &decimal(MAX_CHANNEL_LEN as u64),
                " bytes",
            ]),
            Self::BadChar(c) => join(&[
                "channel name has the character '",
                c.encode_utf8(&mut [0; 4]),
                "', outside A-Z a-z 0-9 and _-.:@/=+!~#",
            ]),
        }
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ChannelError {}

/// Whether `c` may appear in a channel name.
fn channel_char(c: char) -> bool {
    // A `match`, not `"_-.:@/=+!~#".contains(c)`: that links a substring searcher (1.4 KB of
    // the browser's wasm).
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '_' | '-' | '.' | ':' | '@' | '/' | '=' | '+' | '!' | '~' | '#'
        )
}

/// Validates a channel name and says what kind of channel it is.
///
/// Names are 1 to [`MAX_CHANNEL_LEN`] bytes of `A-Z a-z 0-9 _ - . : @ / = + ! ~ #`. Names
/// starting with `#` are reserved for the server: `#user:<id>` and `#session:<id>` are the
/// automatic user and session channels.
pub fn classify_channel(name: &str) -> Result<ChannelKind<'_>, ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    if let Some(c) = name.chars().find(|&c| !channel_char(c)) {
        return Err(ChannelError::BadChar(c));
    }
    if !name.starts_with(RESERVED_PREFIX) {
        return Ok(ChannelKind::Public);
    }
    if let Some(user) = name.strip_prefix(USER_CHANNEL_PREFIX) {
        if !user.is_empty() {
            return Ok(ChannelKind::User(user));
        }
    }
    if let Some(session) = name.strip_prefix(SESSION_CHANNEL_PREFIX) {
        if !session.is_empty() {
            return Ok(ChannelKind::Session(session));
        }
    }
    Ok(ChannelKind::Reserved)
}

/// The channel of a user id.
pub fn user_channel(user: &str) -> String {
    format!("{USER_CHANNEL_PREFIX}{user}")
}

/// The channel of a session id.
pub fn session_channel(session: &str) -> String {
    format!("{SESSION_CHANNEL_PREFIX}{session}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_client(f: ClientFrame) -> ClientFrame {
        ClientFrame::decode(&f.encode()).expect("decodes")
    }

    #[test]
    fn client_frames_roundtrip() {
        let msg = raw_json(r#"{"a":[1,2,"x"]}"#).expect("json");
        match roundtrip_client(ClientFrame::Ask {
            id: 7,
            topic: "add".into(),
            msg: msg.clone(),
        }) {
            ClientFrame::Ask { id, topic, msg: m } => {
                assert_eq!((id, topic.as_str(), m.get()), (7, "add", msg.get()));
            }
            other => panic!("{other:?}"),
        }
        match roundtrip_client(ClientFrame::Sub {
            id: 3,
            ch: "room:1".into(),
            q: Some(msg.clone()),
            since: Some(Position::new("ep", 41)),
            presence: true,
        }) {
            ClientFrame::Sub {
                id,
                ch,
                q,
                since,
                presence,
            } => {
                assert!(presence);
                assert_eq!(id, 3);
                assert_eq!(ch, "room:1");
                assert_eq!(q.map(|q| q.get().to_owned()), Some(msg.get().to_owned()));
                assert_eq!(since, Some(Position::new("ep", 41)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            roundtrip_client(ClientFrame::Hello { v: 1, auth: None }),
            ClientFrame::Hello { v: 1, auth: None }
        ));
    }

    #[test]
    fn documented_examples_decode() {
        let f = ServerFrame::decode(
            r#"{"t":"pub","ch":"room:1","topic":"msg","pos":{"e":"k3x","s":12},"msg":{"text":"hi"}}"#,
        )
        .expect("pub");
        match f {
            ServerFrame::Pub {
                ch,
                topic,
                pos,
                msg,
            } => {
                assert_eq!(ch, "room:1");
                assert_eq!(topic, "msg");
                assert_eq!(pos, Position::new("k3x", 12));
                assert_eq!(msg.get(), r#"{"text":"hi"}"#);
            }
            other => panic!("{other:?}"),
        }
        let f = ServerFrame::decode(
            r#"{"t":"join","ch":"room:lobby","m":{"socket":"6f1c-17","user":"ann","info":{"name":"Ann"}}}"#,
        )
        .expect("join");
        match f {
            ServerFrame::Join { ch, m } => {
                assert_eq!(ch, "room:lobby");
                let m: Member = serde_json::from_str(m.get()).expect("member");
                assert_eq!(m.user.as_deref(), Some("ann"));
                assert_eq!(
                    m.info.map(|i| i.get().to_owned()).as_deref(),
                    Some(r#"{"name":"Ann"}"#)
                );
            }
            other => panic!("{other:?}"),
        }
        let f = ServerFrame::decode(r#"{"t":"rej","id":4,"code":"unknown_topic","reason":"no"}"#)
            .expect("rej");
        assert!(matches!(f, ServerFrame::Rej { id: 4, ref code, .. } if code == "unknown_topic"));
    }

    #[test]
    fn borrowed_encoders_match_the_frames() {
        let msg = raw_json(r#"{"x":1}"#).expect("json");
        let pos = Position::new("e1", 9);
        let owned = ServerFrame::Pub {
            ch: "c".into(),
            topic: "t".into(),
            pos: pos.clone(),
            msg: msg.clone(),
        };
        assert_eq!(encode_pub("c", "t", &pos, &msg), owned.encode());
        let tell = ServerFrame::Tell {
            topic: "t".into(),
            msg: msg.clone(),
        };
        assert_eq!(encode_tell("t", &msg), tell.encode());
    }

    #[test]
    fn missing_msg_is_null() {
        match ClientFrame::decode(r#"{"t":"tell","topic":"x"}"#).expect("tell") {
            ClientFrame::Tell { msg, .. } => assert_eq!(msg.get(), "null"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            "",
            "nope",
            "[]",
            "{}",
            r#"{"t":1}"#,
            r#"{"t":"ask","topic":"x"}"#,
            r#"{"t":"ask","id":-1,"topic":"x"}"#,
            r#"{"t":"sub","id":1}"#,
            r#"{"t":"what"}"#,
            r#"{"t":"ask","id":1,"topic":"x","msg":{"#,
        ] {
            assert!(
                ClientFrame::decode(bad).is_err(),
                "{bad:?} should be refused"
            );
            assert!(
                ServerFrame::decode(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert_eq!(
            ClientFrame::decode(r#"{"t":"what"}"#).unwrap_err(),
            ProtocolError::UnknownKind("what".into())
        );
        assert_eq!(
            ClientFrame::decode(r#"{"t":"ask","topic":"x"}"#).unwrap_err(),
            ProtocolError::MissingField {
                kind: "ask",
                field: "id"
            }
        );
    }

    /// Every truncation and thousands of byte mutations of valid frames decode to a frame or an
    /// error, never a panic (a deterministic stand-in for fuzzing the decoder).
    #[test]
    fn mutated_frames_never_panic() {
        let frames = [
            r#"{"t":"welcome","v":1,"socket":"s-1","user":"ann","session":"x","hb":25000}"#,
            r#"{"t":"hello","v":1,"auth":{"token":"t-1","scopes":["a"]}}"#,
            r#"{"t":"pub","ch":"room:1","topic":"msg","pos":{"e":"k3x","s":12},"msg":{"a":[1,2.5,"\u00e9"]}}"#,
            r#"{"t":"subok","id":3,"ch":"c","pos":{"e":"e","s":0},"recovered":false}"#,
            r#"{"t":"sub","id":8,"ch":"room:lobby","q":{"password":"x"},"since":{"e":"8c","s":41}}"#,
            r#"{"t":"rej","id":7,"code":"unknown_topic","reason":"no"}"#,
        ];
        for frame in frames {
            for text in variants(
                frame,
                b"{}[]\\\":,0123456789aenrtuz-.",
                0x9e37_79b9_7f4a_7c15,
                2000,
            ) {
                let _ = ClientFrame::decode(&text);
                let _ = ServerFrame::decode(&text);
            }
        }
    }

    /// Every truncation of `frame`, then `count` copies with one to three random byte edits
    /// (replace, insert or remove, with bytes from `alphabet`) that are still UTF-8. Seeded:
    /// the same cases every run.
    fn variants(frame: &str, alphabet: &[u8], seed: u64, count: usize) -> Vec<String> {
        let mut state = seed;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut out: Vec<String> = (0..frame.len())
            .filter_map(|cut| frame.get(..cut).map(str::to_owned))
            .collect();
        for _ in 0..count {
            let mut bytes = frame.as_bytes().to_vec();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % bytes.len();
                let c = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 => bytes[i] = c,
                    1 => bytes.insert(i, c),
                    _ => {
                        bytes.remove(i);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            if let Ok(text) = String::from_utf8(bytes) {
                out.push(text);
            }
        }
        out
    }

    /// The serde derive the hand-written frame reader replaced: the reference it must match
    /// (but for the differences documented on [`Wire`](super::Wire)).
    mod oracle {
        use std::borrow::Cow;

        use serde::Deserialize;
        use serde_json::value::RawValue;

        use crate::protocol::Position;

        // Its fields are read through `Debug` only.
        #[allow(dead_code)]
        #[derive(Debug, Deserialize)]
        pub(super) struct Wire<'a> {
            #[serde(borrow)]
            t: Cow<'a, str>,
            /// Read as wide as serde goes; saturated to `u32` before comparing.
            pub(super) v: Option<u64>,
            id: Option<u64>,
            #[serde(borrow)]
            topic: Option<Cow<'a, str>>,
            #[serde(borrow)]
            msg: Option<&'a RawValue>,
            #[serde(borrow)]
            ch: Option<Cow<'a, str>>,
            #[serde(borrow)]
            q: Option<&'a RawValue>,
            since: Option<Position>,
            pos: Option<Position>,
            recovered: Option<bool>,
            #[serde(borrow)]
            socket: Option<Cow<'a, str>>,
            #[serde(borrow)]
            user: Option<Cow<'a, str>>,
            #[serde(borrow)]
            session: Option<Cow<'a, str>>,
            hb: Option<u64>,
            #[serde(borrow)]
            code: Option<Cow<'a, str>>,
            #[serde(borrow)]
            reason: Option<Cow<'a, str>>,
            presence: Option<bool>,
            #[serde(borrow)]
            m: Option<&'a RawValue>,
            #[serde(borrow)]
            auth: Option<&'a RawValue>,
        }
    }

    /// The first documented difference: the derive also takes an array where an object is
    /// expected (the frame, a position).
    fn array_for_object(text: &str) -> bool {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return false;
        };
        v.is_array()
            || ["since", "pos"]
                .iter()
                .any(|k| v.get(k).is_some_and(serde_json::Value::is_array))
    }

    /// The second one: a version beyond `u64` (which serde_json reads as a float).
    fn version_beyond_u64(text: &str) -> bool {
        #[derive(Deserialize)]
        struct V<'a> {
            #[serde(borrow)]
            v: Option<&'a RawValue>,
        }
        serde_json::from_str::<V<'_>>(text)
            .ok()
            .and_then(|f| f.v)
            .is_some_and(|v| {
                v.get().bytes().all(|b| b.is_ascii_digit()) && v.get().parse::<u64>().is_err()
            })
    }

    /// The frame reader and the serde derive agree on what they accept, and on what they read,
    /// but for the documented differences.
    fn same_as_serde(text: &str) {
        // Ours in the oracle's shape: its fields, in its order.
        let ours = parse_wire(text).map(|w| {
            let e = &w.env;
            format!(
                "Wire {{ t: {:?}, v: {:?}, id: {:?}, topic: {:?}, msg: {:?}, ch: {:?}, q: {:?}, \
                 since: {:?}, pos: {:?}, recovered: {:?}, socket: {:?}, user: {:?}, \
                 session: {:?}, hb: {:?}, code: {:?}, reason: {:?}, presence: {:?}, m: {:?}, \
                 auth: {:?} }}",
                e.t,
                e.v,
                e.id,
                e.topic,
                e.msg,
                e.ch,
                w.q,
                w.since,
                e.pos,
                e.recovered,
                e.socket,
                e.user,
                e.session,
                e.hb,
                e.code,
                e.reason,
                e.presence,
                e.m,
                w.auth
            )
        });
        let theirs = serde_json::from_str::<oracle::Wire<'_>>(text).map(|mut w| {
            w.v = w.v.map(|v| v.min(u32::MAX.into()));
            format!("{w:?}")
        });
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{text:?}"),
            (Err(_), Err(_)) => {}
            (Err(ProtocolError::Malformed(_)), Ok(_)) if array_for_object(text) => {}
            (Ok(a), Err(_)) if version_beyond_u64(text) => {
                assert!(a.contains("v: Some(4294967295)"), "{text:?}: {a}");
            }
            _ => panic!("{text:?}: ours {ours:?}, serde {theirs:?}"),
        }
    }

    #[test]
    fn frame_reader_matches_serde() {
        let frames = [
            r#"{"t":"welcome","v":1,"socket":"s-1","user":"ann","session":"x","hb":25000}"#,
            r#" { "t" : "pub" , "ch":"room:1","topic":"msg","pos":{"e":"k3x","s":12},"msg":{"a":[1,2.5,"\u00e9",{"b":null}]} } "#,
            r#"{"t":"subok","id":3,"ch":"c","pos":["e",0],"recovered":false,"x":[{"y":"]"}]}"#,
            r#"{"t":"sub","id":8,"ch":"room:lobby","q":{"password":"x"},"since":{"e":"8c","s":41,"z":1}}"#,
            r#"{"t":"rej","id":7,"code":"unknown_topic","reason":"a\"b\\c\/\b\f\n\r\t\ud83d\ude00"}"#,
            r#"{"\u0074":"ping","v":null,"id":null,"msg":null,"q":null,"pos":null,"recovered":true}"#,
            r#"["tell",null,null,"t",[1],null,null,null,null,null,null,null,null,null,null,null]"#,
            r#"{"t":"a","v":4294967295,"id":18446744073709551615,"hb":0}"#,
            r#"{"t":"a","v":4294967296,"id":18446744073709551616,"hb":-0}"#,
            r#"{"t":"hello","v":4294967296}"#,
            r#"{"t":"hello","v":184467440737095516160}"#,
            r#"{"t":"hello","v":-1}"#,
            r#"{"t":"x","since":["e",1],"pos":{"e":"f","s":2}}"#,
            r#"{"t":"a","id":1.0,"hb":1e2,"v":01,"msg":-0.5e-3}"#,
            r#"{"t":"x","t":"y"}"#,
            r#"{"t":"x","pos":{"e":"a","e":"b","s":1}}"#,
            r#"{"t":"x","topic":"\ud800","ch":"\udc00x","code":"\ud800\u0041"}"#,
            r#"{"t":"x","msg":"\ud800","reason":"tab	here"}"#,
            r#"{"t":"x",}"#,
            r#"{"t":"x","msg":[1,]}"#,
            r#"{"t":"x","msg":tru}"#,
            r#"{"t":"x","msg":{"a" 1}}"#,
            r#"{"t":"x","pos":[]}"#,
            r#"{"t":"x","pos":["e",1,2]}"#,
            r#"{"t":"x","msg":1}garbage"#,
            r#"{"t":"x","q":[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}"#,
            r#"{"t":"sub","id":2,"ch":"room","presence":true}"#,
            r#"{"t":"join","ch":"room","m":{"socket":"a-1","user":"ann","info":{"n":"Ann"}}}"#,
            r#"{"t":"subok","id":2,"ch":"room","pos":{"e":"x","s":0},"presence":1}"#,
            r#"{"t":"ask","id":0,"topic":"a\u0041","msg":1}"#,
            r#"{"t":"x","id":-0,"hb":0.5,"v":1E5,"s":10e-2,"code":"c"}"#,
            r#"{"t":"x","recovered":true,"presence":false,"id":null,"hb":7}"#,
            r#"{"t":"x","user":"ann","session":"s-1","socket":"a","reason":"r"}"#,
        ];
        const ALPHABET: &[u8] = b"{}[]\\\":, \t0123456789aenrtuzlsfdD-.+eE";
        for frame in frames {
            same_as_serde(frame);
            for text in variants(frame, ALPHABET, 0x2545_f491_4f6c_dd1d, 3_000) {
                same_as_serde(&text);
            }
        }
    }

    /// A frame is one JSON object (docs/PROTOCOL.md), and so is a position: the array form the
    /// serde derive took is refused, by the client and the server alike.
    #[test]
    fn arrays_for_objects_are_malformed() {
        let arrays = [
            r#"["hello",1]"#,
            r#"["tell",null,null,"t",[1],null,null,null,null,null,null,null,null,null,null,null]"#,
            r#" [ "ping" ] "#,
            r#"{"t":"sub","id":1,"ch":"c","since":["e",4]}"#,
            r#"{"t":"pub","ch":"c","topic":"t","pos":["e",4],"msg":1}"#,
        ];
        for text in arrays {
            // serde's derive would have taken these: the difference is deliberate.
            assert!(array_for_object(text), "{text:?}");
            for result in [
                ClientFrame::decode(text).map(drop),
                ServerFrame::decode(text).map(drop),
            ] {
                assert!(
                    matches!(result, Err(ProtocolError::Malformed(_))),
                    "{text:?}: {result:?}"
                );
            }
        }
        // The same frames as objects decode.
        assert!(
            ClientFrame::decode(r#"{"t":"sub","id":1,"ch":"c","since":{"e":"e","s":4}}"#).is_ok()
        );
        assert!(ServerFrame::decode(
            r#"{"t":"pub","ch":"c","topic":"t","pos":{"e":"e","s":4},"msg":1}"#
        )
        .is_ok());
    }

    /// Any version we do not speak is a `hello` (answered `unsupported_version`), never a
    /// malformed frame; what is not a non-negative integer is malformed.
    #[test]
    fn out_of_range_versions_saturate() {
        for (text, v) in [
            (r#"{"t":"hello","v":1}"#, 1),
            (r#"{"t":"hello","v":4294967295}"#, u32::MAX),
            (r#"{"t":"hello","v":4294967296}"#, u32::MAX),
            (r#"{"t":"hello","v":18446744073709551616}"#, u32::MAX),
            (
                r#"{"t":"hello","v":99999999999999999999999999999999}"#,
                u32::MAX,
            ),
        ] {
            match ClientFrame::decode(text) {
                Ok(ClientFrame::Hello { v: got, .. }) => assert_eq!(got, v, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        match ServerFrame::decode(r#"{"t":"welcome","v":4294967296,"socket":"s","hb":1}"#) {
            Ok(ServerFrame::Welcome { v, .. }) => assert_eq!(v, u32::MAX),
            other => panic!("{other:?}"),
        }
        for text in [
            r#"{"t":"hello","v":-1}"#,
            r#"{"t":"hello","v":1.5}"#,
            r#"{"t":"hello","v":1e3}"#,
            r#"{"t":"hello","v":"1"}"#,
            r#"{"t":"hello","v":[1]}"#,
        ] {
            assert!(
                matches!(ClientFrame::decode(text), Err(ProtocolError::Malformed(_))),
                "{text}"
            );
        }
        assert_eq!(
            ClientFrame::decode(r#"{"t":"hello"}"#).unwrap_err(),
            ProtocolError::MissingField {
                kind: "hello",
                field: "v"
            }
        );
    }

    /// The hand-written server encoders (`res`, `tell`, `pub`) give the derive's bytes.
    #[test]
    fn server_encoding_matches_serde() {
        let odd = "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é😀/";
        for msg in [r#"{"a":[1,"\u0000"]}"#, "null", r#""x""#, "-1.5e3", "[]"] {
            let msg = raw_json(msg).expect("json");
            let frames = [
                ServerFrame::Res {
                    id: u64::MAX,
                    msg: msg.clone(),
                },
                ServerFrame::Res {
                    id: 0,
                    msg: msg.clone(),
                },
                ServerFrame::Res {
                    id: 10,
                    msg: msg.clone(),
                },
                ServerFrame::Res {
                    id: 99,
                    msg: msg.clone(),
                },
                ServerFrame::Tell {
                    topic: odd.into(),
                    msg: msg.clone(),
                },
                ServerFrame::Tell {
                    topic: String::new(),
                    msg: msg.clone(),
                },
                ServerFrame::Pub {
                    ch: odd.into(),
                    topic: "t".into(),
                    pos: Position::new(odd, u64::MAX),
                    msg: msg.clone(),
                },
                ServerFrame::Pub {
                    ch: "room:1".into(),
                    topic: odd.into(),
                    pos: Position::new("", 0),
                    msg: msg.clone(),
                },
            ];
            for frame in &frames {
                let serde = serde_json::to_string(frame).expect("serializes");
                let ours = frame.encode();
                assert_eq!(ours, serde);
                if let ServerFrame::Res { .. } = frame {
                    assert_eq!(ours.capacity(), ours.len(), "a `res` is sized exactly");
                }
            }
        }
    }

    #[test]
    fn client_encoding_matches_serde() {
        let msg = raw_json(r#"{"a":[1,"\u0000"]}"#).expect("json");
        let odd = "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é😀/";
        let frames = [
            ClientFrame::Hello { v: 1, auth: None },
            ClientFrame::Hello {
                v: 1,
                auth: Some(msg.clone()),
            },
            ClientFrame::Ask {
                id: u64::MAX,
                topic: odd.into(),
                msg: msg.clone(),
            },
            ClientFrame::Tell {
                topic: String::new(),
                msg: msg.clone(),
            },
            ClientFrame::Sub {
                id: 0,
                ch: odd.into(),
                q: Some(msg.clone()),
                since: Some(Position::new(odd, 41)),
                presence: true,
            },
            ClientFrame::Sub {
                id: 9,
                ch: "c".into(),
                q: None,
                since: None,
                presence: false,
            },
            ClientFrame::Presence {
                id: 10,
                ch: odd.into(),
            },
            ClientFrame::PresenceStats {
                id: u64::MAX,
                ch: "c".into(),
            },
            ClientFrame::Unsub { ch: odd.into() },
            ClientFrame::Ping {},
            ClientFrame::Pong {},
        ];
        for frame in &frames {
            let serde = serde_json::to_string(frame).expect("serializes");
            assert_eq!(frame.encode(), serde);
        }
    }

    #[test]
    fn escaped_strings_decode() {
        match ClientFrame::decode(r#"{"t":"tell","topic":"a\"b\u00e9","msg":"x"}"#).expect("tell") {
            ClientFrame::Tell { topic, .. } => assert_eq!(topic, "a\"bé"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn channel_names() {
        assert_eq!(classify_channel("room:1"), Ok(ChannelKind::Public));
        assert_eq!(classify_channel("#user:ann"), Ok(ChannelKind::User("ann")));
        assert_eq!(
            classify_channel("#session:s1"),
            Ok(ChannelKind::Session("s1"))
        );
        assert_eq!(classify_channel("#user:"), Ok(ChannelKind::Reserved));
        assert_eq!(classify_channel("#admin"), Ok(ChannelKind::Reserved));
        assert_eq!(classify_channel(""), Err(ChannelError::Empty));
        assert_eq!(classify_channel("a b"), Err(ChannelError::BadChar(' ')));
        assert_eq!(
            classify_channel(&"x".repeat(MAX_CHANNEL_LEN + 1)),
            Err(ChannelError::TooLong)
        );
        assert!(classify_channel(&"x".repeat(MAX_CHANNEL_LEN)).is_ok());
    }

    #[test]
    fn reconnect_policy() {
        assert!(close::should_reconnect(close::GOING_AWAY));
        assert!(close::should_reconnect(close::ABNORMAL));
        assert!(close::should_reconnect(close::SLOW_CONSUMER));
        assert!(close::should_reconnect(4999));
        assert!(!close::should_reconnect(close::NORMAL));
        assert!(!close::should_reconnect(close::BOOTED));
        assert!(!close::should_reconnect(close::UNSUPPORTED_VERSION));
        assert!(!close::should_reconnect(close::PROTOCOL_ERROR));
        assert!(!close::should_reconnect(close::HANDSHAKE_REFUSED));
    }
}
