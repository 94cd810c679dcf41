// Headless Debian Chromium for the browser tests, started the way this machine needs: Playwright
// cannot download a browser here, and without the background-networking flags Chromium keeps
// trying to reach the (closed) network.
"use strict";
const { chromium } = require("playwright-core");

exports.launch = () =>
  chromium.launch({
    executablePath: process.env.CHROME_BIN || "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-quic",
      "--no-first-run",
      "--disable-extensions",
    ],
  });

// Records everything on `page` that a person would see as broken: uncaught errors, console
// errors, requests that failed, and answers with an HTTP error status. A test asserts the list
// is empty: an invalid `pattern` attribute or a missing resource only logs, it never throws.
exports.watch = (page, name, errors) => {
  page.on("pageerror", (e) => errors.push(`${name}: uncaught ${e}`));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`${name}: console error: ${m.text()}`);
  });
  page.on("requestfailed", (r) =>
    errors.push(`${name}: request failed: ${r.url()} (${r.failure()?.errorText})`),
  );
  page.on("response", (r) => {
    if (r.status() >= 400) errors.push(`${name}: HTTP ${r.status()} for ${r.url()}`);
  });
};

// `errors` without the browser's own log line for a WebSocket that could not connect: a client
// logs one per attempt against a dead port or a restarting server, as it should.
exports.scriptErrors = (errors) => errors.filter((e) => !/WebSocket connection to .* failed/.test(e));
