// The chat demo's front end: plain JS on the super-scaled-sockets package (the WASM client).
import init, { Client } from '/pkg/sss.js';

const ROOMS = ['room:lobby', 'room:rust', 'room:random', 'room:secret'];
const $ = (id) => document.getElementById(id);
const cookie = (name) =>
  document.cookie.split('; ').find((c) => c.startsWith(`${name}=`))?.split('=')[1];

const state = {
  current: 'room:lobby',
  logs: new Map(),
  unread: new Map(),
  subs: new Map(),
  // Who is in each room: member by socket id (a user with two tabs open is two members).
  members: new Map(),
  // Per room, the join/leave events that arrived while a `presence()` answer was on its way.
  inFlight: new Map(),
};
const me = cookie('sss_user');
if (!me) {
  $('login').hidden = false;
  $('status').textContent = 'logged out';
} else {
  start().catch((e) => system(`could not start: ${e.message} (${e.code ?? 'error'})`));
}

function line(list, { from, text, cls }) {
  const li = document.createElement('li');
  if (cls) li.className = cls;
  if (from) {
    const b = document.createElement('span');
    b.className = 'from';
    b.textContent = from;
    li.append(b);
  }
  li.append(document.createTextNode(text));
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

function log(room, entry) {
  if (!state.logs.has(room)) state.logs.set(room, []);
  state.logs.get(room).push(entry);
  if (room === state.current) line($('messages'), entry);
  else if (!entry.quiet) state.unread.set(room, (state.unread.get(room) ?? 0) + 1);
  renderRooms();
}

function system(text, room = state.current) {
  log(room, { text, cls: 'system' });
}

function renderRooms() {
  const ul = $('rooms');
  ul.replaceChildren(
    ...ROOMS.map((room) => {
      const li = document.createElement('li');
      li.textContent = room.slice(5) + (state.subs.has(room) ? '' : ' (locked)');
      li.dataset.room = room;
      if (room === state.current) li.className = 'active';
      const n = state.unread.get(room);
      if (n) {
        const u = document.createElement('span');
        u.className = 'unread';
        u.textContent = `(${n})`;
        li.append(u);
      }
      li.onclick = () => enter(room);
      return li;
    }),
  );
}

async function enter(room) {
  if (!state.subs.has(room)) {
    const password = room === 'room:secret' ? prompt('Password for the secret room?') : null;
    if (!(await join(room, password ? { password } : undefined))) return;
  }
  state.current = room;
  state.unread.delete(room);
  $('room-title').textContent = room;
  $('messages').replaceChildren();
  for (const entry of state.logs.get(room) ?? []) line($('messages'), entry);
  renderRooms();
  renderMembers();
}

function watchRecovery(sub, room) {
  sub.onRecovery((kind) =>
    system(
      kind === 'recovered'
        ? 'reconnected: missed messages recovered'
        : 'reconnected, but the history is gone: some messages were lost',
      room,
    ),
  );
}

// ---- Presence: who is in the room -------------------------------------------------------------
// The list shows people: one line per user (with their number of tabs), named by the `info`
// the server's session parser attached, else by user id. A join or leave is announced when a
// user's first tab comes or their last tab goes.

const nameOf = (m) => m.info?.name ?? m.user ?? 'someone';
// Whether the person of member `m` is in `members` (anonymous members are people of their own).
const present = (members, m) =>
  m.user ? [...members.values()].some((o) => o.user === m.user) : members.has(m.socket);

function people(room) {
  const byUser = new Map();
  for (const m of state.members.get(room)?.values() ?? []) {
    const key = m.user ?? m.socket;
    const person = byUser.get(key) ?? { name: nameOf(m), user: m.user, tabs: 0 };
    person.tabs += 1;
    byUser.set(key, person);
  }
  return [...byUser.values()].sort((a, b) => a.name.localeCompare(b.name));
}

function renderMembers() {
  const list = people(state.current);
  const known = state.members.has(state.current);
  $('member-count').textContent = known ? `(${list.length} online)` : '';
  $('members').replaceChildren(
    ...list.map((person) => {
      const li = document.createElement('li');
      li.textContent = person.name;
      if (person.user) li.dataset.user = person.user;
      if (person.user === me) li.className = 'me';
      if (person.tabs > 1) {
        const tabs = document.createElement('span');
        tabs.className = 'tabs';
        tabs.textContent = `×${person.tabs}`;
        li.append(tabs);
      }
      return li;
    }),
  );
}

function memberEvent(room, joined, m) {
  state.inFlight.get(room)?.push([joined, m]);
  const members = state.members.get(room);
  if (!members) return;
  const before = present(members, m);
  if (joined) members.set(m.socket, m);
  else members.delete(m.socket);
  const after = present(members, m);
  // Comings and goings are shown in the room, but do not count as unread messages.
  const say = (text) => log(room, { text, cls: 'system', quiet: true });
  if (after && !before) say(`${nameOf(m)} joined`);
  if (before && !after) say(`${nameOf(m)} left`);
  if (room === state.current) renderMembers();
}

// Presence is not replayed after a reconnect: the list is asked for after (re)subscribing.
async function refreshMembers(sub, room) {
  const arrived = [];
  state.inFlight.set(room, arrived);
  try {
    const members = new Map((await sub.presence()).map((m) => [m.socket, m]));
    // The answer may predate events that arrived while it travelled: replay them on it.
    for (const [joined, m] of arrived) {
      if (joined) members.set(m.socket, m);
      else members.delete(m.socket);
    }
    state.members.set(room, members);
  } catch (e) {
    system(`cannot list who is here: ${e.message}`, room);
  } finally {
    if (state.inFlight.get(room) === arrived) state.inFlight.delete(room);
  }
  if (room === state.current) renderMembers();
}

async function join(room, query) {
  try {
    const sub = await state.client.subscribe(room, query, { presence: true });
    state.subs.set(room, sub);
    sub.on('msg', (msg) => log(room, { from: msg.from, text: msg.text }));
    watchRecovery(sub, room);
    if (sub.hasPresence) {
      state.members.set(room, new Map());
      sub.onJoin((m) => memberEvent(room, true, m));
      sub.onLeave((m) => memberEvent(room, false, m));
      sub.onRecovery(() => refreshMembers(sub, room));
      await refreshMembers(sub, room);
    }
    return true;
  } catch (e) {
    system(`cannot join ${room}: ${e.message}`);
    return false;
  }
}

async function start() {
  await init();
  $('chat').hidden = false;
  $('me').textContent = `logged in as ${me}`;
  const client = await Client.connect(`ws://${location.host}/ws`, {
    reconnect: { baseMs: 200, maxMs: 3000 },
    askTimeoutMs: 5000,
  });
  state.client = client;
  const status = $('status');
  const show = (s) => {
    status.textContent = s;
    status.dataset.status = s;
  };
  show(client.status);
  client.onStatus(show);

  for (const room of ROOMS.filter((r) => r !== 'room:secret')) await join(room);
  await enter('room:lobby');

  const inbox = await client.subscribe(`#user:${me}`);
  inbox.on('dm', (dm) =>
    line($('dms'), { from: dm.from === me ? `→ ${dm.to}` : dm.from, text: dm.text }),
  );
  watchRecovery(inbox, state.current);

  const typing = new Map();
  client.onTell('typing', ({ room, from }) => {
    if (from === me) return;
    typing.set(`${room}/${from}`, Date.now());
    renderTyping(typing);
    setTimeout(() => renderTyping(typing), 3100);
  });

  let lastTyping = 0;
  $('say-text').addEventListener('input', () => {
    if (Date.now() - lastTyping > 2000) {
      lastTyping = Date.now();
      client.tell('typing', state.current);
    }
  });
  $('say-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const text = $('say-text').value;
    $('say-text').value = '';
    try {
      await client.ask('say', { room: state.current, text });
    } catch (e) {
      system(`not sent: ${e.message}`);
    }
  });
  $('dm-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const to = $('dm-to').value;
    const text = $('dm-text').value;
    $('dm-text').value = '';
    try {
      await client.ask('dm', { to, text });
    } catch (e) {
      line($('dms'), { text: `not sent: ${e.message}`, cls: 'system' });
    }
  });
}

function renderTyping(typing) {
  const now = Date.now();
  const who = [...typing]
    .filter(([key, at]) => now - at < 3000 && key.startsWith(`${state.current}/`))
    .map(([key]) => key.split('/')[1]);
  $('typing').textContent = who.length ? `${who.join(', ')} typing…` : '';
}
