// A Node program logs in to the chat demo (server/examples/chat) with a token: Node sends no
// cookies, so the protocol's `hello` carries its credentials (the `auth` option). The npm
// package's CommonJS (`require`) and ES module (`import`) builds, Node's global WebSocket (`node
// --experimental-websocket` on Node 20, built in from Node 22); no other flag.
// Run by scripts/test-browser.sh: SSS_DEMO_URL is the running demo server.
"use strict";
const { test } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const BASE = process.env.SSS_DEMO_URL;
if (!BASE) throw new Error("SSS_DEMO_URL is not set: run scripts/test-browser.sh");
if (typeof WebSocket === "undefined") {
  throw new Error("no global WebSocket: run with node --experimental-websocket (Node 20)");
}
const WS = new URL("/ws", BASE).href.replace(/^http/, "ws");
const { Client } = require(path.join(__dirname, "..", "..", "pkg", "dist", "sss.cjs"));

test("a Node program logs in with a token, and a bad one is refused with its reason", async () => {
  const ann = await Client.connect(WS, { auth: "node-ann" });
  try {
    assert.equal(ann.user, "node-ann");
    assert.equal(await ann.ask("say", { room: "room:lobby", text: "hello from Node" }) > 0, true);
  } finally {
    ann.close();
  }
  const refused = await Client.connect(WS, { auth: "not a name!" }).catch((e) => e);
  assert.deepEqual(
    { name: refused.name, code: refused.code, reason: refused.reason, closeCode: refused.closeCode },
    { name: "SssError", code: "unauthorized", reason: "log in first", closeCode: 4010 },
  );
});

test("the ES module build (import), the same client", async () => {
  const esm = await import(path.join(__dirname, "..", "..", "pkg", "dist", "sss.js"));
  const eve = await esm.Client.connect(WS, { auth: "node-eve" });
  try {
    assert.equal(eve.user, "node-eve");
  } finally {
    eve.close();
  }
  const refused = await esm.Client.connect(WS, { auth: "not a name!" }).catch((e) => e);
  assert.ok(esm.isSssError(refused) && refused instanceof esm.SssError);
});

test("getAuth is called before the connection, its promise's value is the token", async () => {
  let calls = 0;
  const bob = await Client.connect(WS, {
    getAuth: async () => {
      calls += 1;
      return "node-bob";
    },
  });
  try {
    assert.equal(bob.user, "node-bob");
    assert.equal(calls, 1);
  } finally {
    bob.close();
  }
});

// Node 20's WebSocket reports a refused connection with an `error` event only (no `close`):
// the attempt fails at once rather than after the connect timeout.
test("a dead port fails the connection at once, not after the connect timeout", async () => {
  const started = Date.now();
  const e = await Client.connect("ws://127.0.0.1:1/ws", { connectTimeoutMs: 10_000 }).catch((e) => e);
  assert.deepEqual({ code: e.code, closeCode: e.closeCode }, { code: "closed", closeCode: 1006 });
  assert.ok(Date.now() - started < 3_000, `took ${Date.now() - started} ms`);
});
