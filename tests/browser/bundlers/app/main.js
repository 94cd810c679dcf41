// A tiny app as a new user writes it from the README: connect with a token, ask, subscribe, and
// recover what was missed while the server was down. Built by a bundler with no configuration
// (tests/browser/bundlers.test.cjs); the server's URL comes in the page's query string. `publish`
// and `restart` are the test server's asks (tests/src/bin/browser-test-server.rs).
import init, { Client } from "super-scaled-sockets";

const done = (result) => {
  document.documentElement.dataset.result = JSON.stringify(result);
};

try {
  await init();
  const url = new URLSearchParams(location.search).get("ws");
  const client = await Client.connect(url, { auth: "tok-bundled" });
  const sum = await client.ask("add", [2, 3]);
  const room = await client.subscribe("room:bundled");
  const recovery = new Promise((resolve) => room.onRecovery(resolve));
  await client.ask("publish", { channel: "room:bundled", count: 1 });
  const msg = (await room.next()).value.msg;
  // The server goes down and 2 messages are published meanwhile: the client reconnects by
  // itself, subscribes again and recovers them.
  await client.ask("restart", { channel: "room:bundled", count: 2, downMs: 100 });
  const missed = [(await room.next()).value, (await room.next()).value].map((p) => p.msg);
  done({ user: client.user, sum, msg, recovery: await recovery, missed });
  client.close();
} catch (e) {
  done({ error: String(e) });
}
