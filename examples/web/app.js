// app.js: the example page's UI on top of chat.js. Rooms in the sidebar, one message list per
// room, members, typing indicators, direct conversations (click a member, or join "@name";
// an invitation opens the conversation in the sidebar) and a connection status. All protocol work (ids, replies,
// reconnection, recovery, deduplication) is chat.js's; this file only renders its events.
//
// Query parameters for links and tests: ?user=NAME&room=ROOM (joins at once), &token=JWT when
// the server was started with --token-secret.

import { ChatClient, directPeers, directRoom } from "./chat.js";

const $ = (selector) => document.querySelector(selector);
const params = new URLSearchParams(location.search);
const TYPING_EVERY_MS = 2000; // we announce typing at most this often
const TYPING_SHOWN_MS = 3500; // and show others' typing this long after their last announce

let chat = null;
let me = null;
let active = null; // the room shown
const rooms = new Map(); // room -> {list, button, badge, unread, members: Map(user -> sessions), typing: Map(user -> until)}

// --- login ---------------------------------------------------------------------------------

$("#name").value = params.get("user") || localStorage.getItem("chat.name") || `guest-${Math.floor(Math.random() * 9000 + 1000)}`;
$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  start($("#name").value.trim(), params.get("room") || "lobby");
});
if (params.get("user")) start(params.get("user"), params.get("room") || "lobby");

function start(name, firstRoom) {
  if (!name || chat) return;
  localStorage.setItem("chat.name", name);
  chat = new ChatClient({ user: name, token: params.get("token") || undefined });
  chat.on("status", showStatus);
  chat.on("welcome", (w) => {
    me = w.user;
    $("#me").textContent = `signed in as ${me}`;
    $("#login").hidden = true;
    $("#chat").hidden = false;
  });
  chat.on("joined", onJoined);
  chat.on("message", onMessage);
  chat.on("ephemeral", onEphemeral);
  chat.on("clear", ({ room }) => {
    const r = rooms.get(room);
    if (!r) return;
    r.list.replaceChildren(notice("The room's history was reset on the server."));
  });
  chat.on("member_joined", ({ room, user }) => {
    const r = rooms.get(room);
    if (r) (r.members.set(user, Math.max(1, r.members.get(user) || 0)), renderMembers());
  });
  chat.on("member_left", ({ room, user }) => {
    const r = rooms.get(room);
    if (r) (r.members.delete(user), renderMembers());
  });
  chat.on("invite", ({ room }) => {
    // A direct message (or the host's invitation): the conversation opens in the sidebar,
    // with its history, marked unread.
    if (rooms.has(room) && chat.rooms.has(room)) return;
    joinRoom(room, { focus: false }).then(() => markUnread(room));
  });
  chat.on("kicked", ({ room }) => {
    const r = rooms.get(room);
    if (!r) return;
    r.members.clear();
    const removed = notice("You were removed from this room.");
    removed.classList.add("kicked");
    r.list.append(removed);
    renderMembers();
  });
  chat.on("error", (e) => console.warn("chat:", e.code, e.message));
  window.addEventListener("online", () => chat.retryNow());
  chat.connect().then(
    () => joinRoom(firstRoom),
    (e) => {
      chat = null; // refused (a bad name or token): let the form try again
      showStatus({ state: "closed", reason: e.code });
    },
  );
}

// --- rooms -----------------------------------------------------------------------------------

$("#join-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("#join-room").value.trim();
  // "@bob" starts (or opens) the direct conversation with bob.
  const room = name.startsWith("@") ? directRoom(me, name.slice(1)) : name;
  if (name) joinRoom(room).then(() => ($("#join-room").value = ""));
});

async function joinRoom(room, { focus = true } = {}) {
  if (!rooms.has(room)) addRoom(room);
  if (focus || !active) show(room);
  try {
    await chat.join(room);
  } catch (e) {
    rooms.get(room).list.append(notice(`Could not join: ${e.message}`));
  }
}

function addRoom(room) {
  const list = document.createElement("ol");
  list.className = "messages";
  list.dataset.room = room;
  list.hidden = true;
  $("#message-lists").append(list);

  const item = document.createElement("li");
  const button = document.createElement("button");
  button.className = "room-button";
  button.dataset.room = room;
  const name = document.createElement("span");
  name.textContent = title(room);
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.hidden = true;
  button.append(name, badge);
  button.addEventListener("click", () => show(room));
  item.append(button);
  $("#rooms").append(item);

  rooms.set(room, { list, button, badge, unread: 0, members: new Map(), typing: new Map() });
}

function show(room) {
  active = room;
  lastTyping = 0;
  for (const [name, r] of rooms) {
    r.list.hidden = name !== room;
    r.button.classList.toggle("active", name === room);
  }
  const r = rooms.get(room);
  r.unread = 0;
  r.badge.hidden = true;
  $("#room-title").textContent = title(room);
  renderMembers();
  renderTyping();
  scrollToEnd(true);
  $("#text").focus();
}

async function onJoined({ room }) {
  // After every (re)join, ask who is here: presence may have changed while we were away.
  try {
    const presence = await chat.presence(room);
    const r = rooms.get(room);
    r.members = new Map(presence.members.map((m) => [m.user, m.sessions]));
    renderMembers();
  } catch (e) {
    console.warn("presence:", e.message);
  }
}

/** What the sidebar and the header call a room: `@ bob` for a direct conversation. */
function title(room) {
  const peers = directPeers(room, me);
  return peers ? `@ ${peers.join(", ")}` : `# ${room}`;
}

function markUnread(room) {
  const r = rooms.get(room);
  if (!r || room === active) return;
  r.unread = Math.max(r.unread, 1);
  r.badge.textContent = r.unread;
  r.badge.hidden = false;
}

function renderMembers() {
  const r = rooms.get(active);
  const items = [...(r ? r.members : new Map())]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([user, sessions]) => {
      const li = document.createElement("li");
      li.className = "member";
      li.dataset.user = user;
      li.textContent = user === me ? `${user} (you)` : user;
      if (user !== me) {
        // A click opens the direct conversation with that member.
        li.title = `message ${user} directly`;
        li.addEventListener("click", () => joinRoom(directRoom(me, user)));
      }
      if (sessions > 1) {
        const count = document.createElement("span");
        count.className = "count";
        count.textContent = `×${sessions}`;
        li.append(count);
      }
      return li;
    });
  $("#members").replaceChildren(...items);
}

// --- messages ------------------------------------------------------------------------------

function onMessage(m) {
  const r = rooms.get(m.room);
  if (!r) return;
  const li = document.createElement("li");
  li.className = m.from === me ? "msg mine" : m.from === "" ? "msg system" : "msg";
  li.dataset.room = m.room;
  li.dataset.seq = m.seq;
  li.dataset.from = m.from;
  li.dataset.ts = m.ts;
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = m.from === "" ? "system" : m.from; // the host's own messages
  const time = document.createElement("time");
  time.dateTime = new Date(m.ts).toISOString();
  time.textContent = new Date(m.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const text = document.createElement("div");
  text.className = "text";
  if (m.deleted) {
    text.classList.add("deleted");
    text.textContent = "(message deleted)";
  } else {
    text.textContent = typeof m.body?.text === "string" ? m.body.text : JSON.stringify(m.body);
  }
  li.append(from, time, text);

  const stick = isAtEnd();
  r.list.append(li);
  r.typing.delete(m.from);
  if (m.room === active) {
    renderTyping();
    scrollToEnd(stick);
  } else if (!m.replayed) {
    r.unread += 1;
    r.badge.textContent = r.unread;
    r.badge.hidden = false;
  }
}

function notice(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  return li;
}

$("#composer").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("#text");
  const text = input.value.trim();
  if (!text || !active) return;
  input.value = "";
  lastTyping = 0;
  try {
    // The key makes a retry after a lost reply safe: the server stores the message once.
    await chat.send(active, { text }, { key: newKey() });
  } catch (e) {
    input.value = input.value || text; // give the text back to retry
    rooms.get(active)?.list.append(notice(`Not sent (${e.code}): ${e.message}`));
  }
});

// --- typing indicators ---------------------------------------------------------------------

let lastTyping = 0; // reset on sending and on switching rooms: the next keystroke announces
$("#text").addEventListener("input", () => {
  const now = Date.now();
  if (!active || !$("#text").value || now - lastTyping < TYPING_EVERY_MS || chat.state !== "open") return;
  lastTyping = now;
  chat.send(active, { typing: true }, { ephemeral: true }).catch(() => {});
});

function onEphemeral({ room, from, body }) {
  const r = rooms.get(room);
  if (!r || from === me || !body || body.typing !== true) return;
  r.typing.set(from, Date.now() + TYPING_SHOWN_MS);
  if (room === active) renderTyping();
  setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
}

function renderTyping() {
  const r = rooms.get(active);
  const now = Date.now();
  const who = r ? [...r.typing].filter(([, until]) => until > now).map(([user]) => user) : [];
  $("#typing").textContent =
    who.length === 0 ? "" : who.length === 1 ? `${who[0]} is typing…` : `${who.slice(0, -1).join(", ")} and ${who.at(-1)} are typing…`;
}

// --- status ----------------------------------------------------------------------------------

function showStatus({ state, delay, attempt, reason }) {
  const status = $("#status");
  status.dataset.state = state;
  status.textContent = {
    connecting: "connecting…",
    open: "online",
    reconnecting: delay ? `reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${attempt})` : "reconnecting…",
    closed: `offline${reason ? `: ${reason}` : ""}`,
  }[state];
  $("#send").disabled = state !== "open";
}

// --- helpers ---------------------------------------------------------------------------------

function isAtEnd() {
  const box = $("#message-lists");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
}

function scrollToEnd(really) {
  const box = $("#message-lists");
  if (really) box.scrollTop = box.scrollHeight;
}

function newKey() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}
