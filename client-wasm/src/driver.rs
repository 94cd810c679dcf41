//! The browser driver: owns the `WebSocket` and the timer, feeds what happens into the sans-IO
//! [`sss_core::client::Client`], and carries out what it asks for.
//!
//! Everything protocol-related (asks, the offline queue, subscriptions, reconnect, resync) is in
//! the core; this module only moves bytes, time and events across the JS boundary.
//!
//! Re-entrancy rule: no `RefCell` borrow is ever held while JS runs. JS callbacks of the
//! application may call back into the client (an `ask` from inside `onStatus`), so every state
//! lookup happens in a short borrow that ends before the callback is invoked, and [`Shared::pump`]
//! is not re-entered: a nested call returns at once and the outer loop picks up the new work in
//! order.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use gloo_timers::callback::Timeout;
use js_sys::{Function, Object, Promise};
use serde_json::value::RawValue;
use sss_core::client::{
    self as core, Action, AskError, AskId, ClientError, Config, Event, Instant, Recovery, Status,
    SubscribeOptions,
};
use sss_core::protocol::{close, codes};
use sss_core::Position;
use wasm_bindgen::prelude::*;

use crate::js::{self, set, AuthSource};
use crate::socket::Socket;
use crate::subscription::{SubState, Subscription};
use crate::Client;

/// The two functions that settle a JS promise.
pub(crate) struct Pending {
    resolve: Function,
    reject: Function,
}

impl Pending {
    /// A new promise, and what settles it.
    pub(crate) fn new() -> (Promise, Pending) {
        let mut slot = None;
        let promise = Promise::new(&mut |resolve, reject| slot = Some(Pending { resolve, reject }));
        let pending = slot.expect("the Promise executor runs synchronously");
        (promise, pending)
    }

    /// Fulfils the promise.
    pub(crate) fn resolve(self, value: &JsValue) {
        let _ = self.resolve.call1(&JsValue::UNDEFINED, value);
    }

    /// Rejects the promise.
    pub(crate) fn reject(self, error: &JsValue) {
        let _ = self.reject.call1(&JsValue::UNDEFINED, error);
    }
}

/// An ask (or presence request) waiting for its answer: its promise, and the hook on its
/// `AbortSignal`, if it has one.
struct AskEntry {
    id: AskId,
    pending: Pending,
    _abort: Option<AbortHook>,
}

/// An `abort` listener on an ask's signal, removed from the signal when the ask is done.
struct AbortHook {
    signal: JsValue,
    listener: Closure<dyn FnMut()>,
}

impl Drop for AbortHook {
    fn drop(&mut self) {
        js::listen(&self.signal, false, "abort", self.listener.as_ref());
    }
}

/// A subscription the application asked for: its shared state, and the `subscribe` promise
/// until the server's first answer.
struct SubEntry {
    sub: Rc<SubState>,
    ready: Option<Pending>,
}

/// The driver's bookkeeping next to the core: who waits for what.
///
/// Plain vectors, searched linearly: they hold tens of entries, not thousands, and every map
/// type instantiated here would add kilobytes to the wasm.
#[derive(Default)]
struct State {
    asks: Vec<AskEntry>,
    subs: Vec<SubEntry>,
    tells: Vec<(String, Function)>,
    status: Vec<Function>,
    /// The `Client.connect` promise, and the client it resolves with (which keeps the driver
    /// alive meanwhile), until the first connection is ready or fails.
    first: Option<(Pending, Rc<Shared>)>,
    /// The `closed` status's info (code, reason, error), once closed: what a late `onStatus`
    /// callback gets.
    closed_info: Option<JsValue>,
}

/// Everything a client is, shared by its JS handles (`Client`, `Subscription`) and the socket
/// and timer callbacks (those hold it weakly).
pub(crate) struct Shared {
    core: RefCell<core::Client>,
    /// The `WebSocket` constructor of the options (`None`: the global one).
    ws_ctor: Option<Function>,
    /// `getAuth`, called before every connection attempt.
    get_auth: Option<Function>,
    /// The connection attempt waiting for `getAuth` (its socket id and URL), and the promise
    /// callbacks that settle it (dropped with the attempt).
    auth_wait: RefCell<Option<AuthWait>>,
    socket: RefCell<Option<Socket>>,
    timer: RefCell<Option<(Instant, Timeout)>>,
    state: RefCell<State>,
    pumping: Cell<bool>,
    next_socket: Cell<u64>,
}

/// A connection attempt waiting for the promise `getAuth` returned.
struct AuthWait {
    id: u64,
    url: String,
    _resolved: Closure<dyn FnMut(JsValue)>,
    _rejected: Closure<dyn FnMut(JsValue)>,
}

impl Shared {
    fn create(config: Config, auth: AuthSource, ws_ctor: Option<Function>) -> Rc<Shared> {
        let now = js::now();
        let mut core = core::Client::new(config, now);
        let get_auth = match auth {
            AuthSource::None => None,
            AuthSource::Static(auth) => {
                core.set_auth(Some(auth));
                None
            }
            AuthSource::Callback(f) => Some(f),
        };
        Rc::new(Shared {
            core: RefCell::new(core),
            ws_ctor,
            get_auth,
            auth_wait: RefCell::new(None),
            socket: RefCell::new(None),
            timer: RefCell::new(None),
            state: RefCell::new(State::default()),
            pumping: Cell::new(false),
            next_socket: Cell::new(1),
        })
    }

    /// Starts a client: it connects at once, and reconnects by itself.
    pub(crate) fn start(config: Config, auth: AuthSource, ws_ctor: Option<Function>) -> Rc<Shared> {
        let shared = Self::create(config, auth, ws_ctor);
        shared.pump();
        shared
    }

    /// Starts a client and returns a promise of its [`Client`] handle once the first
    /// connection is ready; if that connection fails, the promise rejects and the client
    /// closes instead of retrying.
    pub(crate) fn connect(config: Config, auth: AuthSource, ws_ctor: Option<Function>) -> Promise {
        let (promise, first) = Pending::new();
        let config = Config {
            fail_first_connect: true,
            ..config
        };
        let shared = Self::create(config, auth, ws_ctor);
        shared.state.borrow_mut().first = Some((first, shared.clone()));
        shared.pump();
        promise
    }

    // ---- Commands ---------------------------------------------------------------------------

    /// An ask; `options`: `{ timeoutMs, signal }` (see `AskOptions` in the typings).
    pub(crate) fn ask(self: &Rc<Self>, topic: &str, msg: &JsValue, options: &JsValue) -> Promise {
        let prepared = js::to_raw(msg).and_then(|msg| Ok((msg, js::ask_options(options)?)));
        let (msg, (timeout, signal)) = match prepared {
            Ok(p) => p,
            Err(e) => return Promise::reject(&e),
        };
        if signal.as_ref().is_some_and(js::aborted) {
            return Promise::reject(&js::error(codes::ABORTED, "the ask was aborted"));
        }
        let now = js::now();
        let id = match timeout {
            Some(t) => self.core.borrow_mut().ask_with_timeout(now, topic, msg, t),
            None => self.core.borrow_mut().ask(now, topic, msg),
        };
        let abort = match (&id, signal) {
            (Ok(id), Some(signal)) => {
                let (id, weak) = (*id, Rc::downgrade(self));
                let listener = Closure::<dyn FnMut()>::new(move || {
                    if let Some(shared) = weak.upgrade() {
                        shared.abort_ask(id);
                    }
                });
                js::listen(&signal, true, "abort", listener.as_ref());
                Some(AbortHook { signal, listener })
            }
            _ => None,
        };
        self.answer(id, abort)
    }

    /// The ask `id`'s signal fired: its promise rejects with `aborted`; a late answer is
    /// dropped.
    fn abort_ask(&self, id: AskId) {
        if let Some(entry) = self.take_ask(id) {
            entry
                .pending
                .reject(&js::error(codes::ABORTED, "the ask was aborted"));
        }
    }

    /// Removes the ask `id`'s entry (its abort hook goes when the caller drops it, outside the
    /// borrow: that calls into JS).
    fn take_ask(&self, id: AskId) -> Option<AskEntry> {
        let mut state = self.state.borrow_mut();
        let found = state.asks.iter().position(|e| e.id == id);
        found.map(|i| state.asks.swap_remove(i))
    }

    /// A presence request (`stats`: the counts) for the subscription `sub`: rejected with
    /// `not_subscribed` when `sub` is no longer its channel's subscription.
    pub(crate) fn presence(self: &Rc<Self>, sub: &Rc<SubState>, stats: bool) -> Promise {
        let current = (self.state.borrow().subs.iter()).any(|e| Rc::ptr_eq(&e.sub, sub));
        if !current {
            return Promise::reject(&js::ask_error(&AskError::not_subscribed()));
        }
        let now = js::now();
        let id = if stats {
            self.core.borrow_mut().presence_stats(now, &sub.channel)
        } else {
            self.core.borrow_mut().presence(now, &sub.channel)
        };
        self.answer(id, None)
    }

    /// The promise of the answer to the ask (or presence request) `id`.
    fn answer(
        self: &Rc<Self>,
        id: Result<AskId, ClientError>,
        abort: Option<AbortHook>,
    ) -> Promise {
        let (promise, pending) = Pending::new();
        match id {
            Ok(id) => self.state.borrow_mut().asks.push(AskEntry {
                id,
                pending,
                _abort: abort,
            }),
            Err(e) => pending.reject(&js::client_error(&e)),
        }
        self.pump();
        promise
    }

    pub(crate) fn tell(self: &Rc<Self>, topic: &str, msg: &JsValue) -> Result<(), JsValue> {
        let msg = js::to_raw(msg)?;
        let now = js::now();
        let result = self.core.borrow_mut().tell(now, topic, msg);
        self.pump();
        result.map_err(|e| js::client_error(&e))
    }

    pub(crate) fn subscribe(
        self: &Rc<Self>,
        channel: &str,
        query: &JsValue,
        presence: bool,
    ) -> Promise {
        let query = if query.is_undefined() || query.is_null() {
            None
        } else {
            match js::to_raw(query) {
                Ok(q) => Some(q),
                Err(e) => return Promise::reject(&e),
            }
        };
        let (promise, pending) = Pending::new();
        let now = js::now();
        let options = SubscribeOptions { query, presence };
        let result = self.core.borrow_mut().subscribe(now, channel, options);
        match result {
            Ok(()) => self.state.borrow_mut().subs.push(SubEntry {
                sub: Rc::new(SubState::new(channel.to_owned())),
                ready: Some(pending),
            }),
            Err(e) => pending.reject(&js::client_error(&e)),
        }
        self.pump();
        promise
    }

    /// Leaves the channel of `sub`, if `sub` is still the live subscription of that channel.
    pub(crate) fn unsubscribe(self: &Rc<Self>, sub: &Rc<SubState>) {
        let removed = {
            let mut state = self.state.borrow_mut();
            let found = state.subs.iter().position(|e| Rc::ptr_eq(&e.sub, sub));
            found.map(|i| state.subs.swap_remove(i))
        };
        if removed.is_some() {
            let now = js::now();
            self.core.borrow_mut().unsubscribe(now, &sub.channel);
            drop(removed);
            self.pump();
        }
    }

    pub(crate) fn close(self: &Rc<Self>) {
        let now = js::now();
        self.core.borrow_mut().close(now);
        self.pump();
    }

    /// Adds a tell callback; returns its disposer.
    pub(crate) fn on_tell(self: &Rc<Self>, topic: String, f: Function) -> JsValue {
        self.state
            .borrow_mut()
            .tells
            .push((topic.clone(), f.clone()));
        let weak = Rc::downgrade(self);
        js::disposer(move || {
            if let Some(shared) = weak.upgrade() {
                shared.off_tell(&topic, &f);
            }
        })
    }

    pub(crate) fn off_tell(&self, topic: &str, f: &Function) {
        (self.state.borrow_mut().tells).retain(|(t, g)| !(t == topic && g == f));
    }

    /// Adds a status callback and calls it with the current status at once (an application
    /// that subscribes late still learns where the client is); returns its disposer.
    pub(crate) fn on_status(self: &Rc<Self>, f: Function) -> JsValue {
        self.state.borrow_mut().status.push(f.clone());
        let status = self.status();
        let info = match status {
            Status::Closed => self.state.borrow().closed_info.clone(),
            _ => None,
        };
        let info = info.unwrap_or_else(|| status_info(status));
        js::call(&f, &JsValue::from_str(js::status_name(status)), Some(&info));
        let weak = Rc::downgrade(self);
        js::disposer(move || {
            if let Some(shared) = weak.upgrade() {
                shared.off_status(&f);
            }
        })
    }

    pub(crate) fn off_status(&self, f: &Function) {
        self.state.borrow_mut().status.retain(|g| g != f);
    }

    // ---- Getters ----------------------------------------------------------------------------

    pub(crate) fn status(&self) -> Status {
        self.core.borrow().status()
    }

    pub(crate) fn socket_id(&self) -> Option<String> {
        self.core.borrow().socket_id().map(str::to_owned)
    }

    pub(crate) fn user(&self) -> Option<String> {
        self.core.borrow().user().map(str::to_owned)
    }

    pub(crate) fn session(&self) -> Option<String> {
        self.core.borrow().session().map(str::to_owned)
    }

    pub(crate) fn position(&self, channel: &str) -> Option<Position> {
        self.core.borrow().position(channel).cloned()
    }

    // ---- Socket and timer events ------------------------------------------------------------

    fn is_current(&self, id: u64) -> bool {
        self.socket.borrow().as_ref().is_some_and(|s| s.id == id)
    }

    pub(crate) fn on_open(self: &Rc<Self>, id: u64) {
        if self.is_current(id) {
            let now = js::now();
            self.core.borrow_mut().handle_open(now);
            self.pump();
        }
    }

    pub(crate) fn on_message(self: &Rc<Self>, id: u64, text: &str) {
        if self.is_current(id) {
            let now = js::now();
            self.core.borrow_mut().handle_frame(now, text);
            self.pump();
        }
    }

    pub(crate) fn on_close(self: &Rc<Self>, id: u64, code: u16, reason: &str) {
        if !self.is_current(id) {
            return;
        }
        let socket = self.socket.borrow_mut().take();
        drop(socket);
        let reason = match reason {
            "" if code == close::ABNORMAL => {
                // Browsers hide why: an unreachable server and a refused upgrade (a forbidden
                // origin) look the same. (A refused `hello` is an `error` frame and 4010.)
                "the connection failed or was refused (browsers give no detail)".to_owned()
            }
            r => r.to_owned(),
        };
        let now = js::now();
        self.core.borrow_mut().handle_close(now, code, &reason);
        self.pump();
    }

    fn on_timer(self: &Rc<Self>) {
        let fired = self.timer.borrow_mut().take();
        drop(fired);
        let now = js::now();
        self.core.borrow_mut().handle_timeout(now);
        self.pump();
    }

    // ---- The pump ---------------------------------------------------------------------------

    /// Carries out everything the core has for us, one item at a time and in order: socket
    /// actions, then frames to send, then events for the application; then re-arms the timer.
    fn pump(self: &Rc<Self>) {
        if self.pumping.replace(true) {
            return;
        }
        loop {
            let action = self.core.borrow_mut().poll_action();
            if let Some(action) = action {
                self.action(action);
                continue;
            }
            let frame = self.core.borrow_mut().poll_transmit();
            if let Some(frame) = frame {
                let ws = self.socket.borrow().as_ref().map(Socket::ws);
                if let Some(ws) = ws {
                    // A failure (the socket is closing) is ignored: its `close` event follows.
                    let _ = ws.send_with_str(&frame);
                }
                continue;
            }
            let event = self.core.borrow_mut().poll_event();
            if let Some(event) = event {
                self.event(event);
                continue;
            }
            break;
        }
        self.pumping.set(false);
        self.schedule();
    }

    fn action(self: &Rc<Self>, action: Action) {
        match action {
            Action::Connect { url } => {
                let old = self.socket.borrow_mut().take();
                drop(old);
                let id = self.next_socket.get();
                self.next_socket.set(id + 1);
                match self.get_auth.clone() {
                    Some(get_auth) => self.fetch_auth(&get_auth, id, url),
                    None => self.open(id, &url),
                }
            }
            Action::Close { code, reason } => {
                // An attempt still waiting for `getAuth` is abandoned with its socket.
                let waiting = self.auth_wait.borrow_mut().take();
                drop(waiting);
                let socket = self.socket.borrow_mut().take();
                if let Some(socket) = socket {
                    socket.close(code, &reason);
                }
            }
        }
    }

    /// Opens socket `id` to `url`, or reports why the browser refused at once.
    fn open(self: &Rc<Self>, id: u64, url: &str) {
        match Socket::open(url, self.ws_ctor.as_ref(), Rc::downgrade(self), id) {
            Ok(socket) => *self.socket.borrow_mut() = Some(socket),
            Err(e) => self.attempt_failed(format!("cannot open {url}: {}", js::describe(&e))),
        }
    }

    /// The current connection attempt failed before it had a socket.
    fn attempt_failed(self: &Rc<Self>, reason: String) {
        let now = js::now();
        self.core
            .borrow_mut()
            .handle_close(now, close::ABNORMAL, &reason);
    }

    /// Calls `getAuth` for connection attempt `id`; once its promise settles, the socket opens
    /// with the credentials in its `hello`, or the attempt fails (and is retried with backoff).
    fn fetch_auth(self: &Rc<Self>, get_auth: &Function, id: u64, url: String) {
        let promise = match get_auth.call0(&JsValue::UNDEFINED) {
            Ok(v) => Promise::resolve(&v),
            Err(e) => return self.attempt_failed(format!("getAuth threw: {}", js::describe(&e))),
        };
        let weak = Rc::downgrade(self);
        let ok = Closure::<dyn FnMut(JsValue)>::new(move |auth: JsValue| {
            if let Some(shared) = weak.upgrade() {
                shared.auth_settled(id, Ok(auth));
            }
        });
        let weak = Rc::downgrade(self);
        let err = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            if let Some(shared) = weak.upgrade() {
                shared.auth_settled(id, Err(e));
            }
        });
        let _ = promise.then2(&ok, &err);
        *self.auth_wait.borrow_mut() = Some(AuthWait {
            id,
            url,
            _resolved: ok,
            _rejected: err,
        });
    }

    /// `getAuth`'s promise for attempt `id` settled (ignored if that attempt was abandoned).
    fn auth_settled(self: &Rc<Self>, id: u64, auth: Result<JsValue, JsValue>) {
        let current = self.auth_wait.borrow().as_ref().is_some_and(|w| w.id == id);
        if !current {
            return;
        }
        // The closures running now are dropped with it only after they return: wasm-bindgen
        // frees a `Closure` dropped during its own call once that call ends.
        let Some(wait) = self.auth_wait.borrow_mut().take() else {
            return;
        };
        match auth.and_then(|auth| js::to_raw(&auth)) {
            Ok(auth) => {
                self.core.borrow_mut().set_auth(Some(auth));
                self.open(id, &wait.url);
            }
            Err(e) => self.attempt_failed(format!("getAuth failed: {}", js::describe(&e))),
        }
        drop(wait);
        self.pump();
    }

    /// Re-arms the timer for the core's next deadline (one `setTimeout` at a time).
    fn schedule(self: &Rc<Self>) {
        let at = self.core.borrow().poll_timeout();
        let armed = self.timer.borrow().as_ref().map(|(t, _)| *t);
        if armed == at {
            return;
        }
        let old = self.timer.borrow_mut().take();
        drop(old);
        if let Some(at) = at {
            let delay = at.as_millis().saturating_sub(js::now().as_millis());
            let delay = u32::try_from(delay)
                .unwrap_or(u32::MAX)
                .min(i32::MAX as u32);
            let weak: Weak<Shared> = Rc::downgrade(self);
            let timeout = Timeout::new(delay, move || {
                if let Some(shared) = weak.upgrade() {
                    shared.on_timer();
                }
            });
            *self.timer.borrow_mut() = Some((at, timeout));
        }
    }

    // ---- Events -----------------------------------------------------------------------------

    fn event(self: &Rc<Self>, event: Event) {
        match event {
            Event::Status(status) => self.status_changed(status),
            Event::AskDone { id, result } => {
                if let Some(entry) = self.take_ask(id) {
                    match result {
                        Ok(msg) => entry.pending.resolve(&js::from_raw(&msg)),
                        Err(e) => entry.pending.reject(&js::ask_error(&e)),
                    }
                }
            }
            Event::Tell { topic, msg } => {
                let fns: Vec<Function> = (self.state.borrow().tells.iter())
                    .filter(|(t, _)| *t == topic)
                    .map(|(_, f)| f.clone())
                    .collect();
                if !fns.is_empty() {
                    let msg = js::from_raw(&msg);
                    let topic = JsValue::from_str(&topic);
                    for f in &fns {
                        js::call(f, &msg, Some(&topic));
                    }
                }
            }
            Event::Subscribed {
                channel, presence, ..
            } => self.subscribed(&channel, presence),
            Event::Resynced {
                channel,
                position,
                recovered,
                presence,
            } => {
                if let Some(sub) = self.sub(&channel) {
                    let recovery = if recovered {
                        Recovery::Recovered
                    } else {
                        Recovery::Unrecoverable
                    };
                    sub.resynced(recovery, presence, &position);
                }
            }
            Event::SubscribeFailed { channel, error } => {
                self.sub_ended(&channel, js::ask_error(&error));
            }
            Event::Publication {
                channel,
                topic,
                msg,
                position,
            } => self.publication(&channel, &topic, &msg, &position),
            Event::Join { channel, member } => self.member(&channel, true, &member),
            Event::Leave { channel, member } => self.member(&channel, false, &member),
            Event::Unsubscribed {
                channel,
                code,
                reason,
            } => self.sub_ended(&channel, js::error(&code, &reason)),
            Event::Closed {
                code,
                reason,
                error,
            } => self.closed(code, &reason, error.as_ref()),
        }
    }

    fn status_changed(self: &Rc<Self>, status: Status) {
        let (first, listeners) = {
            let mut state = self.state.borrow_mut();
            let first = match status {
                Status::Ready => state.first.take(),
                _ => None,
            };
            (first, state.status.clone())
        };
        // A first connection that fails closes the core (`fail_first_connect`): `closed`
        // rejects the promise.
        if let Some((first, shared)) = first {
            first.resolve(&Client::from_shared(shared));
        }
        // `closed` is announced with its code and reason by the `Closed` event that follows.
        if status == Status::Closed || listeners.is_empty() {
            return;
        }
        let name = JsValue::from_str(js::status_name(status));
        let info = status_info(status);
        for f in &listeners {
            js::call(f, &name, Some(&info));
        }
    }

    /// A subscription's first `subok`: the `subscribe` promise resolves.
    fn subscribed(self: &Rc<Self>, channel: &str, presence: bool) {
        let found = {
            let mut state = self.state.borrow_mut();
            (state.subs.iter_mut())
                .find(|e| e.sub.channel == channel)
                .and_then(|e| Some((e.sub.clone(), e.ready.take()?)))
        };
        if let Some((sub, ready)) = found {
            sub.accepted(Recovery::New, presence);
            let handle = Subscription::js_handle(sub, Rc::downgrade(self));
            ready.resolve(&handle);
        }
    }

    /// The subscription of `channel`, if any.
    fn sub(&self, channel: &str) -> Option<Rc<SubState>> {
        (self.state.borrow().subs.iter())
            .find(|e| e.sub.channel == channel)
            .map(|e| e.sub.clone())
    }

    fn publication(&self, channel: &str, topic: &str, msg: &RawValue, position: &Position) {
        if let Some(sub) = self.sub(channel) {
            sub.publish(topic, msg, position);
        }
    }

    fn member(&self, channel: &str, joined: bool, member: &RawValue) {
        if let Some(sub) = self.sub(channel) {
            sub.member(joined, member);
        }
    }

    /// The server refused or ended a subscription: it is gone.
    fn sub_ended(&self, channel: &str, error: JsValue) {
        let entry = {
            let mut state = self.state.borrow_mut();
            let found = state.subs.iter().position(|e| e.sub.channel == channel);
            found.map(|i| state.subs.swap_remove(i))
        };
        if let Some(entry) = entry {
            match entry.ready {
                Some(ready) => ready.reject(&error),
                None => entry.sub.end(Some(error)),
            }
        }
    }

    /// Closed for good; `error`: the server's `error` frame that caused it (a refused `hello`).
    fn closed(&self, code: u16, reason: &str, error: Option<&AskError>) {
        // Subscriptions have ended already: the core ends them before it closes.
        let (first, listeners) = {
            let mut state = self.state.borrow_mut();
            (state.first.take(), state.status.clone())
        };
        let info: JsValue = Object::new().into();
        set(&info, "code", &JsValue::from(code));
        set(&info, "reason", &JsValue::from_str(reason));
        if let Some(e) = error {
            set(&info, "error", &js::ask_error(e));
        }
        self.state.borrow_mut().closed_info = Some(info.clone());
        let name = JsValue::from_str("closed");
        for f in &listeners {
            js::call(f, &name, Some(&info));
        }
        if let Some((first, _shared)) = first {
            first.reject(&connect_error(code, reason, error));
        }
    }
}

/// The info of a status other than `closed`: the attempt of `reconnecting`.
fn status_info(status: Status) -> JsValue {
    let info: JsValue = Object::new().into();
    if let Status::Reconnecting { attempt } = status {
        set(&info, "attempt", &JsValue::from(attempt));
    }
    info
}

/// `Client.connect` failed, with the WebSocket close code: the server's error when it refused
/// (`unauthorized`, ...), else code `closed` (the client gave up).
fn connect_error(code: u16, reason: &str, server: Option<&AskError>) -> JsValue {
    let error = match server {
        Some(e) => js::ask_error(e),
        None => js::error(
            codes::CLOSED,
            &format!("could not connect ({code}): {reason}"),
        ),
    };
    set(&error, "closeCode", &JsValue::from(code));
    error
}
