//! The scaler conformance suite against the Redis scaler on a real `redis-server`, and what a
//! Redis restart or a dropped connection does to a cluster.

use std::sync::Arc;
use std::time::Duration;

use sss_server::scaler::{History, RedisOptions, RedisScaler, Scaler, ScalerError, ScalerEvent};
use sss_server::Position;
use sss_tests::conformance::{msg, publish_retrying, Node};
use sss_tests::redis_backend::RedisBackend;
use sss_tests::services::{redis_admin, unique_prefix, Persistence, RedisServer};
use sss_tests::within;
use tokio::sync::mpsc;

/// A Redis server of the test's own (or `REDIS_URL`).
async fn backend() -> RedisBackend {
    RedisBackend::Single(RedisServer::start().await)
}

sss_tests::conformance_tests!(backend());

/// A publisher instance and a subscriber instance on `url` with key prefix `prefix`, started.
async fn pair(url: &str, command_timeout: Duration, prefix: &str) -> (Node, Node) {
    sss_tests::init_tracing();
    let opts = RedisOptions {
        prefix: prefix.to_owned(),
        command_timeout,
        ..RedisOptions::default()
    };
    let a = RedisScaler::connect(url, opts).await.expect("connects");
    let b = a.instance().expect("instance");
    let mut nodes = Vec::new();
    for s in [a, b] {
        let scaler: Arc<dyn Scaler> = Arc::new(s);
        let (tx, events) = mpsc::unbounded_channel();
        scaler.start(tx).await.expect("starts");
        nodes.push(Node { scaler, events });
    }
    let b = nodes.pop().expect("b");
    let a = nodes.pop().expect("a");
    (a, b)
}

/// Redis restarts mid-stream; the subscriber instance keeps receiving. With the data kept,
/// every record arrives exactly once, in order, in one epoch. Without, the channel restarts in
/// a new epoch that the subscriber is given, and old positions are unrecoverable.
async fn restart_mid_stream(keep_data: bool) {
    let persistence = if keep_data {
        Persistence::AppendOnly
    } else {
        Persistence::Ephemeral
    };
    let mut server = RedisServer::spawn(persistence).await;
    let (a, mut b) = pair(server.url(), Duration::from_secs(2), &unique_prefix()).await;
    b.scaler.subscribe("s").await.expect("subscribe");
    let mut before = Position::new("", 0);
    for n in 1..=5 {
        before = a.scaler.publish("s", "t", &msg(n)).await.expect("publish");
    }
    for seq in 1..=5 {
        assert_eq!(b.next_pub().await.1.position.seq, seq);
    }
    within("redis restart", server.restart(keep_data)).await;
    let mut after = Vec::new();
    for n in 6..=15 {
        after.push(publish_retrying(a.scaler.as_ref(), "s", n).await);
    }
    if keep_data {
        for (p, seq) in after.iter().zip(6..) {
            assert_eq!(*p, Position::new(before.epoch.clone(), seq));
        }
    } else {
        let epoch = after[0].epoch.clone();
        assert_ne!(epoch, before.epoch, "the data was lost: a new epoch");
        for (p, seq) in after.iter().zip(1..) {
            assert_eq!(*p, Position::new(epoch.clone(), seq));
        }
        match a.scaler.history("s", &before).await.expect("history") {
            History::Unrecoverable { head } => assert_eq!(head, after[9]),
            History::Recovered(r) => panic!("recovered {} records across epochs", r.len()),
        }
    }
    for p in &after {
        let (channel, record) = b.next_pub().await;
        assert_eq!(&*channel, "s");
        assert_eq!(&record.position, p);
    }
    b.expect_quiet(a.scaler.as_ref(), "marker").await;
    a.scaler.stop().await;
    b.scaler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_data_delivers_every_record_once() {
    within("restart with data", restart_mid_stream(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_data_starts_a_new_epoch() {
    within("restart without data", restart_mid_stream(false)).await;
}

/// The pub/sub connection is cut while Redis stays up and publications continue: the
/// subscriber instance reconnects and delivers what it missed from the history, exactly once,
/// then the live stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_pubsub_connection_closes_the_gap() {
    let server = RedisServer::start().await;
    let (a, mut b) = pair(server.url(), Duration::from_secs(2), &unique_prefix()).await;
    b.scaler.subscribe("g").await.expect("subscribe");
    a.scaler.publish("g", "t", &msg(1)).await.expect("publish");
    assert_eq!(b.next_pub().await.1.position.seq, 1);
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut redis_admin(server.url()).await)
        .await
        .expect("CLIENT KILL");
    assert!(killed >= 1, "killed the pub/sub connections");
    // Published while the subscriber instance is (most likely) still reconnecting.
    for n in 2..=30 {
        a.scaler.publish("g", "t", &msg(n)).await.expect("publish");
    }
    within("gap closed", async {
        for seq in 2..=30 {
            let (channel, record) = b.next_pub().await;
            assert_eq!((&*channel, record.position.seq), ("g", seq));
        }
    })
    .await;
    // Control messages flow again too.
    a.scaler
        .control(sss_server::scaler::Control::BootUser { user: "u".into() })
        .await
        .expect("control");
    assert!(matches!(b.next().await, ScalerEvent::Control(_)));
    b.expect_quiet(a.scaler.as_ref(), "marker").await;
    a.scaler.stop().await;
    b.scaler.stop().await;
}

/// While Redis is down, commands fail with `Unavailable` within the command timeout instead of
/// hanging, and subscribing is refused; once it is back, everything works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_while_redis_is_down() {
    let mut server = RedisServer::spawn(Persistence::Ephemeral).await;
    let timeout = Duration::from_millis(500);
    let (a, mut b) = pair(server.url(), timeout, &unique_prefix()).await;
    b.scaler.subscribe("d").await.expect("subscribe");
    server.stop(false).await;
    let bound = timeout * 3;
    let r = within("publish while down", async {
        tokio::time::timeout(bound, a.scaler.publish("d", "t", &msg(1))).await
    })
    .await;
    assert!(
        matches!(r, Ok(Err(ScalerError::Unavailable(_)))),
        "publish while down: {r:?}"
    );
    let r = tokio::time::timeout(bound, a.scaler.position("d")).await;
    assert!(matches!(r, Ok(Err(ScalerError::Unavailable(_)))), "{r:?}");
    let r = tokio::time::timeout(bound, a.scaler.history("d", &Position::new("x", 0))).await;
    assert!(matches!(r, Ok(Err(ScalerError::Unavailable(_)))), "{r:?}");
    let r = tokio::time::timeout(bound, b.scaler.subscribe("other")).await;
    assert!(matches!(r, Ok(Err(ScalerError::Unavailable(_)))), "{r:?}");
    server.resume().await;
    let p = publish_retrying(a.scaler.as_ref(), "d", 2).await;
    let (_, record) = b.next_pub().await;
    assert_eq!(record.position, p);
    a.scaler.stop().await;
    b.scaler.stop().await;
}

/// `connect` refuses a malformed URL and an unreachable server without hanging.
#[tokio::test]
async fn connect_errors() {
    let opts = RedisOptions {
        command_timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    };
    assert!(matches!(
        RedisScaler::connect("not a url", opts.clone()).await,
        Err(ScalerError::Unavailable(_))
    ));
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let r = within(
        "connect to nothing",
        RedisScaler::connect(&format!("redis://127.0.0.1:{port}/"), opts),
    )
    .await;
    assert!(matches!(r, Err(ScalerError::Unavailable(_))), "{r:?}");
}

/// How a subscriber instance learns that Redis lost records it had delivered.
#[derive(Clone, Copy)]
enum Learns {
    /// From the next live record: it reuses a seq the instance delivered with another id.
    Live,
    /// From its catch-up after a pub/sub reconnection: the history ends before what it
    /// delivered.
    CatchUp,
}

/// Redis loses the last record after the subscriber instance delivered it (as a failover to a
/// replica that had not received it does) and the next publication reuses its seq: the
/// subscriber delivers nothing of the forked history, the channel's epoch ends, and what comes
/// next is in a new epoch (so clients are told their channel is unrecoverable), never a silent
/// gap.
async fn forked_history(learns: Learns) {
    let server = RedisServer::start().await;
    let prefix = unique_prefix();
    let (a, mut b) = pair(server.url(), Duration::from_secs(2), &prefix).await;
    b.scaler.subscribe("f").await.expect("subscribe");
    let mut last = Position::new("", 0);
    for n in 1..=5 {
        last = a.scaler.publish("f", "t", &msg(n)).await.expect("publish");
    }
    for seq in 1..=5 {
        assert_eq!(b.next_pub().await.1.position.seq, seq);
    }
    // The loss: record 5 gone, the stream and the seq back to 4.
    let mut admin = redis_admin(server.url()).await;
    let base = format!("{prefix}:{{f}}");
    let _: () = redis::pipe()
        .cmd("XDEL")
        .arg(format!("{base}:hist"))
        .arg("5-0")
        .cmd("XSETID")
        .arg(format!("{base}:hist"))
        .arg("4-0")
        .cmd("DECR")
        .arg(format!("{base}:seq"))
        .query_async(&mut admin)
        .await
        .expect("XDEL, XSETID, DECR");
    match learns {
        Learns::Live => {
            let reused = a.scaler.publish("f", "t", &msg(6)).await.expect("publish");
            assert_eq!(reused, last, "the lost seq is handed out again");
        }
        Learns::CatchUp => {
            let killed: u64 = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "pubsub"])
                .query_async(&mut admin)
                .await
                .expect("CLIENT KILL");
            assert!(killed >= 1, "killed the pub/sub connections");
        }
    }
    // The subscriber ends the epoch; nothing announces it but the channel's state.
    within("the forked epoch ends", async {
        while a.scaler.position("f").await.expect("position").epoch == last.epoch {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let next = a.scaler.publish("f", "t", &msg(7)).await.expect("publish");
    assert_ne!(next.epoch, last.epoch);
    let (_, record) = b.next_pub().await;
    assert_eq!(
        record.position, next,
        "nothing of the forked history was delivered"
    );
    assert_eq!(record.msg.get(), msg(7).get());
    match a.scaler.history("f", &last).await.expect("history") {
        History::Unrecoverable { head } => assert_eq!(head, next),
        History::Recovered(r) => panic!("recovered {} records across a fork", r.len()),
    }
    b.expect_quiet(a.scaler.as_ref(), "marker").await;
    a.scaler.stop().await;
    b.scaler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_seq_ends_the_epoch() {
    within("forked history, live", forked_history(Learns::Live)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_behind_what_was_delivered_ends_the_epoch() {
    within("forked history, catch-up", forked_history(Learns::CatchUp)).await;
}
