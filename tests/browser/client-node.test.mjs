// The JS client's behaviours (tests/browser/client-cases.mjs), the same cases that
// client.test.cjs runs in Chromium, in Node 22 with its global WebSocket: the npm package's
// ES module, no flag, no `ws` package.
// Run by scripts/test-browser.sh with .tools/wasm/bin/node22: SSS_TEST_URL is the test server
// (tests/src/bin/browser-test-server.rs).
import { test } from "node:test";
import assert from "node:assert/strict";
import * as sss from "../../pkg/dist/sss.js";
import { clientCases } from "./client-cases.mjs";

const BASE = process.env.SSS_TEST_URL;
if (!BASE) throw new Error("SSS_TEST_URL is not set: run scripts/test-browser.sh");

test("this is Node 22 or later, with a global WebSocket", () => {
  assert.ok(Number(process.versions.node.split(".")[0]) >= 22, process.version);
  assert.equal(typeof WebSocket, "function");
});

const cases = clientCases(sss, BASE.replace(/^http/, "ws") + "/ws");
for (const [name, run] of Object.entries(cases)) test(name, run);
