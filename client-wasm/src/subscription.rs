//! A channel subscription, usable with `sub.on(topic, fn)` and `for await (const m of sub)`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use js_sys::{Function, Object, Promise, Reflect, Symbol};
use serde_json::value::RawValue;
use sss_core::client::{ClientError, Recovery};
use sss_core::protocol::codes;
use sss_core::Position;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::driver::{Pending, Shared};
use crate::js::{self, set};

#[wasm_bindgen(
    inline_js = "export function self_iterator() { return function () { return this; }; }"
)]
extern "C" {
    /// A JS function that returns `this`: `Subscription.prototype[Symbol.asyncIterator]`.
    fn self_iterator() -> Function;
}

/// How a subscription's stream ended: `None` while it is live.
type Ended = Option<Option<JsValue>>;

/// Whether the error a subscription ended with makes its async iterator throw. The client's
/// close (code `closed`, however it closed) ends a `for await` loop normally: the application
/// is shutting it down, and `onEnd` still says why.
fn fails_iterator(error: &JsValue) -> bool {
    js::code(error).as_deref() != Some(codes::CLOSED)
}

struct Inner {
    /// `on()` callbacks, with their topic (`None`: every topic).
    listeners: Vec<(Option<String>, Function)>,
    recovery_listeners: Vec<Function>,
    end_listeners: Vec<Function>,
    /// `onJoin()` (`true`) and `onLeave()` (`false`) callbacks, with the id their remover
    /// function removes them by (so that calling a remover twice removes nothing more).
    member_listeners: Vec<(u32, bool, Function)>,
    next_listener: u32,
    /// Publications not yet taken by the async iterator.
    queue: VecDeque<JsValue>,
    /// Whether publications are kept for the async iterator: from the start, until `on()` is
    /// called before any iteration (an app that only uses callbacks buffers nothing), and again
    /// once `next()` is called.
    buffering: bool,
    iterating: bool,
    /// `next()` calls waiting for a publication.
    waiters: VecDeque<Pending>,
    ended: Ended,
    recovery: Recovery,
    /// Whether the server's last `subok` granted presence.
    presence: bool,
}

/// The state of one subscription, shared by the driver and the JS `Subscription` handle.
pub(crate) struct SubState {
    pub(crate) channel: String,
    inner: RefCell<Inner>,
}

impl SubState {
    pub(crate) fn new(channel: String) -> Self {
        Self {
            channel,
            inner: RefCell::new(Inner {
                listeners: Vec::new(),
                recovery_listeners: Vec::new(),
                end_listeners: Vec::new(),
                member_listeners: Vec::new(),
                next_listener: 0,
                queue: VecDeque::new(),
                buffering: true,
                iterating: false,
                waiters: VecDeque::new(),
                ended: None,
                recovery: Recovery::New,
                presence: false,
            }),
        }
    }

    /// The server accepted the subscription (first `subok`).
    pub(crate) fn accepted(&self, recovery: Recovery, presence: bool) {
        let mut inner = self.inner.borrow_mut();
        inner.recovery = recovery;
        inner.presence = presence;
    }

    /// A join (`joined`) or leave on the channel: to the `onJoin` / `onLeave` callbacks, with
    /// the member parsed by `JSON.parse` (only when someone listens).
    pub(crate) fn member(&self, joined: bool, member: &RawValue) {
        let listeners: Vec<Function> = (self.inner.borrow().member_listeners.iter())
            .filter(|(_, j, _)| *j == joined)
            .map(|(_, _, f)| f.clone())
            .collect();
        if listeners.is_empty() {
            return;
        }
        let member = js::from_raw(member);
        for f in &listeners {
            js::call(f, &member, None);
        }
    }

    /// Adds an `onJoin` / `onLeave` callback; returns the JS function that removes it.
    fn add_member_listener(self: &Rc<Self>, joined: bool, f: Function) -> JsValue {
        let id = {
            let mut inner = self.inner.borrow_mut();
            let id = inner.next_listener;
            inner.next_listener = id.wrapping_add(1);
            if inner.ended.is_none() {
                inner.member_listeners.push((id, joined, f));
            }
            id
        };
        let state = Rc::downgrade(self);
        js::disposer(move || {
            if let Some(state) = state.upgrade() {
                (state.inner.borrow_mut().member_listeners).retain(|(i, ..)| *i != id);
            }
        })
    }

    /// Removes the `on()` callback `f` of `topic` (`None`: of every topic).
    fn remove_listener(&self, topic: &Option<String>, f: &Function) {
        (self.inner.borrow_mut().listeners).retain(|(t, g)| !(t == topic && g == f));
    }

    /// One publication: to the matching `on()` callbacks, then to the async iterator.
    pub(crate) fn publish(&self, topic: &str, msg: &RawValue, pos: &Position) {
        let (listeners, iterator) = {
            let inner = self.inner.borrow();
            if inner.ended.is_some() {
                return;
            }
            let listeners: Vec<Function> = (inner.listeners.iter())
                .filter(|(t, _)| t.as_deref().is_none_or(|t| t == topic))
                .map(|(_, f)| f.clone())
                .collect();
            (listeners, inner.buffering || !inner.waiters.is_empty())
        };
        if listeners.is_empty() && !iterator {
            return;
        }
        let msg = js::from_raw(msg);
        let position = js::position(pos);
        let topic = JsValue::from_str(topic);
        let channel = JsValue::from_str(&self.channel);
        if !listeners.is_empty() {
            let meta: JsValue = Object::new().into();
            set(&meta, "topic", &topic);
            set(&meta, "channel", &channel);
            set(&meta, "position", &position);
            for f in &listeners {
                js::call(f, &msg, Some(&meta));
            }
        }
        if iterator {
            let publication: JsValue = Object::new().into();
            set(&publication, "channel", &channel);
            set(&publication, "topic", &topic);
            set(&publication, "msg", &msg);
            set(&publication, "position", &position);
            let waiter = {
                let mut inner = self.inner.borrow_mut();
                let waiter = inner.waiters.pop_front();
                if waiter.is_none() && inner.buffering {
                    inner.queue.push_back(publication.clone());
                }
                waiter
            };
            if let Some(waiter) = waiter {
                waiter.resolve(&iter_result(&publication, false));
            }
        }
    }

    /// The channel was resynced (after a reconnect or a gap): tell the `onRecovery` callbacks.
    pub(crate) fn resynced(&self, recovery: Recovery, presence: bool, position: &Position) {
        let listeners = {
            let mut inner = self.inner.borrow_mut();
            inner.recovery = recovery;
            inner.presence = presence;
            inner.recovery_listeners.clone()
        };
        let name = JsValue::from_str(js::recovery_name(recovery));
        let position = js::position(position);
        for f in &listeners {
            js::call(f, &name, Some(&position));
        }
    }

    /// The subscription is over: with `error` when the server or the client's close ended it,
    /// without when the application unsubscribed. Buffered publications can still be iterated.
    pub(crate) fn end(&self, error: Option<JsValue>) {
        let (waiters, listeners) = {
            let mut inner = self.inner.borrow_mut();
            if inner.ended.is_some() {
                return;
            }
            inner.ended = Some(error.clone());
            (
                std::mem::take(&mut inner.waiters),
                std::mem::take(&mut inner.end_listeners),
            )
        };
        for waiter in waiters {
            match &error {
                Some(e) if fails_iterator(e) => waiter.reject(e),
                _ => waiter.resolve(&iter_result(&JsValue::UNDEFINED, true)),
            }
        }
        let arg = error.unwrap_or(JsValue::UNDEFINED);
        for f in &listeners {
            js::call(f, &arg, None);
        }
        let mut inner = self.inner.borrow_mut();
        inner.listeners.clear();
        inner.member_listeners.clear();
    }

    fn next(&self) -> Promise {
        let ready = {
            let mut inner = self.inner.borrow_mut();
            inner.iterating = true;
            inner.buffering = true;
            match inner.queue.pop_front() {
                Some(p) => Some(Ok(iter_result(&p, false))),
                None => match &inner.ended {
                    Some(Some(e)) if fails_iterator(e) => Some(Err(e.clone())),
                    Some(_) => Some(Ok(iter_result(&JsValue::UNDEFINED, true))),
                    None => None,
                },
            }
        };
        match ready {
            Some(Ok(result)) => Promise::resolve(&result),
            Some(Err(e)) => Promise::reject(&e),
            None => {
                let (promise, pending) = Pending::new();
                self.inner.borrow_mut().waiters.push_back(pending);
                promise
            }
        }
    }

    fn stop_iterating(&self) {
        let waiters = {
            let mut inner = self.inner.borrow_mut();
            inner.iterating = false;
            inner.buffering = false;
            inner.queue.clear();
            std::mem::take(&mut inner.waiters)
        };
        for waiter in waiters {
            waiter.resolve(&iter_result(&JsValue::UNDEFINED, true));
        }
    }
}

/// `{ value, done }`.
fn iter_result(value: &JsValue, done: bool) -> JsValue {
    let result: JsValue = Object::new().into();
    set(&result, "value", value);
    set(&result, "done", &JsValue::from_bool(done));
    result
}

/// A live subscription to a channel (see the TypeScript declarations for the JS API).
///
/// Publications arrive in order, each once, across reconnects: read them with `on()` callbacks
/// or as an async iterator. It lasts until [`Subscription::unsubscribe`], the server ends it, or
/// the client closes; dropping (freeing) the handle does not unsubscribe.
#[wasm_bindgen(skip_typescript)]
pub struct Subscription {
    state: Rc<SubState>,
    client: Weak<Shared>,
}

impl Subscription {
    /// The JS object of a new subscription handle (an async iterable).
    pub(crate) fn js_handle(state: Rc<SubState>, client: Weak<Shared>) -> JsValue {
        let handle = JsValue::from(Subscription { state, client });
        let proto = Object::get_prototype_of(&handle);
        let key = Symbol::async_iterator();
        if !Reflect::has(&proto, &key).unwrap_or(true) {
            let _ = Reflect::set(&proto, &key, &self_iterator());
        }
        handle
    }
}

#[wasm_bindgen]
impl Subscription {
    /// The channel.
    #[wasm_bindgen(getter, skip_typescript)]
    pub fn channel(&self) -> String {
        self.state.channel.clone()
    }

    /// How the subscription last (re)started: `"new"`, `"recovered"` or `"unrecoverable"`.
    #[wasm_bindgen(getter, skip_typescript)]
    pub fn recovery(&self) -> String {
        js::recovery_name(self.state.inner.borrow().recovery).to_owned()
    }

    /// The last position seen on the channel (`{ epoch, seq }`), while subscribed.
    #[wasm_bindgen(getter, skip_typescript)]
    pub fn position(&self) -> JsValue {
        let pos = (self.client.upgrade()).and_then(|c| c.position(&self.state.channel));
        pos.map_or(JsValue::UNDEFINED, |p| js::position(&p))
    }

    /// `on(fn)` or `on(topic, fn)`: calls `fn(msg, { topic, channel, position })` for every
    /// publication (of `topic`); returns a function that removes it. Registering a callback before iterating turns the async
    /// iterator's buffer off (an app that only uses callbacks keeps nothing in memory).
    #[wasm_bindgen(skip_typescript)]
    pub fn on(&self, topic_or_fn: JsValue, f: JsValue) -> Result<JsValue, JsValue> {
        let (topic, f) = listener(topic_or_fn, f)?;
        let mut inner = self.state.inner.borrow_mut();
        if !inner.iterating {
            inner.buffering = false;
            inner.queue.clear();
        }
        inner.listeners.push((topic.clone(), f.clone()));
        let state = Rc::downgrade(&self.state);
        Ok(js::disposer(move || {
            if let Some(state) = state.upgrade() {
                state.remove_listener(&topic, &f);
            }
        }))
    }

    /// Removes a callback added with `on()` (the same arguments).
    #[wasm_bindgen(skip_typescript)]
    pub fn off(&self, topic_or_fn: JsValue, f: JsValue) -> Result<(), JsValue> {
        let (topic, f) = listener(topic_or_fn, f)?;
        self.state.remove_listener(&topic, &f);
        Ok(())
    }

    /// Calls `fn(recovery, position)` after every resync: `"recovered"` (nothing was lost; the
    /// missed publications are delivered, in order) or `"unrecoverable"` (the history no longer
    /// reaches back: publications were lost, reload the state this channel feeds). Returns a
    /// function that removes `fn`.
    #[wasm_bindgen(js_name = onRecovery, skip_typescript)]
    pub fn on_recovery(&self, f: Function) -> JsValue {
        self.state
            .inner
            .borrow_mut()
            .recovery_listeners
            .push(f.clone());
        let state = Rc::downgrade(&self.state);
        js::disposer(move || {
            if let Some(state) = state.upgrade() {
                state
                    .inner
                    .borrow_mut()
                    .recovery_listeners
                    .retain(|g| g != &f);
            }
        })
    }

    /// Whether the subscription has presence (the server's last `subok` said so).
    #[wasm_bindgen(getter, js_name = hasPresence, skip_typescript)]
    pub fn has_presence(&self) -> bool {
        self.state.inner.borrow().presence
    }

    /// A promise of the channel's members (an array of `{ socket, user?, session?, info? }`),
    /// rejected like an ask (`no_presence`, `not_subscribed`, `timeout`, `disconnected`, ...).
    /// Sent once the subscription is live (after a resync, if one is under way).
    #[wasm_bindgen(skip_typescript)]
    pub fn presence(&self) -> Promise {
        self.presence_request(false)
    }

    /// A promise of the channel's presence counts `{ sockets, users }`; like `presence()`.
    #[wasm_bindgen(js_name = presenceStats, skip_typescript)]
    pub fn presence_stats(&self) -> Promise {
        self.presence_request(true)
    }

    /// Calls `fn(member)` when another socket joins the channel (subscriptions made with
    /// `{ presence: true }` only); returns a function that removes the callback.
    #[wasm_bindgen(js_name = onJoin, skip_typescript)]
    pub fn on_join(&self, f: Function) -> JsValue {
        self.state.add_member_listener(true, f)
    }

    /// Calls `fn(member)` when another socket leaves the channel; returns a function that
    /// removes the callback.
    #[wasm_bindgen(js_name = onLeave, skip_typescript)]
    pub fn on_leave(&self, f: Function) -> JsValue {
        self.state.add_member_listener(false, f)
    }

    /// Calls `fn(error)` when the subscription ends: `error` is an `SssError` when the server
    /// ended it (code `booted`, `refused` on resubscription) or the client closed (code
    /// `closed`, by the application or for good), and `undefined` when the application
    /// unsubscribed. Returns a function that removes `fn`.
    #[wasm_bindgen(js_name = onEnd, skip_typescript)]
    pub fn on_end(&self, f: Function) -> JsValue {
        let ended = self.state.inner.borrow().ended.clone();
        match ended {
            Some(error) => js::call(&f, &error.unwrap_or(JsValue::UNDEFINED), None),
            None => self.state.inner.borrow_mut().end_listeners.push(f.clone()),
        }
        let state = Rc::downgrade(&self.state);
        js::disposer(move || {
            if let Some(state) = state.upgrade() {
                state.inner.borrow_mut().end_listeners.retain(|g| g != &f);
            }
        })
    }

    /// The async iterator protocol: the next publication `{ value, done }`.
    #[wasm_bindgen(skip_typescript)]
    pub fn next(&self) -> Promise {
        self.state.next()
    }

    /// The async iterator protocol (`break` in `for await`): stops iterating and drops the
    /// buffer; the subscription itself goes on (see `unsubscribe`).
    #[wasm_bindgen(js_name = "return", skip_typescript)]
    pub fn return_(&self) -> Promise {
        self.state.stop_iterating();
        Promise::resolve(&iter_result(&JsValue::UNDEFINED, true))
    }

    /// Leaves the channel: no publication follows, the async iterator ends.
    #[wasm_bindgen(skip_typescript)]
    pub fn unsubscribe(&self) {
        if let Some(client) = self.client.upgrade() {
            client.unsubscribe(&self.state);
        }
        self.state.end(None);
    }
}

impl Subscription {
    fn presence_request(&self, stats: bool) -> Promise {
        match self.client.upgrade() {
            Some(client) => client.presence(&self.state, stats),
            None => Promise::reject(&js::client_error(&ClientError::Closed)),
        }
    }
}

fn listener(topic_or_fn: JsValue, f: JsValue) -> Result<(Option<String>, Function), JsValue> {
    if topic_or_fn.is_function() {
        return Ok((None, topic_or_fn.unchecked_into()));
    }
    let topic = topic_or_fn
        .as_string()
        .ok_or_else(|| js::error(codes::INVALID, "expected a topic or a function"))?;
    let f = f
        .dyn_into::<Function>()
        .map_err(|_| js::error(codes::INVALID, "expected a function"))?;
    Ok((Some(topic), f))
}
