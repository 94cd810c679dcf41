//! A deterministic harness for the client state machine (modelled on quinn-proto's
//! `tests/util.rs` `Pair`): an in-memory fake server, a virtual clock, and `drive()` to pump
//! actions, frames and events until nothing moves.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde_json::value::RawValue;
use sss_core::client::{Action, Client, Config, Event, Instant};
use sss_core::protocol::{
    codes, raw_json, ClientFrame, Member, Position, PresenceStats, ServerFrame, PROTOCOL_VERSION,
};

/// Heartbeat interval the fake server announces, in milliseconds.
pub(crate) const HB: u64 = 5_000;

/// Raw JSON from text.
pub(crate) fn json(text: &str) -> Box<RawValue> {
    raw_json(text).expect("valid JSON")
}

/// A position.
pub(crate) fn pos(epoch: &str, seq: u64) -> Position {
    Position::new(epoch, seq)
}

/// A config with three URLs and a fixed seed.
pub(crate) fn config() -> Config {
    Config {
        urls: vec!["ws://a".into(), "ws://b".into(), "ws://c".into()],
        seed: 7,
        ..Config::default()
    }
}

/// How the fake server answers asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AskMode {
    /// `res` with the request's payload.
    Echo,
    /// `rej` with code `refused`.
    Reject,
    /// No answer.
    Ignore,
}

/// One channel's history on the fake server.
#[derive(Debug)]
pub(crate) struct Channel {
    epoch: String,
    seq: u64,
    /// Sequence number of the oldest publication still in `log`.
    first: u64,
    log: Vec<(u64, String, Box<RawValue>)>,
}

impl Channel {
    fn new(epoch: &str) -> Self {
        Self {
            epoch: epoch.to_owned(),
            seq: 0,
            first: 1,
            log: Vec::new(),
        }
    }

    fn head(&self) -> Position {
        pos(&self.epoch, self.seq)
    }

    fn append(&mut self, ch: &str, msg: &str) -> ServerFrame {
        self.seq += 1;
        self.log.push((self.seq, "msg".to_owned(), json(msg)));
        self.frame_at(self.log.len() - 1, ch)
    }

    fn frame_at(&self, index: usize, ch: &str) -> ServerFrame {
        let (seq, topic, msg) = &self.log[index];
        ServerFrame::Pub {
            ch: ch.to_owned(),
            topic: topic.clone(),
            pos: pos(&self.epoch, *seq),
            msg: msg.clone(),
        }
    }

    /// Answers a `sub`: `subok` (with replay when `since` is recoverable).
    fn subscribe(
        &self,
        id: u64,
        ch: &str,
        since: Option<Position>,
        presence: bool,
    ) -> Vec<ServerFrame> {
        let recovered = since.as_ref().map(|since| {
            since.epoch == self.epoch && since.seq + 1 >= self.first && since.seq <= self.seq
        });
        let mut out = vec![ServerFrame::Subok {
            id,
            ch: ch.to_owned(),
            pos: self.head(),
            recovered,
            presence,
        }];
        if let (Some(true), Some(since)) = (recovered, since) {
            for (i, (seq, ..)) in self.log.iter().enumerate() {
                if *seq > since.seq {
                    out.push(self.frame_at(i, ch));
                }
            }
        }
        out
    }
}

/// The fake server: one socket at a time.
#[derive(Debug)]
pub(crate) struct Server {
    /// Whether connection attempts succeed.
    pub(crate) up: bool,
    /// Whether `hello` is answered with `welcome`.
    pub(crate) welcome: bool,
    /// Whether the server pings every [`HB`] ms.
    pub(crate) pinging: bool,
    /// How asks are answered.
    pub(crate) ask_mode: AskMode,
    /// Channels whose subscriptions are refused.
    pub(crate) refuse: BTreeSet<String>,
    /// Channels whose subscriptions have presence.
    pub(crate) presence: BTreeSet<String>,
    /// The members of each channel's presence (other sockets), as JSON.
    pub(crate) members: BTreeMap<String, Vec<String>>,
    /// Whether `sub` frames wait for [`Pair::answer_subs`] instead of being answered at once.
    pub(crate) defer_subs: bool,
    /// The `sub` frames waiting for an answer: `(id, channel, since)`.
    deferred: Vec<(u64, String, Option<Position>)>,
    /// URL of the open socket.
    pub(crate) socket: Option<String>,
    /// Channels the open socket is subscribed to.
    pub(crate) subs: BTreeSet<String>,
    /// Every frame the client sent, in order.
    pub(crate) received: Vec<ClientFrame>,
    /// Channel histories.
    pub(crate) channels: BTreeMap<String, Channel>,
    sockets: u32,
    last_ping: Instant,
}

impl Server {
    fn new() -> Self {
        Self {
            up: true,
            welcome: true,
            pinging: true,
            ask_mode: AskMode::Echo,
            refuse: BTreeSet::new(),
            presence: BTreeSet::new(),
            members: BTreeMap::new(),
            defer_subs: false,
            deferred: Vec::new(),
            socket: None,
            subs: BTreeSet::new(),
            received: Vec::new(),
            channels: BTreeMap::new(),
            sockets: 0,
            last_ping: Instant::from_millis(0),
        }
    }

    fn channel(&mut self, ch: &str) -> &mut Channel {
        self.channels
            .entry(ch.to_owned())
            .or_insert_with(|| Channel::new("e1"))
    }

    /// The channel's history restarts in a new epoch (its data was lost).
    pub(crate) fn reset_epoch(&mut self, ch: &str, epoch: &str) {
        *self.channel(ch) = Channel::new(epoch);
    }

    fn close_socket(&mut self) {
        self.socket = None;
        self.subs.clear();
        self.deferred.clear();
    }

    /// Answers a `sub` the way the real server does (the parser's refusal, or `subok`).
    fn answer_sub(&mut self, id: u64, ch: &str, since: Option<Position>) -> Vec<ServerFrame> {
        if self.refuse.contains(ch) {
            return vec![ServerFrame::Subrej {
                id,
                ch: ch.to_owned(),
                code: "refused".into(),
                reason: "private".into(),
            }];
        }
        self.subs.insert(ch.to_owned());
        let presence = self.presence.contains(ch);
        self.channel(ch).subscribe(id, ch, since, presence)
    }

    /// Answers a `presence` or `pstats` request the way the real server does.
    fn answer_presence(&self, id: u64, ch: &str, stats: bool) -> Vec<ServerFrame> {
        let refuse = |code: &str| {
            vec![ServerFrame::Rej {
                id,
                code: code.to_owned(),
                reason: format!("{code} ({ch})"),
            }]
        };
        if self.ask_mode == AskMode::Ignore {
            return vec![];
        }
        if !self.subs.contains(ch) {
            return refuse(codes::NOT_SUBSCRIBED);
        }
        if !self.presence.contains(ch) {
            return refuse(codes::NO_PRESENCE);
        }
        let members = self.members.get(ch).cloned().unwrap_or_default();
        let msg = if stats {
            let parsed: Vec<Member> = (members.iter())
                .map(|m| serde_json::from_str(m).expect("a member"))
                .collect();
            serde_json::to_string(&PresenceStats::of(&parsed)).expect("stats")
        } else {
            format!("[{}]", members.join(","))
        };
        vec![ServerFrame::Res {
            id,
            msg: json(&msg),
        }]
    }

    fn next_ping(&self) -> Option<Instant> {
        (self.socket.is_some() && self.pinging).then(|| self.last_ping + Duration::from_millis(HB))
    }

    fn receive(&mut self, frame: &ClientFrame, now: Instant) -> Vec<ServerFrame> {
        match frame {
            ClientFrame::Hello { v, .. } if self.welcome => {
                assert_eq!(*v, PROTOCOL_VERSION);
                self.last_ping = now;
                self.sockets += 1;
                vec![ServerFrame::Welcome {
                    v: PROTOCOL_VERSION,
                    socket: format!("sock{}", self.sockets),
                    user: Some("ann".into()),
                    session: Some("sess".into()),
                    hb: HB,
                }]
            }
            ClientFrame::Ask { id, msg, .. } => match self.ask_mode {
                AskMode::Echo => vec![ServerFrame::Res {
                    id: *id,
                    msg: msg.clone(),
                }],
                AskMode::Reject => vec![ServerFrame::Rej {
                    id: *id,
                    code: "refused".into(),
                    reason: "not today".into(),
                }],
                AskMode::Ignore => vec![],
            },
            ClientFrame::Sub { id, ch, since, .. } if self.defer_subs => {
                self.deferred.push((*id, ch.clone(), since.clone()));
                vec![]
            }
            ClientFrame::Sub { id, ch, since, .. } => self.answer_sub(*id, ch, since.clone()),
            ClientFrame::Presence { id, ch } => self.answer_presence(*id, ch, false),
            ClientFrame::PresenceStats { id, ch } => self.answer_presence(*id, ch, true),
            ClientFrame::Unsub { ch } => {
                self.subs.remove(ch);
                vec![]
            }
            ClientFrame::Ping {} => vec![ServerFrame::Pong {}],
            _ => vec![],
        }
    }
}

/// A client and the fake server, on a virtual clock.
#[derive(Debug)]
pub(crate) struct Pair {
    /// The client under test.
    pub(crate) client: Client,
    /// The fake server.
    pub(crate) server: Server,
    /// Virtual time.
    pub(crate) now: Instant,
    /// Events the client emitted and the test has not taken yet.
    pub(crate) events: VecDeque<Event>,
    /// Every action the client asked for, with when.
    pub(crate) actions: Vec<(Instant, Action)>,
}

impl Pair {
    /// A client created at time 1000 with `config`, driven until quiet.
    pub(crate) fn new(config: Config) -> Self {
        let now = Instant::from_millis(1_000);
        let mut pair = Self {
            client: Client::new(config, now),
            server: Server::new(),
            now,
            events: VecDeque::new(),
            actions: Vec::new(),
        };
        pair.drive();
        pair
    }

    /// A client connected to the fake server, with its events taken.
    pub(crate) fn connected() -> Self {
        let mut pair = Self::new(config());
        assert_eq!(pair.client.status(), sss_core::client::Status::Ready);
        pair.events.clear();
        pair
    }

    /// Pumps actions, frames and events until nothing moves.
    pub(crate) fn drive(&mut self) {
        loop {
            let mut progress = false;
            while let Some(action) = self.client.poll_action() {
                progress = true;
                self.actions.push((self.now, action.clone()));
                match action {
                    Action::Connect { url } if self.server.up => {
                        self.server.socket = Some(url);
                        self.client.handle_open(self.now);
                    }
                    Action::Connect { .. } => {
                        self.client
                            .handle_close(self.now, 1006, "connection refused");
                    }
                    Action::Close { .. } => self.server.close_socket(),
                }
            }
            while let Some(text) = self.client.poll_transmit() {
                progress = true;
                assert!(self.server.socket.is_some(), "transmit without a socket");
                let frame = ClientFrame::decode(&text).expect("the client sends valid frames");
                let replies = self.server.receive(&frame, self.now);
                self.server.received.push(frame);
                for reply in replies {
                    self.client.handle_frame(self.now, &reply.encode());
                }
            }
            while let Some(event) = self.client.poll_event() {
                progress = true;
                self.events.push_back(event);
            }
            if !progress {
                return;
            }
        }
    }

    /// Sends one frame from the server to the client, then drives.
    pub(crate) fn server_send(&mut self, frame: ServerFrame) {
        self.server_send_text(&frame.encode());
    }

    /// Sends raw text from the server to the client, then drives.
    pub(crate) fn server_send_text(&mut self, text: &str) {
        self.client.handle_frame(self.now, text);
        self.drive();
    }

    /// Drives, answers every deferred `sub` (see [`Server::defer_subs`]) in order, and drives.
    pub(crate) fn answer_subs(&mut self) {
        self.drive();
        for (id, ch, since) in std::mem::take(&mut self.server.deferred) {
            for reply in self.server.answer_sub(id, &ch, since) {
                self.client.handle_frame(self.now, &reply.encode());
            }
        }
        self.drive();
    }

    /// A member joins (`joined`) or leaves `ch`'s presence on the fake server, which tells the
    /// client when it is subscribed to `ch` (whether or not it asked: the client filters).
    pub(crate) fn member(&mut self, ch: &str, member: &str, joined: bool) {
        let members = self.server.members.entry(ch.to_owned()).or_default();
        members.retain(|m| m != member);
        if joined {
            members.push(member.to_owned());
        }
        if self.server.socket.is_some() && self.server.subs.contains(ch) {
            let (ch, m) = (ch.to_owned(), json(member));
            self.server_send(if joined {
                ServerFrame::Join { ch, m }
            } else {
                ServerFrame::Leave { ch, m }
            });
        }
    }

    /// Publishes on `ch`; subscribed sockets get it live.
    pub(crate) fn publish(&mut self, ch: &str, msg: &str) {
        let frame = self.server.channel(ch).append(ch, msg);
        if self.server.socket.is_some() && self.server.subs.contains(ch) {
            self.server_send(frame);
        }
    }

    /// Publishes on `ch` into the history only: the live message is lost on the way.
    pub(crate) fn publish_lost(&mut self, ch: &str, msg: &str) {
        self.server.channel(ch).append(ch, msg);
    }

    /// The server drops the connection with `code`.
    pub(crate) fn drop_connection(&mut self, code: u16, reason: &str) {
        assert!(self.server.socket.is_some(), "no connection to drop");
        self.server.close_socket();
        self.client.handle_close(self.now, code, reason);
        self.drive();
    }

    /// Advances the virtual clock by `d`, firing client timers and server pings on time.
    pub(crate) fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        for _ in 0..100_000 {
            let client_due = self.client.poll_timeout();
            let ping_due = self.server.next_ping();
            match client_due.into_iter().chain(ping_due).min() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    if ping_due == Some(t) {
                        self.server.last_ping = t;
                        self.client
                            .handle_frame(self.now, &ServerFrame::Ping {}.encode());
                    }
                    if client_due.is_some_and(|due| due <= self.now) {
                        self.client.handle_timeout(self.now);
                    }
                    self.drive();
                }
                _ => {
                    self.now = target;
                    return;
                }
            }
        }
        panic!("timers never settle");
    }

    /// Takes every pending event.
    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// The URLs of every `Connect` action, in order.
    pub(crate) fn connects(&self) -> Vec<(Instant, String)> {
        self.actions
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Connect { url } => Some((*t, url.clone())),
                Action::Close { .. } => None,
            })
            .collect()
    }

    /// Forgets the frames the server received so far.
    pub(crate) fn clear_received(&mut self) {
        self.server.received.clear();
    }
}
