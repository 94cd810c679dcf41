//! `sss-wasm`: the browser client of Super Scaled Sockets, published on npm as
//! `super-scaled-sockets`.
//!
//! A thin driver around the sans-IO state machine of [`sss_core::client`] — the same core the
//! native `sss-client` runs: asks, the offline queue, subscriptions, reconnect with backoff and
//! resync all live there. This crate owns a browser `WebSocket` (web-sys) and one `setTimeout`
//! (gloo-timers), reads the clock from `performance.now()`, and exposes a camelCase JS API
//! through wasm-bindgen:
//!
//! ```js
//! import init, { Client } from "super-scaled-sockets";
//! await init();
//! const client = await Client.connect("wss://example.com/ws", { askTimeoutMs: 5000 });
//! const sum = await client.ask("add", [2, 3]);
//! const room = await client.subscribe("room:1");
//! room.onRecovery((r) => { if (r === "unrecoverable") reloadRoom(); });
//! for await (const { topic, msg, position } of room) console.log(position.seq, topic, msg);
//! ```
//!
//! The TypeScript declarations are written by hand in `pkg/sss.d.ts` (the build puts them in
//! place of wasm-bindgen's), and are the reference for the JS API. Errors are JS `Error`s named `SssError` with a stable `code` (the
//! protocol's codes: `timeout`, `disconnected`, `refused`, `unknown_topic`, `closed`,
//! `queue_full`, ..., or an application's own code from a handler's rejection).
//!
//! Credentials go in the protocol's `hello`: the `auth` option (any JSON, e.g. a token) or
//! `getAuth` (a function returning it or a promise of it, called before every connection
//! attempt, so an expiring token is refreshed). A `hello` the server's session parser refuses
//! is an `SssError` with the server's code (`unauthorized`, `forbidden` or the application's)
//! and reason: `Client.connect` rejects with it (`closeCode` 4010), and a client refused on a
//! reconnect closes for good with it in the `closed` status info's `error`.
//!
//! Everything compiles on any target (so the native workspace lints it); it only runs in a JS
//! host with `WebSocket`, `performance` and `setTimeout`.
#![forbid(unsafe_code)]

mod driver;
mod js;
mod socket;
mod subscription;

use std::rc::Rc;

use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;

use driver::Shared;
pub use subscription::Subscription;

/// A connection to a Super Scaled Sockets server or cluster (see the TypeScript declarations
/// for the JS API). Dropping (freeing) it closes the connection.
#[wasm_bindgen(skip_typescript)]
pub struct Client {
    shared: Rc<Shared>,
}

#[wasm_bindgen]
impl Client {
    /// Starts a client that connects (and reconnects) in the background; see `Client.connect`
    /// for the arguments.
    #[wasm_bindgen(constructor, skip_typescript)]
    pub fn new(urls: JsValue, options: JsValue) -> Result<Client, JsValue> {
        let config = js::config(js::urls(&urls)?, &options)?;
        let auth = js::auth_source(&options)?;
        let ws_ctor = js::websocket_option(&options)?;
        Ok(Client {
            shared: Shared::start(config, auth, ws_ctor),
        })
    }

    /// Connects to `urls` (a URL or an array of URLs, tried round-robin on reconnects) and
    /// resolves once the connection is ready; rejects with code `closed` if that first
    /// connection fails. `options`: `{ reconnect: { baseMs, maxMs, maxAttempts },
    /// askTimeoutMs, connectTimeoutMs, offlineQueue, auth, getAuth }`.
    ///
    /// From Rust (tests): `Client::try_from_js_value(JsFuture::from(promise).await?)`.
    #[wasm_bindgen(skip_typescript)]
    pub fn connect(urls: JsValue, options: JsValue) -> Promise {
        let parsed = js::urls(&urls).and_then(|urls| {
            let config = js::config(urls, &options)?;
            Ok((
                config,
                js::auth_source(&options)?,
                js::websocket_option(&options)?,
            ))
        });
        match parsed {
            Ok((config, auth, ws_ctor)) => Shared::connect(config, auth, ws_ctor),
            Err(e) => Promise::reject(&e),
        }
    }

    /// Asks the server's handler for `topic`: a promise of its answer (JSON), rejected with an
    /// `SssError` (the handler's code, `timeout`, `disconnected`, `closed`, `aborted`, ...).
    /// `options`: `{ timeoutMs, signal }`.
    #[wasm_bindgen(skip_typescript)]
    pub fn ask(&self, topic: &str, msg: JsValue, options: JsValue) -> Promise {
        self.shared.ask(topic, &msg, &options)
    }

    /// Tells the server's handler for `topic` (fire-and-forget); while disconnected the tell
    /// waits in the offline queue. Throws when the client is closed or the queue is full.
    #[wasm_bindgen(skip_typescript)]
    pub fn tell(&self, topic: &str, msg: JsValue) -> Result<(), JsValue> {
        self.shared.tell(topic, &msg)
    }

    /// Subscribes to `channel` with an optional `query` for the server's subscription parser
    /// and optional `options` (`{ presence: true }`: the channel's join and leave events): a
    /// promise of a [`Subscription`], rejected when the server refuses.
    #[wasm_bindgen(skip_typescript)]
    pub fn subscribe(&self, channel: &str, query: JsValue, options: JsValue) -> Promise {
        match js::presence_option(&options) {
            Ok(presence) => self.shared.subscribe(channel, &query, presence),
            Err(e) => Promise::reject(&e),
        }
    }

    /// Calls `f(msg, topic)` for every message the server tells this client on `topic`;
    /// returns a function that removes it.
    #[wasm_bindgen(js_name = onTell, skip_typescript)]
    pub fn on_tell(&self, topic: String, f: Function) -> JsValue {
        self.shared.on_tell(topic, f)
    }

    /// Removes a callback added with `onTell`.
    #[wasm_bindgen(js_name = offTell, skip_typescript)]
    pub fn off_tell(&self, topic: &str, f: Function) {
        self.shared.off_tell(topic, &f);
    }

    /// Calls `f(status, info)` with the current status at once, then on every change; returns
    /// a function that removes it.
    #[wasm_bindgen(js_name = onStatus, skip_typescript)]
    pub fn on_status(&self, f: Function) -> JsValue {
        self.shared.on_status(f)
    }

    /// Removes a callback added with `onStatus`.
    #[wasm_bindgen(js_name = offStatus, skip_typescript)]
    pub fn off_status(&self, f: Function) {
        self.shared.off_status(&f);
    }

    /// The status: `connecting`, `ready`, `reconnecting`, `syncing` or `closed`.
    #[wasm_bindgen(getter, skip_typescript)]
    pub fn status(&self) -> String {
        js::status_name(self.shared.status()).to_owned()
    }

    /// This socket's cluster-wide id, while connected.
    #[wasm_bindgen(getter, js_name = socketId, skip_typescript)]
    pub fn socket_id(&self) -> Option<String> {
        self.shared.socket_id()
    }

    /// The user id the server's session parser gave this connection.
    #[wasm_bindgen(getter, skip_typescript)]
    pub fn user(&self) -> Option<String> {
        self.shared.user()
    }

    /// The session id the server's session parser gave this connection.
    #[wasm_bindgen(getter, skip_typescript)]
    pub fn session(&self) -> Option<String> {
        self.shared.session()
    }

    /// Closes the client for good: pending asks reject with `closed`, subscriptions end.
    #[wasm_bindgen(skip_typescript)]
    pub fn close(&self) {
        self.shared.close();
    }
}

impl Client {
    /// The JS object of a client handle.
    pub(crate) fn from_shared(shared: Rc<Shared>) -> JsValue {
        JsValue::from(Client { shared })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.close();
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
