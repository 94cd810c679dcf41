//! What an operator runs on: `/metrics` scraped over real HTTP and read with a Prometheus
//! text-format parser after real traffic, `/healthz`, and `/readyz` following a real Redis
//! that the test stops and starts again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use prometheus_parse::{Scrape, Value};
use serde_json::Value as Json;
use sss_client::{Client, Options, SubEvent};
use sss_server::scaler::{MongoOptions, MongoScaler, RedisOptions, RedisScaler};
use sss_server::{MemoryScaler, Refusal, Rejection, Server, ServerOptions, Session};
use sss_tests::services::{unique_prefix, MongoServer, Persistence, RedisServer};
use sss_tests::{start, within, RawPeer, WAIT};

/// `GET path` on `addr` over a new HTTP/1.1 connection: status and body.
async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let tcp = within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("tcp connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let res = within("http response", sender.send_request(req))
        .await
        .expect("http response");
    let status = res.status();
    let body = within("http body", res.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        String::from_utf8(body.to_vec()).expect("utf-8 body"),
    )
}

/// The metrics as a Prometheus server reads them.
struct Metrics(Scrape);

impl Metrics {
    async fn scrape(addr: SocketAddr) -> Self {
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        Self(Scrape::parse(lines).expect("the Prometheus text format"))
    }

    /// The value of the sample `name{labels}` (exactly these labels); 0 when absent, as
    /// Prometheus treats a series that was never incremented.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let found: Vec<f64> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == name && *s.labels == wanted)
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name} is not a number: {other:?}"),
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} appears twice");
        found.first().copied().unwrap_or(0.0)
    }

    /// The count of the histogram `name{labels}`.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(&format!("{name}_count"), labels)
    }
}

/// Scrapes until `done` holds, failing after [`WAIT`].
async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = Metrics::scrape(addr).await;
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_move_with_the_traffic_and_parse_as_prometheus_text() {
    let builder = Server::builder(MemoryScaler::default())
        .options(
            ServerOptions::default()
                .observability_endpoints(true)
                .presence_prefixes(["room:"]),
        )
        .session_parser(|req| async move {
            match req.query.get("user") {
                Some(u) => Ok(Session::user(u.clone())),
                None => Err(Refusal::unauthorized("who are you")),
            }
        })
        .subscription_parser(|_socket, channel, _query| async move {
            if channel.starts_with("room:") {
                Ok(())
            } else {
                Err(Rejection::new("no_such_room", "rooms are room:*"))
            }
        })
        .on_ask("add", |_s, (a, b): (i64, i64)| async move {
            Ok::<_, Rejection>(a + b)
        })
        .on_ask("fail", |_s, ()| async move {
            Err::<(), _>(Rejection::new("teapot", "I am a teapot"))
        })
        .on_tell("note", |_s, _m: Json| async move {});
    let (server, listening, url) = start(builder).await;
    let app = listening.local_addr();
    let ops = server
        .listen_observability("127.0.0.1:0")
        .await
        .expect("observability listener")
        .local_addr();
    let before = Metrics::scrape(ops).await;
    assert_eq!(before.get("sss_connections_accepted_total", &[]), 0.0);

    // A refused handshake, then a client that asks, tells, subscribes and receives.
    let refused = Client::connect(url.clone(), Options::default()).await;
    assert!(refused.is_err(), "no user: refused");
    let ann = within(
        "connect",
        Client::connect(format!("{url}?user=ann"), Options::default()),
    )
    .await
    .expect("connects");
    for i in 0..3 {
        let sum: i64 = within("ask", ann.ask("add", &(i, 1))).await.expect("add");
        assert_eq!(sum, i + 1);
    }
    let e = within("ask", ann.ask::<_, ()>("fail", &()))
        .await
        .expect_err("rejected");
    assert_eq!(e.code(), "teapot");
    let e = within("ask", ann.ask::<_, ()>("nobody-handles-this", &()))
        .await
        .expect_err("unknown topic");
    assert_eq!(e.code(), "unknown_topic");
    ann.tell("note", &1).expect("tell");
    ann.tell("note", &2).expect("tell");
    ann.tell("not-a-topic", &3).expect("tell");
    let mut room = within("sub", ann.subscribe("room:1", None::<()>))
        .await
        .expect("subscribed");
    let e = within("sub", ann.subscribe("lobby", None::<()>))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), "no_such_room");
    let pos = server
        .publish("room:1", "news", &"hello")
        .await
        .expect("published");
    match within("publication", room.next()).await {
        Some(SubEvent::Publication(p)) => assert_eq!(p.msg.get(), r#""hello""#),
        other => panic!("expected the publication, got {other:?}"),
    }
    within("presence", room.presence()).await.expect("members");
    // Resyncs, by hand: one from a position the history has, one from an epoch it never had.
    let mut raw = RawPeer::hello(&format!("{url}?user=bob")).await;
    let since = format!(r#"{{"e":"{}","s":0}}"#, pos.epoch);
    raw.send(&format!(
        r#"{{"t":"sub","id":1,"ch":"room:1","since":{since}}}"#
    ))
    .await;
    raw.send(r#"{"t":"sub","id":2,"ch":"room:2","since":{"e":"gone","s":5}}"#)
        .await;
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let f = within("subok", raw.next_text()).await.expect("open");
        if f.contains(r#""t":"sub"#) {
            answers.push(f);
        }
    }
    raw.send(r#"{"t":"presence","id":3,"ch":"room:9"}"#).await;
    raw.until_marker(r#""code":"not_subscribed""#).await;
    answers.sort();
    assert!(
        answers[0].contains(r#""ch":"room:1""#) && answers[0].contains(r#""recovered":true"#),
        "{answers:?}"
    );
    assert!(
        answers[1].contains(r#""ch":"room:2""#) && answers[1].contains(r#""recovered":false"#),
        "{answers:?}"
    );

    // Every count below is made before the frame that answers it is written (asks, tells read
    // before the subs that follow them on the same socket, subscriptions), except a delivery:
    // the dispatcher counts after queueing, so the socket may write it first.
    let m = scrape_until(ops, "the delivery counted", |m| {
        m.get("sss_deliveries_total", &[]) > before.get("sss_deliveries_total", &[])
    })
    .await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| m.get(name, labels) - before.get(name, labels);
    assert_eq!(m.get("sss_connections", &[]), 2.0);
    assert_eq!(delta("sss_connections_accepted_total", &[]), 2.0);
    assert_eq!(
        delta(
            "sss_connections_refused_total",
            &[("reason", "session_parser")]
        ),
        1.0
    );
    assert_eq!(
        m.count("sss_handshake_duration_seconds", &[]),
        3.0,
        "refused, ann, bob"
    );
    let ok = [("topic", "add"), ("outcome", "ok")];
    assert_eq!(delta("sss_asks_total", &ok), 3.0);
    let teapot = [("topic", "fail"), ("outcome", "teapot")];
    assert_eq!(delta("sss_asks_total", &teapot), 1.0);
    let unknown = [("topic", "unknown"), ("outcome", "unknown_topic")];
    assert_eq!(delta("sss_asks_total", &unknown), 1.0);
    assert_eq!(
        m.count("sss_ask_duration_seconds", &[("topic", "add")]),
        3.0
    );
    assert_eq!(delta("sss_tells_total", &[("topic", "note")]), 2.0);
    assert_eq!(delta("sss_tells_total", &[("topic", "unknown")]), 1.0);
    assert_eq!(m.get("sss_subscriptions", &[]), 3.0, "room:1 twice, room:2");
    assert_eq!(
        m.get("sss_presence_members", &[]),
        3.0,
        "every room: has presence"
    );
    let presence = |outcome| delta("sss_presence_requests_total", &[("outcome", outcome)]);
    assert_eq!(presence("ok"), 1.0);
    assert_eq!(presence("not_subscribed"), 1.0);
    assert_eq!(
        delta("sss_scaler_operations_total", &[("op", "presence")]),
        1.0
    );
    assert!(delta("sss_scaler_operations_total", &[("op", "presence_update")]) >= 1.0);
    assert_eq!(
        delta(
            "sss_subscriptions_refused_total",
            &[("code", "no_such_room")]
        ),
        1.0
    );
    assert_eq!(delta("sss_resyncs_total", &[("outcome", "recovered")]), 1.0);
    assert_eq!(
        delta("sss_resyncs_total", &[("outcome", "unrecoverable")]),
        1.0
    );
    assert_eq!(delta("sss_publications_total", &[]), 1.0);
    assert_eq!(delta("sss_deliveries_total", &[]), 1.0);
    assert!(delta("sss_received_bytes_total", &[]) > 0.0);
    assert!(delta("sss_sent_bytes_total", &[]) > 0.0);
    let publish = [("op", "publish")];
    assert_eq!(delta("sss_scaler_operations_total", &publish), 1.0);
    assert_eq!(delta("sss_scaler_errors_total", &publish), 0.0);
    assert_eq!(
        m.count("sss_scaler_operation_duration_seconds", &publish),
        1.0
    );
    assert_eq!(
        delta("sss_scaler_operations_total", &[("op", "subscribe")]),
        2.0,
        "the instance's interest in room:1 and room:2"
    );
    // No channel name, user or socket id is ever a label value.
    for s in &m.0.samples {
        for v in s.labels.values() {
            for secret in ["room:1", "room:2", "lobby", "ann", "bob"] {
                assert_ne!(v, secret, "{} has a label {v}", s.metric);
            }
        }
    }

    // The server boots ann: her socket is closed with 4003; bob's goes when he leaves.
    server.boot_user("ann").await.expect("boot");
    drop(raw);
    let m = scrape_until(ops, "both sockets closed", |m| {
        m.get("sss_connections", &[]) == 0.0
    })
    .await;
    assert_eq!(m.get("sss_sockets_closed_total", &[("code", "4003")]), 1.0);
    assert_eq!(m.get("sss_sockets_closed_total", &[("code", "none")]), 1.0);
    assert_eq!(m.get("sss_subscriptions", &[]), 0.0);
    assert_eq!(m.get("sss_presence_members", &[]), 0.0);

    // The same endpoints on the server's own listener, with the option on.
    assert_eq!(get(app, "/healthz").await, (StatusCode::OK, "ok\n".into()));
    assert_eq!(get(app, "/readyz").await.0, StatusCode::OK);
    let on_app = Metrics::scrape(app).await;
    assert_eq!(on_app.get("sss_connections_accepted_total", &[]), 2.0);
    assert_eq!(get(ops, "/nothing-here").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_application_mounting_the_server_routes_the_endpoints_itself() {
    // Options off: the server's own listener does not answer them...
    let (server, listening, _url) = start(Server::builder(MemoryScaler::default())).await;
    let (status, _) = get(listening.local_addr(), "/metrics").await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED, "not an endpoint here");
    // ...but the application can.
    let req = |method: Method, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request")
    };
    let res = server
        .observability_response(&req(Method::GET, "/metrics?x=1"))
        .await
        .expect("answered");
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res.headers()[http::header::CONTENT_TYPE]
        .to_str()
        .expect("ascii");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(server
        .render_metrics()
        .contains("sss_connections_refused_total"));
    let ready = server
        .observability_response(&req(Method::GET, "/readyz"))
        .await;
    assert_eq!(ready.map(|r| r.status()), Some(StatusCode::OK));
    assert!(server
        .observability_response(&req(Method::GET, "/"))
        .await
        .is_none());
    assert!(server
        .observability_response(&req(Method::POST, "/metrics"))
        .await
        .is_none());

    // Draining: not ready as soon as shutdown starts, still alive.
    server.shutdown(Duration::from_secs(1)).await;
    let ready = server
        .observability_response(&req(Method::GET, "/readyz"))
        .await
        .expect("answered");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(server.ready().await.is_err());
    let alive = server
        .observability_response(&req(Method::HEAD, "/healthz"))
        .await;
    assert_eq!(alive.map(|r| r.status()), Some(StatusCode::OK));
}

/// `/readyz` until it answers `status`, within `bound`: the time it took and the body.
async fn readyz_becomes(
    addr: SocketAddr,
    status: StatusCode,
    bound: Duration,
) -> (Duration, String) {
    let start = Instant::now();
    loop {
        let (s, body) = get(addr, "/readyz").await;
        if s == status {
            return (start.elapsed(), body);
        }
        assert!(
            start.elapsed() < bound,
            "/readyz still {s} ({body:?}) after {bound:?}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readyz_follows_redis_down_and_up_again() {
    sss_tests::init_tracing();
    let mut redis = RedisServer::spawn(Persistence::Ephemeral).await;
    let opts = RedisOptions {
        command_timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    };
    let scaler = RedisScaler::connect(redis.url(), opts)
        .await
        .expect("redis");
    let server = Server::builder(scaler).build().await.expect("server");
    let ops = server
        .listen_observability("127.0.0.1:0")
        .await
        .expect("listens")
        .local_addr();
    assert_eq!(get(ops, "/healthz").await.0, StatusCode::OK);
    assert_eq!(
        get(ops, "/readyz").await,
        (StatusCode::OK, "ready\n".into())
    );

    redis.stop(false).await;
    // The pub/sub connection sees the close at once; a PING fails within the ready timeout.
    let (took, body) =
        readyz_becomes(ops, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)).await;
    assert!(body.starts_with("not ready: "), "{body}");
    tracing::info!(?took, body, "unready");
    assert_eq!(
        get(ops, "/healthz").await.0,
        StatusCode::OK,
        "alive all along"
    );

    redis.resume().await;
    // The pub/sub connection comes back within its reconnection backoff (at most 2 s).
    let (took, _) = readyz_becomes(ops, StatusCode::OK, Duration::from_secs(10)).await;
    tracing::info!(?took, "ready again");

    let m = Metrics::scrape(ops).await;
    let ready = [("op", "ready")];
    assert!(m.get("sss_scaler_errors_total", &ready) >= 1.0);
    assert!(
        m.get("sss_scaler_operations_total", &ready) > m.get("sss_scaler_errors_total", &ready)
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn readyz_needs_both_mongodb_and_redis() {
    sss_tests::init_tracing();
    let mut redis = RedisServer::spawn(Persistence::Ephemeral).await;
    let mongo = MongoServer::spawn().await;
    let opts = MongoOptions {
        prefix: unique_prefix(),
        command_timeout: Duration::from_secs(2),
        ..MongoOptions::default()
    };
    let scaler = MongoScaler::connect(mongo.uri(), redis.url(), opts)
        .await
        .expect("mongo + redis");
    let server = Server::builder(scaler).build().await.expect("server");
    let ops = server
        .listen_observability("127.0.0.1:0")
        .await
        .expect("listens")
        .local_addr();
    assert_eq!(
        get(ops, "/readyz").await,
        (StatusCode::OK, "ready\n".into())
    );

    // MongoDB gone, Redis fine: not ready (the ping fails, or outlasts the ready timeout).
    drop(mongo);
    let (_, body) =
        readyz_becomes(ops, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)).await;
    tracing::info!(body, "unready without mongodb");
    assert!(
        server.ready().await.is_err(),
        "still not ready while MongoDB is down"
    );
    // Redis gone too: still not ready, and alive.
    redis.stop(false).await;
    assert_eq!(get(ops, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(ops, "/healthz").await.0, StatusCode::OK);
    server.shutdown(Duration::from_secs(1)).await;
}
