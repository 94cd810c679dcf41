// The JS face of super-scaled-sockets: the browser (and Node) driver around the client core,
// which runs in WebAssembly (client-wasm/src/lib.rs, the same sans-IO state machine as the
// native Rust client). Every protocol decision (asks, the offline queue, subscriptions,
// reconnect with backoff, resync, what a close does) is the core's; this module only moves
// what happens in and what the core decides out: it owns the WebSocket and one timer, parses
// frames with JSON.parse (payloads stay JS values and never enter the wasm), and turns the
// core's outputs into promises and callbacks. scripts/build-pkg.sh bundles it with the
// wasm-bindgen glue and the .wasm inlined (dist/sss.js, dist/sss.cjs).
import { Core, initSync as loadCore } from "./core.js";
import wasm, { key } from "./wasm.js";
import { SssError, isSssError } from "./errors.js";

export { SssError, isSssError };

let loaded = false;

/** Compiles the inlined module (its bytes as a string, a character per byte XORed with `key`),
 *  once: synchronously (it is small, and every host allows that). */
function load() {
  if (!loaded) {
    loadCore({ module: Uint8Array.from(wasm, (c) => c.charCodeAt(0) ^ key) });
    loaded = true;
  }
}

/**
 * Loads the WebAssembly module. Optional: the module is inlined and loads on first use; kept so
 * that code written for earlier versions (`await init()`) runs unchanged.
 */
export default async function init() {
  load();
}

/** `init`, synchronously. */
export function initSync() {
  load();
}

// The kinds of the core's outputs (`Sink::out` in client-wasm/src/lib.rs), with what `a`, `b`,
// `c` (strings), `n`, `m` (numbers) and `p` (a payload) carry for each.
const CONNECT = 0; //      a url
const CLOSE = 1; //        a reason, n code
const SEND = 2; //         a frame
const STATUS = 3; //       n status (STATUSES), m attempt
const ASK_OK = 4; //       n id, p answer
const ASK_ERR = 5; //      n id, b code, c reason
const TELL = 6; //         a topic, p msg
const SUBSCRIBED = 7; //   a channel, b epoch, n seq, m presence
const RESYNCED = 8; //     a channel, b epoch, n seq, m presence | recovered << 1
const SUB_FAILED = 9; //   a channel, b code, c reason
const PUBLICATION = 10; // a channel, b topic, c epoch, n seq, p msg
const JOIN = 11; //        a channel, p member
const LEAVE = 12; //       a channel, p member
const UNSUBSCRIBED = 13; // a channel, b code, c reason
const CLOSED = 14; //      a reason, n code, m 1 with the server's error b code, c reason
// (15 POSITION: b epoch, n seq; 16 WHO: a socket, b user, c session, m which are present;
// 17 ERROR: a code, b reason.)
const STATUSES = ["connecting", "ready", "reconnecting", "syncing", "closed"];
// `Core::input` (what happened), `Core::command`, `Core::query` (client-wasm/src/lib.rs).
const IN_OPEN = 0; //        -
const IN_CLOSED = 1; //      text reason, n code
const IN_TIMEOUT = 2; //     -
const IN_MALFORMED = 3; //   text what is wrong
const IN_AUTH = 4; //        p credentials (JSON text)
const IN_UNSUBSCRIBE = 5; // text channel
const IN_CLOSE = 6; //       -
const CMD_ASK = 0; //        name topic, p msg, n timeout (NaN: the client's)
const CMD_TELL = 1; //       name topic, p msg
const CMD_SUBSCRIBE = 2; //  name channel, p query, n presence events (1)
const CMD_PRESENCE = 3; //   name channel, n counts (1)
const Q_DEADLINE = 0;
const Q_POSITION = 1;
const Q_WHO = 2;
const Q_ERROR = 3;

// The core hands its outputs here, one per `poll`; the driver acts on each after `poll`
// returned (an application callback may call back into the core).
let out;
const sink = {
  out(...item) {
    out = item;
  },
};

const now = () => performance.now();
const error = (code, reason) => new SssError(code, reason);
const aborted = () => error("aborted", "the ask was aborted");
const describe = (e) => (typeof e === "string" ? e : (e && e.message) || "unknown error");
const done = () => ({ value: undefined, done: true });

/** Calls an application callback; what it throws is reported, as a throwing listener is. */
function call(f, a, b) {
  try {
    f(a, b);
  } catch (e) {
    if (typeof reportError === "function") reportError(e);
    else setTimeout(() => { throw e; });
  }
}

/** The JSON text of a payload to send (`undefined`: null). */
function json(value) {
  if (value === undefined) return "null";
  let text;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    throw error("invalid", "not JSON-serializable: " + describe(e));
  }
  if (typeof text !== "string") throw error("invalid", "not JSON-serializable");
  return text;
}

/** A non-negative number option, `NaN` when absent (the core's default). */
function num(options, key) {
  const v = options == null ? undefined : options[key];
  if (v == null) return NaN;
  if (typeof v !== "number" || !(v >= 0)) {
    throw error("invalid", `option ${key} must be a non-negative number`);
  }
  return v;
}

/** The error of a command the core refused. */
function refused(core) {
  core.query(Q_ERROR, "", sink);
  return error(out[1], out[2]);
}

/** `s` cut to at most 123 UTF-8 bytes (what `WebSocket.close` accepts), at a character. */
function closeReason(s) {
  const bytes = new TextEncoder().encode(s);
  if (bytes.length <= 123) return s;
  let end = 123;
  while ((bytes[end] & 0xc0) === 0x80) end--;
  return new TextDecoder().decode(bytes.subarray(0, end));
}

function start(client, urls, options) {
  const list = typeof urls === "string" ? [urls] : Array.isArray(urls) ? urls : null;
  if (!list) throw error("invalid", "expected a URL or an array of URLs");
  if (list.some((u) => typeof u !== "string")) throw error("invalid", "urls must be strings");
  if (!list.length) throw error("invalid", "no server URL given");
  const o = options == null ? {} : options;
  let ws = o.WebSocket;
  if (ws != null) {
    if (typeof ws !== "function") throw error("invalid", "option WebSocket must be a constructor");
  } else if (typeof globalThis.WebSocket === "function") {
    ws = globalThis.WebSocket;
  } else {
    throw error(
      "invalid",
      "this JS host has no global WebSocket: pass one in the options ({ WebSocket } from the ws package), or use Node >= 22 (Node 20: node --experimental-websocket)",
    );
  }
  if (o.getAuth != null && typeof o.getAuth !== "function") {
    throw error("invalid", "option getAuth must be a function");
  }
  const auth = o.getAuth == null && o.auth !== undefined ? json(o.auth) : undefined;
  const r = o.reconnect == null ? {} : o.reconnect;
  const maxAttempts = r.maxAttempts === null ? Infinity : num(r, "maxAttempts");
  const [askMs, connectMs, baseMs, maxMs, queue] = [
    num(o, "askTimeoutMs"),
    num(o, "connectTimeoutMs"),
    num(r, "baseMs"),
    num(r, "maxMs"),
    num(o, "offlineQueue"),
  ];
  load();
  // Two draws of 26 random bits each: the reconnect jitter's seed.
  const seed = Math.floor(Math.random() * 2 ** 26) * 2 ** 26 + Math.floor(Math.random() * 2 ** 26);
  Object.assign(client, {
    _core: new Core(list.join("\n"), askMs, connectMs, baseMs, maxMs, maxAttempts, queue, seed, !!client._first, auth, now()),
    _WebSocket: ws,
    _getAuth: o.getAuth,
    _ws: null,
    _attempt: 0,
    _authWait: 0,
    _timer: undefined,
    _at: NaN,
    _pumping: false,
    _asks: new Map(),
    _subs: new Map(),
    _tells: [],
    _status: [],
    _name: "connecting",
    _info: {},
  });
  client._pump();
}

/** A connection to a Super Scaled Sockets server or cluster (see the typings). */
export class Client {
  constructor(urls, options) {
    start(this, urls, options);
  }

  static connect(urls, options) {
    return new Promise((resolve, reject) => {
      const client = Object.create(Client.prototype);
      client._first = [resolve, reject];
      start(client, urls, options);
    });
  }

  ask(topic, msg, options) {
    try {
      const text = json(msg);
      const timeout = num(options, "timeoutMs");
      const signal = options == null || options.signal == null ? undefined : options.signal;
      if (signal && signal.aborted) throw aborted();
      return this._answer(this._core.command(now(), CMD_ASK, topic, text, timeout), signal);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  tell(topic, msg) {
    const text = json(msg);
    const e = this._core.command(now(), CMD_TELL, topic, text, 0) ? undefined : refused(this._core);
    this._pump();
    if (e) throw e;
  }

  subscribe(channel, query, options) {
    try {
      const presence = options == null ? undefined : options.presence;
      if (presence != null && typeof presence !== "boolean") {
        throw error("invalid", "option presence must be a boolean");
      }
      const q = query == null ? undefined : json(query);
      if (!this._core.command(now(), CMD_SUBSCRIBE, channel, q, presence ? 1 : 0)) {
        throw refused(this._core);
      }
      const sub = new Subscription(this, channel);
      const promise = new Promise((resolve, reject) => {
        sub._ready = [resolve, reject];
      });
      this._subs.set(channel, sub);
      this._pump();
      return promise;
    } catch (e) {
      return Promise.reject(e);
    }
  }

  onTell(topic, fn) {
    this._tells.push([topic, fn]);
    return () => this.offTell(topic, fn);
  }

  offTell(topic, fn) {
    this._tells = this._tells.filter(([t, f]) => !(t === topic && f === fn));
  }

  onStatus(fn) {
    this._status.push(fn);
    call(fn, this._name, this._info);
    return () => this.offStatus(fn);
  }

  offStatus(fn) {
    this._status = this._status.filter((f) => f !== fn);
  }

  get status() {
    return this._name;
  }

  get socketId() {
    return this._who(1);
  }

  get user() {
    return this._who(2);
  }

  get session() {
    return this._who(4);
  }

  close() {
    this._input(IN_CLOSE);
  }

  free() {
    this.close();
  }

  // ---- The driver ------------------------------------------------------------------------

  _who(bit) {
    this._core.query(Q_WHO, "", sink);
    return out[5] & bit ? out[bit === 4 ? 3 : bit] : undefined;
  }

  /** The promise of the answer to the ask (or presence request) `id` (0: refused). */
  _answer(id, signal) {
    if (!id) {
      const e = refused(this._core);
      this._pump();
      return Promise.reject(e);
    }
    const promise = new Promise((resolve, reject) => {
      const entry = { resolve, reject };
      if (signal) {
        const abort = () => this._settle(id, false, aborted());
        signal.addEventListener("abort", abort);
        entry.off = () => signal.removeEventListener("abort", abort);
      }
      this._asks.set(id, entry);
    });
    this._pump();
    return promise;
  }

  _settle(id, ok, value) {
    const entry = this._asks.get(id);
    if (!entry) return;
    this._asks.delete(id);
    if (entry.off) entry.off();
    (ok ? entry.resolve : entry.reject)(value);
  }

  /** Acts on every output of the core, in order, then re-arms the timer. Not re-entered: a
   *  nested call returns at once and the outer loop picks up the new work. */
  _pump() {
    if (this._pumping) return;
    this._pumping = true;
    try {
      while (this._core.poll(sink)) this._act(...out);
    } finally {
      this._pumping = false;
    }
    const at = this._core.query(Q_DEADLINE, "", sink);
    if (at === this._at || (at !== at && this._at !== this._at)) return;
    clearTimeout(this._timer);
    this._at = at;
    if (at === at) {
      const delay = Math.min(Math.max(0, at - Math.ceil(now())), 2 ** 31 - 1);
      this._timer = setTimeout(() => {
        this._at = NaN;
        this._input(IN_TIMEOUT);
      }, delay);
    }
  }

  /** Tells the core what happened, then acts on what it decided. */
  _input(kind, text = "", n = 0, p = undefined) {
    this._core.input(now(), kind, text, n, p);
    this._pump();
  }

  _act(kind, a, b, c, n, m, p) {
    const sub = kind >= SUBSCRIBED && kind <= UNSUBSCRIBED ? this._subs.get(a) : undefined;
    switch (kind) {
      case CONNECT:
        return this._connect(a);
      case CLOSE:
        this._authWait = 0;
        return this._drop(n, a);
      case SEND:
        try {
          this._ws.send(a);
        } catch {
          // The socket is closing: its close event follows.
        }
        return;
      case STATUS:
        return this._statusChanged(STATUSES[n], n === 2 ? { attempt: m } : {});
      case ASK_OK:
        return this._settle(n, true, p);
      case ASK_ERR:
        return this._settle(n, false, error(b, c));
      case TELL:
        for (const [topic, f] of this._tells.slice()) if (topic === a) call(f, p, a);
        return;
      case SUBSCRIBED:
        if (sub && sub._ready) {
          const [resolve] = sub._ready;
          sub._ready = undefined;
          sub._presence = !!m;
          resolve(sub);
        }
        return;
      case RESYNCED:
        if (sub) sub._resynced(m & 2 ? "recovered" : "unrecoverable", !!(m & 1), { epoch: b, seq: n });
        return;
      case SUB_FAILED:
      case UNSUBSCRIBED:
        if (sub) {
          this._subs.delete(a);
          const e = error(b, c);
          if (sub._ready) sub._ready[1](e);
          else sub._end(e);
        }
        return;
      case PUBLICATION:
        if (sub) sub._publish(b, p, { epoch: c, seq: n });
        return;
      case JOIN:
      case LEAVE:
        if (sub) for (const [, joined, f] of sub._members.slice()) if (joined === (kind === JOIN)) call(f, p);
        return;
      case CLOSED:
        return this._closed(n, a, m ? error(b, c) : undefined);
    }
  }

  _statusChanged(name, info) {
    this._name = name;
    this._info = info;
    if (name === "ready" && this._first) {
      const [resolve] = this._first;
      this._first = undefined;
      resolve(this);
    }
    // `closed` is announced with its code and reason by the CLOSED event that follows.
    if (name !== "closed") for (const f of this._status.slice()) call(f, name, info);
  }

  /** Closed for good; `e`: the server's error that caused it (a refused `hello`). */
  _closed(code, reason, e) {
    const info = { code, reason };
    if (e) info.error = e;
    this._info = info;
    for (const f of this._status.slice()) call(f, "closed", info);
    if (this._first) {
      const [, reject] = this._first;
      this._first = undefined;
      const failure = e || error("closed", `could not connect (${code}): ${reason}`);
      failure.closeCode = code;
      reject(failure);
    }
  }

  /** A connection attempt: `getAuth` first, if given, then the socket. */
  _connect(url) {
    this._drop(1000, "client dropped");
    const attempt = ++this._attempt;
    if (!this._getAuth) return this._open(url);
    let auth;
    try {
      auth = Promise.resolve(this._getAuth());
    } catch (e) {
      return this._core.input(now(), IN_CLOSED, "getAuth threw: " + describe(e), 1006);
    }
    this._authWait = attempt;
    const settled = (ok, value) => {
      // Ignored when the attempt was abandoned meanwhile.
      if (this._authWait !== attempt) return;
      this._authWait = 0;
      let text;
      try {
        if (!ok) throw value;
        text = json(value);
      } catch (e) {
        return this._input(IN_CLOSED, "getAuth failed: " + describe(e), 1006);
      }
      this._core.input(now(), IN_AUTH, "", 0, text);
      this._open(url);
      this._pump();
    };
    auth.then((v) => settled(true, v), (e) => settled(false, e));
  }

  /** Opens the socket, or reports why the host refused at once (a malformed URL, ...). */
  _open(url) {
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (e) {
      return this._core.input(now(), IN_CLOSED, `cannot open ${url}: ${describe(e)}`, 1006);
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    const gone = (code, reason) => {
      if (this._ws !== ws) return;
      this._drop();
      this._input(IN_CLOSED, reason, code);
    };
    ws.onopen = () => {
      if (this._ws === ws) this._input(IN_OPEN);
    };
    ws.onmessage = (e) => {
      // Text frames only: the protocol has none in binary.
      if (this._ws !== ws || typeof e.data !== "string") return;
      this._frame(e.data);
      this._pump();
    };
    // Browsers hide why: an unreachable server and a refused upgrade (a forbidden origin) look
    // the same. (A refused `hello` is an `error` frame and 4010.)
    const failed = "the connection failed or was refused (browsers give no detail)";
    ws.onclose = (e) => gone(e.code, e.reason || (e.code === 1006 ? failed : ""));
    // An error before the socket opened fails the attempt at once: browsers follow it with a
    // close (1006) anyway, and Node 20's WebSocket sends no close for a refused connection.
    ws.onerror = () => {
      if (ws.readyState === 0) gone(1006, failed);
    };
  }

  /** Drops the current socket (its events are ignored from now on), closing it with `code`. */
  _drop(code, reason) {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (code === undefined || ws.readyState > 1) return;
    try {
      ws.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, closeReason(reason));
    } catch {
      ws.close();
    }
  }

  /** A frame: parsed here, then read and checked by the core (its payloads stay JS values). */
  _frame(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch (e) {
      return this._core.input(now(), IN_MALFORMED, "invalid JSON: " + describe(e));
    }
    if (f === null || typeof f !== "object" || Array.isArray(f)) {
      return this._core.input(now(), IN_MALFORMED, "expected an object");
    }
    if (typeof f.t !== "string") {
      return this._core.input(now(), IN_MALFORMED, "missing frame kind `t`");
    }
    this._core.frame(now(), f);
  }

  _presence(sub, stats) {
    if (this._subs.get(sub.channel) !== sub) {
      return Promise.reject(error("not_subscribed", "the client holds no subscription to this channel"));
    }
    return this._answer(this._core.command(now(), CMD_PRESENCE, sub.channel, undefined, stats ? 1 : 0));
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    this._input(IN_UNSUBSCRIBE, sub.channel);
  }
}

/** Whether the error a subscription ended with makes its async iterator throw: the client's
 *  close (`closed`) ends a `for await` loop normally; `onEnd` still says why. */
const failsIterator = (e) => e && e.code !== "closed";

/** A live subscription to a channel (see the typings): `on()` callbacks or `for await`. */
export class Subscription {
  constructor(client, channel) {
    Object.assign(this, {
      channel,
      _client: client,
      _listeners: [],
      _recoveries: [],
      _ends: [],
      _members: [],
      _next: 0,
      _queue: [],
      // Publications are kept for the async iterator from the start, until `on()` is called
      // before any iteration (an app that only uses callbacks buffers nothing), and again once
      // `next()` is called.
      _buffering: true,
      _iterating: false,
      _waiters: [],
      _ended: undefined,
      _recovery: "new",
      _presence: false,
    });
  }

  get recovery() {
    return this._recovery;
  }

  get hasPresence() {
    return this._presence;
  }

  get position() {
    const core = this._client._core;
    return core.query(Q_POSITION, this.channel, sink) ? { epoch: out[2], seq: out[4] } : undefined;
  }

  on(topicOrFn, fn) {
    const [topic, f] = listener(topicOrFn, fn);
    if (!this._iterating) {
      this._buffering = false;
      this._queue = [];
    }
    this._listeners.push([topic, f]);
    return () => this._off(topic, f);
  }

  off(topicOrFn, fn) {
    this._off(...listener(topicOrFn, fn));
  }

  onRecovery(fn) {
    this._recoveries.push(fn);
    return () => {
      this._recoveries = this._recoveries.filter((f) => f !== fn);
    };
  }

  onEnd(fn) {
    if (this._ended) call(fn, this._ended.error);
    else this._ends.push(fn);
    return () => {
      this._ends = this._ends.filter((f) => f !== fn);
    };
  }

  onJoin(fn) {
    return this._member(true, fn);
  }

  onLeave(fn) {
    return this._member(false, fn);
  }

  presence() {
    return this._client._presence(this, false);
  }

  presenceStats() {
    return this._client._presence(this, true);
  }

  next() {
    this._iterating = this._buffering = true;
    if (this._queue.length) return Promise.resolve({ value: this._queue.shift(), done: false });
    if (this._ended) {
      const e = this._ended.error;
      return failsIterator(e) ? Promise.reject(e) : Promise.resolve(done());
    }
    return new Promise((resolve, reject) => this._waiters.push([resolve, reject]));
  }

  return() {
    this._iterating = this._buffering = false;
    this._queue = [];
    for (const [resolve] of this._waiters.splice(0)) resolve(done());
    return Promise.resolve(done());
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  unsubscribe() {
    this._client._unsubscribe(this);
    this._end(undefined);
  }

  /** A handle holds nothing to free; the subscription lasts until `unsubscribe`. */
  free() {}

  _off(topic, fn) {
    this._listeners = this._listeners.filter(([t, f]) => !(t === topic && f === fn));
  }

  _member(joined, fn) {
    const id = this._next++;
    if (!this._ended) this._members.push([id, joined, fn]);
    return () => {
      this._members = this._members.filter(([i]) => i !== id);
    };
  }

  _publish(topic, msg, position) {
    if (this._ended) return;
    const fns = this._listeners.filter(([t]) => t === null || t === topic);
    const iterator = this._buffering || this._waiters.length > 0;
    if (fns.length) {
      const meta = { topic, channel: this.channel, position };
      for (const [, f] of fns) call(f, msg, meta);
    }
    if (!iterator) return;
    const publication = { channel: this.channel, topic, msg, position };
    const waiter = this._waiters.shift();
    if (waiter) waiter[0]({ value: publication, done: false });
    else if (this._buffering) this._queue.push(publication);
  }

  _resynced(recovery, presence, position) {
    this._recovery = recovery;
    this._presence = presence;
    for (const f of this._recoveries.slice()) call(f, recovery, position);
  }

  /** Over: with `e` when the server or the client's close ended it, without when the
   *  application unsubscribed. Buffered publications can still be iterated. */
  _end(e) {
    if (this._ended) return;
    this._ended = { error: e };
    for (const [resolve, reject] of this._waiters.splice(0)) {
      if (failsIterator(e)) reject(e);
      else resolve(done());
    }
    const ends = this._ends;
    this._ends = [];
    for (const f of ends) call(f, e);
    this._listeners = [];
    this._members = [];
  }
}

function listener(topicOrFn, fn) {
  if (typeof topicOrFn === "function") return [null, topicOrFn];
  if (typeof topicOrFn !== "string") throw error("invalid", "expected a topic or a function");
  if (typeof fn !== "function") throw error("invalid", "expected a function");
  return [topicOrFn, fn];
}

if (typeof Symbol.dispose === "symbol") {
  Client.prototype[Symbol.dispose] = Client.prototype.free;
  Subscription.prototype[Symbol.dispose] = Subscription.prototype.free;
}
