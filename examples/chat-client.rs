//! `chat-client`: a terminal chat client, and an example of using the engine's client library
//! ([`Reconnecting`](chat_core::client::Reconnecting) around the generic
//! [`Client`](chat_core::client::Client)) over either transport.
//!
//! ```text
//! cargo run --example chat-client -- [--tcp ADDR | --ws URL] --user NAME [--token T] [ROOM...]
//! ```
//!
//! Type a line to send it to the current room. Commands: `/join ROOM`, `/dm USER [USER...]`
//! (join, or start, the direct conversation with those users), `/leave [ROOM]`, `/room ROOM`
//! (switch the current room), `/history [N]`, `/who`, `/quit`. A direct message for you in a
//! conversation you are not in shows as an invite, with the `/dm` that answers it.
//!
//! Output is one line per event, so that programs can read it too:
//!
//! ```text
//! [lobby #12] alice: hello          a stored message (`[lobby ~]` for an ephemeral one)
//! * [lobby] bob joined              member events and other notices start with `*`
//! ! forbidden: ...                  errors start with `!`
//! ```
//!
//! The client survives server restarts. The library does the reconnecting: exponential backoff
//! with jitter (unless the server's `bye` says not to), the rooms joined again with `since` (the
//! epoch and last seq seen in each room) so the server replays what was missed, and keyed sends
//! whose `sent` reply was lost resent with their key, so that nothing is stored twice. This
//! program falls back to `history` when the server cannot replay (`recovered: false`, or a
//! `reset`), and shows every message once, in seq order. Lines typed while disconnected are
//! queued here and sent on reconnection, each with its idempotency key.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use chat_core::client::{
    Backoff, Client, ClientError, Event, HistoryQuery, Joined, Message, ReconnectOptions, Reconnected, Reconnecting,
    Update,
};
use chat_core::RoomName;
use clap::Parser;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How many messages are shown when joining a room for the first time.
const RECENT_ON_JOIN: u64 = 10;
/// The page size used to catch up with history after a reconnection.
const CATCH_UP_PAGE: u64 = 100;
/// The pauses between reconnection attempts: from 100 ms, doubling up to 5 s, jittered.
const BACKOFF: Backoff = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5) };

#[derive(Parser, Debug)]
#[command(about = "A terminal client for the chat engine (protocol chat/1)")]
struct Args {
    /// The server's TCP address (the default transport: 127.0.0.1:7070).
    #[arg(long, value_name = "ADDR", conflicts_with = "ws")]
    tcp: Option<String>,
    /// The server's WebSocket URL instead of TCP, e.g. ws://127.0.0.1:8080/ws.
    #[arg(long, value_name = "URL")]
    ws: Option<String>,
    /// Your user name.
    #[arg(long)]
    user: String,
    /// A token for the server's authenticator.
    #[arg(long)]
    token: Option<String>,
    /// Rooms to join; the first is the current room (default: lobby).
    #[arg(value_name = "ROOM")]
    rooms: Vec<String>,
}

/// Where the server is.
#[derive(Clone)]
enum Server {
    Tcp(String),
    Ws(String),
}

impl Server {
    /// Opens one connection, over either transport; the errors are the same type either way.
    async fn connect(self, user: String, token: Option<String>) -> Result<Client, ClientError> {
        match self {
            Server::Tcp(addr) => chat_transport_tcp::connect(addr.as_str(), Some(&user), token.as_deref()).await,
            Server::Ws(url) => chat_transport_ws::connect(&url, Some(&user), token.as_deref()).await,
        }
    }
}

/// One line of input.
enum Command {
    Say(String),
    Join(String),
    Leave(Option<String>),
    Switch(String),
    History(u64),
    Who,
    Quit,
    Invalid(String),
}

impl Command {
    /// `me`: this session's user (`/dm` names a conversation with it).
    fn parse(line: &str, me: &str) -> Option<Command> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return None;
        }
        let Some(command) = line.strip_prefix('/') else { return Some(Command::Say(line.to_owned())) };
        let (name, arg) = match command.trim().split_once(char::is_whitespace) {
            Some((name, arg)) => (name, Some(arg.trim())),
            None => (command.trim(), None),
        };
        let room = |r: Option<&str>| match r {
            Some(r) if RoomName::is_valid(r) => Ok(r.to_owned()),
            Some(r) => Err(format!("invalid room name {r:?}")),
            None => Err(format!("/{name} needs a room")),
        };
        Some(match (name, arg) {
            ("join", r) => room(r).map_or_else(Command::Invalid, Command::Join),
            ("room", r) => room(r).map_or_else(Command::Invalid, Command::Switch),
            ("leave", None) => Command::Leave(None),
            ("leave", r) => room(r).map_or_else(Command::Invalid, |r| Command::Leave(Some(r))),
            ("history", None) => Command::History(20),
            ("history", Some(n)) => match n.parse() {
                Ok(n) if n > 0 => Command::History(n),
                _ => Command::Invalid(format!("/history takes a positive number, not {n:?}")),
            },
            ("dm", None) => Command::Invalid("/dm needs one or more users".to_owned()),
            ("dm", Some(users)) => {
                let users = users.split_whitespace().chain([me]);
                match chat_core::direct::room(users) {
                    Some(room) => Command::Join(room.to_string()),
                    None => Command::Invalid(format!(
                        "no direct conversation between {me} and {arg:?}",
                        arg = arg.unwrap_or("")
                    )),
                }
            }
            ("who", _) => Command::Who,
            ("quit", _) => Command::Quit,
            _ => Command::Invalid(format!("unknown command /{name} (try /join /dm /leave /room /history /who /quit)")),
        })
    }
}

/// What the client knows of a room it is in.
#[derive(Default)]
struct RoomState {
    /// The epoch of the history `shown` refers to (unknown until the first `joined`).
    epoch: Option<String>,
    /// The last seq shown: later messages are new, earlier ones duplicates.
    shown: u64,
}

/// A line typed while disconnected, with the idempotency key it is sent with.
struct Unsent {
    room: String,
    body: Value,
    key: String,
}

/// The connection broke while a request was under way: the library reconnects, and says so
/// with `Update::Reconnected`.
struct Lost;

/// The client's state, kept across connections (the library keeps the connection itself).
struct Chat {
    /// The user the server says this session is (`welcome.user`; the command line's until then).
    me: String,
    rooms: BTreeMap<String, RoomState>,
    current: Option<String>,
    /// Lines typed while disconnected, sent once connected again.
    unsent: VecDeque<Unsent>,
    key_prefix: String,
    next_key: u64,
    /// The reason and reconnect flag of the last `bye` received.
    bye: Option<(String, bool)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = match (args.tcp, args.ws) {
        (_, Some(url)) => Server::Ws(url),
        (tcp, None) => Server::Tcp(tcp.unwrap_or_else(|| "127.0.0.1:7070".to_owned())),
    };
    let mut rooms = args.rooms;
    if rooms.is_empty() {
        rooms.push("lobby".to_owned());
    }
    if let Some(bad) = rooms.iter().find(|r| !RoomName::is_valid(r)) {
        bail!("invalid room name {bad:?}: 1 to 128 bytes of A-Z a-z 0-9 . _ - : @ #");
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut chat = Chat {
        me: args.user.clone(),
        current: rooms.first().cloned(),
        rooms: rooms.into_iter().map(|r| (r, RoomState::default())).collect(),
        unsent: VecDeque::new(),
        key_prefix: format!("{:x}-{:x}", now.as_nanos(), std::process::id()),
        next_key: 0,
        bye: None,
    };
    let (user, token) = (args.user, args.token);
    let connector = move || server.clone().connect(user.clone(), token.clone());
    let mut options = ReconnectOptions::default();
    options.backoff = BACKOFF;
    // Not connected yet: the first `next_update` connects, and says so like every reconnection.
    let mut client = Reconnecting::new(connector, options);
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let step = tokio::select! {
            // What the server sent first, so that it shows before the next line's effects.
            biased;
            update = client.next_update() => match update {
                Ok(Update::Event(event)) => chat.on_event(&mut client, event).await,
                Ok(Update::Disconnected) => {
                    match chat.bye.take() {
                        Some((reason, false)) => println!("* disconnected (server said bye: {reason})"),
                        Some((reason, true)) => println!("* disconnected (server said bye: {reason}); reconnecting"),
                        None => println!("* disconnected (connection lost); reconnecting"),
                    }
                    Ok(())
                }
                Ok(Update::Reconnected(done)) => chat.on_connected(&mut client, done).await,
                Ok(_) => Ok(()),
                Err(e) if e.is_refusal() => bail!("the server refused the session: {e}"),
                Err(ClientError::Closed) => bail!("disconnected; the server asks not to reconnect"),
                Err(e) => {
                    println!("! {e}");
                    Ok(())
                }
            },
            line = input.next_line() => match line {
                Ok(Some(line)) => match Command::parse(&line, &chat.me) {
                    Some(Command::Quit) => return Ok(()),
                    Some(command) if client.client().is_some() => chat.run(&mut client, command).await,
                    Some(command) => {
                        chat.run_offline(command);
                        Ok(())
                    }
                    None => Ok(()),
                },
                // End of input (or unreadable input): like /quit.
                _ => return Ok(()),
            },
        };
        // A request that found the connection gone: the library is reconnecting already.
        let _ = step;
    }
}

/// Sorts a request's outcome: a reply, a refusal (printed, the session goes on) or a lost
/// connection.
fn check<T>(result: Result<T, ClientError>) -> Result<Option<T>, Lost> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(ClientError::Server(e)) => {
            println!("! {e}");
            Ok(None)
        }
        // Closed, timed out, or unreadable: this connection is over for us.
        Err(_) => Err(Lost),
    }
}

/// A message as one line: `[room #seq] user: text`.
fn format_message(m: &Message) -> String {
    let (room, from) = (&m.room, &m.from);
    let at = m.seq.map_or("~".to_owned(), |s| format!("#{s}"));
    if m.deleted {
        return format!("[{room} {at}] {from}: (message deleted)");
    }
    match m.body.get("text").and_then(Value::as_str) {
        Some(text) => format!("[{room} {at}] {from}: {text}"),
        None => format!("[{room} {at}] {from}: {}", m.body),
    }
}

impl Chat {
    /// A new connection (the first one, or one after a loss): the library rejoined the rooms
    /// it knew and resent what had no reply; show how each room came back, join the rooms
    /// chosen meanwhile, then send the lines typed offline.
    async fn on_connected(&mut self, client: &mut Reconnecting, done: Reconnected) -> Result<(), Lost> {
        println!("* connected to node {} as {}", done.welcome.node, done.welcome.user);
        self.me = done.welcome.user.clone();
        self.bye = None;
        for (room, e) in &done.refused {
            println!("! [{room}] could not rejoin: {e}");
            self.rooms.remove(room);
        }
        for joined in done.rejoined {
            self.rejoined(client, joined).await?;
        }
        let new: Vec<String> = self.rooms.keys().filter(|r| client.since(r).is_none()).cloned().collect();
        for room in new {
            self.join(client, &room).await?;
        }
        self.flush(client).await
    }

    /// Input while disconnected: room changes are remembered, lines queued.
    fn run_offline(&mut self, command: Command) {
        match command {
            Command::Say(text) => {
                if self.queue(text) {
                    println!("* not connected: the line will be sent on reconnection");
                }
            }
            Command::Join(room) => {
                self.rooms.entry(room.clone()).or_default();
                println!("* [{room}] will be joined on reconnection");
                self.current = Some(room);
            }
            Command::Leave(room) => self.forget(room),
            Command::Switch(room) => self.switch(room),
            Command::History(_) | Command::Who => println!("! not connected"),
            Command::Invalid(e) => println!("! {e}"),
            Command::Quit => {}
        }
    }

    /// Input while connected.
    async fn run(&mut self, client: &mut Reconnecting, command: Command) -> Result<(), Lost> {
        match command {
            Command::Say(text) => {
                if self.queue(text) {
                    self.flush(client).await?;
                }
            }
            Command::Join(room) => {
                if !self.rooms.contains_key(&room) {
                    self.rooms.insert(room.clone(), RoomState::default());
                    if !self.join(client, &room).await? {
                        return Ok(());
                    }
                }
                self.switch(room);
            }
            Command::Leave(room) => {
                let room = room.or_else(|| self.current.clone());
                if let Some(room) = &room {
                    if self.rooms.contains_key(room) {
                        check(client.leave(room).await)?;
                    }
                }
                self.forget(room);
            }
            Command::Switch(room) => self.switch(room),
            Command::History(n) => {
                let Some(room) = self.current.clone() else {
                    println!("! join a room first");
                    return Ok(());
                };
                if let Some(page) = check(client.history(&room, HistoryQuery::latest(n)).await)? {
                    if page.messages.is_empty() {
                        println!("* [{room}] no history");
                    }
                    for m in &page.messages {
                        println!("{}", format_message(m));
                    }
                    // Whatever this showed is not shown again when it arrives live.
                    let newest = page.messages.iter().filter_map(|m| m.seq).max().unwrap_or(0);
                    if let Some(state) = self.rooms.get_mut(&room) {
                        if Some(&page.epoch) == state.epoch.as_ref() {
                            state.shown = state.shown.max(newest);
                        }
                    }
                }
            }
            Command::Who => {
                let Some(room) = self.current.clone() else {
                    println!("! join a room first");
                    return Ok(());
                };
                if let Some(presence) = check(client.presence(&room).await)? {
                    let mut members: Vec<String> = presence
                        .members
                        .iter()
                        .map(|m| match m.sessions {
                            n if n > 1 => format!("{} ({n} sessions)", m.user),
                            _ => m.user.clone(),
                        })
                        .collect();
                    members.sort();
                    println!("* [{room}] members: {}", members.join(", "));
                }
            }
            Command::Invalid(e) => println!("! {e}"),
            Command::Quit => {}
        }
        Ok(())
    }

    /// Queues a line for the current room; false if there is none.
    fn queue(&mut self, text: String) -> bool {
        let Some(room) = self.current.clone() else {
            println!("! join a room first (/join ROOM)");
            return false;
        };
        self.next_key += 1;
        let key = format!("{}-{}", self.key_prefix, self.next_key);
        self.unsent.push_back(Unsent { room, body: json!({ "text": text }), key });
        true
    }

    /// Sends the queued lines in order, each with its key: one the library has to resend
    /// after a lost connection is stored once.
    async fn flush(&mut self, client: &mut Reconnecting) -> Result<(), Lost> {
        while let Some(next) = self.unsent.pop_front() {
            check(client.send_keyed(&next.room, next.body, &next.key).await)?;
        }
        Ok(())
    }

    fn switch(&mut self, room: String) {
        if self.rooms.contains_key(&room) {
            println!("* current room: {room}");
            self.current = Some(room);
        } else {
            println!("! not in {room}: /join it first");
        }
    }

    /// Forgets a room (left, or never joined), with its queued lines.
    fn forget(&mut self, room: Option<String>) {
        let Some(room) = room.or_else(|| self.current.clone()) else {
            println!("! not in any room");
            return;
        };
        if self.rooms.remove(&room).is_none() {
            println!("! not in {room}");
            return;
        }
        self.unsent.retain(|u| u.room != room);
        println!("* [{room}] left");
        if self.current.as_deref() == Some(room.as_str()) {
            self.current = self.rooms.keys().next().cloned();
            if let Some(current) = &self.current {
                println!("* current room: {current}");
            }
        }
    }

    /// Joins `room` (already in `self.rooms`) for the first time, showing its latest
    /// messages. False if refused.
    async fn join(&mut self, client: &mut Reconnecting, room: &str) -> Result<bool, Lost> {
        let Some(joined) = check(client.join(room, None).await)? else {
            self.rooms.remove(room);
            return Ok(false);
        };
        println!("* [{room}] joined");
        let state = self.rooms.entry(room.to_owned()).or_default();
        state.epoch = Some(joined.epoch);
        state.shown = joined.seq.saturating_sub(RECENT_ON_JOIN);
        self.catch_up(client, room, None).await?;
        let state = self.rooms.entry(room.to_owned()).or_default();
        state.shown = state.shown.max(joined.seq);
        Ok(true)
    }

    /// How a room the library rejoined came back.
    async fn rejoined(&mut self, client: &mut Reconnecting, joined: Joined) -> Result<(), Lost> {
        let room = joined.room.clone();
        let Some(state) = self.rooms.get_mut(&room) else { return Ok(()) };
        if joined.recovered {
            // The server replays what we missed, as events, before anything live.
            println!("* [{room}] rejoined (recovered)");
        } else if state.epoch.as_ref() == Some(&joined.epoch) && state.shown <= joined.seq {
            // Same history, but the server could not replay it all: read what is left of it.
            println!("* [{room}] rejoined (catching up from history)");
            self.catch_up(client, &room, None).await?;
        } else {
            // The history we knew is gone: everything in the new one is new to us.
            println!("* [{room}] rejoined: the room's history was reset");
            *state = RoomState { epoch: Some(joined.epoch), shown: 0 };
            self.catch_up(client, &room, None).await?;
        }
        Ok(())
    }

    /// Shows the messages of `room` after the last one shown (and before `before`), in order.
    async fn catch_up(&mut self, client: &mut Reconnecting, room: &str, before: Option<u64>) -> Result<(), Lost> {
        loop {
            let Some(state) = self.rooms.get(room) else { return Ok(()) };
            let after = state.shown;
            let mut query = HistoryQuery::latest(CATCH_UP_PAGE).after(after);
            if let Some(before) = before {
                query = query.before(before);
            }
            let Some(page) = check(client.history(room, query).await)? else { return Ok(()) };
            if Some(&page.epoch) != state.epoch.as_ref() {
                return Ok(()); // the history changed again meanwhile: a `reset` event follows
            }
            if let Some(first) = page.messages.first().and_then(|m| m.seq) {
                if after > 0 && first > after + 1 {
                    println!("* [{room}] messages {}..{} are no longer in history", after + 1, first - 1);
                }
            }
            for m in &page.messages {
                self.show(m);
            }
            let progressed = self.rooms.get(room).is_some_and(|s| s.shown > after);
            if page.messages.is_empty() || !progressed {
                return Ok(());
            }
        }
    }

    /// Prints a message unless it was shown already.
    fn show(&mut self, m: &Message) {
        let Some(state) = self.rooms.get_mut(&m.room) else { return };
        match m.seq {
            Some(seq) if seq <= state.shown => return,
            Some(seq) => state.shown = seq,
            None => {} // ephemeral
        }
        println!("{}", format_message(m));
    }

    async fn on_event(&mut self, client: &mut Reconnecting, event: Event) -> Result<(), Lost> {
        match event {
            Event::Message(m) => {
                // A gap (which the protocol rules out, but a client checks): fill it first.
                let shown = self.rooms.get(&m.room).map(|s| s.shown);
                if let (Some(shown), Some(seq)) = (shown, m.seq) {
                    if seq > shown + 1 {
                        self.catch_up(client, &m.room, Some(seq)).await?;
                    }
                }
                self.show(&m);
            }
            Event::MemberJoined(m) if self.rooms.contains_key(&m.room) => println!("* [{}] {} joined", m.room, m.user),
            Event::MemberLeft(m) if self.rooms.contains_key(&m.room) => println!("* [{}] {} left", m.room, m.user),
            Event::Invite(invite) => {
                // A direct conversation is answered with `/dm` and its other users.
                let peers = RoomName::new(&invite.room).ok().and_then(|room| {
                    let users = chat_core::direct::users(&room)?;
                    Some(users.into_iter().filter(|u| *u != self.me).collect::<Vec<_>>().join(" "))
                });
                let answer = match peers {
                    Some(peers) => format!("/dm {peers}"),
                    None => format!("/join {}", invite.room),
                };
                println!("* [{}] {} wrote to you (#{}): {answer} to read it", invite.room, invite.from, invite.seq)
            }
            Event::Kicked(kicked) => {
                println!("* [{}] you were removed from the room", kicked.room);
                self.forget(Some(kicked.room));
            }
            Event::Reset(reset) => {
                if let Some(state) = self.rooms.get_mut(&reset.room) {
                    println!("* [{}] the room's history was reset", reset.room);
                    *state = RoomState { epoch: Some(reset.epoch), shown: 0 };
                    self.catch_up(client, &reset.room, None).await?;
                }
            }
            Event::Error(e) => println!("! {e}"),
            Event::Bye(bye) => self.bye = Some((bye.reason, bye.reconnect)),
            _ => {}
        }
        Ok(())
    }
}
