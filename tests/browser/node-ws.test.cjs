// Node without a global WebSocket (Node 20 without its flag): the client says so at once
// instead of retrying forever, and connects with the `ws` package passed as its `WebSocket`.
// Against the chat demo (server/examples/chat), logging in with a token.
// Run by scripts/test-browser.sh: SSS_DEMO_URL is the running demo server.
"use strict";
const { test } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const WebSocket = require("ws");

const BASE = process.env.SSS_DEMO_URL;
if (!BASE) throw new Error("SSS_DEMO_URL is not set: run scripts/test-browser.sh");
if (typeof globalThis.WebSocket !== "undefined") {
  throw new Error("this test needs a Node without a global WebSocket (no --experimental-websocket)");
}
const WS = new URL("/ws", BASE).href.replace(/^http/, "ws");
const { Client, SssError } = require(path.join(__dirname, "..", "..", "pkg", "dist", "sss.cjs"));

test("without a WebSocket, connect rejects and new Client throws, saying what to do", async () => {
  const rejected = await Client.connect(WS, { auth: "node-dave" }).catch((e) => e);
  assert.ok(rejected instanceof SssError, String(rejected));
  assert.equal(rejected.code, "invalid");
  assert.match(rejected.reason, /no global WebSocket.*ws package/);
  assert.throws(() => new Client(WS), (e) => e instanceof SssError && e.code === "invalid");
});

test("the ws package as the WebSocket: logs in with a token, asks", async () => {
  const carol = await Client.connect(WS, { WebSocket, auth: "node-carol" });
  try {
    assert.equal(carol.user, "node-carol");
    assert.ok((await carol.ask("say", { room: "room:lobby", text: "hello from ws" })) > 0);
  } finally {
    carol.close();
  }
});
