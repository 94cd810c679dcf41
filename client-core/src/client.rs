//! The sans-IO client state machine (modelled on `quinn-proto`).
//!
//! [`Client`] holds everything a Super Scaled Sockets client knows — pending asks, the offline
//! queue, subscriptions and their last positions, the reconnect backoff — and does no I/O and
//! reads no clock. A driver owns the WebSocket and the timer:
//!
//! - it feeds in what happens: [`Client::handle_open`], [`Client::handle_frame`],
//!   [`Client::handle_close`], and [`Client::handle_timeout`] once [`Client::poll_timeout`] is
//!   reached, always with the current [`Instant`];
//! - it drains the outputs after every call: [`Client::poll_action`] (open or close the socket),
//!   [`Client::poll_transmit`] (text frames to send, in order) and [`Client::poll_event`] (for
//!   the application).
//!
//! ```
//! use sss_core::client::{Action, Client, Config, Instant};
//!
//! let config = Config { urls: vec!["ws://localhost:8080/ws".into()], ..Config::default() };
//! let mut client = Client::new(config, Instant::from_millis(0));
//! assert_eq!(
//!     client.poll_action(),
//!     Some(Action::Connect { url: "ws://localhost:8080/ws".into() })
//! );
//! client.handle_open(Instant::from_millis(5));
//! assert_eq!(client.poll_transmit().as_deref(), Some(r#"{"t":"hello","v":1}"#));
//! ```

mod config;
mod error;
mod event;
mod time;

use std::time::Duration;

use serde_json::value::RawValue;

use crate::protocol::{
    classify_channel, close, codes, decimal, join, ClientFrame, Payload, Position, ProtocolError,
    ServerFrame, MAX_TOPIC_LEN, PROTOCOL_VERSION,
};
use config::Rng;

pub use config::{backoff_delay, Config, Reconnect, SubscribeOptions};
pub use error::{AskError, ClientError};
pub use event::{Action, AskId, Event, Recovery, Status};
pub use time::Instant;

/// The socket, as the core sees it.
#[derive(Debug)]
enum Conn {
    /// No socket; the next connection attempt starts at `at`.
    Backoff { at: Instant },
    /// A socket was asked for (`opened` once it opened and `hello` was sent); `welcome` is due
    /// by `deadline`.
    Connecting { deadline: Instant, opened: bool },
    /// Welcomed. The connection is dead if no frame arrives within `liveness` (twice the
    /// server's heartbeat interval; `None` when the server sends no heartbeats) of `last_rx`.
    Open {
        liveness: Option<Duration>,
        last_rx: Instant,
    },
    /// Closed for good.
    Closed,
}

/// What the current connection's `welcome` said.
#[derive(Debug)]
struct Welcome {
    socket: String,
    user: Option<String>,
    session: Option<String>,
}

/// An ask that has not completed: queued offline (`sent: false`) or sent on the current
/// connection.
#[derive(Debug)]
struct PendingAsk {
    deadline: Instant,
    sent: bool,
}

/// A frame waiting in the offline queue: an ask (with its id, to drop it once it timed out) or
/// a tell.
#[derive(Debug)]
struct Queued<P> {
    ask: Option<u64>,
    frame: ClientFrame<P>,
}

/// A presence request (`presence` or `pstats`) waiting for its channel's subscription to be
/// live. Sent at once, it would race the `sub` resent after a reconnect (or a gap): the server
/// answers `not_subscribed` to a request that overtakes the subscription's acceptance.
#[derive(Debug)]
struct Held {
    id: u64,
    channel: String,
    stats: bool,
}

impl Held {
    fn frame<P>(&self) -> ClientFrame<P> {
        let (id, ch) = (self.id, self.channel.clone());
        if self.stats {
            ClientFrame::PresenceStats { id, ch }
        } else {
            ClientFrame::Presence { id, ch }
        }
    }
}

#[derive(Debug)]
struct Subscription<P> {
    query: Option<P>,
    /// Whether the application asked for the channel's join / leave events: every `sub` of
    /// this subscription (first, after a reconnect, after a gap) asks for them.
    presence: bool,
    /// The last position delivered (or the server's position at the last `subok`).
    last: Option<Position>,
    /// The id of the `sub` frame awaiting its `subok` / `subrej`; publications and presence
    /// events are ignored meanwhile. `None`: live, or not sent yet (it is sent at the next
    /// `welcome`).
    awaiting: Option<u64>,
}

impl<P: Clone> Subscription<P> {
    /// The `sub` frame of this subscription on `channel`.
    fn frame(&self, id: u64, channel: &str) -> ClientFrame<P> {
        ClientFrame::Sub {
            id,
            ch: channel.to_owned(),
            q: self.query.clone(),
            since: self.last.clone(),
            presence: self.presence,
        }
    }
}

/// A Super Scaled Sockets client connection, as a sans-IO state machine.
///
/// See the [module documentation](self) for how a driver runs it. The client connects on
/// creation, reconnects by itself with [backoff](Reconnect), resubscribes every channel after a
/// reconnect and recovers what it missed, and never panics on anything the server sends.
///
/// `now` must never go backwards from one call to the next.
///
/// Payloads (ask and tell messages, answers, publications, members, queries, credentials) are
/// of the type `P` ([`Payload`]), which the core never looks into: JSON text
/// (`Box<RawValue>`, the default, with [`Client::new`] and [`Client::handle_frame`]) for the
/// native client; the browser driver's own JS values with [`Client::new_generic`] and
/// [`Client::handle_server_frame`], so that payloads never enter the browser's wasm.
#[derive(Debug)]
pub struct Client<P = Box<RawValue>> {
    config: Config,
    rng: Rng,
    conn: Conn,
    status: Status,
    /// Consecutive reconnect attempts since the last `welcome`.
    attempt: u32,
    /// Index in `config.urls` of the current (or last) connection attempt.
    url: usize,
    /// Whether any connection was ever welcomed: later welcomes are reconnects.
    welcomed_before: bool,
    welcome: Option<Welcome>,
    /// The last server `error` frame on this connection: the reason of the close that follows.
    server_error: Option<AskError>,
    /// What every `hello` carries for the server's session parser (see [`Client::set_auth`]).
    auth: Option<P>,
    next_ask: u64,
    next_sub: u64,
    /// Every ask not completed yet, in id order. Ids and deadlines grow together, so the first
    /// entry has the earliest deadline, unless `unordered_deadlines`. (Sorted `Vec`s, not maps
    /// or `VecDeque`s: each such type is monomorphized into the browser's wasm at one to several
    /// kilobytes apiece.)
    asks: Vec<(u64, PendingAsk)>,
    /// Some ask has a timeout of its own ([`Client::ask_with_timeout`]): deadlines may be out of
    /// id order, and finding the earliest means scanning. Cleared once no ask is pending.
    unordered_deadlines: bool,
    queue: Vec<Queued<P>>,
    /// Presence requests waiting for their subscription's `subok`, in id order.
    held: Vec<Held>,
    /// Every subscription, sorted by channel name (the order they are resent in).
    subs: Vec<(String, Subscription<P>)>,
    /// Ids of the subscriptions resent on reconnect still awaiting an answer (while
    /// [`Status::Syncing`]).
    syncing: Vec<u64>,
    transmits: Fifo<String>,
    events: Fifo<Event<P>>,
    actions: Fifo<Action>,
}

impl Client {
    /// A client that starts connecting at once: the first [`Client::poll_action`] is
    /// [`Action::Connect`] to the first of `config.urls`, and the status is
    /// [`Status::Connecting`]. With no URL at all, the client is closed from the start.
    ///
    /// Its payloads are JSON text; [`Client::new_generic`] makes one with payloads of another
    /// type.
    pub fn new(config: Config, now: Instant) -> Self {
        Self::new_generic(config, now)
    }

    /// A text frame arrived on the current socket: decoded here, then
    /// [`Client::handle_server_frame`].
    pub fn handle_frame(&mut self, now: Instant, text: &str) {
        self.handle_server_frame(now, ServerFrame::decode(text));
    }
}

impl<P: Payload> Client<P> {
    /// [`Client::new`], with payloads of the type `P`.
    pub fn new_generic(config: Config, now: Instant) -> Self {
        let mut client = Self {
            rng: Rng::new(config.seed),
            config,
            conn: Conn::Closed,
            status: Status::Connecting,
            attempt: 0,
            url: 0,
            welcomed_before: false,
            welcome: None,
            server_error: None,
            auth: None,
            next_ask: 1,
            next_sub: 1,
            asks: Vec::new(),
            unordered_deadlines: false,
            queue: Vec::new(),
            held: Vec::new(),
            subs: Vec::new(),
            syncing: Vec::new(),
            transmits: Fifo::new(),
            events: Fifo::new(),
            actions: Fifo::new(),
        };
        if client.config.urls.is_empty() {
            client.finish(close::ABNORMAL, "no server URL is configured".to_owned());
        } else {
            client.connect(now);
        }
        client
    }

    // ---- Inputs -------------------------------------------------------------------------

    /// The socket asked for by the last [`Action::Connect`] opened: the client sends `hello`.
    pub fn handle_open(&mut self, _now: Instant) {
        if let Conn::Connecting { opened, .. } = &mut self.conn {
            if !*opened {
                *opened = true;
                self.send(&ClientFrame::Hello {
                    v: PROTOCOL_VERSION,
                    auth: self.auth.clone(),
                });
            }
        }
    }

    /// A frame arrived on the current socket, decoded by the driver: the frame, or why it is
    /// not one (its text is not JSON, or [`ServerFrame::from_envelope`] refused its fields).
    ///
    /// A frame that does not decode, or that the protocol does not allow here, makes the client
    /// close the socket with [`close::PROTOCOL_ERROR`] and reconnect.
    pub fn handle_server_frame(
        &mut self,
        now: Instant,
        frame: Result<ServerFrame<P>, ProtocolError>,
    ) {
        let welcomed = match &mut self.conn {
            Conn::Open { last_rx, .. } => {
                *last_rx = now;
                true
            }
            Conn::Connecting { .. } => false,
            Conn::Backoff { .. } | Conn::Closed => return,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return self.protocol_error(now, e.message()),
        };
        if !welcomed {
            return self.handle_handshake_frame(now, frame);
        }
        match frame {
            ServerFrame::Welcome { .. } => {
                self.protocol_error(now, "unexpected welcome".to_owned());
            }
            ServerFrame::Res { id, msg } => self.complete(id, Ok(msg)),
            ServerFrame::Rej { id, code, reason } => {
                self.complete(id, Err(AskError::new(code, reason)));
            }
            ServerFrame::Tell { topic, msg } => self.events.push_back(Event::Tell { topic, msg }),
            ServerFrame::Subok {
                id,
                ch,
                pos,
                recovered,
                presence,
            } => self.handle_subok(id, ch, pos, recovered, presence),
            ServerFrame::Subrej {
                id,
                ch,
                code,
                reason,
            } => self.handle_subrej(id, ch, AskError::new(code, reason)),
            ServerFrame::Pub {
                ch,
                topic,
                pos,
                msg,
            } => self.handle_pub(ch, topic, pos, msg),
            ServerFrame::Join { ch, m } => self.handle_member(ch, m, true),
            ServerFrame::Leave { ch, m } => self.handle_member(ch, m, false),
            ServerFrame::Unsubbed { ch, code, reason } => {
                if let Some(sub) = self.remove_sub(&ch) {
                    self.settle_sync(sub.awaiting);
                    self.events.push_back(Event::Unsubscribed {
                        channel: ch,
                        code,
                        reason,
                    });
                }
            }
            ServerFrame::Error { code, reason } => {
                self.server_error = Some(AskError::new(code, reason));
            }
            ServerFrame::Ping {} => self.send(&ClientFrame::Pong {}),
            ServerFrame::Pong {} => {}
        }
    }

    /// The current socket closed, or could not be opened (drivers report that as
    /// [`close::ABNORMAL`], 1006). Not to be called for a socket the client closed itself with
    /// [`Action::Close`].
    ///
    /// The client reconnects unless [`close::should_reconnect`] says the code is final.
    pub fn handle_close(&mut self, now: Instant, code: u16, reason: &str) {
        if matches!(self.conn, Conn::Connecting { .. } | Conn::Open { .. }) {
            self.lost(now, code, reason.to_owned(), close::should_reconnect(code));
        }
    }

    /// Time reached [`Client::poll_timeout`]: asks time out, the next reconnect attempt starts,
    /// or a connection that is too slow to welcome or went silent is closed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_asks(now);
        match self.conn {
            Conn::Backoff { at } if now >= at => {
                self.url = (self.url + 1) % self.config.urls.len().max(1);
                self.connect(now);
            }
            Conn::Connecting { deadline, .. } if now >= deadline => self.abort(
                now,
                close::HANDSHAKE_TIMEOUT,
                "no welcome within the connect timeout".to_owned(),
                true,
            ),
            Conn::Open {
                liveness: Some(liveness),
                last_rx,
            } if now >= last_rx + liveness => self.abort(
                now,
                close::HEARTBEAT_TIMEOUT,
                "no frame within two heartbeat intervals".to_owned(),
                true,
            ),
            _ => {}
        }
    }

    // ---- Commands -----------------------------------------------------------------------

    /// Sets the credentials every following `hello` carries for the server's session parser
    /// (a token, or any JSON; `None`: none). A driver with a static value sets it once; one
    /// that fetches a fresh token before each connection sets it after each
    /// [`Action::Connect`], before [`Client::handle_open`].
    pub fn set_auth(&mut self, auth: Option<P>) {
        self.auth = auth;
    }

    /// Sends a request to the server's handler for `topic`; its outcome arrives as
    /// [`Event::AskDone`] with the returned id, within [`Config::ask_timeout`].
    ///
    /// While not connected the ask waits in the offline queue. An ask sent on a connection that
    /// then drops fails with [`codes::DISCONNECTED`]: it
    /// is never sent twice.
    pub fn ask(&mut self, now: Instant, topic: &str, msg: P) -> Result<AskId, ClientError> {
        self.ask_until(now, topic, msg, None)
    }

    /// [`Client::ask`] with its own timeout instead of [`Config::ask_timeout`] (shorter or
    /// longer), counted from now.
    pub fn ask_with_timeout(
        &mut self,
        now: Instant,
        topic: &str,
        msg: P,
        timeout: Duration,
    ) -> Result<AskId, ClientError> {
        self.ask_until(now, topic, msg, Some(timeout))
    }

    fn ask_until(
        &mut self,
        now: Instant,
        topic: &str,
        msg: P,
        timeout: Option<Duration>,
    ) -> Result<AskId, ClientError> {
        self.check_open()?;
        check_topic(topic)?;
        let id = self.next_ask;
        let frame = ClientFrame::Ask {
            id,
            topic: topic.to_owned(),
            msg,
        };
        let sent = self.is_welcomed();
        if sent {
            self.send(&frame);
        } else {
            self.enqueue(Queued {
                ask: Some(id),
                frame,
            })?;
        }
        Ok(self.track(now, sent, timeout))
    }

    /// Asks the server for the members of `channel`'s presence; the answer arrives as
    /// [`Event::AskDone`] with the returned id: `Ok` with a JSON array of
    /// [`Member`](crate::protocol::Member)s, or an error such as
    /// [`codes::NO_PRESENCE`] (the subscription has no
    /// presence).
    ///
    /// A presence request is an ask in all but its frame: it has an id from the same space,
    /// the same timeout, fails with `disconnected` if its connection drops before the answer,
    /// and counts against [`Config::offline_queue`] while it waits. It is sent once the
    /// channel's subscription is live: at once if it is, else after its `subok` (the first one,
    /// or the one of a resync after a reconnect or a gap), so it never overtakes the `sub` it
    /// depends on. Without a subscription to `channel` (never made, ended by the server or
    /// [`Client::unsubscribe`], before or while the request waits) it fails with
    /// [`codes::NOT_SUBSCRIBED`].
    ///
    /// Members are not tracked by the client: [`Event::Join`] and [`Event::Leave`] are passed
    /// on, and after a resync an application that shows the members asks again.
    pub fn presence(&mut self, now: Instant, channel: &str) -> Result<AskId, ClientError> {
        self.presence_request(now, channel, false)
    }

    /// Asks the server for `channel`'s presence counts: like [`Client::presence`], answered
    /// with a JSON [`PresenceStats`](crate::protocol::PresenceStats) object.
    pub fn presence_stats(&mut self, now: Instant, channel: &str) -> Result<AskId, ClientError> {
        self.presence_request(now, channel, true)
    }

    /// Sends a message to the server's tell handler for `topic`, with no answer. While not
    /// connected it waits in the offline queue.
    pub fn tell(&mut self, _now: Instant, topic: &str, msg: P) -> Result<(), ClientError> {
        self.check_open()?;
        check_topic(topic)?;
        let frame = ClientFrame::Tell {
            topic: topic.to_owned(),
            msg,
        };
        if self.is_welcomed() {
            self.send(&frame);
            Ok(())
        } else {
            self.enqueue(Queued { ask: None, frame })
        }
    }

    /// Subscribes to `channel`, with an optional query for the server's subscription parser
    /// and, if asked for, the channel's presence events ([`SubscribeOptions`]).
    ///
    /// The server's answer arrives as [`Event::Subscribed`] or [`Event::SubscribeFailed`]. While
    /// not connected the subscription is sent on the next `welcome`. It lasts, across
    /// reconnects, until [`Client::unsubscribe`] or the server ends it; every `sub` the client
    /// sends for it (after a reconnect, after a gap) carries the same query and presence option.
    pub fn subscribe(
        &mut self,
        _now: Instant,
        channel: &str,
        options: SubscribeOptions<P>,
    ) -> Result<(), ClientError> {
        self.check_open()?;
        classify_channel(channel)?;
        let slot = match self.find_sub(channel) {
            Ok(_) => return Err(ClientError::AlreadySubscribed),
            Err(slot) => slot,
        };
        let mut sub = Subscription {
            query: options.query,
            presence: options.presence,
            last: None,
            awaiting: None,
        };
        if self.is_welcomed() {
            let id = bump(&mut self.next_sub);
            sub.awaiting = Some(id);
            self.send(&sub.frame(id, channel));
        }
        self.subs.insert(slot, (channel.to_owned(), sub));
        Ok(())
    }

    /// Leaves `channel` (nothing happens if the client is not subscribed to it). No event
    /// follows, and no publication of the channel is delivered any more.
    pub fn unsubscribe(&mut self, _now: Instant, channel: &str) {
        if let Some(sub) = self.remove_sub(channel) {
            self.settle_sync(sub.awaiting);
            if self.is_welcomed() {
                self.send(&ClientFrame::Unsub {
                    ch: channel.to_owned(),
                });
            }
        }
    }

    /// Closes the client for good: the socket is closed with [`close::NORMAL`], every
    /// pending or queued ask fails with [`codes::CLOSED`], and
    /// [`Event::Closed`] follows. Later commands fail with [`ClientError::Closed`].
    pub fn close(&mut self, _now: Instant) {
        if matches!(self.conn, Conn::Closed) {
            return;
        }
        let reason = "closed by the client".to_owned();
        if matches!(self.conn, Conn::Connecting { .. } | Conn::Open { .. }) {
            self.actions.push_back(Action::Close {
                code: close::NORMAL,
                reason: reason.clone(),
            });
        }
        self.finish(close::NORMAL, reason);
    }

    // ---- Outputs ------------------------------------------------------------------------

    /// The next encoded text frame to send on the current socket.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.transmits.pop_front()
    }

    /// When [`Client::handle_timeout`] is next due: the earliest ask deadline, reconnect time,
    /// connect timeout or heartbeat deadline. `None` when nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = match self.conn {
            Conn::Backoff { at } => Some(at),
            Conn::Connecting { deadline, .. } => Some(deadline),
            Conn::Open {
                liveness: Some(liveness),
                last_rx,
            } => Some(last_rx + liveness),
            Conn::Open { liveness: None, .. } | Conn::Closed => None,
        };
        let ask = if self.unordered_deadlines {
            self.asks.iter().map(|(_, ask)| ask.deadline).min()
        } else {
            self.asks.first().map(|(_, ask)| ask.deadline)
        };
        match (conn, ask) {
            (Some(conn), Some(ask)) => Some(conn.min(ask)),
            (conn, ask) => conn.or(ask),
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event<P>> {
        self.events.pop_front()
    }

    /// The next thing the driver must do with the socket (see [`Action`] for the contract).
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The connection status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// This socket's cluster-wide id, from the current connection's `welcome`.
    pub fn socket_id(&self) -> Option<&str> {
        self.welcome.as_ref().map(|w| w.socket.as_str())
    }

    /// The user id the server's session parser gave this connection, if any.
    pub fn user(&self) -> Option<&str> {
        self.welcome.as_ref().and_then(|w| w.user.as_deref())
    }

    /// The session id the server's session parser gave this connection, if any.
    pub fn session(&self) -> Option<&str> {
        self.welcome.as_ref().and_then(|w| w.session.as_deref())
    }

    /// The last position seen on a subscribed channel: it is where a resync resumes.
    pub fn position(&self, channel: &str) -> Option<&Position> {
        self.sub(channel).and_then(|sub| sub.last.as_ref())
    }

    // ---- Connection lifecycle -----------------------------------------------------------

    fn connect(&mut self, now: Instant) {
        let url = self.config.urls.get(self.url).cloned().unwrap_or_default();
        self.actions.push_back(Action::Connect { url });
        self.server_error = None;
        self.conn = Conn::Connecting {
            deadline: now + self.config.connect_timeout,
            opened: false,
        };
    }

    fn handle_handshake_frame(&mut self, now: Instant, frame: ServerFrame<P>) {
        match frame {
            ServerFrame::Welcome {
                v,
                socket,
                user,
                session,
                hb,
            } if v == PROTOCOL_VERSION => {
                let welcome = Welcome {
                    socket,
                    user,
                    session,
                };
                self.handle_welcome(now, welcome, hb);
            }
            ServerFrame::Welcome { v, .. } => self.abort(
                now,
                close::UNSUPPORTED_VERSION,
                join(&[
                    "the server speaks protocol version ",
                    &decimal(v.into()),
                    ", not ",
                    &decimal(PROTOCOL_VERSION.into()),
                ]),
                false,
            ),
            ServerFrame::Error { code, reason } => {
                self.server_error = Some(AskError::new(code, reason));
            }
            ServerFrame::Ping {} => self.send(&ClientFrame::Pong {}),
            _ => self.protocol_error(now, "unexpected frame before welcome".to_owned()),
        }
    }

    /// The connection is ready: resubscribe, flush the offline queue.
    fn handle_welcome(&mut self, now: Instant, welcome: Welcome, hb: u64) {
        self.conn = Conn::Open {
            liveness: (hb > 0).then(|| Duration::from_millis(hb).saturating_mul(2)),
            last_rx: now,
        };
        self.welcome = Some(welcome);
        self.attempt = 0;
        let reconnect = std::mem::replace(&mut self.welcomed_before, true);
        for (channel, sub) in &mut self.subs {
            let id = bump(&mut self.next_sub);
            sub.awaiting = Some(id);
            if reconnect {
                self.syncing.push(id);
            }
            self.transmits.push_back(sub.frame(id, channel).encode());
        }
        self.expire_asks(now);
        for Queued { ask, frame } in std::mem::take(&mut self.queue) {
            if let Some(id) = ask {
                match self.ask_index(id) {
                    Some(i) => self.asks[i].1.sent = true,
                    None => continue,
                }
            }
            self.send(&frame);
        }
        self.set_status(if self.syncing.is_empty() {
            Status::Ready
        } else {
            Status::Syncing
        });
    }

    fn protocol_error(&mut self, now: Instant, reason: String) {
        self.abort(now, close::PROTOCOL_ERROR, reason, true);
    }

    /// The client closes the current socket itself.
    fn abort(&mut self, now: Instant, code: u16, reason: String, reconnect: bool) {
        self.actions.push_back(Action::Close {
            code,
            reason: reason.clone(),
        });
        self.lost(now, code, reason, reconnect);
    }

    /// The current socket is gone: back off and reconnect, or close for good.
    fn lost(&mut self, now: Instant, code: u16, reason: String, reconnect: bool) {
        let error = self.server_error.take();
        let reason = error.as_ref().map_or(reason, AskError::message);
        let attempts_left = self
            .config
            .reconnect
            .max_attempts
            .is_none_or(|max| self.attempt < max);
        let first_failed = self.config.fail_first_connect && !self.welcomed_before;
        if !(reconnect && attempts_left) || first_failed {
            return self.finish_with(code, reason, error);
        }
        self.welcome = None;
        self.transmits.clear();
        self.syncing.clear();
        for (_, sub) in &mut self.subs {
            sub.awaiting = None;
        }
        let mut sent = Vec::new();
        self.asks.retain(|&(id, ref ask)| {
            if ask.sent {
                sent.push(id);
            }
            !ask.sent
        });
        for id in sent {
            self.ask_done(id, Err(AskError::disconnected()));
        }
        let delay = backoff_delay(&self.config.reconnect, self.attempt, self.rng.next_u64());
        self.set_status(Status::Reconnecting {
            attempt: self.attempt,
        });
        self.attempt = self.attempt.saturating_add(1);
        self.conn = Conn::Backoff { at: now + delay };
    }

    /// Closes for good: everything pending fails, then [`Event::Closed`].
    fn finish(&mut self, code: u16, reason: String) {
        self.finish_with(code, reason, None);
    }

    /// [`Client::finish`], after the server's `error` frame `error`.
    fn finish_with(&mut self, code: u16, reason: String, error: Option<AskError>) {
        self.conn = Conn::Closed;
        self.welcome = None;
        self.transmits.clear();
        self.queue.clear();
        self.held.clear();
        self.syncing.clear();
        for (id, _) in std::mem::take(&mut self.asks) {
            self.ask_done(id, Err(AskError::closed()));
        }
        // Every subscription ends with the close's reason: one that never started fails, one
        // that had started is ended.
        for (channel, sub) in std::mem::take(&mut self.subs) {
            self.events.push_back(if sub.last.is_none() {
                Event::SubscribeFailed {
                    channel,
                    error: AskError::new(codes::CLOSED, reason.clone()),
                }
            } else {
                Event::Unsubscribed {
                    channel,
                    code: codes::CLOSED.to_owned(),
                    reason: reason.clone(),
                }
            });
        }
        self.set_status(Status::Closed);
        self.events.push_back(Event::Closed {
            code,
            reason,
            error,
        });
    }

    // ---- Asks ---------------------------------------------------------------------------

    fn complete(&mut self, id: u64, result: Result<P, AskError>) {
        if let Some(i) = self.ask_index(id) {
            if self.asks[i].1.sent {
                self.asks.remove(i);
                self.ask_done(id, result);
            }
        }
    }

    /// Fails every ask whose deadline passed, queued, held or sent.
    fn expire_asks(&mut self, now: Instant) {
        // In id order the first ask is due first, unless some ask has a timeout of its own:
        // nothing to scan when it is not due. (One `retain` for both cases: one loop in the
        // browser's wasm instead of two.)
        let first_due = self
            .asks
            .first()
            .is_some_and(|(_, ask)| ask.deadline <= now);
        if !first_due && !self.unordered_deadlines {
            return;
        }
        let mut expired = Vec::new();
        self.asks.retain(|&(id, ref ask)| {
            let due = ask.deadline <= now;
            if due {
                expired.push((id, ask.sent));
            }
            !due
        });
        self.unordered_deadlines &= !self.asks.is_empty();
        let mut dropped_unsent = false;
        for (id, sent) in expired {
            dropped_unsent |= !sent;
            self.ask_done(id, Err(AskError::timeout()));
        }
        if dropped_unsent {
            let asks = &self.asks;
            let pending = |id: &u64| asks.binary_search_by_key(id, |&(a, _)| a).is_ok();
            self.queue
                .retain(|queued| queued.ask.as_ref().is_none_or(pending));
            self.held.retain(|held| pending(&held.id));
        }
    }

    /// Where the pending ask `id` is in `asks`.
    fn ask_index(&self, id: u64) -> Option<usize> {
        self.asks.binary_search_by_key(&id, |&(a, _)| a).ok()
    }

    fn ask_done(&mut self, id: u64, result: Result<P, AskError>) {
        self.events.push_back(Event::AskDone {
            id: AskId(id),
            result,
        });
    }

    /// Starts tracking the ask (or presence request) with the next id, due after `timeout`
    /// (default [`Config::ask_timeout`]); returns that id.
    fn track(&mut self, now: Instant, sent: bool, timeout: Option<Duration>) -> AskId {
        let id = bump(&mut self.next_ask);
        // Only asks of their own timeout can be due before an older one.
        self.unordered_deadlines |= timeout.is_some();
        let deadline = now + timeout.unwrap_or(self.config.ask_timeout);
        // Ids only grow: pushing keeps `asks` sorted.
        self.asks.push((id, PendingAsk { deadline, sent }));
        AskId(id)
    }

    /// Whether the frames waiting to be sent (queued offline, or held for their subscription)
    /// reached [`Config::offline_queue`].
    fn unsent_full(&self) -> bool {
        self.queue.len() + self.held.len() >= self.config.offline_queue
    }

    fn enqueue(&mut self, queued: Queued<P>) -> Result<(), ClientError> {
        if self.unsent_full() {
            return Err(ClientError::QueueFull);
        }
        self.queue.push(queued);
        Ok(())
    }

    fn presence_request(
        &mut self,
        now: Instant,
        channel: &str,
        stats: bool,
    ) -> Result<AskId, ClientError> {
        self.check_open()?;
        let live = match self.sub(channel) {
            Some(sub) => self.is_welcomed() && sub.awaiting.is_none(),
            None => {
                // The server would answer the same; no need to ask it.
                let id = bump(&mut self.next_ask);
                self.ask_done(id, Err(AskError::not_subscribed()));
                return Ok(AskId(id));
            }
        };
        let held = Held {
            id: self.next_ask,
            channel: channel.to_owned(),
            stats,
        };
        if live {
            self.send(&held.frame());
        } else if self.unsent_full() {
            return Err(ClientError::QueueFull);
        } else {
            self.held.push(held);
        }
        Ok(self.track(now, live, None))
    }

    /// `channel`'s subscription is live: its held presence requests go out, in order.
    fn release_held(&mut self, channel: &str) {
        for held in self.take_held(channel) {
            if let Some(i) = self.ask_index(held.id) {
                self.asks[i].1.sent = true;
                self.send(&held.frame());
            }
        }
    }

    /// `channel`'s subscription is gone: its held presence requests fail.
    fn fail_held(&mut self, channel: &str) {
        for held in self.take_held(channel) {
            if let Some(i) = self.ask_index(held.id) {
                self.asks.remove(i);
                self.ask_done(held.id, Err(AskError::not_subscribed()));
            }
        }
    }

    /// Removes and returns `channel`'s held presence requests, in order. (A plain loop, not
    /// `partition`: the browser build carries one small function instead of two generic ones.)
    fn take_held(&mut self, channel: &str) -> Vec<Held> {
        let mut taken = Vec::new();
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].channel == channel {
                taken.push(self.held.remove(i));
            } else {
                i += 1;
            }
        }
        taken
    }

    // ---- Subscriptions ------------------------------------------------------------------

    fn handle_subok(
        &mut self,
        id: u64,
        channel: String,
        pos: Position,
        recovered: Option<bool>,
        presence: bool,
    ) {
        let Some(sub) = self.sub_mut(&channel) else {
            return;
        };
        if sub.awaiting != Some(id) {
            return;
        }
        sub.awaiting = None;
        // A subscription with a position has started before: this answers a resync. One that
        // had none to resume from (its first `sub`, resent after a reconnect) starts now.
        let first = sub.last.is_none();
        let recovered = recovered != Some(false);
        if first || !recovered {
            sub.last = Some(pos.clone());
        }
        self.release_held(&channel);
        self.events.push_back(if first {
            Event::Subscribed {
                channel,
                position: pos,
                presence,
            }
        } else {
            Event::Resynced {
                channel,
                position: pos,
                recovered,
                presence,
            }
        });
        self.settle_sync(Some(id));
    }

    fn handle_subrej(&mut self, id: u64, channel: String, error: AskError) {
        if self.sub(&channel).and_then(|sub| sub.awaiting) != Some(id) {
            return;
        }
        self.remove_sub(&channel);
        self.events
            .push_back(Event::SubscribeFailed { channel, error });
        self.settle_sync(Some(id));
    }

    /// The hot path: one publication. Delivered if it is the next one, dropped if already seen,
    /// and a gap makes the client resync the channel.
    fn handle_pub(&mut self, channel: String, topic: String, position: Position, msg: P) {
        let Some(i) = self.find_sub(&channel).ok() else {
            return;
        };
        let sub = &mut self.subs[i].1;
        if sub.awaiting.is_some() {
            return;
        }
        match &mut sub.last {
            Some(last) if last.epoch == position.epoch && position.seq <= last.seq => return,
            Some(last) if last.epoch == position.epoch && position.seq == last.seq + 1 => {
                last.seq = position.seq;
            }
            Some(_) => {
                let id = bump(&mut self.next_sub);
                sub.awaiting = Some(id);
                self.transmits.push_back(sub.frame(id, &channel).encode());
                return;
            }
            None => sub.last = Some(position.clone()),
        }
        self.events.push_back(Event::Publication {
            channel,
            topic,
            msg,
            position,
        });
    }

    /// A `join` or `leave`: passed on while the subscription is live and asked for presence
    /// events. Dropped otherwise: while a resync is pending the application is about to be told
    /// to ask for the members again anyway ([`Event::Subscribed`]).
    fn handle_member(&mut self, channel: String, member: P, joined: bool) {
        let wanted = (self.sub(&channel)).is_some_and(|sub| sub.presence && sub.awaiting.is_none());
        if wanted {
            self.events.push_back(if joined {
                Event::Join { channel, member }
            } else {
                Event::Leave { channel, member }
            });
        }
    }

    /// A subscription awaiting an answer got one (or went away): maybe syncing is over.
    fn settle_sync(&mut self, id: Option<u64>) {
        if let Some(id) = id {
            self.syncing.retain(|&s| s != id);
        }
        if self.status == Status::Syncing && self.syncing.is_empty() {
            self.set_status(Status::Ready);
        }
    }

    /// Where `channel` is in `subs` (`Err`: where it would be inserted).
    fn find_sub(&self, channel: &str) -> Result<usize, usize> {
        self.subs.binary_search_by(|(c, _)| c.as_str().cmp(channel))
    }

    fn sub(&self, channel: &str) -> Option<&Subscription<P>> {
        self.find_sub(channel).ok().map(|i| &self.subs[i].1)
    }

    fn sub_mut(&mut self, channel: &str) -> Option<&mut Subscription<P>> {
        let i = self.find_sub(channel).ok()?;
        Some(&mut self.subs[i].1)
    }

    /// Removes `channel`'s subscription for good (its held presence requests fail).
    fn remove_sub(&mut self, channel: &str) -> Option<Subscription<P>> {
        let i = self.find_sub(channel).ok()?;
        let (_, sub) = self.subs.remove(i);
        self.fail_held(channel);
        Some(sub)
    }

    // ---- Small helpers ------------------------------------------------------------------

    fn is_welcomed(&self) -> bool {
        matches!(self.conn, Conn::Open { .. })
    }

    fn check_open(&self) -> Result<(), ClientError> {
        match self.conn {
            Conn::Closed => Err(ClientError::Closed),
            _ => Ok(()),
        }
    }

    fn send(&mut self, frame: &ClientFrame<P>) {
        self.transmits.push_back(frame.encode());
    }

    fn set_status(&mut self, status: Status) {
        if self.status != status {
            self.status = status;
            self.events.push_back(Event::Status(status));
        }
    }
}

fn check_topic(topic: &str) -> Result<(), ClientError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(ClientError::InvalidTopic);
    }
    Ok(())
}

/// Returns the counter's value and advances it.
fn bump(counter: &mut u64) -> u64 {
    let value = *counter;
    *counter += 1;
    value
}

/// A first-in, first-out queue of the core's outputs, filled by the core and drained by the
/// driver's polls: a `Vec` and a read index (a `VecDeque` per output type was ~1 KB each of the
/// browser's wasm).
#[derive(Debug)]
struct Fifo<T> {
    items: Vec<Option<T>>,
    head: usize,
}

impl<T> Fifo<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            head: 0,
        }
    }

    fn push_back(&mut self, item: T) {
        self.items.push(Some(item));
    }

    fn pop_front(&mut self) -> Option<T> {
        let item = self.items.get_mut(self.head)?.take();
        self.head += 1;
        if self.head == self.items.len() {
            self.clear();
        }
        item
    }

    fn clear(&mut self) {
        self.items.clear();
        self.head = 0;
    }
}
