// The demo as a person uses it: two browser pages (two users) log in to the chat demo
// (server/examples/chat), one sends a message, the other sees it; a direct message goes the
// same way; a screenshot of each page is saved under target/. And a socket opened from another
// site's page, with the user's cookie, is refused (cross-site WebSocket hijacking).
// The member list shows who is in the room, and joins and leaves are announced.
// Run by scripts/test.sh: SSS_DEMO_URL is the running demo server.
"use strict";
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const http = require("node:http");
const path = require("node:path");
const { launch, watch } = require("./chromium.cjs");

const BASE = process.env.SSS_DEMO_URL;
if (!BASE) throw new Error("SSS_DEMO_URL is not set: run scripts/test.sh");
const SHOTS = path.join(__dirname, "..", "..", "target");

let browser;
const errors = [];

async function userPage(name) {
  // A context per user: separate cookie jars, as two people on two machines.
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  watch(page, name, errors);
  await page.goto(BASE);
  await page.fill('#login input[name="name"]', name);
  await page.click("#login button");
  await page.waitForSelector('#status[data-status="ready"]', { timeout: 15_000 });
  await page.waitForSelector('#rooms li.active[data-room="room:lobby"]');
  return page;
}

// The status the demo answers a WebSocket upgrade with, sent as a browser on `origin` would
// send it, logged-in cookie included.
function upgradeStatus(origin) {
  return new Promise((resolve, reject) => {
    const req = http.get(new URL("/ws", BASE), {
      headers: {
        Connection: "Upgrade",
        Upgrade: "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        Cookie: "sss_user=ann; sss_session=ann-1",
        Origin: origin,
      },
      timeout: 10_000,
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve(res.statusCode);
    });
    req.on("response", (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on("timeout", () => req.destroy(new Error("no answer to the upgrade")));
    req.on("error", reject);
  });
}

test("a socket from another site's page is refused, the page's own origin is accepted", async () => {
  assert.equal(await upgradeStatus("http://evil.example"), 403);
  assert.equal(await upgradeStatus(new URL(BASE).origin), 101);
});

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

test("two users see each other in the room's member list, and a leave when one closes", async () => {
  const carol = await userPage("carol");
  const dave = await userPage("dave");
  // Each sees the other (dave by his join event, carol by dave's presence() after subscribing)
  // and themselves.
  for (const [page, other] of [
    [carol, "dave"],
    [dave, "carol"],
  ]) {
    await page.locator(`#members li[data-user="${other}"]`).waitFor({ timeout: 10_000 });
    await page.locator(`#members li.me`).waitFor();
  }
  await carol.locator("#messages li.system", { hasText: "dave joined" }).waitFor();
  const shown = await carol.locator("#members li").count();
  assert.equal(await carol.locator("#member-count").textContent(), `(${shown} online)`);

  await dave.context().close();
  await carol.locator("#messages li.system", { hasText: "dave left" }).waitFor({ timeout: 10_000 });
  await carol.locator(`#members li[data-user="dave"]`).waitFor({ state: "detached" });
  assert.equal(await carol.locator("#member-count").textContent(), `(${shown - 1} online)`);
  await carol.screenshot({ path: path.join(SHOTS, "demo-presence.png") });
  assert.deepEqual(errors, []);
});
