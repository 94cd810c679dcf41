//! The browser client in headless Chromium against a real server: `scripts/test-browser.sh`
//! starts `browser-test-server` and passes its URL at compile time in `SSS_TEST_URL`.
//!
//! The tests go through the same exported API a JS application uses (promises, JS objects,
//! callbacks), from Rust.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Array, Function, Promise, Reflect, JSON};
use sss_wasm::{Client, Subscription};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::convert::TryFromJsValue;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// The test server's WebSocket URL.
fn url() -> String {
    let http = option_env!("SSS_TEST_URL")
        .expect("SSS_TEST_URL is not set: run the browser tests with scripts/test-browser.sh");
    format!("{}/ws", http.replacen("http://", "ws://", 1))
}

fn json(text: &str) -> JsValue {
    JSON::parse(text).expect("valid JSON")
}

fn to_json(v: &JsValue) -> String {
    JSON::stringify(v)
        .ok()
        .and_then(|s| JsValue::from(s).as_string())
        .unwrap_or_default()
}

fn get(v: &JsValue, key: &str) -> JsValue {
    Reflect::get(v, &JsValue::from_str(key)).expect("object")
}

fn code(err: &JsValue) -> String {
    get(err, "code").as_string().unwrap_or_default()
}

/// A promise that rejects after `ms`.
fn deadline(ms: i32, what: &str) -> Promise {
    let what = what.to_owned();
    Promise::new(&mut |_resolve, reject| {
        let what = what.clone();
        let cb = Closure::once_into_js(move || {
            let _ = reject.call1(
                &JsValue::UNDEFINED,
                &JsValue::from_str(&format!("timed out: {what}")),
            );
        });
        let global = js_sys::global();
        let set_timeout: Function = get(&global, "setTimeout").unchecked_into();
        let _ = set_timeout.call2(&JsValue::UNDEFINED, &cb, &JsValue::from(ms));
    })
}

/// Awaits `p`, failing the test if it takes longer than 10 s.
async fn within(p: Promise, what: &str) -> Result<JsValue, JsValue> {
    let race = Promise::race(&Array::of2(&p, &deadline(10_000, what)));
    let result = JsFuture::from(race).await;
    if let Err(e) = &result {
        if e.as_string().is_some_and(|s| s.starts_with("timed out")) {
            panic!("{}", e.as_string().unwrap_or_default());
        }
    }
    result
}

async fn connect_with(options: &str) -> Client {
    let v = within(
        Client::connect(JsValue::from_str(&url()), json(options)),
        "connect",
    )
    .await
    .expect("connects");
    Client::try_from_js_value(v).expect("a Client")
}

async fn connect() -> Client {
    connect_with(r#"{"reconnect": {"baseMs": 50, "maxMs": 300}}"#).await
}

async fn subscribe(client: &Client, channel: &str) -> Subscription {
    let v = within(
        client.subscribe(channel, JsValue::UNDEFINED, JsValue::UNDEFINED),
        "subscribe",
    )
    .await
    .expect("subscribed");
    Subscription::try_from_js_value(v).expect("a Subscription")
}

/// The next publication of the async iterator, as `(seq, topic, msg as JSON)`.
async fn next(sub: &Subscription) -> (u64, String, String) {
    let result = within(sub.next(), "publication").await.expect("next");
    assert_eq!(get(&result, "done"), JsValue::FALSE, "the iterator ended");
    let value = get(&result, "value");
    let seq = get(&get(&value, "position"), "seq").as_f64().expect("seq") as u64;
    let topic = get(&value, "topic").as_string().expect("topic");
    (seq, topic, to_json(&get(&value, "msg")))
}

/// A JS callback that records its first argument, and a promise of the first call.
fn recorder() -> (Function, Rc<RefCell<Vec<JsValue>>>, Promise) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let mut first: Option<Function> = None;
    let promise = Promise::new(&mut |resolve, _| first = Some(resolve));
    let first = RefCell::new(first);
    let s = seen.clone();
    let f = Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| {
        s.borrow_mut().push(v.clone());
        if let Some(resolve) = first.borrow_mut().take() {
            let _ = resolve.call1(&JsValue::UNDEFINED, &v);
        }
    });
    (f.into_js_value().unchecked_into(), seen, promise)
}

#[wasm_bindgen_test]
async fn connects_and_asks() {
    let client = connect().await;
    assert_eq!(client.status(), "ready");
    assert!(client.socket_id().is_some());
    let answer = within(
        client.ask("echo", json(r#"{"a":[1,"two",null]}"#), JsValue::UNDEFINED),
        "echo",
    )
    .await
    .expect("echo answers");
    assert_eq!(to_json(&answer), r#"{"a":[1,"two",null]}"#);
    let sum = within(client.ask("add", json("[2, 3]"), JsValue::UNDEFINED), "add")
        .await
        .expect("add answers");
    assert_eq!(sum.as_f64(), Some(5.0));
}

#[wasm_bindgen_test]
async fn ask_errors_have_codes() {
    let client = connect().await;
    let err = within(
        client.ask("fail", JsValue::NULL, JsValue::UNDEFINED),
        "fail",
    )
    .await
    .expect_err("fail is refused");
    assert!(err.is_instance_of::<js_sys::Error>());
    assert_eq!(code(&err), "app_error");
    assert_eq!(
        get(&err, "reason").as_string().as_deref(),
        Some("this ask always fails")
    );
    let err = within(
        client.ask("no-such-topic", JsValue::NULL, JsValue::UNDEFINED),
        "unknown",
    )
    .await
    .expect_err("unknown topic");
    assert_eq!(code(&err), "unknown_topic");
}

#[wasm_bindgen_test]
async fn ask_times_out() {
    let client = connect_with(r#"{"askTimeoutMs": 300}"#).await;
    let err = within(
        client.ask("never", JsValue::NULL, JsValue::UNDEFINED),
        "never",
    )
    .await
    .expect_err("times out");
    assert_eq!(code(&err), "timeout");
    // The connection is still usable.
    let v = within(client.ask("echo", json("1"), JsValue::UNDEFINED), "echo")
        .await
        .expect("echo");
    assert_eq!(v.as_f64(), Some(1.0));
}

#[wasm_bindgen_test]
async fn tells_both_ways() {
    let client = connect().await;
    let (f, _seen, first) = recorder();
    client.on_tell("pong".to_owned(), f);
    client.tell("ping", json(r#"{"x":42}"#)).expect("tell");
    let msg = within(first, "pong").await.expect("pong");
    assert_eq!(to_json(&msg), r#"{"x":42}"#);
}

#[wasm_bindgen_test]
async fn subscribes_and_receives_publications_in_order() {
    let client = connect().await;
    let sub = subscribe(&client, "room:pubs").await;
    assert_eq!(sub.channel(), "room:pubs");
    assert_eq!(sub.recovery(), "new");
    let last = within(
        client.ask(
            "publish",
            json(r#"{"channel":"room:pubs","count":5}"#),
            JsValue::UNDEFINED,
        ),
        "publish",
    )
    .await
    .expect("published");
    assert_eq!(last.as_f64(), Some(5.0));
    for n in 1..=5u64 {
        assert_eq!(next(&sub).await, (n, "n".to_owned(), n.to_string()));
    }
    // After unsubscribing the iterator ends.
    sub.unsubscribe();
    let done = within(sub.next(), "done").await.expect("next");
    assert_eq!(get(&done, "done"), JsValue::TRUE);
}

#[wasm_bindgen_test]
async fn refused_subscriptions_reject() {
    let client = connect().await;
    let err = within(
        client.subscribe("private:x", JsValue::UNDEFINED, JsValue::UNDEFINED),
        "private",
    )
    .await
    .expect_err("refused");
    assert_eq!(code(&err), "refused");
    let err = within(
        client.subscribe("room:q", json(r#"{"deny":true}"#), JsValue::UNDEFINED),
        "deny",
    )
    .await
    .expect_err("refused by query");
    assert_eq!(code(&err), "refused");
    // The same channel is accepted without the query.
    let sub = subscribe(&client, "room:q").await;
    assert_eq!(sub.channel(), "room:q");
}

#[wasm_bindgen_test]
async fn restart_reconnects_and_recovers_in_order() {
    let client = connect().await;
    let (on_status, statuses, _) = recorder();
    client.on_status(on_status);
    let sub = subscribe(&client, "room:restart").await;
    let (on_recovery, _, recovered) = recorder();
    sub.on_recovery(on_recovery);
    within(
        client.ask(
            "publish",
            json(r#"{"channel":"room:restart","count":3}"#),
            JsValue::UNDEFINED,
        ),
        "publish",
    )
    .await
    .expect("published");
    for n in 1..=3u64 {
        assert_eq!(next(&sub).await, (n, "n".to_owned(), n.to_string()));
    }
    // The server goes down; 5 publications happen while it is down; it comes back.
    within(
        client.ask(
            "restart",
            json(r#"{"channel":"room:restart","count":5,"downMs":200}"#),
            JsValue::UNDEFINED,
        ),
        "restart",
    )
    .await
    .expect("restart answered");
    for n in 1..=5u64 {
        assert_eq!(next(&sub).await, (3 + n, "down".to_owned(), n.to_string()));
    }
    let recovery = within(recovered, "recovery").await.expect("recovery");
    assert_eq!(recovery.as_string().as_deref(), Some("recovered"));
    assert_eq!(sub.recovery(), "recovered");
    // Live again, with no gap and no duplicate.
    within(
        client.ask(
            "publish",
            json(r#"{"channel":"room:restart","count":2}"#),
            JsValue::UNDEFINED,
        ),
        "publish after",
    )
    .await
    .expect("published");
    assert_eq!(next(&sub).await, (9, "n".to_owned(), "1".to_owned()));
    assert_eq!(next(&sub).await, (10, "n".to_owned(), "2".to_owned()));
    let seen: Vec<String> = statuses
        .borrow()
        .iter()
        .filter_map(|s| s.as_string())
        .collect();
    assert!(seen.iter().any(|s| s == "reconnecting"), "{seen:?}");
    assert_eq!(client.status(), "ready", "{seen:?}");
    let pos = sub.position();
    assert_eq!(get(&pos, "seq").as_f64(), Some(10.0));
}

/// The session parser's refusal reaches the page: its code and reason, close code 4010.
#[wasm_bindgen_test]
async fn refused_hello_is_the_servers_code() {
    let url = format!("{}?deny=1", url());
    let err = within(
        Client::connect(JsValue::from_str(&url), JsValue::UNDEFINED),
        "refused connect",
    )
    .await
    .expect_err("refused");
    assert_eq!(code(&err), "unauthorized");
    assert_eq!(
        get(&err, "reason").as_string().as_deref(),
        Some("denied by the test server")
    );
    assert_eq!(get(&err, "closeCode").as_f64(), Some(4010.0));
}

/// A token in the `auth` option logs in as its user.
#[wasm_bindgen_test]
async fn auth_option_logs_in() {
    let options = json(r#"{"auth":"tok-wasm"}"#);
    let v = within(
        Client::connect(JsValue::from_str(&url()), options),
        "connect",
    )
    .await
    .expect("a good token connects");
    let client = Client::try_from_js_value(v).expect("a Client");
    assert_eq!(client.user().as_deref(), Some("wasm"));
    client.close();
}

#[wasm_bindgen_test]
async fn close_fails_pending_asks() {
    let client = connect().await;
    let pending = client.ask("never", JsValue::NULL, JsValue::UNDEFINED);
    client.close();
    let err = within(pending, "closed ask").await.expect_err("closed");
    assert_eq!(code(&err), "closed");
    assert_eq!(client.status(), "closed");
    let err = client.tell("ping", JsValue::NULL).expect_err("closed");
    assert_eq!(code(&err), "closed");
}

#[wasm_bindgen_test]
async fn session_parser_sees_the_query() {
    let url = format!("{}?user=alice", url());
    let v = within(
        Client::connect(JsValue::from_str(&url), JsValue::UNDEFINED),
        "connect",
    )
    .await
    .expect("connects");
    let client = Client::try_from_js_value(v).expect("a Client");
    assert_eq!(client.user().as_deref(), Some("alice"));
}

// ---- Presence (the test server grants it to `room:` channels) -----------------------------------

/// A client of user `user`, whose presence info is `{"name": user}`.
async fn connect_as(user: &str) -> Client {
    let url = format!("{}?user={user}&name={user}", url());
    let v = within(
        Client::connect(
            JsValue::from_str(&url),
            json(r#"{"reconnect": {"baseMs": 50, "maxMs": 300}}"#),
        ),
        "connect",
    )
    .await
    .expect("connects");
    Client::try_from_js_value(v).expect("a Client")
}

/// Subscribes to `channel`, with `{ presence: events }`.
async fn subscribe_presence(client: &Client, channel: &str, events: bool) -> Subscription {
    let options = json(&format!(r#"{{"presence": {events}}}"#));
    let v = within(
        client.subscribe(channel, JsValue::UNDEFINED, options),
        "subscribe",
    )
    .await
    .expect("subscribed");
    Subscription::try_from_js_value(v).expect("a Subscription")
}

/// A member's `(socket, user)`.
fn member(m: &JsValue) -> (String, String) {
    (
        get(m, "socket").as_string().expect("socket"),
        get(m, "user").as_string().unwrap_or_default(),
    )
}

/// The members `sub.presence()` answers, as sorted `(socket, user)`.
async fn members(sub: &Subscription) -> Vec<(String, String)> {
    let list = within(sub.presence(), "presence").await.expect("members");
    let mut members: Vec<_> = Array::from(&list).iter().map(|m| member(&m)).collect();
    members.sort();
    members
}

/// A recorder whose promise resolves at its `n`-th call.
fn counter(n: usize) -> (Function, Rc<RefCell<Vec<JsValue>>>, Promise) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let mut done: Option<Function> = None;
    let promise = Promise::new(&mut |resolve, _| done = Some(resolve));
    let done = RefCell::new(done);
    let s = seen.clone();
    let f = Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| {
        s.borrow_mut().push(v.clone());
        if s.borrow().len() == n {
            if let Some(resolve) = done.borrow_mut().take() {
                let _ = resolve.call1(&JsValue::UNDEFINED, &v);
            }
        }
    });
    (f.into_js_value().unchecked_into(), seen, promise)
}

/// Publishes one message on `channel` and waits for it on `sub`: what a socket was sent before
/// it has been handled by then.
async fn barrier(client: &Client, sub: &Subscription, channel: &str) {
    let req = format!(r#"{{"channel":"{channel}","count":1,"topic":"barrier"}}"#);
    within(
        client.ask("publish", json(&req), JsValue::UNDEFINED),
        "publish",
    )
    .await
    .expect("published");
    let (_, topic, _) = next(sub).await;
    assert_eq!(topic, "barrier");
}

#[wasm_bindgen_test]
async fn presence_members_stats_and_events() {
    const ROOM: &str = "room:wasm-presence";
    let ann = connect_as("ann").await;
    let watching = subscribe_presence(&ann, ROOM, true).await;
    assert!(watching.has_presence());
    let (on_join, joins, two_joined) = counter(2);
    let remove_join = watching.on_join(on_join);
    let (on_leave, leaves, two_left) = counter(2);
    let _keep = watching.on_leave(on_leave);

    // Two tabs of bob: two joins, one user more.
    let tab1 = connect_as("bob").await;
    let sub1 = subscribe_presence(&tab1, ROOM, false).await;
    let (quiet_join, quiet_joins, _) = counter(1);
    let _ = sub1.on_join(quiet_join);
    let tab2 = connect_as("bob").await;
    let sub2 = subscribe_presence(&tab2, ROOM, false).await;
    within(two_joined, "two joins").await.expect("joined");
    let tab_sockets = [
        tab1.socket_id().expect("socket"),
        tab2.socket_id().expect("socket"),
    ];
    let joined: Vec<_> = joins.borrow().iter().map(member).collect();
    for m in joins.borrow().iter() {
        assert_eq!(to_json(&get(m, "info")), r#"{"name":"bob"}"#);
    }
    assert_eq!(
        joined,
        tab_sockets
            .iter()
            .map(|s| (s.clone(), "bob".to_owned()))
            .collect::<Vec<_>>()
    );
    let ann_socket = ann.socket_id().expect("socket");
    let mut expected = vec![
        (ann_socket.clone(), "ann".to_owned()),
        (tab_sockets[0].clone(), "bob".to_owned()),
        (tab_sockets[1].clone(), "bob".to_owned()),
    ];
    expected.sort();
    assert_eq!(members(&watching).await, expected);
    assert_eq!(members(&sub2).await, expected, "bob's tab asks too");
    let stats = within(watching.presence_stats(), "stats")
        .await
        .expect("stats");
    assert_eq!(to_json(&stats), r#"{"sockets":3,"users":2}"#);

    // A subscription that did not ask for events gets none.
    barrier(&tab1, &sub1, ROOM).await;
    assert!(quiet_joins.borrow().is_empty());

    // A removed callback is not called again (the remover is idempotent).
    let remove_join: Function = remove_join.unchecked_into();
    let _ = remove_join.call0(&JsValue::UNDEFINED);
    let _ = remove_join.call0(&JsValue::UNDEFINED);
    let (on_join_again, _, third_joined) = counter(1);
    let _ = watching.on_join(on_join_again);
    let tab3 = connect_as("carol").await;
    let _sub3 = subscribe_presence(&tab3, ROOM, false).await;
    within(third_joined, "third join").await.expect("joined");
    assert_eq!(joins.borrow().len(), 2);

    // One tab unsubscribes, the other closes: two leaves, with the sockets that joined.
    sub1.unsubscribe();
    tab2.close();
    within(two_left, "two leaves").await.expect("left");
    let mut left: Vec<_> = leaves.borrow().iter().map(|m| member(m).0).collect();
    left.sort();
    let mut tabs = tab_sockets.to_vec();
    tabs.sort();
    assert_eq!(left, tabs);
    // Never this socket's own join or leave.
    assert!(joins.borrow().iter().all(|m| member(m).0 != ann_socket));
    drop(sub2);
}

#[wasm_bindgen_test]
async fn presence_refusals_have_codes() {
    let client = connect_as("ann").await;
    let plain = subscribe_presence(&client, "plain:wasm", true).await;
    assert!(!plain.has_presence());
    let err = within(plain.presence(), "presence")
        .await
        .expect_err("no presence");
    assert_eq!(code(&err), "no_presence");
    let err = within(plain.presence_stats(), "stats")
        .await
        .expect_err("no presence");
    assert_eq!(code(&err), "no_presence");
    let room = subscribe_presence(&client, "room:wasm-ended", false).await;
    room.unsubscribe();
    let err = within(room.presence(), "presence")
        .await
        .expect_err("ended");
    assert_eq!(code(&err), "not_subscribed");
    let err = within(
        client.subscribe("room:x", JsValue::UNDEFINED, json(r#"{"presence": 1}"#)),
        "bad option",
    )
    .await
    .expect_err("invalid option");
    assert_eq!(code(&err), "invalid");
}

#[wasm_bindgen_test]
async fn a_reconnect_replays_no_presence_and_the_app_asks_again() {
    const ROOM: &str = "room:wasm-presence-restart";
    let client = connect_as("ann").await;
    let sub = subscribe_presence(&client, ROOM, true).await;
    let (on_join, joins, _) = counter(1);
    let _ = sub.on_join(on_join);
    let (on_leave, leaves, _) = counter(1);
    let _ = sub.on_leave(on_leave);
    let (on_recovery, _, recovered) = recorder();
    sub.on_recovery(on_recovery);
    let before = client.socket_id().expect("socket");
    assert_eq!(members(&sub).await, [(before.clone(), "ann".to_owned())]);
    within(
        client.ask("restart", json(r#"{"downMs":100}"#), JsValue::UNDEFINED),
        "restart",
    )
    .await
    .expect("restart answered");
    within(recovered, "recovery").await.expect("recovered");
    let after = client.socket_id().expect("socket");
    assert_ne!(after, before);
    // Its own leave and join are not events, and the list is asked for again.
    assert_eq!(members(&sub).await, [(after, "ann".to_owned())]);
    barrier(&client, &sub, ROOM).await;
    assert!(joins.borrow().is_empty(), "{:?}", joins.borrow());
    assert!(leaves.borrow().is_empty(), "{:?}", leaves.borrow());
}

// ---- The core's policies, as the native client's tests/tests/policy.rs sees them ----------

/// `Client.connect` reports a failed first connection; `new Client` keeps retrying.
#[wasm_bindgen_test]
async fn a_failed_first_connect_rejects_and_a_background_client_retries() {
    // Nothing listens on port 1 (and browsers refuse it outright): the attempt fails, 1006.
    let dead = JsValue::from_str("ws://127.0.0.1:1/ws");
    let options = r#"{"reconnect": {"baseMs": 10}}"#;
    let err = within(Client::connect(dead.clone(), json(options)), "connect")
        .await
        .expect_err("no server");
    assert_eq!(code(&err), "closed");
    assert_eq!(get(&err, "closeCode").as_f64(), Some(1006.0));
    let client = Client::new(dead, json(options)).expect("a client");
    // onStatus reports the current status at once ("connecting"), then the retry.
    let (on_status, seen, _) = recorder();
    let mut resolve = None;
    let retried = Promise::new(&mut |r, _| resolve = Some(r));
    let resolve = resolve.expect("the executor ran");
    let watch = Closure::<dyn FnMut(JsValue)>::new(move |s: JsValue| {
        let _ = on_status.call1(&JsValue::UNDEFINED, &s);
        if s.as_string().as_deref() == Some("reconnecting") {
            let _ = resolve.call0(&JsValue::UNDEFINED);
        }
    });
    let current = client.status();
    client.on_status(watch.as_ref().clone().unchecked_into());
    within(retried, "reconnecting").await.expect("retried");
    let seen: Vec<Option<String>> = seen.borrow().iter().map(|s| s.as_string()).collect();
    assert_eq!(
        seen.first(),
        Some(&Some(current)),
        "the current status first"
    );
    assert_eq!(seen.last(), Some(&Some("reconnecting".to_owned())));
    client.close();
}

/// However the client closes, every subscription ends with `closed` and the close's reason;
/// its iterator finishes.
#[wasm_bindgen_test]
async fn closing_ends_every_subscription_with_a_reason() {
    let client = connect().await;
    let sub = subscribe(&client, "room:closing").await;
    let (on_end, _, ended) = recorder();
    sub.on_end(on_end);
    client.close();
    let error = within(ended, "onEnd").await.expect("ended");
    assert_eq!(code(&error), "closed");
    assert_eq!(
        get(&error, "reason").as_string().as_deref(),
        Some("closed by the client")
    );
    let done = within(sub.next(), "next")
        .await
        .expect("the iterator finishes");
    assert_eq!(get(&done, "done"), JsValue::TRUE);
}

/// A command the core refuses has the core's code, as in the native client.
#[wasm_bindgen_test]
async fn refused_commands_have_the_cores_codes() {
    let client = connect().await;
    let err = within(
        client.subscribe("no spaces", JsValue::UNDEFINED, JsValue::UNDEFINED),
        "subscribe",
    )
    .await
    .expect_err("invalid channel");
    assert_eq!(code(&err), "invalid_channel");
    client.close();
    let err = within(client.ask("add", json("[1,2]"), JsValue::UNDEFINED), "ask")
        .await
        .expect_err("closed");
    assert_eq!(code(&err), "closed");
}
