// The demo as a person uses it: two browser pages (two users) log in to the chat demo
// (server/examples/chat), one sends a message, the other sees it; a direct message goes the
// same way; a screenshot of each page is saved under target/.
// Run by scripts/test.sh: SSS_DEMO_URL is the running demo server.
"use strict";
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const { launch } = require("./chromium.cjs");

const BASE = process.env.SSS_DEMO_URL;
if (!BASE) throw new Error("SSS_DEMO_URL is not set: run scripts/test.sh");
const SHOTS = path.join(__dirname, "..", "..", "target");

let browser;
const errors = [];

async function userPage(name) {
  // A context per user: separate cookie jars, as two people on two machines.
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(`${name}: ${e}`));
  await page.goto(BASE);
  await page.fill('#login input[name="name"]', name);
  await page.click("#login button");
  await page.waitForSelector('#status[data-status="ready"]', { timeout: 15_000 });
  await page.waitForSelector('#rooms li.active[data-room="room:lobby"]');
  return page;
}

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
});

test("two users chat in a room and by direct message", async () => {
  const ann = await userPage("ann");
  const bob = await userPage("bob");

  const text = `hello from ann ${Date.now()}`;
  await ann.fill("#say-text", text);
  await ann.click("#say-form button");
  const seen = bob.locator("#messages li", { hasText: text });
  await seen.waitFor({ timeout: 10_000 });
  assert.equal(await seen.locator(".from").textContent(), "ann");

  // "typing…" travels by tell.
  await bob.type("#say-text", "x");
  await ann.locator("#typing", { hasText: "bob" }).waitFor({ timeout: 10_000 });

  await bob.fill("#dm-to", "ann");
  await bob.fill("#dm-text", "psst, ann");
  await bob.click("#dm-form button");
  await ann.locator("#dms li", { hasText: "psst, ann" }).waitFor({ timeout: 10_000 });

  // The password-protected room refuses a wrong password, visibly.
  ann.once("dialog", (d) => d.accept("wrong"));
  await ann.click('#rooms li[data-room="room:secret"]');
  await ann.locator("#messages li.system", { hasText: "wrong password" }).waitFor();

  await ann.screenshot({ path: path.join(SHOTS, "demo-ann.png") });
  await bob.screenshot({ path: path.join(SHOTS, "demo-bob.png") });
  assert.deepEqual(errors, []);
});
