// The JS client's behaviours, case by case, against the test server
// (tests/src/bin/browser-test-server.rs): in a real page by tests/browser/client.test.cjs, and in
// Node 22 with its global WebSocket by tests/browser/client-node.test.mjs. Each case throws on
// failure. (Before the driver moved to JS these ran as wasm-bindgen tests in Rust, through the
// same API; they are the same cases.)

const fast = { reconnect: { baseMs: 50, maxMs: 300 } };

function eq(actual, expected, what = "") {
  const [a, e] = [JSON.stringify(actual), JSON.stringify(expected)];
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

function ok(value, what) {
  if (!value) throw new Error(`expected: ${what}`);
}

/** `p`, failing after 10 s. */
function within(p, what) {
  return Promise.race([
    p,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), 10_000)),
  ]);
}

/** The error `p` rejects with (failing if it resolves). */
async function rejection(p, what) {
  try {
    await within(p, what);
  } catch (e) {
    if (String(e.message).startsWith("timed out")) throw e;
    return e;
  }
  throw new Error(`expected a rejection: ${what}`);
}

/** The next publication of the async iterator: [seq, topic, msg as JSON]. */
async function next(sub) {
  const r = await within(sub.next(), "publication");
  eq(r.done, false, "the iterator ended");
  return [r.value.position.seq, r.value.topic, JSON.stringify(r.value.msg)];
}

/** A callback that records its first argument, and a promise of its `n`-th call. */
function counter(n = 1) {
  const seen = [];
  let resolve;
  const reached = new Promise((r) => (resolve = r));
  const f = (v) => {
    seen.push(v);
    if (seen.length === n) resolve(v);
  };
  return { f, seen, reached };
}

const member = (m) => [m.socket, m.user ?? ""];
const members = async (sub) =>
  (await within(sub.presence(), "presence")).map(member).sort();

/** Publishes one message on `channel` and waits for it on `sub`: what the socket was sent
 *  before it has been handled by then. */
async function barrier(client, sub, channel) {
  await within(client.ask("publish", { channel, count: 1, topic: "barrier" }), "publish");
  eq((await next(sub))[1], "barrier");
}

/** The cases, by name, for the package `sss` (its `Client` and `SssError`) against the test
 *  server's WebSocket `url`. */
export function clientCases({ Client, SssError }, url) {
  const connectAs = (user) => within(Client.connect(`${url}?user=${user}&name=${user}`, fast), "connect");

  return {
    async connects_and_asks() {
      const client = await Client.connect(url, fast);
      eq(client.status, "ready");
      ok(client.socketId, "a socket id");
      eq(await within(client.ask("echo", { a: [1, "two", null] }), "echo"), { a: [1, "two", null] });
      eq(await within(client.ask("add", [2, 3]), "add"), 5);
      client.close();
    },

    async ask_errors_have_codes() {
      const client = await Client.connect(url, fast);
      const e = await rejection(client.ask("fail", null), "fail");
      ok(e instanceof Error && e instanceof SssError, "an SssError");
      eq([e.code, e.reason], ["app_error", "this ask always fails"]);
      eq((await rejection(client.ask("no-such-topic", null), "unknown")).code, "unknown_topic");
      client.close();
    },

    async ask_times_out() {
      const client = await Client.connect(url, { askTimeoutMs: 300 });
      eq((await rejection(client.ask("never", null), "never")).code, "timeout");
      eq(await within(client.ask("echo", 1), "echo"), 1, "the connection is still usable");
      client.close();
    },

    async tells_both_ways() {
      const client = await Client.connect(url, fast);
      const pong = counter();
      client.onTell("pong", pong.f);
      client.tell("ping", { x: 42 });
      eq(await within(pong.reached, "pong"), { x: 42 });
      client.close();
    },

    async subscribes_and_receives_publications_in_order() {
      const client = await Client.connect(url, fast);
      const sub = await within(client.subscribe("room:pubs"), "subscribe");
      eq([sub.channel, sub.recovery], ["room:pubs", "new"]);
      eq(await within(client.ask("publish", { channel: "room:pubs", count: 5 }), "publish"), 5);
      for (let n = 1; n <= 5; n++) eq(await next(sub), [n, "n", String(n)]);
      sub.unsubscribe();
      eq((await within(sub.next(), "done")).done, true, "the iterator ends");
      client.close();
    },

    async refused_subscriptions_reject() {
      const client = await Client.connect(url, fast);
      eq((await rejection(client.subscribe("private:x"), "private")).code, "refused");
      eq((await rejection(client.subscribe("room:q", { deny: true }), "deny")).code, "refused");
      eq((await within(client.subscribe("room:q"), "subscribe")).channel, "room:q");
      client.close();
    },

    async restart_reconnects_and_recovers_in_order() {
      const client = await Client.connect(url, fast);
      const statuses = counter();
      client.onStatus(statuses.f);
      const sub = await within(client.subscribe("room:restart"), "subscribe");
      const recovery = counter();
      sub.onRecovery(recovery.f);
      await within(client.ask("publish", { channel: "room:restart", count: 3 }), "publish");
      for (let n = 1; n <= 3; n++) eq(await next(sub), [n, "n", String(n)]);
      // The server goes down; 5 publications happen while it is down; it comes back.
      await within(client.ask("restart", { channel: "room:restart", count: 5, downMs: 200 }), "restart");
      for (let n = 1; n <= 5; n++) eq(await next(sub), [3 + n, "down", String(n)]);
      eq(await within(recovery.reached, "recovery"), "recovered");
      eq(sub.recovery, "recovered");
      await within(client.ask("publish", { channel: "room:restart", count: 2 }), "publish after");
      eq(await next(sub), [9, "n", "1"]);
      eq(await next(sub), [10, "n", "2"]);
      ok(statuses.seen.includes("reconnecting"), `reconnecting in ${statuses.seen}`);
      eq(client.status, "ready");
      eq(sub.position.seq, 10);
      client.close();
    },

    async refused_hello_is_the_servers_code() {
      const e = await rejection(Client.connect(`${url}?deny=1`), "refused connect");
      eq([e.code, e.reason, e.closeCode], ["unauthorized", "denied by the test server", 4010]);
    },

    async auth_option_logs_in() {
      const client = await within(Client.connect(url, { auth: "tok-wasm" }), "connect");
      eq(client.user, "wasm");
      client.close();
    },

    async close_fails_pending_asks() {
      const client = await Client.connect(url, fast);
      const pending = client.ask("never", null);
      client.close();
      eq((await rejection(pending, "closed ask")).code, "closed");
      eq(client.status, "closed");
      let thrown;
      try {
        client.tell("ping", null);
      } catch (e) {
        thrown = e;
      }
      eq(thrown && thrown.code, "closed");
    },

    async session_parser_sees_the_query() {
      const client = await within(Client.connect(`${url}?user=alice`), "connect");
      eq(client.user, "alice");
      client.close();
    },

    async presence_members_stats_and_events() {
      const ROOM = "room:wasm-presence";
      const ann = await connectAs("ann");
      const watching = await within(ann.subscribe(ROOM, undefined, { presence: true }), "sub");
      ok(watching.hasPresence, "presence");
      const joins = counter(2);
      const removeJoin = watching.onJoin(joins.f);
      const leaves = counter(2);
      watching.onLeave(leaves.f);
      // Two tabs of bob: two joins, one user more.
      const tab1 = await connectAs("bob");
      const sub1 = await within(tab1.subscribe(ROOM, undefined, { presence: false }), "sub");
      const quiet = counter();
      sub1.onJoin(quiet.f);
      const tab2 = await connectAs("bob");
      const sub2 = await within(tab2.subscribe(ROOM, undefined, { presence: false }), "sub");
      await within(joins.reached, "two joins");
      const tabs = [tab1.socketId, tab2.socketId];
      eq(joins.seen.map(member), tabs.map((s) => [s, "bob"]));
      for (const m of joins.seen) eq(m.info, { name: "bob" });
      const expected = [[ann.socketId, "ann"], ...tabs.map((s) => [s, "bob"])].sort();
      eq(await members(watching), expected);
      eq(await members(sub2), expected, "bob's tab asks too");
      eq(await within(watching.presenceStats(), "stats"), { sockets: 3, users: 2 });
      // A subscription that did not ask for events gets none.
      await barrier(tab1, sub1, ROOM);
      eq(quiet.seen, []);
      // A removed callback is not called again (the remover is idempotent).
      removeJoin();
      removeJoin();
      const again = counter();
      watching.onJoin(again.f);
      const tab3 = await connectAs("carol");
      await within(tab3.subscribe(ROOM, undefined, { presence: false }), "sub");
      await within(again.reached, "third join");
      eq(joins.seen.length, 2);
      // One tab unsubscribes, the other closes: two leaves, with the sockets that joined.
      sub1.unsubscribe();
      tab2.close();
      await within(leaves.reached, "two leaves");
      eq(leaves.seen.map((m) => m.socket).sort(), [...tabs].sort());
      ok(joins.seen.every((m) => m.socket !== ann.socketId), "never its own join");
      for (const c of [ann, tab1, tab3]) c.close();
    },

    async presence_refusals_have_codes() {
      const client = await connectAs("ann");
      const plain = await within(client.subscribe("plain:wasm", undefined, { presence: true }), "sub");
      ok(!plain.hasPresence, "no presence");
      eq((await rejection(plain.presence(), "presence")).code, "no_presence");
      eq((await rejection(plain.presenceStats(), "stats")).code, "no_presence");
      const room = await within(client.subscribe("room:wasm-ended", undefined, { presence: false }), "sub");
      room.unsubscribe();
      eq((await rejection(room.presence(), "presence")).code, "not_subscribed");
      eq((await rejection(client.subscribe("room:x", undefined, { presence: 1 }), "bad option")).code, "invalid");
      client.close();
    },

    async a_reconnect_replays_no_presence_and_the_app_asks_again() {
      const ROOM = "room:wasm-presence-restart";
      const client = await connectAs("ann");
      const sub = await within(client.subscribe(ROOM, undefined, { presence: true }), "sub");
      const joins = counter();
      sub.onJoin(joins.f);
      const leaves = counter();
      sub.onLeave(leaves.f);
      const recovery = counter();
      sub.onRecovery(recovery.f);
      const before = client.socketId;
      eq(await members(sub), [[before, "ann"]]);
      await within(client.ask("restart", { downMs: 100 }), "restart");
      await within(recovery.reached, "recovery");
      const after = client.socketId;
      ok(after && after !== before, "a new socket");
      // Its own leave and join are not events, and the list is asked for again.
      eq(await members(sub), [[after, "ann"]]);
      await barrier(client, sub, ROOM);
      eq([joins.seen, leaves.seen], [[], []]);
      client.close();
    },

    // ---- The core's policies, as the native client's tests/tests/policy.rs sees them ----------

    async a_failed_first_connect_rejects_and_a_background_client_retries() {
      // Nothing listens on port 1 (and browsers refuse it outright): the attempt fails, 1006.
      const dead = "ws://127.0.0.1:1/ws";
      const options = { reconnect: { baseMs: 10 } };
      const e = await rejection(Client.connect(dead, options), "connect");
      eq([e.code, e.closeCode], ["closed", 1006]);
      const client = new Client(dead, options);
      // onStatus reports the current status at once ("connecting"), then the retry.
      const seen = [];
      const current = client.status;
      const retried = new Promise((resolve) =>
        client.onStatus((s) => {
          seen.push(s);
          if (s === "reconnecting") resolve();
        }),
      );
      await within(retried, "reconnecting");
      eq([seen[0], seen[seen.length - 1]], [current, "reconnecting"]);
      client.close();
    },

    async closing_ends_every_subscription_with_a_reason() {
      const client = await Client.connect(url, fast);
      const sub = await within(client.subscribe("room:closing"), "subscribe");
      const ended = counter();
      sub.onEnd(ended.f);
      client.close();
      const e = await within(ended.reached, "onEnd");
      eq([e.code, e.reason], ["closed", "closed by the client"]);
      eq((await within(sub.next(), "next")).done, true, "the iterator finishes");
    },

    async refused_commands_have_the_cores_codes() {
      const client = await Client.connect(url, fast);
      eq((await rejection(client.subscribe("no spaces"), "subscribe")).code, "invalid_channel");
      client.close();
      eq((await rejection(client.ask("add", [1, 2]), "ask")).code, "closed");
    },

  };
}
