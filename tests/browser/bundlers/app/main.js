// A tiny app as a new user writes it from the README: connect with a token, ask, subscribe.
// Built by a bundler with no configuration (tests/browser/bundlers.test.cjs); the server's URL
// comes in the page's query string.
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
  const first = new Promise((resolve) => room.on("n", (msg) => resolve(msg)));
  await client.ask("publish", { channel: "room:bundled", count: 1 });
  done({ user: client.user, sum, msg: await first });
  client.close();
} catch (e) {
  done({ error: String(e) });
}
