// chat.js: a browser client for the chat/1 protocol, in one dependency-free ES module.
//
// Lift it into your own page:
//
//   import { ChatClient } from "./chat.js";
//   const chat = new ChatClient({ url: "wss://chat.example.com/ws", user: "alice" });
//   chat.on("message", (m) => console.log(m.room, m.seq, m.from, m.body));
//   chat.on("status", ({ state }) => console.log(state));
//   await chat.connect();                       // resolves on the first `welcome`
//   await chat.join("lobby");                   // history comes in as `message` events
//   await chat.send("lobby", { text: "hi" });   // resolves to the `sent` reply
//
// What it does for you:
// * request ids: every request returns a Promise of its reply; an `error` reply rejects with
//   a ChatError {code, message} (code "disconnected" when the connection dropped first);
// * heartbeats: answers the server's pings, and drops a connection that went silent;
// * reconnection with exponential backoff and jitter, unless the server's `bye` says not to;
// * tokens that expire: with `tokenSource: () => Promise<string>` (say, a fetch of your token
//   endpoint) it takes the token for every `hello` from it, and sends `refresh` with a new one
//   before `welcome.exp` (at 80% of the remaining lifetime or 30 s before the end, whichever
//   is earlier, but not before half of it), so the session is never closed as `expired`. A
//   plain `token` option is used as is (the session then ends at its `exp`, and reconnecting
//   with the same token fails once it has expired);
// * recovery: it remembers the epoch and last seq of every joined room and rejoins with
//   `since`, so the server replays what was missed. When it cannot (`recovered:false`, or a
//   `reset`), it emits `clear` for the room and reloads the newest history. Messages are
//   delivered once each, in seq order, per room.
//
// Events (chat.on(name, fn), returns a function that unsubscribes):
//   status        {state: "connecting"|"open"|"reconnecting"|"closed", attempt?, delay?, reason?}
//   welcome       the server's welcome frame
//   joined        {room, epoch, seq, recovered, rejoin}  after every (re)join
//   message       {room, seq, from, ts, body, replayed}  stored messages, deduplicated, in order
//   ephemeral     {room, from, ts, body}                  ephemeral messages (typing...)
//   clear         {room, epoch}                           drop what you show for the room
//   member_joined / member_left  {room, user}
//   invite        {room, from, seq}   a message for you in a room you are not in (a direct
//                                     conversation's, or the host's invitation): join to read it
//   kicked        {room}              the host removed you from the room (not rejoined)
//   bye           {reason, reconnect}
//   error         {code, message}                         errors that answer no request
//   frame         every frame received, raw (for debugging)

export const SUBPROTOCOL = "chat.v1";

/**
 * The name of the direct conversation between `users` (PROTOCOL.md §4): `dm:` and the
 * distinct names in ascending byte order, joined by `:`.
 */
export function directRoom(...users) {
  const bytes = (s) => new TextEncoder().encode(s);
  const order = (a, b) => {
    const [x, y] = [bytes(a), bytes(b)];
    for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
    return x.length - y.length;
  };
  return `dm:${[...new Set(users)].sort(order).join(":")}`;
}

/** The other users of direct conversation `room` for `me`, or null for any other room. */
export function directPeers(room, me) {
  if (!room.startsWith("dm:")) return null;
  return room.slice(3).split(":").filter((u) => u !== me);
}

export class ChatError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "ChatError";
    this.code = code;
  }
}

const DEFAULTS = {
  url: null, // default: ws(s)://<this page's host>/ws
  user: undefined,
  token: undefined,
  tokenSource: undefined, // () => Promise<string>: a fresh token for each hello and refresh
  reconnect: true,
  backoffMin: 250, // ms: first retry delay
  backoffMax: 10000, // ms: the delay stops doubling here
  requestTimeout: 15000, // ms
  historyLimit: 50, // messages loaded on join
};

export class ChatClient {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    if (!this.options.url) {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      this.options.url = `${scheme}//${location.host}/ws`;
    }
    this.ws = null;
    this.state = "closed";
    this.welcome = null;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.listeners = new Map(); // event -> Set(fn)
    // room -> {epoch, seq, joined, loading, buffer}: what recovery needs per room.
    this.rooms = new Map();
    this.attempt = 0;
    this.closedByUser = false;
    this.retryTimer = null;
    this.silenceTimer = null;
    this.refreshTimer = null;
    this.exp = null; // the session's expiry (seconds since the Unix epoch), when it has one
  }

  // --- events -----------------------------------------------------------------------------

  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.listeners.get(event).delete(fn);
  }

  emit(event, data) {
    for (const fn of this.listeners.get(event) || []) {
      try {
        fn(data);
      } catch (e) {
        console.error(`chat: a "${event}" listener threw`, e);
      }
    }
  }

  setState(state, extra = {}) {
    this.state = state;
    this.emit("status", { state, ...extra });
  }

  // --- connection ---------------------------------------------------------------------------

  /** Opens the connection; resolves with `welcome`, rejects if the server refuses us. */
  connect() {
    this.closedByUser = false;
    return new Promise((resolve, reject) => {
      const offWelcome = this.on("welcome", (w) => (offWelcome(), offFatal(), resolve(w)));
      const offFatal = this.on("status", (s) => {
        if (s.state === "closed") (offWelcome(), offFatal(), reject(new ChatError(s.reason || "closed", "not connected")));
      });
      this.open();
    });
  }

  /** Closes for good (no reconnection). */
  close() {
    this.closedByUser = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.silenceTimer);
    clearTimeout(this.refreshTimer);
    if (this.ws) this.ws.close(1000);
    this.setState("closed", { reason: "closed" });
  }

  open() {
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting", { attempt: this.attempt });
    const ws = new WebSocket(this.options.url, SUBPROTOCOL);
    this.ws = ws;
    let bye = null;
    ws.onopen = async () => {
      const hello = { type: "hello", protocol: 1 };
      if (this.options.user !== undefined) hello.user = this.options.user;
      if (this.options.token !== undefined) hello.token = this.options.token;
      if (this.options.tokenSource) {
        try {
          hello.token = await this.options.tokenSource();
        } catch (e) {
          // No token now: drop this connection; the usual backoff retries.
          console.warn("chat: the token source failed", e);
          if (this.ws === ws) ws.close(4001, "no token");
          return;
        }
        if (this.ws !== ws) return;
      }
      this.request(hello).then((welcome) => this.onWelcome(welcome), () => {});
    };
    ws.onmessage = (ev) => {
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.heard();
      if (frame.type === "bye") bye = frame;
      this.onFrame(frame);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.welcome = null;
      this.exp = null;
      clearTimeout(this.silenceTimer);
      clearTimeout(this.refreshTimer);
      for (const [, p] of this.pending) (clearTimeout(p.timer), p.reject(new ChatError("disconnected", "the connection closed")));
      this.pending.clear();
      for (const r of this.rooms.values()) r.loading = false;
      if (this.closedByUser) return;
      if (!this.options.reconnect || (bye && bye.reconnect === false)) {
        this.setState("closed", { reason: bye ? bye.reason : "closed" });
        return;
      }
      this.scheduleReconnect();
    };
  }

  scheduleReconnect() {
    // Exponential backoff with "equal jitter": half the delay fixed, half random, so that many
    // clients dropped at once by a restart do not come back in lockstep.
    const o = this.options;
    const ceiling = Math.min(o.backoffMax, o.backoffMin * 2 ** Math.min(this.attempt, 16));
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.attempt += 1;
    this.setState("reconnecting", { attempt: this.attempt, delay });
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  /** Reconnects now instead of waiting for the backoff (e.g. on the browser's `online`). */
  retryNow() {
    if (this.ws || this.closedByUser) return;
    clearTimeout(this.retryTimer);
    this.open();
  }

  /** Anything from the server is a sign of life; silence for 2 heartbeats means a dead link. */
  heard() {
    if (!this.welcome) return;
    clearTimeout(this.silenceTimer);
    const ws = this.ws;
    this.silenceTimer = setTimeout(() => ws && ws.close(4000, "silent"), 2 * this.welcome.heartbeat_ms + 5000);
  }

  async onWelcome(welcome) {
    this.welcome = welcome;
    this.attempt = 0;
    this.heard();
    this.scheduleRefresh(welcome.exp);
    this.setState("open", { user: welcome.user });
    this.emit("welcome", welcome);
    // Rejoin every room, each from where it stopped.
    for (const room of this.rooms.keys()) this.joinRoom(room, true).catch((e) => this.emit("error", e));
  }

  // --- token refresh ------------------------------------------------------------------------

  /** Plans the next `refresh` for a session expiring at `exp` (seconds), if it expires. */
  scheduleRefresh(exp) {
    clearTimeout(this.refreshTimer);
    this.exp = exp === undefined ? null : exp;
    if (this.exp === null || !this.options.tokenSource) return;
    const remaining = this.exp * 1000 - Date.now();
    if (remaining <= 0) return; // too late: the server closes with `expired`, we reconnect
    // 80% of the remaining lifetime or 30 s before the end, whichever is earlier; not before
    // half of it (short-lived tokens are not refreshed in a loop), nor sooner than 100 ms.
    const earliest = Math.min(0.8 * remaining, remaining - 30000);
    const delay = Math.max(earliest, remaining / 2, Math.min(remaining, 100));
    const ws = this.ws;
    this.refreshTimer = setTimeout(() => this.refresh(ws), delay);
  }

  /** Takes a new token from `tokenSource` and sends `refresh` on the connection `ws`. */
  async refresh(ws) {
    if (this.ws !== ws || !this.welcome) return;
    let token;
    try {
      token = await this.options.tokenSource();
    } catch (e) {
      console.warn("chat: the token source failed; trying again", e);
      if (this.ws === ws) this.scheduleRefresh(this.exp); // again, in half the time left
      return;
    }
    if (this.ws !== ws) return;
    try {
      const refreshed = await this.request({ type: "refresh", token });
      if (this.ws === ws) this.scheduleRefresh(refreshed.exp);
    } catch (e) {
      // `unauthorized` closes the connection (and `bye` says not to come back); any other
      // failure is tried again while there is time.
      if (e.code !== "unauthorized" && this.ws === ws) this.scheduleRefresh(this.exp);
    }
  }

  // --- requests -----------------------------------------------------------------------------

  /** Sends a request frame and resolves with its reply (rejects with a ChatError). */
  request(frame) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(new ChatError("disconnected", "not connected"));
        return;
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ChatError("timeout", `no reply to ${frame.type} within ${this.options.requestTimeout} ms`));
      }, this.options.requestTimeout);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  /** Sends a frame with no id: no reply expected. */
  fire(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  /** Joins a room; its recent history arrives as `message` events, then live messages. */
  join(room) {
    if (!this.rooms.has(room)) this.rooms.set(room, { epoch: null, seq: 0, joined: false, loading: false, buffer: [] });
    return this.joinRoom(room, false);
  }

  async joinRoom(room, rejoin) {
    const r = this.rooms.get(room);
    const frame = { type: "join", room };
    if (r.epoch !== null) frame.since = { epoch: r.epoch, seq: r.seq };
    // Until history is in, live messages wait in `buffer` (they may overlap the page).
    r.loading = true;
    r.buffer = [];
    let joined;
    try {
      joined = await this.request(frame);
    } catch (e) {
      r.loading = false;
      if (!rejoin) this.rooms.delete(room);
      throw e;
    }
    r.joined = true;
    if (r.epoch !== null && !joined.recovered) this.emit("clear", { room, epoch: joined.epoch });
    if (!joined.recovered) r.seq = 0;
    r.epoch = joined.epoch;
    this.emit("joined", { room, epoch: joined.epoch, seq: joined.seq, recovered: joined.recovered, rejoin });
    if (joined.recovered) {
      // The server replays what we missed right after `joined`, before any live message.
      this.flush(room);
    } else {
      await this.reload(room);
    }
    return joined;
  }

  /** Loads the newest page of history, then delivers what was buffered meanwhile. */
  async reload(room) {
    const r = this.rooms.get(room);
    if (!r) return;
    r.loading = true;
    try {
      const page = await this.request({ type: "history", room, limit: this.options.historyLimit });
      if (page.epoch !== r.epoch) {
        if (r.epoch !== null && r.seq > 0) this.emit("clear", { room, epoch: page.epoch });
        r.epoch = page.epoch;
        r.seq = 0;
      }
      for (const m of page.messages) this.deliver(room, { ...m, replayed: true });
    } finally {
      this.flush(room);
    }
  }

  flush(room) {
    const r = this.rooms.get(room);
    if (!r) return;
    r.loading = false;
    const buffered = r.buffer;
    r.buffer = [];
    for (const m of buffered) this.onMessage(m);
  }

  /** Fills a gap in the live stream (should not happen; the server guarantees no gaps). */
  async fill(room) {
    const r = this.rooms.get(room);
    r.loading = true;
    try {
      for (let i = 0; i < 10; i++) {
        const page = await this.request({ type: "history", room, after: r.seq, limit: 100 });
        for (const m of page.messages) this.deliver(room, { ...m, replayed: true });
        if (page.messages.length < 100) break;
      }
    } finally {
      this.flush(room);
    }
  }

  /** Leaves a room (and forgets it: it is not rejoined on reconnection). */
  leave(room) {
    this.rooms.delete(room);
    return this.request({ type: "leave", room });
  }

  /**
   * Sends a message. Options: `ephemeral` (not stored: typing indicators), `key` (an
   * idempotency key: retrying with the same key after a "disconnected" rejection cannot store
   * the message twice). Resolves with the `sent` reply ({seq} unless ephemeral).
   */
  send(room, body, { ephemeral = false, key } = {}) {
    const frame = { type: "send", room, body };
    if (ephemeral) frame.ephemeral = true;
    if (key !== undefined) frame.key = key;
    return this.request(frame);
  }

  history(room, { before, after, limit } = {}) {
    return this.request({ type: "history", room, before, after, limit });
  }

  presence(room) {
    return this.request({ type: "presence", room });
  }

  // --- inbound frames -----------------------------------------------------------------------

  onFrame(frame) {
    this.emit("frame", frame);
    if (frame.id !== undefined && this.pending.has(frame.id)) {
      const p = this.pending.get(frame.id);
      this.pending.delete(frame.id);
      clearTimeout(p.timer);
      if (frame.type === "error") p.reject(new ChatError(frame.code, frame.message));
      else p.resolve(frame);
      return;
    }
    switch (frame.type) {
      case "ping":
        if (frame.id === undefined) this.fire({ type: "pong" });
        break;
      case "message":
        this.onMessage(frame);
        break;
      case "reset": {
        const r = this.rooms.get(frame.room);
        if (!r) break;
        r.epoch = frame.epoch;
        r.seq = 0;
        this.emit("clear", { room: frame.room, epoch: frame.epoch });
        this.reload(frame.room).catch(() => {});
        break;
      }
      case "member_joined":
      case "member_left":
        this.emit(frame.type, { room: frame.room, user: frame.user });
        break;
      case "invite":
        this.emit("invite", { room: frame.room, from: frame.from, seq: frame.seq });
        break;
      case "kicked":
        // Out of the room: not rejoined on reconnect.
        this.rooms.delete(frame.room);
        this.emit("kicked", { room: frame.room });
        break;
      case "bye":
        this.emit("bye", { reason: frame.reason, reconnect: frame.reconnect });
        break;
      case "error":
        this.emit("error", new ChatError(frame.code, frame.message));
        break;
    }
  }

  onMessage(m) {
    const r = this.rooms.get(m.room);
    if (!r) return;
    if (m.seq === undefined) {
      this.emit("ephemeral", { room: m.room, from: m.from, ts: m.ts, body: m.body });
      return;
    }
    if (r.loading) {
      r.buffer.push(m);
      return;
    }
    if (m.seq > r.seq + 1 && r.seq > 0) {
      r.buffer.push(m);
      this.fill(m.room).catch(() => {});
      return;
    }
    this.deliver(m.room, { ...m, replayed: false });
  }

  deliver(room, m) {
    const r = this.rooms.get(room);
    if (m.seq <= r.seq) return; // seen already
    r.seq = m.seq;
    this.emit("message", { room, seq: m.seq, from: m.from, ts: m.ts, body: m.body, replayed: m.replayed });
  }
}
