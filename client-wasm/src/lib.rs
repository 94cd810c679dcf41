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
//! The TypeScript declarations are written out in full below (`TYPESCRIPT`), and are the
//! reference for the JS API. Errors are JS `Error`s named `SssError` with a stable `code` (the
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

#[wasm_bindgen(typescript_custom_section)]
const TYPESCRIPT: &'static str = r#"
/**
 * A stable error code: one of the protocol's codes, or an application's own code from a
 * server handler's `Rejection`.
 */
export type ErrorCode =
  | "timeout"
  | "disconnected"
  | "refused"
  | "unknown_topic"
  | "bad_request"
  | "invalid_channel"
  | "reserved_channel"
  | "internal"
  | "unavailable"
  | "booted"
  | "busy"
  | "limit"
  | "superseded"
  | "cancelled"
  | "not_subscribed"
  | "no_presence"
  | "queue_full"
  | "closed"
  | "invalid"
  | "unauthorized"
  | "forbidden"
  | (string & {});

/** Every error the client raises or rejects with is an `Error` with these properties. */
export interface SssError extends Error {
  name: "SssError";
  /** Stable machine-readable code. */
  code: ErrorCode;
  /** Human-readable reason. */
  reason: string;
  /**
   * For `Client.connect` failures: the WebSocket close code (1006: unreachable; 4010: the
   * server refused the `hello`, and `code` is the server's, e.g. `unauthorized`).
   */
  closeCode?: number;
}

/** The connection status. */
export type Status = "connecting" | "ready" | "reconnecting" | "syncing" | "closed";

/** Details of a status change: `attempt` for `reconnecting`, `code`/`reason` for `closed`. */
export interface StatusInfo {
  /** Reconnect attempt (0-based) since the last successful connection. */
  attempt?: number;
  /** WebSocket close code that closed the client for good. */
  code?: number;
  /** Why the client closed. */
  reason?: string;
  /** For `closed`: the server's error that closed it (a refused `hello`: `unauthorized`, ...). */
  error?: SssError;
}

/** Reconnect policy: exponential backoff with full jitter. */
export interface ReconnectOptions {
  /** Ceiling of the first delay, in ms (default 250). */
  baseMs?: number;
  /** Largest delay ceiling, in ms (default 10000). */
  maxMs?: number;
  /** Give up (status `closed`) after this many failed reconnect attempts (default: never). */
  maxAttempts?: number | null;
}

/** Options of `Client.connect` and `new Client`. */
export interface ClientOptions {
  reconnect?: ReconnectOptions;
  /** How long an ask waits for its answer, offline time included (default 10000 ms). */
  askTimeoutMs?: number;
  /** How long a connection attempt may take until the server's welcome (default 10000 ms). */
  connectTimeoutMs?: number;
  /** Asks and tells held while disconnected (default 1024); past it they fail `queue_full`. */
  offlineQueue?: number;
  /** Credentials sent in every `hello` for the server's session parser (a token, any JSON). */
  auth?: unknown;
  /**
   * Called before every connection attempt (first and reconnects); its value (or the value its
   * promise resolves to) is sent as that attempt's `auth`. A throw or rejection fails the
   * attempt. Takes precedence over `auth`.
   */
  getAuth?: () => unknown | Promise<unknown>;
}

/** A place in a channel's stream: `seq` grows by one per publication within an `epoch`. */
export interface Position {
  epoch: string;
  seq: number;
}

/** One publication, as the async iterator yields it. */
export interface Publication<T = unknown> {
  channel: string;
  topic: string;
  msg: T;
  position: Position;
}

/** What an `on()` callback gets besides the payload. */
export interface PublicationMeta {
  topic: string;
  channel: string;
  position: Position;
}

/**
 * How a subscription (re)started: `new`, `recovered` (resynced, nothing lost), or
 * `unrecoverable` (resynced, but publications were lost: reload the state).
 */
export type Recovery = "new" | "recovered" | "unrecoverable";

/** Options of `Client.subscribe`. */
export interface SubscribeOptions {
  /**
   * Receive the channel's join and leave events (`onJoin`, `onLeave`), when the server grants
   * the subscription presence (default `false`). `presence()` and `presenceStats()` do not
   * need it.
   */
  presence?: boolean;
}

/**
 * One member of a channel's presence: one subscribed socket. A user with three tabs open is
 * three members with the same `user`.
 */
export interface Member<I = unknown> {
  /** The socket's cluster-wide id (compare with `Client.socketId`). */
  socket: string;
  /** The user id the server's session parser gave, if any. */
  user?: string;
  /** The session id the server's session parser gave, if any. */
  session?: string;
  /** What the server's session parser attached for others to see (a display name, ...). */
  info?: I;
}

/** A channel's presence counts. */
export interface PresenceStats {
  /** Members: subscribed sockets. */
  sockets: number;
  /** Distinct users among them (anonymous sockets are not counted). */
  users: number;
}

/**
 * A connection to a Super Scaled Sockets server or cluster. It reconnects by itself
 * (exponential backoff with full jitter, rotating over the URLs), resubscribes every channel and
 * recovers what it missed.
 */
export class Client {
  /**
   * Starts a client without waiting: it connects, and reconnects, in the background (also when
   * the first attempt fails). Commands issued before it is ready wait in the offline queue.
   */
  constructor(urls: string | string[], options?: ClientOptions);
  /**
   * Connects and resolves once the connection is ready. Rejects with `closeCode` when that
   * first connection fails: the server's code (`unauthorized`, ...) when it refused the
   * `hello`, else `closed` (1006: the server could not be reached).
   */
  static connect(urls: string | string[], options?: ClientOptions): Promise<Client>;
  /** Asks the server's handler for `topic`; resolves with its answer. */
  ask<T = unknown>(topic: string, msg?: unknown): Promise<T>;
  /** Tells the server's handler for `topic` (fire-and-forget). Throws if the client is closed
   *  or its offline queue is full. */
  tell(topic: string, msg?: unknown): void;
  /** Subscribes to a channel (with an optional query for the server's subscription parser);
   *  resolves when the server accepts, rejects (e.g. code `refused`) when it does not.
   *  `{ presence: true }` also delivers the channel's join and leave events. */
  subscribe<T = unknown>(
    channel: string,
    query?: unknown,
    options?: SubscribeOptions,
  ): Promise<Subscription<T>>;
  /** Calls `fn(msg, topic)` for every message the server tells this client on `topic`. */
  onTell<T = unknown>(topic: string, fn: (msg: T, topic: string) => void): void;
  /** Removes a callback added with `onTell`. */
  offTell<T = unknown>(topic: string, fn: (msg: T, topic: string) => void): void;
  /** Calls `fn(status, info)` on every status change. */
  onStatus(fn: (status: Status, info: StatusInfo) => void): void;
  /** Removes a callback added with `onStatus`. */
  offStatus(fn: (status: Status, info: StatusInfo) => void): void;
  /** The current status. */
  readonly status: Status;
  /** This socket's cluster-wide id, while connected. */
  readonly socketId: string | undefined;
  /** The user id the server's session parser gave this connection, if any. */
  readonly user: string | undefined;
  /** The session id the server's session parser gave this connection, if any. */
  readonly session: string | undefined;
  /** Closes for good: pending asks reject with `closed`, subscriptions end. */
  close(): void;
  /** Closes the client and frees its memory. */
  free(): void;
  [Symbol.dispose](): void;
}

/**
 * A live subscription. Publications arrive in order, each once, across reconnects: read them
 * with `on()` or `for await (const m of sub)`. The async iterator buffers from the start until
 * read, except when `on()` is called before iterating (callback-only use keeps no buffer).
 */
export class Subscription<T = unknown> implements AsyncIterableIterator<Publication<T>> {
  private constructor();
  /** The channel. */
  readonly channel: string;
  /** How the subscription last (re)started. */
  readonly recovery: Recovery;
  /** The last position seen on the channel. */
  readonly position: Position | undefined;
  /** Calls `fn(msg, meta)` for every publication. */
  on(fn: (msg: T, meta: PublicationMeta) => void): void;
  /** Calls `fn(msg, meta)` for every publication of `topic`. */
  on(topic: string, fn: (msg: T, meta: PublicationMeta) => void): void;
  /** Removes a callback added with `on`. */
  off(fn: (msg: T, meta: PublicationMeta) => void): void;
  off(topic: string, fn: (msg: T, meta: PublicationMeta) => void): void;
  /**
   * Calls `fn` after every resync: `recovered` (the missed publications follow, in order) or
   * `unrecoverable` (the history no longer reaches back: publications were lost, reload).
   */
  onRecovery(fn: (recovery: "recovered" | "unrecoverable", position: Position) => void): void;
  /** Calls `fn(error)` when the subscription ends: an `SssError` when the server ended it
   *  (e.g. `booted`) or the client closed (code `closed`, however it closed), `undefined`
   *  when the app unsubscribed. A `for await` loop ends normally when the client closes, and
   *  throws the error when the server ended the subscription. */
  onEnd(fn: (error: SssError | undefined) => void): void;
  /** Whether the subscription has presence, as the server said when it last (re)accepted it. */
  readonly hasPresence: boolean;
  /**
   * The channel's members, cluster-wide, this socket included (in no particular order).
   * Behaves like an ask (same timeout; `disconnected` if the connection drops first), but is
   * sent once the subscription is live: during a resync it waits for it. Rejects with
   * `no_presence` when the subscription has no presence, `not_subscribed` once it has ended.
   * Presence is not replayed after a reconnect: call it again from `onRecovery`.
   */
  presence<I = unknown>(): Promise<Member<I>[]>;
  /** The channel's presence counts; like `presence()`. */
  presenceStats(): Promise<PresenceStats>;
  /**
   * Calls `fn(member)` when another socket joins the channel (never for this socket); only for
   * a subscription made with `{ presence: true }` that the server granted presence. Returns a
   * function that removes the callback.
   */
  onJoin<I = unknown>(fn: (member: Member<I>) => void): () => void;
  /** Calls `fn(member)` when another socket leaves the channel; like `onJoin`. */
  onLeave<I = unknown>(fn: (member: Member<I>) => void): () => void;
  next(): Promise<IteratorResult<Publication<T>, undefined>>;
  /** Stops iterating (`break` in `for await`): publications buffered but not yet read are
   *  dropped and buffering stops until the next `next()`. The subscription goes on. */
  return(): Promise<IteratorResult<Publication<T>, undefined>>;
  [Symbol.asyncIterator](): Subscription<T>;
  /** Leaves the channel; the async iterator ends. */
  unsubscribe(): void;
  free(): void;
  [Symbol.dispose](): void;
}
"#;

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
        Ok(Client {
            shared: Shared::start(config, auth),
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
        let config = js::urls(&urls).and_then(|urls| js::config(urls, &options));
        match config.and_then(|c| Ok((c, js::auth_source(&options)?))) {
            Ok((config, auth)) => Shared::connect(config, auth),
            Err(e) => Promise::reject(&e),
        }
    }

    /// Asks the server's handler for `topic`: a promise of its answer (JSON), rejected with an
    /// `SssError` (the handler's code, `timeout`, `disconnected`, `closed`, ...).
    #[wasm_bindgen(skip_typescript)]
    pub fn ask(&self, topic: &str, msg: JsValue) -> Promise {
        self.shared.ask(topic, &msg)
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

    /// Calls `f(msg, topic)` for every message the server tells this client on `topic`.
    #[wasm_bindgen(js_name = onTell, skip_typescript)]
    pub fn on_tell(&self, topic: String, f: Function) {
        self.shared.on_tell(topic, f);
    }

    /// Removes a callback added with `onTell`.
    #[wasm_bindgen(js_name = offTell, skip_typescript)]
    pub fn off_tell(&self, topic: &str, f: Function) {
        self.shared.off_tell(topic, &f);
    }

    /// Calls `f(status, info)` on every status change.
    #[wasm_bindgen(js_name = onStatus, skip_typescript)]
    pub fn on_status(&self, f: Function) {
        self.shared.on_status(f);
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
