//! Small helpers at the JS boundary: errors with a `code`, JSON payloads, option parsing, the
//! clock and plain JS objects.

use std::time::Duration;

use js_sys::{Array, Function, Object, Reflect, JSON};
use serde_json::value::RawValue;
use sss_core::client::{AskError, ClientError, Config, Instant, Recovery, Status};
use sss_core::protocol::{codes, raw_json};
use sss_core::Position;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    /// `performance.now()`: a monotonic clock in milliseconds (windows and workers alike).
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;

    /// `reportError(e)`: reports an exception like an uncaught one (`window.onerror`, the
    /// console), the way `EventTarget` reports a throwing listener.
    #[wasm_bindgen(js_name = reportError, catch)]
    fn report_error(e: &JsValue) -> Result<(), JsValue>;
}

/// The core's notion of now: `performance.now()`, rounded up to whole milliseconds (so a timer
/// set for an instant never fires "just before" it).
pub(crate) fn now() -> Instant {
    Instant::from_millis(performance_now().max(0.0).ceil() as u64)
}

/// A random jitter seed from `Math.random()` (two draws: 52 random bits each).
pub(crate) fn random_seed() -> u64 {
    let draw = || (js_sys::Math::random() * 4_503_599_627_370_496.0) as u64; // 2^52
    draw() ^ draw().rotate_left(32)
}

/// Sets `obj[key] = value` (plain objects only: this cannot throw for them).
pub(crate) fn set(obj: &JsValue, key: &str, value: &JsValue) {
    let _ = Reflect::set(obj, &JsValue::from_str(key), value);
}

/// `obj[key]`, with `undefined` and `null` (and a non-object `obj`) as `None`.
fn get(obj: &JsValue, key: &str) -> Option<JsValue> {
    if !obj.is_object() {
        return None;
    }
    let v = Reflect::get(obj, &JsValue::from_str(key)).ok()?;
    (!v.is_undefined() && !v.is_null()).then_some(v)
}

#[wasm_bindgen(module = "/js/errors.js")]
extern "C" {
    /// `new SssError(code, reason)`: the package's exported `Error` subclass, with the stable
    /// `code` and `reason` properties.
    #[wasm_bindgen(js_name = sssError)]
    pub(crate) fn error(code: &str, reason: &str) -> JsValue;
}

/// A JS function that runs `f`: what every `on*` returns to remove its callback. Owned by the
/// JS function it becomes (freed when that is garbage-collected).
pub(crate) fn disposer(f: impl FnMut() + 'static) -> JsValue {
    Closure::<dyn FnMut()>::new(f).into_js_value()
}

/// The options of one ask (`{ timeoutMs, signal }`): its own timeout, and its `AbortSignal`.
pub(crate) fn ask_options(
    options: &JsValue,
) -> Result<(Option<Duration>, Option<JsValue>), JsValue> {
    let timeout = number(options, "timeoutMs")?.map(millis);
    Ok((timeout, get(options, "signal")))
}

/// `target.addEventListener(type, f)` or `removeEventListener` (`add`: which), on any event
/// target (an `AbortSignal` here, without a web-sys binding for it).
pub(crate) fn listen(target: &JsValue, add: bool, kind: &str, f: &JsValue) {
    let method = if add {
        "addEventListener"
    } else {
        "removeEventListener"
    };
    if let Some(m) = get(target, method).and_then(|m| m.dyn_into::<Function>().ok()) {
        let _ = m.call2(target, &JsValue::from_str(kind), f);
    }
}

/// Whether `signal.aborted` is true.
pub(crate) fn aborted(signal: &JsValue) -> bool {
    get(signal, "aborted").is_some_and(|a| a.is_truthy())
}

/// The `code` of an error made by [`error`].
pub(crate) fn code(error: &JsValue) -> Option<String> {
    get(error, "code").and_then(|c| c.as_string())
}

/// The JS error of a failed ask or subscription.
pub(crate) fn ask_error(e: &AskError) -> JsValue {
    error(&e.code, &e.reason)
}

/// The JS error of a command the core refused (its code is the core's, as in the native
/// client).
pub(crate) fn client_error(e: &ClientError) -> JsValue {
    error(e.code(), &e.to_string())
}

/// A short description of a thrown JS value (an `Error`'s message, or its string form).
pub(crate) fn describe(v: &JsValue) -> String {
    if let Some(s) = v.as_string() {
        return s;
    }
    get(v, "message")
        .and_then(|m| m.as_string())
        .unwrap_or_else(|| "unknown error".to_owned())
}

/// A JS value as a JSON payload: `JSON.stringify`, validated by the codec. `undefined` is `null`.
pub(crate) fn to_raw(value: &JsValue) -> Result<Box<RawValue>, JsValue> {
    if value.is_undefined() {
        return raw_json("null").map_err(|e| error(codes::INVALID, &e.to_string()));
    }
    let text = JSON::stringify(value).map_err(|e| {
        error(
            codes::INVALID,
            &format!("not JSON-serializable: {}", describe(&e)),
        )
    })?;
    let text = JsValue::from(text)
        .as_string()
        .ok_or_else(|| error(codes::INVALID, "not JSON-serializable"))?;
    raw_json(text).map_err(|e| error(codes::INVALID, &e.to_string()))
}

/// A JSON payload as a JS value (`JSON.parse`).
pub(crate) fn from_raw(raw: &RawValue) -> JsValue {
    JSON::parse(raw.get()).unwrap_or(JsValue::NULL)
}

/// `{ epoch, seq }`.
pub(crate) fn position(p: &Position) -> JsValue {
    let obj = Object::new().into();
    set(&obj, "epoch", &JsValue::from_str(&p.epoch));
    set(&obj, "seq", &JsValue::from_f64(p.seq as f64));
    obj
}

/// The status as the JS API names it.
pub(crate) fn status_name(s: Status) -> &'static str {
    match s {
        Status::Connecting => "connecting",
        Status::Ready => "ready",
        Status::Reconnecting { .. } => "reconnecting",
        Status::Syncing => "syncing",
        Status::Closed => "closed",
    }
}

/// How a subscription (re)started, as the JS API names it.
pub(crate) fn recovery_name(r: Recovery) -> &'static str {
    match r {
        Recovery::New => "new",
        Recovery::Recovered => "recovered",
        Recovery::Unrecoverable => "unrecoverable",
    }
}

/// Calls an application callback with one or two arguments. An exception it throws is reported
/// with `reportError` (like a throwing event listener), never propagated into the driver.
pub(crate) fn call(f: &Function, a: &JsValue, b: Option<&JsValue>) {
    let result = match b {
        None => f.call1(&JsValue::UNDEFINED, a),
        Some(b) => f.call2(&JsValue::UNDEFINED, a, b),
    };
    if let Err(e) = result {
        let _ = report_error(&e);
    }
}

/// The server URLs: a string or an array of strings.
pub(crate) fn urls(v: &JsValue) -> Result<Vec<String>, JsValue> {
    let urls: Vec<String> = if let Some(url) = v.as_string() {
        vec![url]
    } else if Array::is_array(v) {
        let mut urls = Vec::new();
        for item in Array::from(v).iter() {
            urls.push(
                item.as_string()
                    .ok_or_else(|| error(codes::INVALID, "urls must be strings"))?,
            );
        }
        urls
    } else {
        return Err(error(codes::INVALID, "expected a URL or an array of URLs"));
    };
    if urls.is_empty() {
        return Err(error(codes::INVALID, "no server URL given"));
    }
    Ok(urls)
}

/// A non-negative finite number option, if present.
fn number(obj: &JsValue, key: &str) -> Result<Option<f64>, JsValue> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n >= 0.0 && !n.is_nan() => Ok(Some(n)),
            _ => Err(error(
                codes::INVALID,
                &format!("option {key} must be a non-negative number"),
            )),
        },
    }
}

/// The `presence` flag of `subscribe`'s options (`SubscribeOptions` in the typings).
pub(crate) fn presence_option(options: &JsValue) -> Result<bool, JsValue> {
    match get(options, "presence") {
        None => Ok(false),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| error(codes::INVALID, "option presence must be a boolean")),
    }
}

fn millis(n: f64) -> Duration {
    Duration::from_millis(if n.is_finite() { n as u64 } else { u64::MAX })
}

/// Where each `hello`'s credentials come from (`auth` / `getAuth` of `ClientOptions`).
pub(crate) enum AuthSource {
    /// No credentials.
    None,
    /// The same value every time.
    Static(Box<RawValue>),
    /// Called before every connection attempt; returns the value or a promise of it.
    Callback(Function),
}

/// The `WebSocket` option of `ClientOptions`: the constructor to open sockets with (`None`:
/// the global one). Without either there is nothing to connect with: an error now, with what
/// to do, rather than a client that retries forever.
pub(crate) fn websocket_option(options: &JsValue) -> Result<Option<Function>, JsValue> {
    if let Some(ctor) = get(options, "WebSocket") {
        return ctor
            .dyn_into::<Function>()
            .map(Some)
            .map_err(|_| error(codes::INVALID, "option WebSocket must be a constructor"));
    }
    match get(&js_sys::global(), "WebSocket") {
        Some(_) => Ok(None),
        None => Err(error(
            codes::INVALID,
            "this JS host has no global WebSocket: pass one in the options ({ WebSocket } from \
             the ws package), or use Node >= 22 (Node 20: node --experimental-websocket)",
        )),
    }
}

/// The credentials option of `ClientOptions`: `getAuth` (a function) wins over `auth`.
pub(crate) fn auth_source(options: &JsValue) -> Result<AuthSource, JsValue> {
    if let Some(f) = get(options, "getAuth") {
        return f
            .dyn_into::<Function>()
            .map(AuthSource::Callback)
            .map_err(|_| error(codes::INVALID, "option getAuth must be a function"));
    }
    match get(options, "auth") {
        Some(v) => to_raw(&v).map(AuthSource::Static),
        None => Ok(AuthSource::None),
    }
}

/// The core configuration from the JS options object (see `ClientOptions` in the typings).
pub(crate) fn config(urls: Vec<String>, options: &JsValue) -> Result<Config, JsValue> {
    let mut config = Config {
        urls,
        seed: random_seed(),
        ..Config::default()
    };
    if let Some(n) = number(options, "askTimeoutMs")? {
        config.ask_timeout = millis(n);
    }
    if let Some(n) = number(options, "connectTimeoutMs")? {
        config.connect_timeout = millis(n);
    }
    if let Some(n) = number(options, "offlineQueue")? {
        config.offline_queue = if n.is_finite() {
            n as usize
        } else {
            usize::MAX
        };
    }
    if let Some(reconnect) = get(options, "reconnect") {
        if let Some(n) = number(&reconnect, "baseMs")? {
            config.reconnect.base = millis(n);
        }
        if let Some(n) = number(&reconnect, "maxMs")? {
            config.reconnect.max = millis(n);
        }
        if let Some(n) = number(&reconnect, "maxAttempts")? {
            config.reconnect.max_attempts = n.is_finite().then_some(n as u32);
        }
    }
    Ok(config)
}
