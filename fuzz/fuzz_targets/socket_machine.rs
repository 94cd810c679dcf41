//! The server's per-socket state machine (`sss_server::machine`) driven by a fuzzed sequence of
//! events, with the protocol's promises checked after every step.
//!
//! The harness plays the driver (`socket.rs`): it feeds text frames drawn from a small
//! vocabulary (plus raw strings), publications, boots, timer ticks and closes, and it holds every
//! piece of async work the machine asks for (Authorize, Join, Sync, Ask, Tell) in a list from
//! which the input picks which one finishes next, and how. Frames the machine sends are read
//! back with `serde_json::Value`, as a client would see them.
//!
//! Invariants (a panic names the letter):
//! - (a) no `subok` or `pub` for a public channel unless the parser accepted the channel's
//!   current Authorize (a verdict for a superseded Authorize does not count, either way);
//! - (b) each `sub` id gets at most one `subok`/`subrej`, and at quiescence exactly one;
//! - (c) no `pub` for a channel after its `unsub` was handled and before a later `subok`;
//! - (d) the registry membership the commands describe (Join minus Leave, in order) is what
//!   `joined_channels()` says, after every step; at quiescence it is exactly the channels the
//!   client holds a `subok` for that was not since unsubscribed, refused or booted;
//! - (e) no `subok` for a reserved channel that is not the socket's own (`eve` never gets
//!   `#user:bob`);
//! - (f) a `pub` only while the client holds the channel (after `subok`, before the next
//!   `sub`/`unsub`/`subrej`/`unsubbed` for it), every ask answered at most once and at
//!   quiescence exactly once, nothing after `Close`, and every frame sent decodes as a
//!   `ServerFrame`.
//!
//! "Quiescence": the machine is open (welcomed, not closed) and no async work is pending. At
//! the end of every input the harness completes all pending work successfully and checks
//! quiescence, so every input ends with the full set of checks.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sss_core::protocol::{classify_channel, encode_pub, raw_json, ChannelKind, ServerFrame};
use sss_core::Position;
use sss_server::machine::{
    AskOutcome, Command, Config, Machine, OpId, Publication, SessionOutcome, Synced, Topics,
    Verdict,
};
use sss_server::scaler::{History, Record};
use sss_server::{Grant, Rejection, Session};

const SESSION: &str = "sess-1";
/// The subscription parser's one fixed rule: `room:secret` needs this in its query.
const PASSWORD: &str = "hunter2";
/// Longest event sequence run: longer inputs add time, not states.
const MAX_OPS: usize = 256;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Chan {
    News,
    Secret,
    Bob,
    Eve,
    OwnSession,
    Reserved,
    Invalid,
}

impl Chan {
    fn name(self) -> &'static str {
        match self {
            Chan::News => "news",
            Chan::Secret => "room:secret",
            Chan::Bob => "#user:bob",
            Chan::Eve => "#user:eve",
            Chan::OwnSession => "#session:sess-1",
            Chan::Reserved => "#admin",
            Chan::Invalid => "no spaces allowed",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Hello,
    Sub {
        ch: Chan,
        /// `None`: no query; `Some(true)`: the right password.
        password: Option<bool>,
        /// (second epoch?, seq)
        since: Option<(bool, u8)>,
    },
    Unsub {
        ch: Chan,
    },
    Ask {
        known: bool,
    },
    Tell {
        known: bool,
    },
    Ping,
    Raw(String),
    Publish {
        ch: Chan,
        second_epoch: bool,
        seq: u8,
    },
    Boot {
        ch: Chan,
    },
    Tick {
        ms: u16,
    },
    /// Finish pending work `which` (modulo their number): `ok` or not, `how` picks the variant.
    Complete {
        which: u8,
        ok: bool,
        how: u8,
    },
    /// Binary frame, oversized message, server kill or connection gone.
    End {
        how: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    eve: bool,
    ops: Vec<Op>,
}

struct Handlers;

impl Topics for Handlers {
    fn has_ask(&self, topic: &str) -> bool {
        topic == "echo"
    }
    fn has_tell(&self, topic: &str) -> bool {
        topic == "log"
    }
}

/// Async work the machine asked for and the harness has not finished yet.
#[derive(Debug)]
enum Work {
    Authorize {
        op: OpId,
        channel: String,
        query: Option<String>,
    },
    Join {
        op: OpId,
    },
    Sync {
        op: OpId,
        since: Option<Position>,
    },
    Ask {
        id: u64,
    },
    Tell,
}

struct Harness {
    m: Machine,
    now: Instant,
    user: &'static str,
    next_id: u64,
    pending: Vec<Work>,
    /// `welcome` was sent: frames after it are handled by the open machine.
    welcomed: bool,
    /// A `Close` command was emitted.
    closed: bool,
    /// `sub` ids the open machine handled, with their channel; and those answered.
    subs: HashMap<u64, String>,
    sub_answered: HashSet<u64>,
    /// Ask ids the open machine handled; and those answered.
    asks: HashSet<u64>,
    ask_answered: HashSet<u64>,
    /// Every id the harness sent in a `sub` / `ask` (ids are unique, as clients keep them).
    sub_ids: HashSet<u64>,
    ask_ids: HashSet<u64>,
    /// Per channel, the Authorize the machine asked for last; channels whose last one was accepted.
    latest_auth: HashMap<String, OpId>,
    accepted: HashSet<String>,
    /// Channels whose `unsub` was handled and that got no `subok` since (c).
    unsubbed: HashSet<String>,
    /// Channels the client holds (f).
    held: HashSet<String>,
    /// Join minus Leave commands (d).
    joined: HashSet<String>,
}

fn pos(second_epoch: bool, seq: u64) -> Position {
    Position::new(if second_epoch { "e2" } else { "e1" }, seq)
}

fn raw(json: &str) -> Box<serde_json::value::RawValue> {
    raw_json(json).expect("valid JSON")
}

impl Harness {
    fn new(eve: bool) -> Self {
        let user = if eve { "eve" } else { "bob" };
        let config = Config {
            heartbeat: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            // Small limits so that the fuzzer reaches them.
            sync_buffer: 3,
            max_concurrent_asks: 2,
            max_concurrent_tells: 2,
            max_subscriptions: 4,
        };
        let now = Instant::now();
        Self {
            m: Machine::new(now, config, "s-1".into(), Arc::new(Handlers)),
            now,
            user,
            next_id: 0,
            pending: Vec::new(),
            welcomed: false,
            closed: false,
            subs: HashMap::new(),
            sub_answered: HashSet::new(),
            asks: HashSet::new(),
            ask_answered: HashSet::new(),
            sub_ids: HashSet::new(),
            ask_ids: HashSet::new(),
            latest_auth: HashMap::new(),
            accepted: HashSet::new(),
            unsubbed: HashSet::new(),
            held: HashSet::new(),
            joined: HashSet::new(),
        }
    }

    fn fresh_id(&mut self) -> u64 {
        loop {
            self.next_id += 1;
            if !self.sub_ids.contains(&self.next_id) && !self.ask_ids.contains(&self.next_id) {
                return self.next_id;
            }
        }
    }

    fn open(&self) -> bool {
        self.welcomed && !self.m.is_closed()
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Hello => self.text(&json!({"t": "hello", "v": 1}).to_string()),
            Op::Sub {
                ch,
                password,
                since,
            } => {
                let id = self.fresh_id();
                let mut f = json!({"t": "sub", "id": id, "ch": ch.name()});
                if let Some(right) = password {
                    let pw = if *right { PASSWORD } else { "guess" };
                    f["q"] = json!({ "password": pw });
                }
                if let Some((e2, seq)) = since {
                    f["since"] = json!({"e": if *e2 { "e2" } else { "e1" }, "s": seq});
                }
                self.text(&f.to_string());
            }
            Op::Unsub { ch } => self.text(&json!({"t": "unsub", "ch": ch.name()}).to_string()),
            Op::Ask { known } => {
                let id = self.fresh_id();
                let topic = if *known { "echo" } else { "nope" };
                self.text(&json!({"t": "ask", "id": id, "topic": topic, "msg": {}}).to_string());
            }
            Op::Tell { known } => {
                let topic = if *known { "log" } else { "nope" };
                self.text(&json!({"t": "tell", "topic": topic, "msg": [1]}).to_string());
            }
            Op::Ping => self.text(r#"{"t":"ping"}"#),
            Op::Raw(s) => self.text(s),
            Op::Publish {
                ch,
                second_epoch,
                seq,
            } => {
                let p = pos(*second_epoch, u64::from(*seq));
                let frame = encode_pub(ch.name(), "t", &p, &raw("1"));
                let publication = Publication {
                    channel: Arc::from(ch.name()),
                    epoch: Arc::from(p.epoch.as_str()),
                    seq: p.seq,
                    frame: frame.into(),
                };
                self.m.handle_publication(Arc::new(publication));
            }
            Op::Boot { ch } => self.m.handle_boot_channel(ch.name()),
            Op::Tick { ms } => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.m.handle_timeout(self.now);
            }
            Op::Complete { which, ok, how } => {
                if !self.pending.is_empty() {
                    let i = usize::from(*which) % self.pending.len();
                    self.complete(i, *ok, *how);
                }
            }
            Op::End { how } => match how % 4 {
                0 => self.m.handle_binary(self.now),
                1 => self.m.handle_oversized("message too big"),
                2 => self.m.handle_kill(4001, "killed"),
                _ => self.m.handle_gone(),
            },
        }
        self.drain();
        self.check();
    }

    /// A text frame, fed as the driver would: only while the machine wants to read.
    fn text(&mut self, text: &str) {
        if !self.m.wants_read() {
            return;
        }
        if self.open() {
            // What the client asked for, as the machine will read it.
            match sss_core::protocol::ClientFrame::decode(text) {
                Ok(sss_core::protocol::ClientFrame::Sub { id, ch, .. }) => {
                    // A client does not reuse a `sub` id; (b) counts answers per id.
                    if !self.sub_ids.insert(id) {
                        return;
                    }
                    self.subs.insert(id, ch.clone());
                    self.held.remove(&ch);
                }
                Ok(
                    sss_core::protocol::ClientFrame::Ask { id, .. }
                    | sss_core::protocol::ClientFrame::Presence { id, .. }
                    | sss_core::protocol::ClientFrame::PresenceStats { id, .. },
                ) => {
                    if !self.ask_ids.insert(id) {
                        return;
                    }
                    self.asks.insert(id);
                }
                Ok(sss_core::protocol::ClientFrame::Unsub { ch }) => {
                    self.held.remove(&ch);
                    self.unsubbed.insert(ch);
                }
                _ => {}
            }
        }
        self.m.handle_text(self.now, text);
    }

    fn complete(&mut self, i: usize, ok: bool, how: u8) {
        let verdict = match self.pending.remove(i) {
            Work::Authorize { op, channel, query } => {
                let allowed = channel != "room:secret"
                    || query.as_deref().is_some_and(|q| q.contains(PASSWORD));
                let accepted = ok && allowed;
                let presence = channel == "news";
                if accepted && self.latest_auth.get(&channel) == Some(&op) {
                    self.accepted.insert(channel);
                }
                let result = if accepted {
                    // Presence on one channel, so presence requests and events are reached.
                    Ok(if presence {
                        Grant::with_presence()
                    } else {
                        Grant::default()
                    })
                } else {
                    Err(Rejection::refused("the parser said no"))
                };
                Verdict::Authorized { op, result }
            }
            Work::Join { op } => {
                let result = if ok {
                    Ok(())
                } else {
                    Err(Rejection::new("unavailable", "scaler down"))
                };
                Verdict::Joined { op, result }
            }
            Work::Sync { op, since } => {
                let n = u64::from(how / 4);
                let result = if !ok {
                    Err(Rejection::new("unavailable", "history down"))
                } else {
                    Ok(match (how % 4, since) {
                        (0, _) => Synced::Head(pos(how % 8 >= 4, n)),
                        (1, _) => Synced::History(History::Unrecoverable { head: pos(true, n) }),
                        // A history for a head read, too: the machine must refuse it.
                        (_, since) => {
                            let from = since.unwrap_or_else(|| pos(false, 0));
                            let records = (1..=n % 5)
                                .map(|k| {
                                    Arc::new(Record {
                                        position: Position::new(from.epoch.clone(), from.seq + k),
                                        topic: "t".into(),
                                        msg: raw("2"),
                                    })
                                })
                                .collect();
                            Synced::History(History::Recovered(records))
                        }
                    })
                };
                Verdict::Synced { op, result }
            }
            Work::Ask { id } => {
                let outcome = match how % 3 {
                    0 => AskOutcome::Ok(raw(r#"{"ok":true}"#)),
                    1 => AskOutcome::Err(Rejection::new("nope", "handler refused")),
                    _ => AskOutcome::Panicked,
                };
                Verdict::AskDone { id, outcome }
            }
            Work::Tell => Verdict::TellDone,
        };
        self.m.handle_verdict(verdict);
    }

    /// Carries out the machine's commands in order, then reads its frames, checking each.
    fn drain(&mut self) {
        let was_closed = self.closed;
        while let Some(c) = self.m.poll_command() {
            assert!(!self.closed, "(f) command after Close: {c:?}");
            match c {
                // The session parser accepts at once: the harness fuzzes what follows `welcome`
                // (the session phase has its own tests in server/tests/machine.rs).
                Command::AuthorizeSession { op, .. } => {
                    let session = Session::user(self.user).with_session(SESSION);
                    let outcome = SessionOutcome::Accepted(session);
                    self.m.handle_verdict(Verdict::Session { op, outcome });
                }
                Command::Admit(_) => {}
                Command::Authorize { op, channel, query } => {
                    assert!(
                        matches!(classify_channel(&channel), Ok(ChannelKind::Public)),
                        "(e) parser asked about non-public channel {channel:?}"
                    );
                    self.latest_auth.insert(channel.clone(), op);
                    self.accepted.remove(&channel);
                    let query = query.map(|q| q.get().to_owned());
                    self.pending.push(Work::Authorize { op, channel, query });
                }
                Command::Join { op, channel, .. } => {
                    assert!(
                        self.joined.insert(channel.clone()),
                        "(d) Join for {channel:?}, already joined"
                    );
                    self.pending.push(Work::Join { op });
                }
                Command::Leave { channel } => {
                    assert!(
                        self.joined.remove(&channel),
                        "(d) Leave for {channel:?}, not joined"
                    );
                }
                Command::Sync { op, channel, since } => {
                    assert!(
                        self.joined.contains(&channel),
                        "(d) Sync for {channel:?}, not joined"
                    );
                    self.pending.push(Work::Sync { op, since });
                }
                Command::Ask { id, .. } | Command::Presence { id, .. } => {
                    self.pending.push(Work::Ask { id })
                }
                Command::Tell { .. } => self.pending.push(Work::Tell),
                Command::Close { .. } => self.closed = true,
                // Outcomes for the driver's metrics; the frames they describe are checked.
                Command::Note(_) => {}
            }
        }
        while let Some(frame) = self.m.poll_frame() {
            assert!(!was_closed, "(f) frame after Close: {frame}");
            self.sent(frame.as_str());
        }
    }

    /// A frame for the client.
    fn sent(&mut self, text: &str) {
        if let Err(e) = ServerFrame::decode(text) {
            panic!("(f) sent a frame a client cannot decode: {text} ({e})");
        }
        let v: Value = serde_json::from_str(text).expect("a frame is JSON");
        let ch = v["ch"].as_str().unwrap_or_default().to_owned();
        let id = v["id"].as_u64();
        match v["t"].as_str().unwrap_or_default() {
            "welcome" => {
                assert!(!self.welcomed, "(f) second welcome");
                self.welcomed = true;
            }
            "subok" => {
                self.answer_sub(id, &ch, text);
                self.check_may_deliver(&ch, text);
                let own = match classify_channel(&ch) {
                    Ok(ChannelKind::Public) => true,
                    Ok(ChannelKind::User(u)) => u == self.user,
                    Ok(ChannelKind::Session(s)) => s == SESSION,
                    _ => false,
                };
                assert!(own, "(e) subok for someone else's channel: {text}");
                self.unsubbed.remove(&ch);
                self.held.insert(ch);
            }
            "subrej" => {
                self.answer_sub(id, &ch, text);
                self.held.remove(&ch);
            }
            "pub" => {
                self.check_may_deliver(&ch, text);
                assert!(
                    !self.unsubbed.contains(&ch),
                    "(c) pub after unsub, before a new subok: {text}"
                );
                assert!(
                    self.held.contains(&ch),
                    "(f) pub for a channel the client does not hold: {text}"
                );
            }
            "unsubbed" => {
                self.held.remove(&ch);
            }
            "res" | "rej" => {
                let id = id.expect("res/rej carry an id");
                assert!(self.asks.contains(&id), "(f) answer to unknown ask: {text}");
                assert!(
                    self.ask_answered.insert(id),
                    "(f) ask answered twice: {text}"
                );
            }
            "join" | "leave" => {
                assert!(
                    self.held.contains(&ch),
                    "(f) presence event for a channel the client does not hold: {text}"
                );
            }
            "error" | "ping" | "pong" => {}
            other => panic!("(f) unexpected frame kind {other:?}: {text}"),
        }
    }

    fn answer_sub(&mut self, id: Option<u64>, ch: &str, text: &str) {
        let id = id.expect("subok/subrej carry an id");
        assert_eq!(
            self.subs.get(&id).map(String::as_str),
            Some(ch),
            "(b) answer to a sub that was not sent (or for another channel): {text}"
        );
        assert!(
            self.sub_answered.insert(id),
            "(b) second answer to sub {id}: {text}"
        );
    }

    /// (a): public channels are delivered only once the parser accepted them.
    fn check_may_deliver(&self, ch: &str, text: &str) {
        if matches!(classify_channel(ch), Ok(ChannelKind::Public)) {
            assert!(
                self.accepted.contains(ch),
                "(a) {text} for a channel the parser did not accept"
            );
        }
    }

    fn check(&self) {
        assert_eq!(
            self.m.is_closed(),
            self.m.poll_timeout().is_none(),
            "(f) a timer exactly while open"
        );
        let machine: HashSet<String> = self.m.joined_channels().map(str::to_owned).collect();
        assert_eq!(
            machine, self.joined,
            "(d) joined_channels() differs from Join minus Leave"
        );
        if self.open() && self.pending.is_empty() {
            for (id, ch) in &self.subs {
                assert!(
                    self.sub_answered.contains(id),
                    "(b) at quiescence, sub {id} for {ch:?} has no answer"
                );
            }
            for id in &self.asks {
                assert!(
                    self.ask_answered.contains(id),
                    "(f) at quiescence, ask {id} has no answer"
                );
            }
            assert_eq!(
                self.held, self.joined,
                "(d) at quiescence, the channels the client holds differ from those joined"
            );
        }
    }

    /// Finishes every pending piece of work successfully (oldest first), then checks quiescence.
    fn settle(&mut self) {
        // Each completion adds at most one more (Authorize → Join → Sync): this bounds the loop.
        for _ in 0..10_000 {
            if self.pending.is_empty() {
                break;
            }
            self.complete(0, true, 0);
            self.drain();
            self.check();
        }
        assert!(self.pending.is_empty(), "work never settles");
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(input.eve);
    h.drain();
    for op in input.ops.iter().take(MAX_OPS) {
        h.step(op);
    }
    h.settle();
});
