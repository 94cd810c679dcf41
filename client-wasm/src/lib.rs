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
#![deny(unsafe_code)]

/// The allocator: talc instead of std's dlmalloc.
///
/// The one `unsafe` of the browser package, for a measured reason: dlmalloc was about 4.5 KB of
/// the 20 KB gzipped wasm, and talc took the README example's Vite build from 27 050 to 25 861
/// bytes gzipped (`scripts/size.sh`). Its safety condition, a single-threaded wasm, holds: the
/// package never starts a thread (no shared memory, no workers).
#[cfg(target_arch = "wasm32")]
#[global_allocator]
#[allow(unsafe_code)]
static ALLOCATOR: talc::TalckWasm = unsafe { talc::TalckWasm::new_global() };

use std::time::Duration;

use sss_core::client::SubscribeOptions;
use sss_core::client::{Action, AskError, Client, ClientError, Config, Event, Instant, Status};
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

/// The lines of `text` (a byte loop: `str::split` links a substring searcher, 0.7 KB).
fn lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        if b == b'\n' {
            lines.push(text.get(start..i).unwrap_or_default().to_owned());
            start = i + 1;
        }
    }
    lines.push(text.get(start..).unwrap_or_default().to_owned());
    lines
}

/// A string field of a frame (`None`: absent, or not a string).
#[inline(never)]
fn text(v: JsValue) -> Option<String> {
    v.as_string()
}

/// `Some` unless `undefined` or `null`.
fn opt(v: JsValue) -> Option<Js> {
    (!v.is_undefined() && !v.is_null()).then_some(Js(v))
}

/// A non-negative integer field (`None`: absent, or not such a number).
fn int(v: JsValue) -> Option<u64> {
    let n = v.as_f64()?;
    (n >= 0.0 && n.fract() == 0.0 && n <= u64::MAX as f64).then_some(n as u64)
}

/// An option in milliseconds (`NaN`: not given, keep the core's default; `Infinity`: never).
fn millis(n: f64) -> Option<Duration> {
    (!n.is_nan()).then(|| Duration::from_millis(if n.is_finite() { n as u64 } else { u64::MAX }))
}

fn now(ms: f64) -> Instant {
    Instant::from_millis(ms.max(0.0).ceil() as u64)
}

#[wasm_bindgen(
    inline_js = "const K = ['t', 'v', 'id', 'topic', 'ch', 'pos', 'recovered', \
    'presence', 'socket', 'user', 'session', 'hb', 'code', 'reason', 'msg', 'm', 'e', 's']; \
    export function field(o, k) { return o !== null && typeof o === 'object' ? o[K[k]] : undefined; }"
)]
extern "C" {
    /// `o[K[k]]`: a field of a parsed frame (or of its position), by its index in `K` (the
    /// `F_*` constants); `undefined` when `o` is not an object. One import for every field:
    /// the wasm passes a number, not the field's name.
    fn field(o: &JsValue, k: u32) -> JsValue;
}

// The fields `field` reads (their order in its `K`).
const F_T: u32 = 0;
const F_V: u32 = 1;
const F_ID: u32 = 2;
const F_TOPIC: u32 = 3;
const F_CH: u32 = 4;
const F_POS: u32 = 5;
const F_RECOVERED: u32 = 6;
const F_PRESENCE: u32 = 7;
const F_SOCKET: u32 = 8;
const F_USER: u32 = 9;
const F_SESSION: u32 = 10;
const F_HB: u32 = 11;
const F_CODE: u32 = 12;
const F_REASON: u32 = 13;
const F_MSG: u32 = 14;
const F_M: u32 = 15;
const F_E: u32 = 16;
const F_S: u32 = 17;

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
const ERROR: u32 = 17;

// The inputs of `Core::input`, the commands of `Core::command`, the queries of `Core::query`
// (the driver's tables must match).
const IN_OPEN: u32 = 0;
const IN_CLOSED: u32 = 1;
const IN_TIMEOUT: u32 = 2;
const IN_MALFORMED: u32 = 3;
const IN_AUTH: u32 = 4;
const IN_UNSUBSCRIBE: u32 = 5;
// 6: the application closes the client (the `_` arm).
const CMD_ASK: u32 = 0;
const CMD_TELL: u32 = 1;
// 2: subscribe (the `_` arm).
const CMD_PRESENCE: u32 = 3;
const QUERY_DEADLINE: u32 = 0;
const QUERY_POSITION: u32 = 1;
const QUERY_WHO: u32 = 2;
// 3: why the last command was refused (the `_` arm).

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
            urls: lines(urls),
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

    /// Something happened (`kind`: one of the `IN_*` constants, with what `text`, `n` and `p`
    /// carry for it). One export for every input with these arguments: each export is a
    /// wrapper in the wasm and in the JS glue.
    pub fn input(&mut self, t: f64, kind: u32, text: &str, n: f64, p: JsValue) {
        let (c, t) = (&mut self.client, now(t));
        match kind {
            IN_OPEN => c.handle_open(t),
            IN_CLOSED => c.handle_close(t, n as u16, text),
            IN_TIMEOUT => c.handle_timeout(t),
            IN_MALFORMED => c.handle_server_frame(t, Err(ProtocolError::Malformed(text.into()))),
            IN_AUTH => c.set_auth(opt(p)),
            IN_UNSUBSCRIBE => c.unsubscribe(t, text),
            _ => c.close(t),
        }
    }

    /// A frame arrived, parsed by the driver with `JSON.parse` (an object with a string `t`):
    /// its fields are read here, by name (a field of another JSON type than the protocol's is
    /// absent), its payloads kept as JS values.
    pub fn frame(&mut self, t: f64, f: JsValue) {
        let pos = field(&f, F_POS);
        let epoch = text(field(&pos, F_E));
        let envelope = Envelope {
            t: text(field(&f, F_T)).unwrap_or_default().into(),
            v: int(field(&f, F_V)).map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
            id: int(field(&f, F_ID)),
            topic: text(field(&f, F_TOPIC)),
            ch: text(field(&f, F_CH)),
            pos: epoch
                .zip(int(field(&pos, F_S)))
                .map(|(e, s)| Position::new(e, s)),
            recovered: field(&f, F_RECOVERED).as_bool(),
            presence: field(&f, F_PRESENCE).as_bool(),
            socket: text(field(&f, F_SOCKET)),
            user: text(field(&f, F_USER)),
            session: text(field(&f, F_SESSION)),
            hb: int(field(&f, F_HB)),
            code: text(field(&f, F_CODE)),
            reason: text(field(&f, F_REASON)),
            msg: opt(field(&f, F_MSG)),
            m: opt(field(&f, F_M)),
        };
        self.client
            .handle_server_frame(now(t), ServerFrame::from_envelope(envelope));
    }

    /// A command (`kind`: one of the `CMD_*` constants) on a topic or channel (`name`), with a
    /// payload (`JSON.stringify`'s text, or `undefined`) and a number: the ask's own timeout
    /// (`NaN`: the client's), whether a subscription wants presence events or a presence
    /// request wants the counts (1). Returns the ask's or presence request's id, or 1 for a
    /// tell or subscription accepted; 0 when refused (the `QUERY_ERROR` query says why).
    pub fn command(&mut self, t: f64, kind: u32, name: &str, p: JsValue, n: f64) -> f64 {
        let (c, t) = (&mut self.client, now(t));
        let done = match kind {
            CMD_ASK => match millis(n) {
                Some(d) => c.ask_with_timeout(t, name, Js(p), d),
                None => c.ask(t, name, Js(p)),
            }
            .map(|id| id.as_u64()),
            CMD_PRESENCE if n == 1.0 => c.presence_stats(t, name).map(|id| id.as_u64()),
            CMD_PRESENCE => c.presence(t, name).map(|id| id.as_u64()),
            CMD_TELL => c.tell(t, name, Js(p)).map(|()| 1),
            _ => {
                let options = SubscribeOptions {
                    query: opt(p),
                    presence: n == 1.0,
                };
                c.subscribe(t, name, options).map(|()| 1)
            }
        };
        match done {
            Ok(id) => id as f64,
            Err(e) => {
                self.error = Some(e);
                0.0
            }
        }
    }

    /// Reads the state (`kind`: one of the `QUERY_*` constants): the next deadline as the
    /// result (`NaN`: none); or through `sink`, `channel`'s last position (`POSITION`; the
    /// result is 0 without one), the connection's socket id, user and session (`WHO`; `m`:
    /// which are present, bits 1, 2 and 4), why the last command was refused (`ERROR`: code,
    /// reason).
    pub fn query(&self, kind: u32, channel: &str, sink: &Sink) -> f64 {
        let c = &self.client;
        match kind {
            QUERY_DEADLINE => (c.poll_timeout()).map_or(f64::NAN, |at| at.as_millis() as f64),
            QUERY_POSITION => match c.position(channel) {
                Some(p) => {
                    sink.text(POSITION, "", &p.epoch, "", p.seq as f64);
                    1.0
                }
                None => 0.0,
            },
            QUERY_WHO => {
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
                0.0
            }
            _ => {
                if let Some(e) = &self.error {
                    sink.text(ERROR, e.code(), &e.message(), "", 0.0);
                }
                0.0
            }
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
