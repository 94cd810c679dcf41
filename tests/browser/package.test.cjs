// The npm package in a real page (headless Chromium via playwright-core), used from plain JS.
// Run by scripts/test-browser.sh: SSS_TEST_URL is the test server (tests/src/bin/browser-test-server.rs),
// which also serves this directory and pkg/.
"use strict";
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { launch, scriptErrors } = require("./chromium.cjs");

const BASE = process.env.SSS_TEST_URL;
if (!BASE) throw new Error("SSS_TEST_URL is not set: run scripts/test-browser.sh");

let browser;
let page;
const pageErrors = [];

before(async () => {
  browser = await launch();
  page = await browser.newPage();
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") pageErrors.push(m.text());
  });
  await page.goto(`${BASE}/tests/browser/index.html`);
  await page.waitForFunction(() => document.documentElement.dataset.ready === "1", null, {
    timeout: 10_000,
  });
});

after(async () => {
  await browser?.close();
});

test("the page loads the package with no error", async () => {
  const kind = await page.evaluate(() => typeof window.sss.Client.connect);
  assert.equal(kind, "function");
  assert.deepEqual(pageErrors, []);
});

test("ask: value, error with a code, timeout", async () => {
  const r = await page.evaluate(async () => {
    const { Client, wsUrl } = window.sss;
    const client = await Client.connect(wsUrl, { askTimeoutMs: 300 });
    const echo = await client.ask("echo", { a: [1, "two", null] });
    const sum = await client.ask("add", [2, 3]);
    const error = await client.ask("fail", null).catch((e) => ({
      isError: e instanceof Error,
      name: e.name,
      code: e.code,
      reason: e.reason,
    }));
    const unknown = await client.ask("no-such-topic").catch((e) => e.code);
    const timeout = await client.ask("never").catch((e) => e.code);
    const status = client.status;
    client.close();
    return { echo, sum, error, unknown, timeout, status, after: client.status };
  });
  assert.deepEqual(r, {
    echo: { a: [1, "two", null] },
    sum: 5,
    error: { isError: true, name: "SssError", code: "app_error", reason: "this ask always fails" },
    unknown: "unknown_topic",
    timeout: "timeout",
    status: "ready",
    after: "closed",
  });
});

test("tell both ways", async () => {
  const got = await page.evaluate(async () => {
    const { Client, wsUrl } = window.sss;
    const client = await Client.connect(wsUrl);
    const pong = new Promise((resolve) => client.onTell("pong", (msg, topic) => resolve({ msg, topic })));
    client.tell("ping", { hello: "server" });
    const result = await pong;
    client.close();
    return result;
  });
  assert.deepEqual(got, { msg: { hello: "server" }, topic: "pong" });
});

test("subscribe: on() and for await, in order; refused subscriptions reject", async () => {
  const r = await page.evaluate(async () => {
    const { Client, wsUrl } = window.sss;
    const client = await Client.connect(wsUrl);
    const refused = await client.subscribe("private:nope").catch((e) => e.code);

    const viaOn = await client.subscribe("room:on");
    const seen = [];
    const three = new Promise((resolve) =>
      viaOn.on("n", (msg, meta) => {
        seen.push([meta.position.seq, meta.topic, meta.channel, msg]);
        if (seen.length === 3) resolve();
      }),
    );
    await client.ask("publish", { channel: "room:on", count: 3 });
    await three;

    const viaIter = await client.subscribe("room:iter");
    await client.ask("publish", { channel: "room:iter", count: 4 });
    const iterated = [];
    for await (const { topic, msg, position } of viaIter) {
      iterated.push([position.seq, topic, msg]);
      if (iterated.length === 4) break;
    }
    viaIter.unsubscribe();
    const after = await viaIter.next();
    client.close();
    return { refused, seen, iterated, recovery: viaOn.recovery, afterDone: after.done };
  });
  assert.equal(r.refused, "refused");
  assert.deepEqual(r.seen, [
    [1, "n", "room:on", 1],
    [2, "n", "room:on", 2],
    [3, "n", "room:on", 3],
  ]);
  assert.deepEqual(r.iterated, [
    [1, "n", 1],
    [2, "n", 2],
    [3, "n", 3],
    [4, "n", 4],
  ]);
  assert.equal(r.recovery, "new");
  assert.equal(r.afterDone, true);
});

test("server restart: the client reconnects and recovers the missed publications in order", async () => {
  const r = await page.evaluate(async () => {
    const { startApp } = window.sss;
    const client = await startApp();
    const statuses = [];
    client.onStatus((s) => statuses.push(s));
    const sub = await client.subscribe("room:js-restart");
    const recoveries = [];
    sub.onRecovery((r, position) => recoveries.push([r, position.seq]));

    await client.ask("publish", { channel: "room:js-restart", count: 2 });
    await client.ask("restart", { channel: "room:js-restart", count: 3, downMs: 200 });
    const got = [];
    for await (const { topic, msg, position } of sub) {
      got.push([position.seq, topic, msg]);
      if (got.length === 5) break;
    }
    // Wait until ready again (resync done), then a live publication.
    while (client.status !== "ready") await new Promise((r) => setTimeout(r, 20));
    await client.ask("publish", { channel: "room:js-restart", count: 1 });
    const live = await sub.next();
    const shown = document.getElementById("status").textContent;
    client.close();
    return { got, live: live.value.position.seq, statuses, recoveries, shown };
  });
  assert.deepEqual(r.got, [
    [1, "n", 1],
    [2, "n", 2],
    [3, "down", 1],
    [4, "down", 2],
    [5, "down", 3],
  ]);
  assert.equal(r.live, 6);
  assert.ok(r.statuses.includes("reconnecting"), JSON.stringify(r.statuses));
  assert.deepEqual(r.recoveries, [["recovered", 5]]);
  assert.equal(r.shown, "ready");
});

test("presence: members, counts, join and leave callbacks and their removers", async () => {
  const r = await page.evaluate(async () => {
    const { Client, wsUrl } = window.sss;
    const room = "room:js-presence";
    const ann = await Client.connect(`${wsUrl}?user=ann&name=Ann`);
    const sub = await ann.subscribe(room, undefined, { presence: true });
    const joins = [];
    const leaves = [];
    let joined;
    const firstJoin = new Promise((resolve) => (joined = resolve));
    const offJoin = sub.onJoin((m) => {
      joins.push(m);
      joined();
    });
    let left;
    const firstLeave = new Promise((resolve) => (left = resolve));
    sub.onLeave((m) => {
      leaves.push(m);
      left();
    });

    const bob = await Client.connect(`${wsUrl}?user=bob&name=Bob`);
    const bobSub = await bob.subscribe(room);
    await firstJoin;
    const members = (await bobSub.presence()).map((m) => [m.user, m.info?.name]).sort();
    const stats = await sub.presenceStats();
    const removerType = typeof offJoin;
    offJoin();

    const bobSocket = bob.socketId;
    bob.close();
    await firstLeave;
    const plain = await ann.subscribe("plain:js");
    const refused = await plain.presence().catch((e) => e.code);
    const result = {
      joins,
      leaves,
      bobSocket,
      members,
      stats,
      removerType,
      hasPresence: [sub.hasPresence, plain.hasPresence],
      refused,
    };
    ann.close();
    return result;
  });
  assert.equal(r.joins.length, 1);
  assert.deepEqual(r.joins[0], { socket: r.bobSocket, user: "bob", info: { name: "Bob" } });
  assert.equal(r.leaves.length, 1);
  assert.deepEqual(r.leaves[0], r.joins[0], "the leave is the member that joined");
  assert.deepEqual(r.members, [
    ["ann", "Ann"],
    ["bob", "Bob"],
  ]);
  assert.deepEqual(r.stats, { sockets: 2, users: 2 });
  assert.equal(r.removerType, "function");
  assert.deepEqual(r.hasPresence, [true, false]);
  assert.equal(r.refused, "no_presence");
});

test("a refused hello is the server's code and reason, not 1006", async () => {
  const r = await page.evaluate(async () => {
    const { Client, wsUrl } = window.sss;
    const seen = (e) => ({ name: e.name, code: e.code, reason: e.reason, closeCode: e.closeCode });
    const denied = await Client.connect(`${wsUrl}?deny=1`).catch(seen);
    const badToken = await Client.connect(wsUrl, { auth: "forged" }).catch(seen);
    return { denied, badToken };
  });
  assert.deepEqual(r, {
    denied: { name: "SssError", code: "unauthorized", reason: "denied by the test server", closeCode: 4010 },
    badToken: { name: "SssError", code: "unauthorized", reason: "bad token", closeCode: 4010 },
  });
});

test("auth: a token logs in; getAuth is asked again before a reconnect; a refusal then closes", async () => {
  const r = await page.evaluate(async () => {
    const { Client, wsUrl } = window.sss;
    const fixed = await Client.connect(wsUrl, { auth: "tok-ann" });
    const fixedUser = fixed.user;
    fixed.close();

    // A fresh token per call (attempts while the server is down call it too), until the
    // account "expires" and the server refuses it.
    let calls = 0;
    let expired = false;
    const client = await Client.connect(wsUrl, {
      reconnect: { baseMs: 50 },
      getAuth: () =>
        new Promise((resolve) =>
          setTimeout(() => resolve(expired ? "forged" : `tok-bob${++calls}`), 10),
        ),
    });
    const first = client.user;
    // onStatus reports the current status ("ready") at once: wait for a drop, then ready.
    let dropped = false;
    const readyAgain = new Promise((resolve) =>
      client.onStatus((status) => {
        if (status === "reconnecting") dropped = true;
        if (status === "ready" && dropped) resolve();
      }),
    );
    await client.ask("restart", { downMs: 100 });
    await readyAgain;
    const second = { user: client.user, calls };
    const closed = new Promise((resolve) =>
      client.onStatus((status, info) => {
        if (status === "closed") {
          resolve({ code: info.code, error: info.error?.code, reason: info.error?.reason });
        }
      }),
    );
    expired = true;
    await client.ask("restart", { downMs: 100 });
    const end = await closed;
    return { fixedUser, first, second, end, status: client.status };
  });
  assert.equal(r.fixedUser, "ann");
  assert.equal(r.first, "bob1");
  assert.ok(r.second.calls >= 2, `getAuth was called again: ${r.second.calls}`);
  assert.equal(r.second.user, `bob${r.second.calls}`, "the reconnect used the newest token");
  assert.deepEqual(r.end, { code: 4010, error: "unauthorized", reason: "bad token" });
  assert.equal(r.status, "closed");
});

test("typed API at runtime: SssError, per-ask timeout and abort, disposers, onStatus now", async () => {
  const r = await page.evaluate(async () => {
    const { Client, SssError, isSssError, wsUrl } = window.sss;
    const client = await Client.connect(wsUrl, { askTimeoutMs: 10000 });
    const failed = await client.ask("fail", null).catch((e) => e);
    const timedOut = await client.ask("never", null, { timeoutMs: 50 }).catch((e) => e.code);
    const controller = new AbortController();
    const pending = client.ask("never", null, { signal: controller.signal }).catch((e) => e.code);
    controller.abort();
    const aborted = await pending;
    const early = await client
      .ask("echo", 1, { signal: AbortSignal.abort() })
      .catch((e) => e.code);
    const echoed = await client.ask("echo", 2, { signal: new AbortController().signal });

    const statuses = [];
    const offStatus = client.onStatus((s) => statuses.push(s));
    const told = [];
    const offTell = client.onTell("pong", (msg) => told.push(msg));
    const ponged = new Promise((resolve) => {
      const off = client.onTell("pong", () => {
        off();
        resolve();
      });
    });
    client.tell("ping", 1);
    await ponged;
    offTell();
    client.tell("ping", 2);
    await client.ask("echo", null); // the second pong, if any, has arrived before this answer

    const sub = await client.subscribe("room:disposers");
    const seen = [];
    const offOn = sub.on("n", (msg) => seen.push(msg));
    // The next publication, whoever else listens (registered before it is published).
    const nextPublication = () =>
      new Promise((resolve) => {
        const off = sub.on(() => {
          off();
          resolve();
        });
      });
    let published = nextPublication();
    await client.ask("publish", { channel: "room:disposers", count: 1 });
    await published;
    offOn();
    published = nextPublication();
    await client.ask("publish", { channel: "room:disposers", count: 1 });
    await published;
    const ends = [];
    const offEnd = sub.onEnd((e) => ends.push(e));
    offEnd();
    const kinds = [typeof offStatus, typeof sub.onRecovery(() => {}), typeof offEnd];
    offStatus();
    client.close();
    return {
      isClass: failed instanceof SssError && failed instanceof Error,
      guarded: isSssError(failed) && !isSssError(new Error("x")),
      name: failed.name,
      code: failed.code,
      timedOut,
      aborted,
      early,
      echoed,
      statuses,
      told,
      seen,
      ends: ends.length,
      kinds,
    };
  });
  assert.deepEqual(r, {
    isClass: true,
    guarded: true,
    name: "SssError",
    code: "app_error",
    timedOut: "timeout",
    aborted: "aborted",
    early: "aborted",
    echoed: 2,
    statuses: ["ready"],
    told: [1],
    seen: [1],
    ends: 0,
    kinds: ["function", "function", "function"],
  });
});

test("init() is optional: a fresh copy of the module, never initialized, connects", async () => {
  const r = await page.evaluate(async () => {
    // A second instance of the module (another URL): its .wasm is inlined and loads on first use.
    const fresh = await import("/pkg/dist/sss.js?uninitialized");
    const client = await fresh.Client.connect(window.sss.wsUrl);
    const sum = await client.ask("add", [1, 2]);
    client.close();
    return sum;
  });
  assert.equal(r, 3);
});

test("no uncaught page errors", () => {
  // Reconnect attempts while the restarted server is down log network errors to the console;
  // only script errors count. (A refused hello logs nothing: it is a frame and a close code.)
  assert.deepEqual(scriptErrors(pageErrors), []);
});
