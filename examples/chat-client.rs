//! `chat-client`: a terminal chat client, and an example of using the engine's generic
//! [`Client`](chat_core::client::Client) over either transport.
//!
//! ```text
//! cargo run --example chat-client -- [--tcp ADDR | --ws URL] --user NAME [--token T] [ROOM...]
//! ```
//!
//! Type a line to send it to the current room. Commands: `/join ROOM`, `/leave [ROOM]`,
//! `/room ROOM` (switch the current room), `/history [N]`, `/who`, `/quit`.
//!
//! Output is one line per event, so that programs can read it too:
//!
//! ```text
//! [lobby #12] alice: hello          a stored message (`[lobby ~]` for an ephemeral one)
//! * [lobby] bob joined              member events and other notices start with `*`
//! ! forbidden: ...                  errors start with `!`
//! ```
//!
//! The client survives server restarts: it reconnects with exponential backoff (unless the
//! server's `bye` says not to), joins its rooms again with `since` (the epoch and last seq shown
//! in each room) so the server replays what it missed, and falls back to `history` when the
//! server cannot (`recovered: false`, or a `reset`). Every message is shown once, in seq order.
//! Lines typed while disconnected are queued and sent on reconnection with an idempotency key,
//! so a line whose `sent` reply was lost is not stored twice.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use chat_core::client::{Client, ClientError};
use chat_core::RoomName;
use clap::Parser;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

/// How many messages are shown when joining a room for the first time.
const RECENT_ON_JOIN: u64 = 10;
/// The page size used to catch up with history after a reconnection.
const CATCH_UP_PAGE: u64 = 100;
/// The first and the longest pause between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

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
enum Server {
    Tcp(String),
    Ws(String),
}

/// Why connecting failed: the server said no (do not retry), or it could not be reached.
enum ConnectError {
    Refused(String),
    Failed(String),
}

impl Server {
    async fn connect(&self, user: &str, token: Option<&str>) -> Result<Client, ConnectError> {
        let (code, message) = match self {
            Server::Tcp(addr) => match chat_transport_tcp::connect(addr.as_str(), Some(user), token).await {
                Ok(client) => return Ok(client),
                Err(e) => (e.code().map(str::to_owned), e.to_string()),
            },
            Server::Ws(url) => match chat_transport_ws::connect(url, Some(user), token).await {
                Ok(client) => return Ok(client),
                Err(e) => (e.code().map(str::to_owned), e.to_string()),
            },
        };
        match code.as_deref() {
            // The hello itself was refused: trying again would be refused again.
            Some("unauthorized" | "unsupported_protocol" | "not_authenticated") => Err(ConnectError::Refused(message)),
            _ => Err(ConnectError::Failed(message)),
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
    fn parse(line: &str) -> Option<Command> {
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
            ("who", _) => Command::Who,
            ("quit", _) => Command::Quit,
            _ => Command::Invalid(format!("unknown command /{name} (try /join /leave /room /history /who /quit)")),
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

/// A line on its way to the server, with the idempotency key it keeps across resends.
struct Unsent {
    room: String,
    body: Value,
    key: String,
}

/// How a connection ended.
enum End {
    Quit,
    Lost { reason: String, reconnect: bool },
}

/// The connection broke while a request was under way.
struct Lost;

type Input = Lines<BufReader<Stdin>>;

/// The client's state, kept across connections.
struct Chat {
    rooms: BTreeMap<String, RoomState>,
    current: Option<String>,
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
        current: rooms.first().cloned(),
        rooms: rooms.into_iter().map(|r| (r, RoomState::default())).collect(),
        unsent: VecDeque::new(),
        key_prefix: format!("{:x}-{:x}", now.as_nanos(), std::process::id()),
        next_key: 0,
        bye: None,
    };
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut backoff = BACKOFF.0;
    loop {
        let (reason, reconnect) = match server.connect(&args.user, args.token.as_deref()).await {
            Ok(mut client) => {
                let welcome = client.welcome();
                println!("* connected to node {} as {}", welcome.node, welcome.user);
                backoff = BACKOFF.0;
                match chat.session(&mut client, &mut input).await {
                    End::Quit => return Ok(()),
                    End::Lost { reason, reconnect } => (reason, reconnect),
                }
            }
            Err(ConnectError::Refused(e)) => bail!("the server refused the session: {e}"),
            Err(ConnectError::Failed(e)) => (format!("cannot connect: {e}"), true),
        };
        if !reconnect {
            bail!("disconnected ({reason}); the server asks not to reconnect");
        }
        let delay = jitter(backoff);
        backoff = (backoff * 2).min(BACKOFF.1);
        println!("* disconnected ({reason}); reconnecting in {} ms", delay.as_millis());
        if chat.offline(&mut input, delay).await.is_some() {
            return Ok(());
        }
    }
}

/// Spreads reconnections of many clients over [d/2, d] (no rand dependency for this).
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    d / 2 + d / 2 * (nanos % 1000) / 1000
}

/// Sorts a request's outcome: a reply, a refusal (printed, the session goes on) or a lost
/// connection.
fn check<T>(result: Result<T, ClientError>) -> Result<Option<T>, Lost> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(ClientError::Server { code, message }) => {
            println!("! {code}: {message}");
            Ok(None)
        }
        // Closed, timed out, or unreadable: this connection is over for us.
        Err(_) => Err(Lost),
    }
}

/// A message event as one line: `[room #seq] user: text`.
fn format_message(e: &Value) -> String {
    let room = e["room"].as_str().unwrap_or("?");
    let from = e["from"].as_str().unwrap_or("?");
    let at = e["seq"].as_u64().map_or("~".to_owned(), |s| format!("#{s}"));
    if e["deleted"] == true {
        return format!("[{room} {at}] {from}: (message deleted)");
    }
    let body = &e["body"];
    match body.get("text").and_then(Value::as_str) {
        Some(text) => format!("[{room} {at}] {from}: {text}"),
        None => format!("[{room} {at}] {from}: {body}"),
    }
}

impl Chat {
    /// One connection's life: rejoin, resend, then events and input until it ends.
    async fn session(&mut self, client: &mut Client, input: &mut Input) -> End {
        self.bye = None;
        let heartbeat = Duration::from_millis(client.welcome().heartbeat_ms.max(1000));
        let mut liveness = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut ready = self.rejoin(client).await;
        if ready.is_ok() {
            ready = self.flush(client).await;
        }
        while ready.is_ok() {
            ready = tokio::select! {
                // What the server sent first, so that it shows before the next line's effects.
                biased;
                event = client.next_event() => match event {
                    Some(event) => self.on_event(client, event).await,
                    None => break,
                },
                line = input.next_line() => match line {
                    Ok(Some(line)) => match Command::parse(&line) {
                        Some(Command::Quit) => return End::Quit,
                        Some(command) => self.run(client, command).await,
                        None => Ok(()),
                    },
                    // End of input (or unreadable input): like /quit.
                    _ => return End::Quit,
                },
                // The server pings us when idle, but a dead peer without a FIN is only found
                // by asking it something.
                _ = liveness.tick() => match tokio::time::timeout(heartbeat, client.sync()).await {
                    Ok(Ok(())) => Ok(()),
                    _ => break,
                },
            };
        }
        // Show what arrived before the connection closed, and read the server's `bye`.
        let drain = async {
            while let Some(event) = client.next_event().await {
                let _ = self.on_event(client, event).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        match self.bye.take() {
            Some((reason, reconnect)) => End::Lost { reason: format!("server said bye: {reason}"), reconnect },
            None => End::Lost { reason: "connection lost".to_owned(), reconnect: true },
        }
    }

    /// Waits `delay` before reconnecting, taking input meanwhile. `Some` means quit.
    async fn offline(&mut self, input: &mut Input, delay: Duration) -> Option<End> {
        let pause = tokio::time::sleep(delay);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => return None,
                line = input.next_line() => match line {
                    Ok(Some(line)) => match Command::parse(&line) {
                        Some(Command::Quit) => return Some(End::Quit),
                        Some(command) => self.run_offline(command),
                        None => {}
                    },
                    _ => return Some(End::Quit),
                },
            }
        }
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
    async fn run(&mut self, client: &mut Client, command: Command) -> Result<(), Lost> {
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
                if let Some(page) = check(client.history(&room, None, None, Some(n)).await)? {
                    let messages = page["messages"].as_array().cloned().unwrap_or_default();
                    if messages.is_empty() {
                        println!("* [{room}] no history");
                    }
                    for m in &messages {
                        println!("{}", format_message(m));
                    }
                    // Whatever this showed is not shown again when it arrives live.
                    let newest = messages.iter().filter_map(|m| m["seq"].as_u64()).max().unwrap_or(0);
                    if let Some(state) = self.rooms.get_mut(&room) {
                        if page["epoch"].as_str() == state.epoch.as_deref() {
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
                    let mut members: Vec<String> = presence["members"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|m| match m["sessions"].as_u64() {
                            Some(n) if n > 1 => format!("{} ({n} sessions)", m["user"].as_str().unwrap_or("?")),
                            _ => m["user"].as_str().unwrap_or("?").to_owned(),
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

    /// Sends the queued lines in order. A line leaves the queue once the server answered it.
    async fn flush(&mut self, client: &Client) -> Result<(), Lost> {
        while let Some(next) = self.unsent.front() {
            check(client.send_with(&next.room, next.body.clone(), Some(&next.key), false).await)?;
            self.unsent.pop_front();
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

    /// After (re)connecting: joins every room, recovering from what was shown.
    async fn rejoin(&mut self, client: &mut Client) -> Result<(), Lost> {
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.join(client, &room).await?;
        }
        Ok(())
    }

    /// Joins `room` (already in `self.rooms`): with `since` when something of it was shown
    /// before, catching up with history when the server cannot replay. False if refused.
    async fn join(&mut self, client: &mut Client, room: &str) -> Result<bool, Lost> {
        let Some(state) = self.rooms.get(room) else { return Ok(false) };
        let since = state.epoch.clone().map(|epoch| (epoch, state.shown));
        let Some(joined) = check(client.join(room, since.as_ref().map(|(e, s)| (e.as_str(), *s))).await)? else {
            self.rooms.remove(room);
            return Ok(false);
        };
        let state = self.rooms.entry(room.to_owned()).or_default();
        match since {
            // First time in this room: show its latest messages.
            None => {
                println!("* [{room}] joined");
                state.epoch = Some(joined.epoch);
                state.shown = joined.seq.saturating_sub(RECENT_ON_JOIN);
                self.catch_up(client, room, None).await?;
                let state = self.rooms.entry(room.to_owned()).or_default();
                state.shown = state.shown.max(joined.seq);
            }
            // The server replays what we missed, as events, before anything live.
            Some(_) if joined.recovered => println!("* [{room}] rejoined (recovered)"),
            // Same history, but the server could not replay it all: read what is left of it.
            Some((epoch, shown)) if epoch == joined.epoch && shown <= joined.seq => {
                println!("* [{room}] rejoined (catching up from history)");
                self.catch_up(client, room, None).await?;
            }
            // The history we knew is gone: everything in the new one is new to us.
            Some(_) => {
                println!("* [{room}] rejoined: the room's history was reset");
                *state = RoomState { epoch: Some(joined.epoch), shown: 0 };
                self.catch_up(client, room, None).await?;
            }
        }
        Ok(true)
    }

    /// Shows the messages of `room` after the last one shown (and before `before`), in order.
    async fn catch_up(&mut self, client: &mut Client, room: &str, before: Option<u64>) -> Result<(), Lost> {
        loop {
            let Some(state) = self.rooms.get(room) else { return Ok(()) };
            let after = state.shown;
            let Some(page) = check(client.history(room, before, Some(after), Some(CATCH_UP_PAGE)).await)? else {
                return Ok(());
            };
            if page["epoch"].as_str() != state.epoch.as_deref() {
                return Ok(()); // the history changed again meanwhile: a `reset` event follows
            }
            let messages = page["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
            if let Some(first) = messages.first().and_then(|m| m["seq"].as_u64()) {
                if after > 0 && first > after + 1 {
                    println!("* [{room}] messages {}..{} are no longer in history", after + 1, first - 1);
                }
            }
            for m in messages {
                self.show(m);
            }
            let progressed = self.rooms.get(room).is_some_and(|s| s.shown > after);
            if messages.is_empty() || !progressed {
                return Ok(());
            }
        }
    }

    /// Prints a message unless it was shown already.
    fn show(&mut self, e: &Value) {
        let Some(room) = e["room"].as_str() else { return };
        let Some(state) = self.rooms.get_mut(room) else { return };
        match e["seq"].as_u64() {
            Some(seq) if seq <= state.shown => return,
            Some(seq) => state.shown = seq,
            None => {} // ephemeral
        }
        println!("{}", format_message(e));
    }

    async fn on_event(&mut self, client: &mut Client, e: Value) -> Result<(), Lost> {
        let room = e["room"].as_str().unwrap_or("?").to_owned();
        let user = e["user"].as_str().unwrap_or("?");
        match e["type"].as_str().unwrap_or("") {
            "message" => {
                // A gap (which the protocol rules out, but a client checks): fill it first.
                let shown = self.rooms.get(&room).map(|s| s.shown);
                if let (Some(shown), Some(seq)) = (shown, e["seq"].as_u64()) {
                    if seq > shown + 1 {
                        self.catch_up(client, &room, Some(seq)).await?;
                    }
                }
                self.show(&e);
            }
            "member_joined" if self.rooms.contains_key(&room) => println!("* [{room}] {user} joined"),
            "member_left" if self.rooms.contains_key(&room) => println!("* [{room}] {user} left"),
            "reset" => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    println!("* [{room}] the room's history was reset");
                    *state = RoomState { epoch: e["epoch"].as_str().map(str::to_owned), shown: 0 };
                    self.catch_up(client, &room, None).await?;
                }
            }
            "error" => println!("! {}: {}", e["code"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or("")),
            "bye" => {
                let reason = e["reason"].as_str().unwrap_or("?").to_owned();
                self.bye = Some((reason, e["reconnect"].as_bool().unwrap_or(false)));
            }
            _ => {}
        }
        Ok(())
    }
}
