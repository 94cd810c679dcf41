//! `sss-wasm`: the client core of Super Scaled Sockets compiled to WebAssembly, for the npm
//! package `super-scaled-sockets`.
//!
//! The wasm holds the state machine of [`sss_core::client`] — the same core the native
//! `sss-client` runs: asks, the offline queue, subscriptions, reconnect with backoff and resync
//! all live there. Everything a browser already does well stays in JS, in the package's driver
//! (`client-wasm/js/client.js`): the `WebSocket`, the timer, promises and callbacks, and JSON.
//! Payloads never enter the wasm: the driver parses each frame with `JSON.parse` and hands the
//! core the frame's fields ([`Core::frame`]) with its payload as an opaque JS value; a payload to
//! send is the text `JSON.stringify` made of it, spliced into the frame the core encodes. So the
//! wasm carries no JSON parser, no frame decoder and no payload bytes.
//!
//! This module is the boundary: [`Core`] wraps [`sss_core::client::Client`] with numbers and
//! strings only, and hands its outputs to the driver one at a time through [`Sink`] (a plain
//! call, so the driver runs application callbacks after [`Core::poll`] returns, never inside
//! it: they may call back into the core).
#![forbid(unsafe_code)]

use std::time::Duration;

use sss_core::client::{Action, Client, ClientError, Config, Event, Instant, Status};
use sss_core::client::{AskError, SubscribeOptions};
use sss_core::protocol::{Envelope, Payload, ProtocolError, ServerFrame};
use sss_core::Position;
use wasm_bindgen::prelude::*;

/// A payload as the browser driver keeps it: a JS value the core never looks into. One that
/// arrived is what `JSON.parse` made of the frame's field; one to send is `JSON.stringify`'s
/// text of the application's value (a JS string).
#[derive(Clone)]
struct Js(JsValue);

impl Payload for Js {
    fn null() -> Self {
        Js(JsValue::NULL)
    }

    fn write_json(&self, out: &mut String) {
        match self.0.as_string() {
            Some(text) => out.push_str(&text),
            None => out.push_str("null"),
        }
    }
}

/// `Some` unless `undefined` or `null`.
fn opt(v: JsValue) -> Option<Js> {
    (!v.is_undefined() && !v.is_null()).then_some(Js(v))
}

/// A non-negative integer (a JSON number the driver read; `NaN`: absent or not a number).
fn int(n: f64) -> Option<u64> {
    (n >= 0.0 && n.fract() == 0.0 && n <= u64::MAX as f64).then_some(n as u64)
}

/// An option in milliseconds (`NaN`: not given, keep the core's default; `Infinity`: never).
fn millis(n: f64) -> Option<Duration> {
    (!n.is_nan()).then(|| Duration::from_millis(if n.is_finite() { n as u64 } else { u64::MAX }))
}

fn now(ms: f64) -> Instant {
    Instant::from_millis(ms.max(0.0).ceil() as u64)
}

/// A `true` / `false` / absent flag: 2, 1, 0.
fn flag(n: u8) -> Option<bool> {
    match n {
        0 => None,
        n => Some(n == 2),
    }
}

#[wasm_bindgen]
extern "C" {
    /// The driver's receiver of the core's outputs: `sink.out(kind, a, b, c, n, m, p)`, with
    /// the meaning of each argument per `kind` (listed in `client-wasm/js/client.js`).
    pub type Sink;

    #[wasm_bindgen(method)]
    #[allow(clippy::too_many_arguments)]
    fn out(this: &Sink, kind: u32, a: &str, b: &str, c: &str, n: f64, m: f64, p: JsValue);
}

// The output kinds of `Sink::out` (the driver's `K` table must match).
const CONNECT: u32 = 0;
const CLOSE: u32 = 1;
const SEND: u32 = 2;
const STATUS: u32 = 3;
const ASK_OK: u32 = 4;
const ASK_ERR: u32 = 5;
const TELL: u32 = 6;
const SUBSCRIBED: u32 = 7;
const RESYNCED: u32 = 8;
const SUB_FAILED: u32 = 9;
const PUBLICATION: u32 = 10;
const JOIN: u32 = 11;
const LEAVE: u32 = 12;
const UNSUBSCRIBED: u32 = 13;
const CLOSED: u32 = 14;
const POSITION: u32 = 15;
const WHO: u32 = 16;

impl Sink {
    fn text(&self, kind: u32, a: &str, b: &str, c: &str, n: f64) {
        self.out(kind, a, b, c, n, 0.0, JsValue::UNDEFINED);
    }

    fn error(&self, kind: u32, a: &str, n: f64, e: &AskError) {
        self.text(kind, a, &e.code, &e.reason, n);
    }
}

/// One client's state machine (see the crate documentation). Every method takes the time as
/// `performance.now()` milliseconds.
#[wasm_bindgen]
pub struct Core {
    client: Client<Js>,
    /// Why the last command was refused.
    error: Option<ClientError>,
}

#[wasm_bindgen]
impl Core {
    /// A client connecting at once to the first of `urls` (separated by newlines, which no URL
    /// contains). Number options are milliseconds or counts, `NaN` for the core's default;
    /// `seed` seeds the reconnect jitter; `fail_first`: a failed first connection closes the
    /// client instead of retrying (`Client.connect`).
    #[wasm_bindgen(constructor)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        urls: &str,
        ask_ms: f64,
        connect_ms: f64,
        base_ms: f64,
        max_ms: f64,
        max_attempts: f64,
        offline_queue: f64,
        seed: f64,
        fail_first: bool,
        auth: JsValue,
        t: f64,
    ) -> Core {
        let mut config = Config {
            urls: urls.split('\n').map(str::to_owned).collect(),
            seed: seed as u64,
            fail_first_connect: fail_first,
            ..Config::default()
        };
        let r = &mut config.reconnect;
        r.base = millis(base_ms).unwrap_or(r.base);
        r.max = millis(max_ms).unwrap_or(r.max);
        if !max_attempts.is_nan() {
            r.max_attempts = max_attempts.is_finite().then_some(max_attempts as u32);
        }
        config.ask_timeout = millis(ask_ms).unwrap_or(config.ask_timeout);
        config.connect_timeout = millis(connect_ms).unwrap_or(config.connect_timeout);
        if !offline_queue.is_nan() {
            config.offline_queue = offline_queue.min(usize::MAX as f64) as usize;
        }
        let mut client = Client::new_generic(config, now(t));
        client.set_auth(opt(auth));
        Core {
            client,
            error: None,
        }
    }

    /// The credentials of the following `hello`s (`JSON.stringify`'s text; `undefined`: none).
    pub fn auth(&mut self, auth: JsValue) {
        self.client.set_auth(opt(auth));
    }

    /// The socket opened.
    pub fn open(&mut self, t: f64) {
        self.client.handle_open(now(t));
    }

    /// A frame arrived, parsed by the driver: its fields (`NaN`, `undefined` or 0 where absent
    /// or of another JSON type; `recovered` and `presence`: 2 true, 1 false, 0 absent).
    #[allow(clippy::too_many_arguments)]
    pub fn frame(
        &mut self,
        t: f64,
        kind: String,
        v: f64,
        id: f64,
        topic: Option<String>,
        ch: Option<String>,
        epoch: Option<String>,
        seq: f64,
        recovered: u8,
        presence: u8,
        socket: Option<String>,
        user: Option<String>,
        session: Option<String>,
        hb: f64,
        code: Option<String>,
        reason: Option<String>,
        msg: JsValue,
        m: JsValue,
    ) {
        let pos = epoch.zip(int(seq)).map(|(e, s)| Position::new(e, s));
        let envelope = Envelope {
            t: kind.into(),
            v: int(v).map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
            id: int(id),
            topic: topic.map(Into::into),
            ch: ch.map(Into::into),
            pos,
            recovered: flag(recovered),
            presence: flag(presence),
            socket: socket.map(Into::into),
            user: user.map(Into::into),
            session: session.map(Into::into),
            hb: int(hb),
            code: code.map(Into::into),
            reason: reason.map(Into::into),
            msg: opt(msg),
            m: opt(m),
        };
        self.client
            .handle_server_frame(now(t), ServerFrame::from_envelope(envelope));
    }

    /// A frame arrived that is not a JSON object (`reason`: what is wrong with it).
    pub fn malformed(&mut self, t: f64, reason: String) {
        self.client
            .handle_server_frame(now(t), Err(ProtocolError::Malformed(reason)));
    }

    /// The socket closed, or could not be opened (1006).
    pub fn closed(&mut self, t: f64, code: u16, reason: &str) {
        self.client.handle_close(now(t), code, reason);
    }

    /// The time of [`Core::deadline`] came.
    pub fn timeout(&mut self, t: f64) {
        self.client.handle_timeout(now(t));
    }

    /// When [`Core::timeout`] is next due (`NaN`: nothing is scheduled).
    pub fn deadline(&self) -> f64 {
        (self.client.poll_timeout()).map_or(f64::NAN, |at| at.as_millis() as f64)
    }

    /// An ask of `msg` (`JSON.stringify`'s text), with its own timeout (`NaN`: the client's):
    /// its id, or 0 when refused ([`Core::error`] says why).
    pub fn ask(&mut self, t: f64, topic: &str, msg: JsValue, timeout_ms: f64) -> f64 {
        let (t, msg) = (now(t), Js(msg));
        let id = match millis(timeout_ms) {
            Some(d) => self.client.ask_with_timeout(t, topic, msg, d),
            None => self.client.ask(t, topic, msg),
        };
        self.id(id.map(|id| id.as_u64()))
    }

    /// A presence request (`stats`: the counts): its id, or 0 when refused.
    pub fn presence(&mut self, t: f64, channel: &str, stats: bool) -> f64 {
        let id = if stats {
            self.client.presence_stats(now(t), channel)
        } else {
            self.client.presence(now(t), channel)
        };
        self.id(id.map(|id| id.as_u64()))
    }

    /// A tell; `false` when refused.
    pub fn tell(&mut self, t: f64, topic: &str, msg: JsValue) -> bool {
        let done = self.client.tell(now(t), topic, Js(msg));
        self.done(done)
    }

    /// Subscribes to `channel` with a query (`JSON.stringify`'s text, or `undefined`); `false`
    /// when refused.
    pub fn subscribe(&mut self, t: f64, channel: &str, query: JsValue, presence: bool) -> bool {
        let options = SubscribeOptions {
            query: opt(query),
            presence,
        };
        let done = self.client.subscribe(now(t), channel, options);
        self.done(done)
    }

    /// Leaves `channel`.
    pub fn unsubscribe(&mut self, t: f64, channel: &str) {
        self.client.unsubscribe(now(t), channel);
    }

    /// Closes the client for good.
    pub fn close(&mut self, t: f64) {
        self.client.close(now(t));
    }

    /// Why the last command was refused: its code, a space, its reason.
    pub fn error(&self) -> String {
        match &self.error {
            Some(e) => format!("{} {e}", e.code()),
            None => String::new(),
        }
    }

    /// Hands the next output (a socket action, a frame to send, or an event) to `sink`;
    /// `false` when there is none.
    pub fn poll(&mut self, sink: &Sink) -> bool {
        let c = &mut self.client;
        if let Some(action) = c.poll_action() {
            match action {
                Action::Connect { url } => sink.text(CONNECT, &url, "", "", 0.0),
                Action::Close { code, reason } => sink.text(CLOSE, &reason, "", "", code.into()),
            }
            return true;
        }
        if let Some(frame) = c.poll_transmit() {
            sink.text(SEND, &frame, "", "", 0.0);
            return true;
        }
        let Some(event) = c.poll_event() else {
            return false;
        };
        let p = |kind, a: &str, b: &str, n: f64, msg: Js| sink.out(kind, a, b, "", n, 0.0, msg.0);
        match event {
            Event::Status(status) => {
                let (code, attempt) = match status {
                    Status::Connecting => (0, 0),
                    Status::Ready => (1, 0),
                    Status::Reconnecting { attempt } => (2, attempt),
                    Status::Syncing => (3, 0),
                    Status::Closed => (4, 0),
                };
                sink.out(
                    STATUS,
                    "",
                    "",
                    "",
                    code.into(),
                    attempt.into(),
                    JsValue::UNDEFINED,
                );
            }
            Event::AskDone { id, result } => match result {
                Ok(msg) => p(ASK_OK, "", "", id.as_u64() as f64, msg),
                Err(e) => sink.error(ASK_ERR, "", id.as_u64() as f64, &e),
            },
            Event::Tell { topic, msg } => p(TELL, &topic, "", 0.0, msg),
            Event::Subscribed {
                channel,
                position,
                presence,
            } => sink.out(
                SUBSCRIBED,
                &channel,
                &position.epoch,
                "",
                position.seq as f64,
                f64::from(u8::from(presence)),
                JsValue::UNDEFINED,
            ),
            Event::Resynced {
                channel,
                position,
                recovered,
                presence,
            } => sink.out(
                RESYNCED,
                &channel,
                &position.epoch,
                "",
                position.seq as f64,
                f64::from(u8::from(presence) | u8::from(recovered) << 1),
                JsValue::UNDEFINED,
            ),
            Event::SubscribeFailed { channel, error } => {
                sink.error(SUB_FAILED, &channel, 0.0, &error);
            }
            Event::Publication {
                channel,
                topic,
                msg,
                position,
            } => sink.out(
                PUBLICATION,
                &channel,
                &topic,
                &position.epoch,
                position.seq as f64,
                0.0,
                msg.0,
            ),
            Event::Join { channel, member } => p(JOIN, &channel, "", 0.0, member),
            Event::Leave { channel, member } => p(LEAVE, &channel, "", 0.0, member),
            Event::Unsubscribed {
                channel,
                code,
                reason,
            } => sink.text(UNSUBSCRIBED, &channel, &code, &reason, 0.0),
            Event::Closed {
                code,
                reason,
                error,
            } => match error {
                Some(e) => sink.out(
                    CLOSED,
                    &reason,
                    &e.code,
                    &e.reason,
                    code.into(),
                    1.0,
                    JsValue::UNDEFINED,
                ),
                None => sink.text(CLOSED, &reason, "", "", code.into()),
            },
        }
        true
    }

    /// Hands `channel`'s last position to `sink` (kind `POSITION`); `false` without one.
    pub fn position(&self, channel: &str, sink: &Sink) -> bool {
        let pos = self.client.position(channel);
        if let Some(p) = pos {
            sink.text(POSITION, "", &p.epoch, "", p.seq as f64);
        }
        pos.is_some()
    }

    /// Hands the current connection's socket id, user and session to `sink` (kind `WHO`; `m`:
    /// which are present, bits 1, 2 and 4).
    pub fn who(&self, sink: &Sink) {
        let c = &self.client;
        let bits = u8::from(c.socket_id().is_some())
            | u8::from(c.user().is_some()) << 1
            | u8::from(c.session().is_some()) << 2;
        sink.out(
            WHO,
            c.socket_id().unwrap_or_default(),
            c.user().unwrap_or_default(),
            c.session().unwrap_or_default(),
            0.0,
            bits.into(),
            JsValue::UNDEFINED,
        );
    }
}

impl Core {
    fn id(&mut self, id: Result<u64, ClientError>) -> f64 {
        match id {
            Ok(id) => id as f64,
            Err(e) => {
                self.error = Some(e);
                0.0
            }
        }
    }

    fn done(&mut self, done: Result<(), ClientError>) -> bool {
        self.id(done.map(|()| 1)) != 0.0
    }
}

#[cfg(test)]
mod tests {
    /// The typings' `ErrorCode` union lists every code of the protocol (server and client):
    /// a code added to `sss_core::protocol::codes` fails here until the typings have it.
    #[test]
    fn the_typings_list_every_error_code() {
        let protocol = include_str!("../../client-core/src/protocol.rs");
        let typings = include_str!("../../pkg/sss.d.ts");
        let start = protocol.find("pub mod codes {").expect("the codes module");
        let end = start + protocol[start..].find("\n}").expect("its end");
        let codes: Vec<&str> = protocol[start..end]
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const "))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert!(codes.len() > 20, "{codes:?}");
        let union_start = typings.find("export type ErrorCode =").expect("ErrorCode");
        let union_end = union_start + typings[union_start..].find(';').expect("its end");
        let union = &typings[union_start..union_end];
        let missing: Vec<&&str> = (codes.iter())
            .filter(|c| !union.contains(&format!("| \"{c}\"")))
            .collect();
        assert!(missing.is_empty(), "ErrorCode lacks {missing:?}");
        for extra in ["protocol", "unsupported_version"] {
            assert!(union.contains(extra), "the error frames' codes: {extra}");
        }
    }
}
