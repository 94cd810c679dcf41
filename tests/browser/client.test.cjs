// The browser client's behaviours (tests/browser/client-cases.mjs), each a test, in headless
// Chromium against the test server. (client-node.test.mjs runs the same cases in Node 22.)
// Run by scripts/test-browser.sh: SSS_TEST_URL is the test server
// (tests/src/bin/browser-test-server.rs), which serves this directory and pkg/.
"use strict";
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { launch, scriptErrors, watch } = require("./chromium.cjs");

const BASE = process.env.SSS_TEST_URL;
if (!BASE) throw new Error("SSS_TEST_URL is not set: run scripts/test-browser.sh");

let browser;
let page;
const errors = [];

before(async () => {
  browser = await launch();
  page = await browser.newPage();
  watch(page, "client", errors);
  await page.goto(`${BASE}/tests/browser/index.html`);
  await page.waitForFunction(() => document.documentElement.dataset.ready === "1", null, {
    timeout: 10_000,
  });
  // In the page: the cases for the package the page imported, against the test server.
  await page.evaluate(() => {
    window.cases = async () => {
      const { clientCases } = await import("./client-cases.mjs");
      return clientCases(await import("super-scaled-sockets"), location.origin.replace(/^http/, "ws") + "/ws");
    };
  });
});

after(async () => {
  await browser?.close();
});

const names = [
  "connects_and_asks",
  "ask_errors_have_codes",
  "ask_times_out",
  "tells_both_ways",
  "subscribes_and_receives_publications_in_order",
  "refused_subscriptions_reject",
  "restart_reconnects_and_recovers_in_order",
  "refused_hello_is_the_servers_code",
  "auth_option_logs_in",
  "close_fails_pending_asks",
  "session_parser_sees_the_query",
  "presence_members_stats_and_events",
  "presence_refusals_have_codes",
  "a_reconnect_replays_no_presence_and_the_app_asks_again",
  "a_failed_first_connect_rejects_and_a_background_client_retries",
  "closing_ends_every_subscription_with_a_reason",
  "refused_commands_have_the_cores_codes",
];

for (const name of names) {
  test(name, async () => {
    await page.evaluate(async (name) => {
      await (await cases())[name]();
    }, name);
  });
}

test("every case ran", async () => {
  const all = await page.evaluate(async () => Object.keys(await cases()));
  assert.deepEqual(all.sort(), [...names].sort());
});

test("no script errors", () => {
  // Attempts against a dead port or a restarting server log network errors; only script
  // errors count.
  assert.deepEqual(scriptErrors(errors), []);
});
