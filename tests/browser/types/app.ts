// The README's example, typed: `tsc -p tests/browser/types` (scripts/test-browser.sh) checks it
// with `--strict` and `skipLibCheck: false` against the package's typings. The
// `@ts-expect-error` lines must fail to compile: they prove the event maps check payloads.
import init, { Client, SssError, isSssError, type Disposer, type ErrorCode } from "super-scaled-sockets";

interface ChatApi {
  asks: { add: { req: [number, number]; res: number }; whoami: { req: null; res: string } };
  tells: { typing: { room: string } };
  told: { notice: string };
  topics: { msg: { from: string; text: string }; joined: { name: string } };
}

export async function main(url: string): Promise<void> {
  await init();
  const client = await Client.connect<ChatApi>(url, {
    getAuth: async () => "token",
    reconnect: { baseMs: 250 },
  });
  const sum: number = await client.ask("add", [1, 2], { timeoutMs: 500 });
  const me: string = await client.ask("whoami", null, { signal: new AbortController().signal });
  // @ts-expect-error: `add` takes two numbers
  await client.ask("add", ["1", 2]);
  // @ts-expect-error: no such ask
  await client.ask("nope", 1);
  client.tell("typing", { room: "lobby" });
  // @ts-expect-error: a tell's payload is typed too
  client.tell("typing", { room: 1 });
  const offNotice: Disposer = client.onTell("notice", (text) => text.toUpperCase());
  const offStatus = client.onStatus((status, info) => {
    if (status === "closed" && info.error) console.log(info.error.code);
  });

  const room = await client.subscribe("room:lobby", undefined, { presence: true });
  const offMsg = room.on("msg", (m, meta) => console.log(meta.position.seq, m.from, m.text));
  // @ts-expect-error: `msg` has no `name`
  room.on("msg", (m) => m.name);
  room.onRecovery((r) => r === "unrecoverable" && console.log("reload"));
  for await (const p of room) {
    if (p.topic === "joined") console.log(p.msg.name);
    else console.log(p.msg.text);
    break;
  }
  offMsg();
  offNotice();
  offStatus();

  // Without an API, anything goes (and answers are unknown).
  const loose = await Client.connect(url);
  const answer: unknown = await loose.ask("anything", { x: 1 });
  console.log(sum, me, answer);

  try {
    await client.ask("add", [13, 13]);
  } catch (e) {
    if (e instanceof SssError) {
      const code: ErrorCode = e.code;
      console.log(code, e.reason, e.closeCode);
    }
    if (isSssError(e) && e.code === "unauthorized") console.log("log in");
  }
  client.close();
}
