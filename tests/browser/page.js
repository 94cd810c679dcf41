// The npm package used the way an application does: import, init, connect.
// The Playwright tests (package.test.cjs) drive it through window.sss.
import init, { Client, SssError, isSssError } from "super-scaled-sockets";

await init();

const wsUrl = location.origin.replace(/^http/, "ws") + "/ws";
const log = (line) => {
  document.getElementById("log").textContent += line + "\n";
};

// A tiny app: one client whose status is shown on the page.
async function startApp() {
  const client = await Client.connect(wsUrl, { reconnect: { baseMs: 50, maxMs: 300 } });
  const status = document.getElementById("status");
  status.textContent = client.status;
  client.onStatus((s) => {
    status.textContent = s;
    log(`status ${s}`);
  });
  return client;
}

window.sss = { Client, SssError, isSssError, wsUrl, log, startApp };
document.documentElement.dataset.ready = "1";
