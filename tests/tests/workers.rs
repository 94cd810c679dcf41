//! Worker mode against a real Redis, gateways and workers in this process: what a worker's
//! handler sees and can do, and each refusal (no worker, a full backlog, a panic, an unknown
//! topic) as the client hears it. The multi-process test, with a worker killed by SIGKILL
//! while 10 000 asks are in flight, is in `workers_cluster.rs`.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use sss_client::{Client, Options};
use sss_server::scaler::{RedisOptions, RedisScaler};
use sss_server::worker::{Gateway, Worker, WorkerOptions};
use sss_server::{codes, Inbound, Rejection, Server, ServerOptions, Session};
use sss_tests::services::{unique_prefix, RedisServer};
use sss_tests::{init_tracing, start, within};

/// A worker-mode event count, as `/metrics` shows it.
fn events(server: &Server, event: &str) -> u64 {
    let series = format!(r#"sss_worker_events_total{{event="{event}"}} "#);
    server
        .render_metrics()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&series)
                .map(|v| v.trim().parse().expect("a count"))
        })
        .expect("the series is there")
}

fn options(prefix: &str) -> WorkerOptions {
    WorkerOptions {
        prefix: prefix.to_owned(),
        ..WorkerOptions::default()
    }
}

async fn scaler(redis: &RedisServer, prefix: &str) -> RedisScaler {
    let opts = RedisOptions {
        prefix: prefix.to_owned(),
        ..RedisOptions::default()
    };
    RedisScaler::connect(redis.url(), opts)
        .await
        .expect("scaler")
}

/// A gateway routing `whoami`, `tell-first`, `boot-me`, `boom` and `nobody-handles` asks and
/// `echo` tells; `?user=` names the socket's user, and the middleware refuses asks whose
/// message is `"forbidden"`.
async fn gateway(redis: &RedisServer, opts: WorkerOptions) -> (Server, String) {
    let prefix = opts.prefix.clone();
    let routes = Gateway::new(redis.url(), opts)
        .asks([
            "whoami",
            "tell-first",
            "boot-me",
            "boom",
            "nobody-handles",
            "slow",
        ])
        .tells(["echo"]);
    let builder = Server::builder(scaler(redis, &prefix).await)
        .options(ServerOptions::default())
        .session_parser(|req| async move {
            Ok(match req.query.get("user") {
                Some(u) => Session::user(u.clone()).with_session("s1"),
                None => Session::anonymous(),
            })
        })
        .middleware(|_socket, inbound| async move {
            match &inbound {
                Inbound::Ask { msg, .. } if msg.get() == r#""forbidden""# => {
                    Err(Rejection::refused("the gateway's middleware said no"))
                }
                _ => Ok(inbound),
            }
        })
        .gateway(routes);
    let (server, listening, url) = start(builder).await;
    std::mem::forget(listening);
    (server, url)
}

/// A worker process's server: its handlers, on the cluster's Redis.
async fn worker(redis: &RedisServer, opts: WorkerOptions) -> (Server, Worker) {
    let server = Server::builder(scaler(redis, &opts.prefix).await)
        .on_ask("whoami", |socket, (): ()| async move {
            Ok::<_, Rejection>(json!({
                "socket": socket.id(),
                "user": socket.user(),
                "session": socket.session(),
                "worker": socket.server().map(|s| s.instance_id().to_owned()),
            }))
        })
        .on_ask("tell-first", |socket, n: u32| async move {
            for i in 0..n {
                socket
                    .tell("count", &i)
                    .map_err(|e| Rejection::new("x", e.to_string()))?;
            }
            Ok::<_, Rejection>(n)
        })
        .on_ask("boot-me", |socket, (): ()| async move {
            socket.boot();
            Ok::<_, Rejection>(())
        })
        .on_ask("boom", |_socket, (): ()| async move {
            if true {
                panic!("a handler bug");
            }
            Ok::<_, Rejection>(())
        })
        .on_ask("slow", |socket, ms: u64| async move {
            let _ = socket.tell("started", &ms);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Rejection>(ms)
        })
        .on_tell("echo", |socket, msg: Value| async move {
            let _ = socket.tell("echoed", &msg);
        })
        .build()
        .await
        .expect("worker's server");
    let w = Worker::start(&server, redis.url(), opts)
        .await
        .expect("worker starts");
    (server, w)
}

async fn client(url: &str) -> Client {
    within("connect", Client::connect(url, Options::default()))
        .await
        .expect("connects")
}

#[tokio::test]
async fn a_workers_handler_sees_the_gateways_socket_and_reaches_it() {
    init_tracing();
    let redis = RedisServer::start().await;
    let opts = options(&unique_prefix());
    let (gw, url) = gateway(&redis, opts.clone()).await;
    let (w_server, _w) = worker(&redis, opts.clone()).await;
    let c = client(&format!("{url}?user=ann")).await;

    let who: Value = within("whoami", c.ask("whoami", &()))
        .await
        .expect("answer");
    let me = c.identity().expect("welcomed");
    assert_eq!(
        who["socket"],
        json!(me.socket),
        "the worker sees the gateway's socket id"
    );
    assert_eq!(who["user"], json!("ann"));
    assert_eq!(who["session"], json!("s1"));
    assert_eq!(who["worker"], json!(w_server.instance_id()));
    assert_ne!(w_server.instance_id(), gw.instance_id());

    // Tells the handler sent reach the client before the ask's answer, in order.
    let mut counts = c.on_tell("count");
    let n: u32 = within("tell-first", c.ask("tell-first", &5))
        .await
        .expect("answer");
    assert_eq!(n, 5);
    for i in 0..5u32 {
        let m = within("count", counts.next()).await.expect("tell");
        assert_eq!(
            m.get(),
            i.to_string(),
            "tells in the order the handler sent them"
        );
    }

    // A routed tell runs on the worker, which tells the socket back through the gateway.
    let mut echoed = c.on_tell("echoed");
    c.tell("echo", &json!({"hi": 1})).expect("tell");
    let back = within("echoed", echoed.next()).await.expect("echo");
    assert_eq!(back.get(), r#"{"hi":1}"#);

    // The gateway's middleware runs before anything reaches a worker.
    let refused = within("forbidden", c.ask::<_, Value>("whoami", &"forbidden"))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), codes::REFUSED);

    // A worker boots the socket: closed by its gateway with `booted`.
    let _ = within("boot-me", c.ask::<_, Value>("boot-me", &())).await;
    within(
        "closed",
        c.wait_status(|s| s == sss_client::ClientStatus::Closed),
    )
    .await;
}

#[tokio::test]
async fn a_panicking_handler_answers_internal_and_the_worker_keeps_serving() {
    init_tracing();
    let redis = RedisServer::start().await;
    let opts = options(&unique_prefix());
    let (_gw, url) = gateway(&redis, opts.clone()).await;
    let (_w_server, _w) = worker(&redis, opts.clone()).await;
    let c = client(&url).await;
    for _ in 0..3 {
        let e = within("boom", c.ask::<_, Value>("boom", &()))
            .await
            .expect_err("a panic is an error");
        assert_eq!(e.code(), codes::INTERNAL);
        let who: Value = within("whoami", c.ask("whoami", &()))
            .await
            .expect("still serving");
        assert!(who["socket"].is_string());
    }
    // A routed topic no worker of the group handles.
    let e = within("nobody", c.ask::<_, Value>("nobody-handles", &()))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), codes::UNKNOWN_TOPIC);
}

#[tokio::test]
async fn without_workers_asks_are_refused_busy_or_unavailable_never_silent() {
    init_tracing();
    let redis = RedisServer::start().await;
    let opts = WorkerOptions {
        ask_timeout: Duration::from_millis(300),
        max_backlog: 3,
        ..options(&unique_prefix())
    };
    let (_gw, url) = gateway(&redis, opts.clone()).await;
    let c = client(&url).await;

    // Nobody takes the jobs: each ask waits its deadline and is answered `unavailable`.
    let e = within("no worker", c.ask::<_, Value>("whoami", &()))
        .await
        .expect_err("nobody answers");
    assert_eq!(e.code(), codes::UNAVAILABLE);

    // The stream holds that job and two more; the fourth is refused at once: `busy`.
    for _ in 0..2 {
        let e = within("fill", c.ask::<_, Value>("whoami", &()))
            .await
            .expect_err("nobody answers");
        assert_eq!(e.code(), codes::UNAVAILABLE);
    }
    let e = within("full", c.ask::<_, Value>("whoami", &()))
        .await
        .expect_err("backlog full");
    assert_eq!(e.code(), codes::BUSY);

    // A worker arrives: it drops the three jobs past their deadline unrun, the backlog
    // drains, and asks are answered again.
    let (w_server, _w) = worker(&redis, opts.clone()).await;
    let who: Value = within("served", async {
        loop {
            match c.ask::<_, Value>("whoami", &()).await {
                Ok(v) => break v,
                Err(e) => assert!([codes::BUSY, codes::UNAVAILABLE].contains(&e.code()), "{e}"),
            }
        }
    })
    .await;
    assert!(who["socket"].is_string());
    let expired = events(&w_server, "job_expired");
    assert!(expired >= 3, "the jobs past their deadline: {expired}");
}

#[tokio::test]
async fn a_job_left_with_a_stopped_worker_is_claimed_by_another() {
    init_tracing();
    let redis = RedisServer::start().await;
    let opts = WorkerOptions {
        claim_idle: Duration::from_millis(300),
        ask_timeout: Duration::from_secs(8),
        ..options(&unique_prefix())
    };
    let (_gw, url) = gateway(&redis, opts.clone()).await;
    let (_first_server, first) = worker(&redis, opts.clone()).await;
    let c = client(&url).await;
    // The first worker takes the job, then stops without finishing it (its grace is shorter
    // than the handler), as a crashed worker would leave it: unacknowledged.
    let mut started = c.on_tell("started");
    let slow = c.ask::<_, u64>("slow", &1500);
    let stop = async {
        started
            .next()
            .await
            .expect("the first worker started the job");
        first.stop(Duration::from_millis(10)).await;
        worker(&redis, opts.clone()).await
    };
    let (answer, (second_server, _second)) =
        within("claimed", futures::future::join(slow, stop)).await;
    assert_eq!(answer.expect("answered by the second worker"), 1500);
    assert_eq!(events(&second_server, "job_claimed"), 1);
}

/// The consumer names in the group, as Redis lists them.
async fn consumers(redis: &RedisServer, prefix: &str) -> Vec<String> {
    let mut admin = sss_tests::services::redis_admin(redis.url()).await;
    let stream = format!("{prefix}:w:{{default}}");
    let info: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg("workers")
        .query_async(&mut admin)
        .await
        .expect("xinfo");
    info.iter()
        .filter_map(|fields| match fields.get(1) {
            Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_consumer_of_a_worker_that_is_gone_is_forgotten() {
    init_tracing();
    let redis = RedisServer::start().await;
    let opts = WorkerOptions {
        claim_idle: Duration::from_millis(100),
        ..options(&unique_prefix())
    };
    let (first_server, first) = worker(&redis, opts.clone()).await;
    let (_second_server, _second) = worker(&redis, opts.clone()).await;
    let gone = first_server.instance_id().to_owned();
    within("both read", async {
        while consumers(&redis, &opts.prefix).await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    first.stop(Duration::from_secs(1)).await;
    // Forgotten by the other worker after ten seconds of silence with nothing pending.
    tokio::time::timeout(Duration::from_secs(30), async {
        while consumers(&redis, &opts.prefix).await.contains(&gone) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the stopped worker's consumer is forgotten");
}

#[tokio::test]
async fn each_group_of_workers_gets_the_topics_routed_to_it() {
    init_tracing();
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let group = |name: &str| WorkerOptions {
        group: name.to_owned(),
        ask_timeout: Duration::from_millis(500),
        ..options(&prefix)
    };
    let builder = Server::builder(scaler(&redis, &prefix).await)
        .gateway(Gateway::new(redis.url(), group("a")).asks(["whoami"]))
        .gateway(Gateway::new(redis.url(), group("b")).asks(["slow"]));
    let (_gw, listening, url) = start(builder).await;
    let _listening = listening;
    let c = client(&url).await;

    // Only group b has a worker: its topic is answered, group a's is not.
    let (_b_server, _b) = worker(&redis, group("b")).await;
    let ms: u64 = within("slow", c.ask("slow", &1))
        .await
        .expect("group b answers");
    assert_eq!(ms, 1);
    let e = within("whoami", c.ask::<_, Value>("whoami", &()))
        .await
        .expect_err("no worker in group a");
    assert_eq!(e.code(), codes::UNAVAILABLE);

    // A worker of group a arrives: it answers its topic (the expired job is dropped unrun).
    let (a_server, _a) = worker(&redis, group("a")).await;
    let who: Value = within("whoami", c.ask("whoami", &()))
        .await
        .expect("group a answers");
    assert_eq!(who["worker"], json!(a_server.instance_id()));
}
