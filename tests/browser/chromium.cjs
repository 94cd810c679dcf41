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
