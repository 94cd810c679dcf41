// The package in a bundled app, built as a new user would: Vite, webpack and esbuild with no
// configuration, Rollup with its node-resolve plugin (how Rollup finds any npm package); served
// from its output directory and run in headless Chromium against the test server. The .wasm is
// inlined in the package's JS: no bundler has anything to emit or configure for it.
// Run by scripts/test-browser.sh: SSS_TEST_URL is the test server
// (tests/src/bin/browser-test-server.rs), SSS_WASM_TOOLS the npm tools (.tools/wasm).
"use strict";
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const { launch, scriptErrors, watch } = require("./chromium.cjs");

const BASE = process.env.SSS_TEST_URL;
const TOOLS = process.env.SSS_WASM_TOOLS;
if (!BASE || !TOOLS) throw new Error("SSS_TEST_URL / SSS_WASM_TOOLS not set: run scripts/test-browser.sh");
const WS = BASE.replace(/^http/, "ws") + "/ws";
const PKG = path.join(__dirname, "..", "..", "pkg");
const BIN = path.join(TOOLS, "node", "node_modules", ".bin");

// What the app reports: the token's user, an answer, a publication, and the two publications
// made while the server was down, recovered.
const EXPECTED = { user: "bundled", sum: 5, msg: 1, recovery: "recovered", missed: [1, 2] };

let browser;
let work;

before(async () => {
  browser = await launch();
  work = fs.mkdtempSync(path.join(os.tmpdir(), "sss-bundlers-"));
});

after(async () => {
  await browser?.close();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

/** A fresh copy of the app, with the package installed as a dependency would be. */
function project(name) {
  const dir = path.join(work, name);
  fs.cpSync(path.join(__dirname, "bundlers", "app"), dir, { recursive: true });
  fs.mkdirSync(path.join(dir, "node_modules"));
  fs.symlinkSync(PKG, path.join(dir, "node_modules", "super-scaled-sockets"), "dir");
  return dir;
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm" };

/** Serves `dir` on a free loopback port; resolves with the server. */
function serve(dir) {
  const server = http.createServer((req, res) => {
    const file = path.join(dir, decodeURIComponent(new URL(req.url, "http://x").pathname));
    if (!file.startsWith(dir) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream" });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

/** Opens the built app and returns what it reports. */
async function run(outDir, page) {
  const server = await serve(outDir);
  try {
    const errors = [];
    const p = await browser.newPage();
    watch(p, "app", errors);
    await p.goto(`http://127.0.0.1:${server.address().port}/${page}?ws=${encodeURIComponent(WS)}`);
    await p.waitForFunction(() => document.documentElement.dataset.result, null, { timeout: 15_000 });
    const result = JSON.parse(await p.evaluate(() => document.documentElement.dataset.result));
    await p.close();
    return { result, errors };
  } finally {
    server.close();
  }
}

test("Vite: a production build of the app connects, logs in, asks, subscribes, resyncs", async () => {
  const dir = project("vite");
  execFileSync(path.join(BIN, "vite"), ["build", "--logLevel", "warn"], { cwd: dir, stdio: "inherit" });
  const out = path.join(dir, "dist");
  const { result, errors } = await run(out, "index.html");
  assert.deepEqual(result, EXPECTED);
  assert.deepEqual(scriptErrors(errors), []);
});

test("webpack: a production build of the app connects, logs in, asks, subscribes, resyncs", async () => {
  const dir = project("webpack");
  execFileSync(
    path.join(BIN, "webpack"),
    ["--mode", "production", "--entry", "./main.js", "--output-path", "dist", "--no-stats"],
    { cwd: dir, stdio: "inherit" },
  );
  const out = path.join(dir, "dist");
  // The app's page as it is: the bundle has the source's name (main.js).
  fs.copyFileSync(path.join(dir, "index.html"), path.join(out, "index.html"));
  const { result, errors } = await run(out, "index.html");
  assert.deepEqual(result, EXPECTED);
  assert.deepEqual(scriptErrors(errors), []);
});

/** Builds the app with `cmd args` in a fresh project, then runs it from `dist/` with its page. */
async function bundled(name, cmd, args) {
  const dir = project(name);
  execFileSync(path.join(BIN, cmd), args, { cwd: dir, stdio: "inherit" });
  const out = path.join(dir, "dist");
  fs.copyFileSync(path.join(dir, "index.html"), path.join(out, "index.html"));
  return run(out, "index.html");
}

test("esbuild: `esbuild --bundle`, no configuration, connects, logs in, asks, subscribes, resyncs", async () => {
  const { result, errors } = await bundled("esbuild", "esbuild", [
    "main.js",
    "--bundle",
    "--format=esm",
    "--outdir=dist",
    "--log-level=warning",
  ]);
  assert.deepEqual(result, EXPECTED);
  assert.deepEqual(scriptErrors(errors), []);
});

test("Rollup: `rollup -p node-resolve`, connects, logs in, asks, subscribes, resyncs", async () => {
  const { result, errors } = await bundled("rollup", "rollup", [
    "main.js",
    "-p",
    "node-resolve",
    "--format",
    "es",
    "--dir",
    "dist",
    "--silent",
  ]);
  assert.deepEqual(result, EXPECTED);
  assert.deepEqual(scriptErrors(errors), []);
});
