//! Ask, tell, channels, parsers, middleware and cluster-wide operations, over real sockets.

use std::future::pending;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use serde_json::json;
use sss_client::{Client, ConnectError, Options, RequestError, SubEvent};
use sss_server::{
    codes, Inbound, MemoryScaler, Refusal, Rejection, Server, ServerBuilder, ServerOptions, Session,
};
use sss_tests::{start, within, RawPeer};
use tokio::sync::mpsc;

/// The application every test here runs: a session parser reading the query string, a
/// subscription parser with a password-protected room, a middleware, and a few handlers.
fn app(scaler: MemoryScaler, notes: mpsc::UnboundedSender<(String, String)>) -> ServerBuilder {
    Server::builder(scaler)
        .session_parser(|req| async move {
            if req.query.contains_key("deny") {
                return Err(Refusal::unauthorized("bad token"));
            }
            let mut s = Session::anonymous();
            s.user = req.query.get("user").cloned();
            s.session = req.query.get("session").cloned();
            Ok(s.with_local(req.cookie("theme").unwrap_or("plain").to_owned()))
        })
        .subscription_parser(|_socket, channel, query| async move {
            match channel.as_str() {
                "room:secret" => match query.as_deref().map(|q| q.get()) {
                    Some(r#""pw""#) => Ok(()),
                    _ => Err(Rejection::refused("wrong password")),
                },
                c if c.starts_with("room:") => Ok(()),
                _ => Err(Rejection::new("no_such_room", "rooms are room:*")),
            }
        })
        .middleware(|_socket, inbound| async move {
            match &inbound {
                Inbound::Ask { topic, .. } if topic == "add" => {
                    let ok = matches!(&inbound, Inbound::Ask { msg, .. } if msg.get() != "[13,13]");
                    if ok {
                        Ok(inbound)
                    } else {
                        Err(Rejection::refused("unlucky numbers"))
                    }
                }
                Inbound::Subscribe { channel, .. } if channel == "room:closed" => {
                    Err(Rejection::refused("room closed by middleware"))
                }
                _ => Ok(inbound),
            }
        })
        .on_ask("add", |_s, (a, b): (i64, i64)| async move {
            Ok::<_, Rejection>(a + b)
        })
        .on_ask("fail", |_s, ()| async move {
            Err::<(), _>(Rejection::new("teapot", "I am a teapot"))
        })
        .on_ask("never", |_s, ()| async move {
            pending::<()>().await;
            Ok::<_, Rejection>(())
        })
        .on_ask("panic", |_s, ()| async move {
            if true {
                panic!("handler bug");
            }
            Ok::<_, Rejection>(())
        })
        .on_ask("whoami", |s, ()| async move {
            Ok::<_, Rejection>(json!({
                "id": s.id(),
                "user": s.user(),
                "session": s.session(),
                "theme": s.local::<String>(),
            }))
        })
        .on_ask("echo", |s, text: String| async move {
            s.tell("echoed", &text)
                .map_err(|e| Rejection::new("internal", e.to_string()))?;
            Ok::<_, Rejection>(())
        })
        .on_tell("note", move |s, text: String| {
            let notes = notes.clone();
            async move {
                let _ = notes.send((s.id().to_owned(), text));
            }
        })
}

async fn setup() -> (Server, String, mpsc::UnboundedReceiver<(String, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (server, _listening, url) = start(app(MemoryScaler::default(), tx)).await;
    (server, url, rx)
}

async fn client(url: &str) -> Client {
    within("connect", Client::connect(url, Options::default()))
        .await
        .expect("connects")
}

#[tokio::test]
async fn tells_a_handler_sends_its_socket_arrive_before_the_answer() {
    // The `echo` handler tells its socket, then answers without waiting: it runs in the
    // wakeup that read the ask, and its answer must still not overtake the tell.
    let (_server, url, _) = setup().await;
    let mut peer = RawPeer::hello(&url).await;
    let asks: Vec<String> = (1..=20)
        .map(|id| {
            json!({"t": "ask", "id": id, "topic": "echo", "msg": format!("m{id}")}).to_string()
        })
        .collect();
    peer.send_pipelined(&asks).await;
    let mut told = Vec::new();
    for _ in 0..40 {
        let frame: serde_json::Value =
            serde_json::from_str(&within("a frame", peer.next_text()).await.expect("open"))
                .expect("json");
        match frame["t"].as_str() {
            Some("tell") => told.push(frame["msg"].as_str().unwrap_or_default().to_owned()),
            Some("res") => {
                let id = frame["id"].as_u64().unwrap_or_default();
                assert!(
                    told.contains(&format!("m{id}")),
                    "answer {id} before its tell (told so far: {told:?})"
                );
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(told.len(), 20);
}

/// A socket woken over and over for publications still reads its client: the server polls a
/// socket's read side only when its waker fired (most wakeups are for the queue), so a read
/// wakeup lost among them would leave the asks unread while publications keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_are_read_while_publications_stream_in() {
    let (server, url, _) = setup().await;
    let c = client(&url).await;
    let mut sub = within("sub", c.subscribe("room:busy", None::<()>))
        .await
        .expect("sub");
    // Reads the publications as they come, in order, and says how many it read.
    let (read_tx, read) = tokio::sync::watch::channel(0u32);
    let reader = tokio::spawn(async move {
        let mut next = 0u32;
        while let Some(event) = sub.next().await {
            match event {
                SubEvent::Publication(p) => {
                    assert_eq!(p.decode::<u32>().expect("int"), next);
                    next += 1;
                    read_tx.send_replace(next);
                }
                other => panic!("{other:?}"),
            }
        }
    });
    // Publishes until the asks are done, so that they interleave, never more than 256 ahead of
    // the reader: the socket's queue (1024) is not what this test is about.
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (server, done, mut read) = (server.clone(), done.clone(), read.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !done.load(Ordering::Acquire) {
                read.wait_for(|r| n - r < 256).await.expect("reader");
                server
                    .publish("room:busy", "msg", &n)
                    .await
                    .expect("publish");
                n += 1;
            }
            n
        })
    };
    // One ask at a time, each sent while publications arrive, each answered.
    for i in 0..200i64 {
        let sum: i64 = within("an ask among publications", c.ask("add", &(i, 1)))
            .await
            .expect("ask");
        assert_eq!(sum, i + 1);
    }
    done.store(true, Ordering::Release);
    let published = within("the publisher", publisher).await.expect("publisher");
    assert!(
        published > 200,
        "only {published} publications went by the asks"
    );
    let mut read = read;
    within("every publication", read.wait_for(|r| *r == published))
        .await
        .expect("reader");
    reader.abort();
}

#[tokio::test]
async fn ask_returns_the_handlers_value() {
    let (_server, url, _) = setup().await;
    let c = client(&url).await;
    let sum: i64 = within("ask", c.ask("add", &(2, 3))).await.expect("ask");
    assert_eq!(sum, 5);
    // Many concurrent asks on one connection are matched to their own answers.
    let asks = (0..50).map(|i| {
        let c = c.clone();
        async move { c.ask::<_, i64>("add", &(i, i + 100)).await }
    });
    let sums = within("asks", futures::future::join_all(asks)).await;
    for (i, s) in sums.into_iter().enumerate() {
        assert_eq!(s.expect("ask"), 2 * i as i64 + 100);
    }
}

fn code(e: RequestError) -> String {
    e.code().to_owned()
}

#[tokio::test]
async fn ask_errors_are_typed() {
    let (_server, url, _) = setup().await;
    let c = client(&url).await;
    let e = within("ask", c.ask::<_, ()>("fail", &()))
        .await
        .unwrap_err();
    match &e {
        RequestError::Ask(a) => assert_eq!(
            (a.code.as_str(), a.reason.as_str()),
            ("teapot", "I am a teapot")
        ),
        other => panic!("{other:?}"),
    }
    let e = within("ask", c.ask::<_, ()>("nope", &()))
        .await
        .unwrap_err();
    assert_eq!(code(e), codes::UNKNOWN_TOPIC);
    let e = within("ask", c.ask::<_, i64>("add", &"not numbers"))
        .await
        .unwrap_err();
    assert_eq!(code(e), codes::BAD_REQUEST);
    let e = within("ask", c.ask::<_, i64>("add", &(13, 13)))
        .await
        .unwrap_err();
    assert_eq!(code(e), codes::REFUSED, "the middleware refuses");
    let e = within("ask", c.ask::<_, ()>("panic", &()))
        .await
        .unwrap_err();
    assert_eq!(code(e), codes::INTERNAL);
    // The connection survived all of that.
    let sum: i64 = within("ask", c.ask("add", &(1, 1))).await.expect("ask");
    assert_eq!(sum, 2);
}

#[tokio::test]
async fn ask_times_out() {
    let (_server, url, _) = setup().await;
    let c = within(
        "connect",
        Client::connect(
            &url,
            Options::default().ask_timeout(std::time::Duration::from_millis(200)),
        ),
    )
    .await
    .expect("connects");
    let e = within("ask", c.ask::<_, ()>("never", &()))
        .await
        .unwrap_err();
    assert_eq!(code(e), codes::TIMEOUT);
    // Its own timeout, longer than the client's: the answer that comes in time is taken.
    let slow = std::time::Duration::from_secs(10);
    let sum: i64 = within("ask", c.ask_with_timeout("add", &(2, 3), slow))
        .await
        .expect("answered");
    assert_eq!(sum, 5);
    let e = within(
        "ask",
        c.ask_with_timeout::<_, ()>("never", &(), std::time::Duration::from_millis(50)),
    )
    .await
    .unwrap_err();
    assert_eq!(code(e), codes::TIMEOUT);
}

#[tokio::test]
async fn tells_go_both_ways() {
    let (server, url, mut notes) = setup().await;
    let c = client(&format!("{url}?user=ann&session=s1")).await;
    c.tell("note", &"hello server").expect("tell");
    let (socket, text) = within("tell handler", notes.recv()).await.expect("note");
    assert_eq!(text, "hello server");

    let mut echoed = c.on_tell("echoed");
    within("ask", c.ask::<_, ()>("echo", &"back"))
        .await
        .expect("echo");
    let m = within("socket.tell", echoed.next()).await.expect("told");
    assert_eq!(m.get(), r#""back""#);

    let mut news = c.on_tell("news");
    server
        .tell_user("ann", "news", &1)
        .await
        .expect("tell_user");
    server
        .tell_user("bob", "news", &99)
        .await
        .expect("tell_user");
    server
        .tell_session("s1", "news", &2)
        .await
        .expect("tell_session");
    server.broadcast("news", &3).await.expect("broadcast");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            within("news", news.next())
                .await
                .expect("news")
                .get()
                .to_owned(),
        );
    }
    assert_eq!(got, ["1", "2", "3"], "bob's message must not arrive");

    let who: serde_json::Value = within("ask", c.ask("whoami", &())).await.expect("whoami");
    assert_eq!(who["id"], socket.as_str());
    assert_eq!(who["user"], "ann");
    assert_eq!(who["session"], "s1");
    assert_eq!(who["theme"], "plain");
}

#[tokio::test]
async fn channels_deliver_in_order_to_every_subscriber() {
    let (server, url, _) = setup().await;
    let (a, b) = (client(&url).await, client(&url).await);
    let mut sa = within("sub", a.subscribe("room:1", None::<()>))
        .await
        .expect("sub");
    let mut sb = within("sub", b.subscribe("room:1", None::<()>))
        .await
        .expect("sub");
    let mut other = within("sub", b.subscribe("room:2", None::<()>))
        .await
        .expect("sub");
    for i in 0..100 {
        server.publish("room:1", "msg", &i).await.expect("publish");
    }
    server
        .publish("room:2", "msg", &"other")
        .await
        .expect("publish");
    for sub in [&mut sa, &mut sb] {
        let mut last_seq = 0;
        for i in 0..100 {
            match within("publication", sub.next()).await {
                Some(SubEvent::Publication(p)) => {
                    assert_eq!(p.decode::<i32>().expect("int"), i);
                    assert_eq!(p.topic, "msg");
                    assert_eq!(p.position.seq, last_seq + 1);
                    last_seq = p.position.seq;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    match within("publication", other.next()).await {
        Some(SubEvent::Publication(p)) => assert_eq!(p.msg.get(), r#""other""#),
        other => panic!("{other:?}"),
    }
}

/// `Subscription::topic`: one topic's publications, deserialized, in order; another topic's
/// are passed over, a payload of the wrong type is an error and the stream goes on, the end of
/// the subscription is the last item.
#[tokio::test]
async fn a_topic_stream_yields_that_topics_publications_typed() {
    let (server, url, _) = setup().await;
    let c = client(&url).await;
    let sub = within("sub", c.subscribe("room:typed", None::<()>))
        .await
        .expect("sub");
    let mut counts = sub.topic::<u32>("count");
    assert_eq!(counts.topic(), "count");
    assert_eq!(counts.subscription().channel(), "room:typed");
    for (topic, msg) in [
        ("count", json!(1)),
        ("chat", json!("passed over")),
        ("count", json!(2)),
        ("count", json!("not a number")),
        ("count", json!(3)),
    ] {
        server
            .publish("room:typed", topic, &msg)
            .await
            .expect("publish");
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        match within("count", counts.next()).await {
            Some(Ok(n)) => got.push(n.to_string()),
            Some(Err(sss_client::TopicError::Decode { position, .. })) => {
                got.push(format!("decode error at {}", position.seq));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, ["1", "2", "decode error at 4", "3"]);
    server.boot_channel("room:typed").await.expect("boot");
    match within("end", counts.next()).await {
        Some(Err(sss_client::TopicError::Ended { code, .. })) => assert_eq!(code, "booted"),
        other => panic!("{other:?}"),
    }
    assert!(within("none", counts.next()).await.is_none());
}

#[tokio::test]
async fn subscriptions_are_checked() {
    let (_server, url, _) = setup().await;
    let c = client(&format!("{url}?user=ann&session=s1")).await;
    let refused = |r: Result<_, RequestError>| match r {
        Err(e) => code(e),
        Ok(_) => panic!("should be refused"),
    };
    assert_eq!(
        refused(c.subscribe("lobby", None::<()>).await),
        "no_such_room"
    );
    assert_eq!(
        refused(c.subscribe("room:secret", Some("guess")).await),
        codes::REFUSED
    );
    assert_eq!(
        refused(c.subscribe("room:closed", None::<()>).await),
        codes::REFUSED
    );
    assert_eq!(
        refused(c.subscribe("#user:bob", None::<()>).await),
        codes::RESERVED_CHANNEL
    );
    assert_eq!(
        refused(c.subscribe("#admin", None::<()>).await),
        codes::RESERVED_CHANNEL
    );
    assert_eq!(
        refused(c.subscribe("bad name", None::<()>).await),
        codes::INVALID_CHANNEL
    );
    within("sub", c.subscribe("room:secret", Some("pw")))
        .await
        .expect("password accepted");
    within("sub", c.subscribe("#user:ann", None::<()>))
        .await
        .expect("own user channel");
    within("sub", c.subscribe("#session:s1", None::<()>))
        .await
        .expect("own session channel");
}

#[tokio::test]
async fn user_channel_carries_direct_messages() {
    let (server, url, _) = setup().await;
    let ann = client(&format!("{url}?user=ann")).await;
    let mut inbox = within("sub", ann.subscribe("#user:ann", None::<()>))
        .await
        .expect("sub");
    server
        .publish("#user:ann", "dm", &"hi ann")
        .await
        .expect("publish");
    match within("dm", inbox.next()).await {
        Some(SubEvent::Publication(p)) => assert_eq!(p.msg.get(), r#""hi ann""#),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let (server, url, _) = setup().await;
    let c = client(&url).await;
    let sub = within("sub", c.subscribe("room:1", None::<()>))
        .await
        .expect("sub");
    let mut keep = within("sub", c.subscribe("room:2", None::<()>))
        .await
        .expect("sub");
    drop(sub);
    // The unsubscribe is ordered before this ask on the same connection.
    within("ask", c.ask::<_, i64>("add", &(1, 1)))
        .await
        .expect("ask");
    server
        .publish("room:1", "msg", &"dropped")
        .await
        .expect("publish");
    server
        .publish("room:2", "msg", &"kept")
        .await
        .expect("publish");
    match within("publication", keep.next()).await {
        Some(SubEvent::Publication(p)) => assert_eq!(p.msg.get(), r#""kept""#),
        other => panic!("{other:?}"),
    }
    // Subscribing again works and starts from the head: the dropped message is not replayed.
    let mut again = within("sub", c.subscribe("room:1", None::<()>))
        .await
        .expect("sub");
    server
        .publish("room:1", "msg", &"after")
        .await
        .expect("publish");
    match within("publication", again.next()).await {
        Some(SubEvent::Publication(p)) => assert_eq!(p.msg.get(), r#""after""#),
        other => panic!("{other:?}"),
    }
}

/// The session parser's refusal (it sees the query string too) is the server's code and reason
/// (more in tests/tests/auth.rs).
#[tokio::test]
async fn refused_handshake_is_a_typed_error() {
    let (_server, url, _) = setup().await;
    match within(
        "connect",
        Client::connect(format!("{url}?deny=1"), Options::default()),
    )
    .await
    {
        Err(ConnectError::Rejected { code, reason }) => {
            assert_eq!(code, codes::UNAUTHORIZED);
            assert_eq!(reason, "bad token");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn origins_are_checked() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let builder = app(MemoryScaler::default(), tx)
        .options(ServerOptions::default().allowed_origins(["https://good.example"]));
    let (_server, _l, url) = start(builder).await;
    let request = |origin: &str| {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )
            .expect("request");
        req.headers_mut()
            .insert("origin", origin.parse().expect("header"));
        req
    };
    match tokio_tungstenite::connect_async(request("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("{:?}", other.map(|_| ())),
    }
    tokio_tungstenite::connect_async(request("https://good.example"))
        .await
        .expect("allowed origin connects");
    // Native clients send no Origin at all and are not affected.
    client(&url).await;
}

#[tokio::test]
async fn boots_close_the_right_sockets() {
    let (server, url, _) = setup().await;
    let ann1 = client(&format!("{url}?user=ann&session=a1")).await;
    let ann2 = client(&format!("{url}?user=ann&session=a2")).await;
    let bob = client(&format!("{url}?user=bob&session=b1")).await;
    let carl = client(&format!("{url}?user=carl&session=c1")).await;
    let closed = |c: &Client| {
        let c = c.clone();
        async move {
            within(
                "closed",
                c.wait_status(|s| s == sss_client::ClientStatus::Closed),
            )
            .await
        }
    };
    server.boot_user("ann").await.expect("boot");
    closed(&ann1).await;
    closed(&ann2).await;
    server.boot_session("b1").await.expect("boot");
    closed(&bob).await;
    let who: serde_json::Value = within("ask", carl.ask("whoami", &())).await.expect("carl");
    let id = who["id"].as_str().expect("id").to_owned();
    let mut sub = within("sub", carl.subscribe("room:9", None::<()>))
        .await
        .expect("sub");
    server.boot_channel("room:9").await.expect("boot channel");
    match within("unsubbed", sub.next()).await {
        Some(SubEvent::Ended { code, .. }) => assert_eq!(code, codes::BOOTED),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        carl.status(),
        sss_client::ClientStatus::Ready,
        "only the channel was booted"
    );
    server.boot_socket(&id).await.expect("boot");
    closed(&carl).await;
    let e = within("ask", carl.ask::<_, i64>("add", &(1, 1)))
        .await
        .unwrap_err();
    assert_eq!(code(e), codes::CLOSED, "a booted client does not reconnect");
}

#[tokio::test]
async fn instances_on_one_scaler_form_a_cluster() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let hub = MemoryScaler::default();
    let (s1, _l1, url1) = start(app(hub.instance(), tx.clone())).await;
    let (s2, _l2, url2) = start(app(hub.instance(), tx)).await;
    let a = client(&format!("{url1}?user=ann")).await;
    let b = client(&format!("{url2}?user=ann")).await;
    let mut sa = within("sub", a.subscribe("room:x", None::<()>))
        .await
        .expect("sub");
    let mut sb = within("sub", b.subscribe("room:x", None::<()>))
        .await
        .expect("sub");
    s1.publish("room:x", "m", &1).await.expect("publish");
    s2.publish("room:x", "m", &2).await.expect("publish");
    for sub in [&mut sa, &mut sb] {
        for want in ["1", "2"] {
            match within("publication", sub.next()).await {
                Some(SubEvent::Publication(p)) => assert_eq!(p.msg.get(), want),
                other => panic!("{other:?}"),
            }
        }
    }
    let (mut ta, mut tb) = (a.on_tell("t"), b.on_tell("t"));
    s2.tell_user("ann", "t", &"both").await.expect("tell_user");
    assert_eq!(within("a", ta.next()).await.expect("a").get(), r#""both""#);
    assert_eq!(within("b", tb.next()).await.expect("b").get(), r#""both""#);
}
