// A Node program logs in to the chat demo (server/examples/chat) with a token: Node sends no
// cookies, so the protocol's `hello` carries its credentials (the `auth` option). The npm
// package's `./node` and `./bundler` entries, Node's global WebSocket (`node
// --experimental-websocket` on Node 20, built in from Node 22).
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
const { Client } = require(path.join(__dirname, "..", "..", "pkg", "dist", "node", "sss.js"));

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

test("the ./bundler entry (what bundlers import; Node: --experimental-wasm-modules)", async () => {
  const bundler = await import(path.join(__dirname, "..", "..", "pkg", "dist", "bundler", "sss.js"));
  const eve = await bundler.Client.connect(WS, { auth: "node-eve" });
  try {
    assert.equal(eve.user, "node-eve");
  } finally {
    eve.close();
  }
  const refused = await bundler.Client.connect(WS, { auth: "not a name!" }).catch((e) => e);
  assert.ok(bundler.isSssError(refused) && refused instanceof bundler.SssError);
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
