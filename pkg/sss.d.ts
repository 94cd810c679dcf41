// The typings of super-scaled-sockets, written by hand (scripts/build-pkg.sh copies them into
// dist/ beside the JS they type: client-wasm/js/client.js).
// They are checked by `tsc --strict` with `skipLibCheck: false` (tests/browser/types), and the
// `ErrorCode` union against the protocol's codes (a test in client-wasm/src/lib.rs).

/**
 * A stable error code: one of the protocol's codes, or an application's own code from a
 * server handler's `Rejection` (or the session parser's `Refusal`).
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
  | "aborted"
  | "protocol"
  | "unsupported_version"
  | (string & {});

/** Every error the client raises or rejects with: `instanceof SssError` works. */
export class SssError extends Error {
  private constructor();
  readonly name: "SssError";
  /** Stable machine-readable code. */
  readonly code: ErrorCode;
  /** Human-readable reason. */
  readonly reason: string;
  /**
   * For `Client.connect` failures: the WebSocket close code (1006: unreachable; 4010: the
   * server refused the `hello`, and `code` is the server's, e.g. `unauthorized`).
   */
  readonly closeCode?: number;
}

/** Whether `e` is an error of this client (also across copies of the package). */
export function isSssError(e: unknown): e is SssError;

declare global {
  // `using client = ...` (explicit resource management) needs `Symbol.dispose`, which only
  // TypeScript's `esnext.disposable` lib declares; declared here too (the same declaration,
  // which merges with it) so that the classes below compile with any `lib`.
  interface SymbolConstructor {
    readonly dispose: unique symbol;
  }
}

/** Removes the callback it was returned for. Calling it again does nothing. */
export type Disposer = () => void;

/** The connection status. */
export type Status = "connecting" | "ready" | "reconnecting" | "syncing" | "closed";

/** Details of a status: `attempt` for `reconnecting`, `code`/`reason`/`error` for `closed`. */
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
  getAuth?: () => unknown;
  /**
   * The `WebSocket` constructor to connect with, where the JS host has none (the `ws` package
   * in Node < 22): `{ WebSocket: require("ws") }`. Default: the global `WebSocket`; without
   * either, `Client.connect` rejects (and `new Client` throws) with code `invalid`.
   */
  WebSocket?: new (url: string) => unknown;
}

/** What `AbortSignal` offers that `ask` uses (any `AbortSignal` fits). */
export interface AbortSignalLike {
  readonly aborted: boolean;
  addEventListener(type: "abort", listener: () => void): void;
  removeEventListener(type: "abort", listener: () => void): void;
}

/** Options of one ask. */
export interface AskOptions {
  /** This ask's timeout in ms, instead of the client's `askTimeoutMs` (shorter or longer). */
  timeoutMs?: number;
  /**
   * Gives up on the answer when aborted: the promise rejects with code `aborted` (the server
   * may still have run the handler).
   */
  signal?: AbortSignalLike;
}

/** A place in a channel's stream: `seq` grows by one per publication within an `epoch`. */
export interface Position {
  epoch: string;
  seq: number;
}

/** Payloads by topic: what the messages of each topic carry. */
export type Messages = object;

/** Any topic, any payload: the default where no map is given. */
export type AnyMessages = Record<string, unknown>;

/** The topics of a message map. */
export type TopicOf<M extends Messages> = keyof M & string;

/** One publication, as the async iterator yields it: `msg` is typed by its `topic`. */
export type Publication<M extends Messages = AnyMessages> = {
  [K in TopicOf<M>]: { channel: string; topic: K; msg: M[K]; position: Position };
}[TopicOf<M>];

/** What an `on()` callback gets besides the payload. */
export interface PublicationMeta<K extends string = string> {
  topic: K;
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
 * An application's API, declared once and given to `Client.connect<MyApi>(...)`: every part is
 * optional, and a part left out accepts anything.
 *
 * ```ts
 * interface ChatApi {
 *   asks: { add: { req: [number, number]; res: number } };
 *   tells: { typing: { room: string } };          // client → server
 *   told: { notice: string };                      // server → client
 *   topics: { msg: { from: string; text: string } }; // publications (any channel)
 * }
 * ```
 */
export interface Api {
  /** Ask topics: what each takes (`req`) and answers (`res`). */
  asks?: object;
  /** Tell topics the client sends, with their payloads. */
  tells?: object;
  /** Tell topics the server sends to the client, with their payloads. */
  told?: object;
  /** Publication topics, with their payloads (per channel: `subscribe<Messages>(...)`). */
  topics?: object;
}

/** The API of a client with no declared API: every topic, any payload. */
export interface AnyApi {
  asks: Record<string, { req: unknown; res: unknown }>;
  tells: AnyMessages;
  told: AnyMessages;
  topics: AnyMessages;
}

/** A part of an API, or anything when it is not declared. */
export type ApiPart<A extends Api, K extends keyof AnyApi> = A extends { [P in K]?: infer T }
  ? NonNullable<T> extends object
    ? NonNullable<T>
    : AnyApi[K]
  : AnyApi[K];

/** What the ask `K` of API `A` takes. */
export type AskRequest<A extends Api, K> = K extends keyof ApiPart<A, "asks">
  ? ApiPart<A, "asks">[K] extends { req: infer R }
    ? R
    : unknown
  : never;

/** What the ask `K` of API `A` answers. */
export type AskResponse<A extends Api, K> = K extends keyof ApiPart<A, "asks">
  ? ApiPart<A, "asks">[K] extends { res: infer R }
    ? R
    : unknown
  : never;

/**
 * A connection to a Super Scaled Sockets server or cluster. It reconnects by itself
 * (exponential backoff with full jitter, rotating over the URLs), resubscribes every channel and
 * recovers what it missed.
 */
export class Client<A extends Api = AnyApi> {
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
  static connect<A extends Api = AnyApi>(
    urls: string | string[],
    options?: ClientOptions,
  ): Promise<Client<A>>;
  /** Asks the server's handler for `topic`; resolves with its answer. */
  ask<K extends keyof ApiPart<A, "asks"> & string>(
    topic: K,
    msg: AskRequest<A, K>,
    options?: AskOptions,
  ): Promise<AskResponse<A, K>>;
  /** Tells the server's handler for `topic` (fire-and-forget). Throws if the client is closed
   *  or its offline queue is full. */
  tell<K extends TopicOf<ApiPart<A, "tells">>>(topic: K, msg: ApiPart<A, "tells">[K]): void;
  /** Subscribes to a channel (with an optional query for the server's subscription parser);
   *  resolves when the server accepts, rejects (e.g. code `refused`) when it does not.
   *  `{ presence: true }` also delivers the channel's join and leave events. */
  subscribe<M extends Messages = ApiPart<A, "topics">>(
    channel: string,
    query?: unknown,
    options?: SubscribeOptions,
  ): Promise<Subscription<M>>;
  /** Calls `fn(msg, topic)` for every message the server tells this client on `topic`. */
  onTell<K extends TopicOf<ApiPart<A, "told">>>(
    topic: K,
    fn: (msg: ApiPart<A, "told">[K], topic: K) => void,
  ): Disposer;
  /** Removes a callback added with `onTell`. */
  offTell<K extends TopicOf<ApiPart<A, "told">>>(
    topic: K,
    fn: (msg: ApiPart<A, "told">[K], topic: K) => void,
  ): void;
  /** Calls `fn(status, info)` with the current status at once, then on every change. */
  onStatus(fn: (status: Status, info: StatusInfo) => void): Disposer;
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
  /** Closes the client and frees its memory (also `using client = ...`). */
  free(): void;
  [Symbol.dispose](): void;
}

/**
 * A live subscription. Publications arrive in order, each once, across reconnects: read them
 * with `on()` or `for await (const m of sub)`. The async iterator buffers from the start until
 * read, except when `on()` is called before iterating (callback-only use keeps no buffer).
 */
export class Subscription<M extends Messages = AnyMessages>
  implements AsyncIterableIterator<Publication<M>>
{
  private constructor();
  /** The channel. */
  readonly channel: string;
  /** How the subscription last (re)started. */
  readonly recovery: Recovery;
  /** The last position seen on the channel. */
  readonly position: Position | undefined;
  /** Calls `fn(msg, meta)` for every publication of `topic`. */
  on<K extends TopicOf<M>>(topic: K, fn: (msg: M[K], meta: PublicationMeta<K>) => void): Disposer;
  /** Calls `fn(msg, meta)` for every publication. */
  on(fn: (msg: M[TopicOf<M>], meta: PublicationMeta<TopicOf<M>>) => void): Disposer;
  /** Removes a callback added with `on` (the same arguments). */
  off<K extends TopicOf<M>>(topic: K, fn: (msg: M[K], meta: PublicationMeta<K>) => void): void;
  off(fn: (msg: M[TopicOf<M>], meta: PublicationMeta<TopicOf<M>>) => void): void;
  /**
   * Calls `fn` after every resync: `recovered` (the missed publications follow, in order) or
   * `unrecoverable` (the history no longer reaches back: publications were lost, reload).
   */
  onRecovery(fn: (recovery: "recovered" | "unrecoverable", position: Position) => void): Disposer;
  /** Calls `fn(error)` when the subscription ends: an `SssError` when the server ended it
   *  (e.g. `booted`) or the client closed (code `closed`, however it closed), `undefined`
   *  when the app unsubscribed. A `for await` loop ends normally when the client closes, and
   *  throws the error when the server ended the subscription. */
  onEnd(fn: (error: SssError | undefined) => void): Disposer;
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
   * a subscription made with `{ presence: true }` that the server granted presence.
   */
  onJoin<I = unknown>(fn: (member: Member<I>) => void): Disposer;
  /** Calls `fn(member)` when another socket leaves the channel; like `onJoin`. */
  onLeave<I = unknown>(fn: (member: Member<I>) => void): Disposer;
  next(): Promise<IteratorResult<Publication<M>, undefined>>;
  /** Stops iterating (`break` in `for await`): publications buffered but not yet read are
   *  dropped and buffering stops until the next `next()`. The subscription goes on. */
  return(): Promise<IteratorResult<Publication<M>, undefined>>;
  [Symbol.asyncIterator](): Subscription<M>;
  /** Leaves the channel; the async iterator ends. */
  unsubscribe(): void;
  /** Frees the handle's memory (also `using sub = ...`). */
  free(): void;
  [Symbol.dispose](): void;
}

/**
 * Loads the WebAssembly module. Optional: the module is inlined in the package and loads on
 * first use; kept so that code written as `await init()` runs unchanged.
 */
export default function init(module_or_path?: unknown): Promise<void>;

/** `init`, synchronously. */
export function initSync(module?: unknown): void;
