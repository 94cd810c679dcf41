//! Bad input and misbehaving peers: each gets its documented close code, and the server keeps
//! serving everyone else.

use std::time::Duration;

use futures::StreamExt;
use sss_client::{Client, Options, SubEvent};
use sss_server::{close, MemoryScaler, Rejection, Server, ServerBuilder, ServerOptions};
use sss_tests::{start, within, RawPeer};
use tokio_tungstenite::tungstenite::Message;

fn app(options: ServerOptions) -> ServerBuilder {
    Server::builder(MemoryScaler::default())
        .options(options)
        .on_ask("add", |_s, (a, b): (i64, i64)| async move {
            Ok::<_, Rejection>(a + b)
        })
}

/// A healthy client that must keep working while another socket misbehaves.
async fn bystander(url: &str) -> Client {
    let c = within("connect", Client::connect(url, Options::default()))
        .await
        .expect("connects");
    assert_eq!(
        within("ask", c.ask::<_, i64>("add", &(1, 2)))
            .await
            .expect("ask"),
        3
    );
    c
}

async fn still_serves(c: &Client) {
    let sum: i64 = within("ask", c.ask("add", &(20, 22)))
        .await
        .expect("still served");
    assert_eq!(sum, 42);
}

#[tokio::test]
async fn malformed_frame_closes_only_that_socket() {
    let (_server, _l, url) = start(app(ServerOptions::default())).await;
    let ok = bystander(&url).await;
    for bad in [
        "{not json",
        r#"{"t":"what"}"#,
        r#"{"t":"ask","topic":"add"}"#,
        r#"[1,2]"#,
        // A frame is an object: the array of its fields in order is refused too.
        r#"["ask",null,1,"add",[1,1],null,null,null,null,null,null,null,null,null,null,null]"#,
    ] {
        let mut peer = RawPeer::hello(&url).await;
        peer.send(bad).await;
        let error = peer.next_text().await.expect("error frame first");
        assert!(error.contains(r#""t":"error""#), "{error}");
        assert_eq!(peer.closed().await.0, close::PROTOCOL_ERROR, "for {bad}");
        still_serves(&ok).await;
    }
}

#[tokio::test]
async fn frames_before_hello_and_binary_frames_are_protocol_errors() {
    let (_server, _l, url) = start(app(ServerOptions::default())).await;
    let ok = bystander(&url).await;
    let mut peer = RawPeer::connect(&url).await;
    peer.send(r#"{"t":"ask","id":1,"topic":"add","msg":[1,1]}"#)
        .await;
    assert_eq!(peer.closed().await.0, close::PROTOCOL_ERROR);
    let mut peer = RawPeer::hello(&url).await;
    peer.send_message(Message::Binary(vec![1u8, 2, 3].into()))
        .await;
    assert_eq!(peer.closed().await.0, close::PROTOCOL_ERROR);
    still_serves(&ok).await;
}

#[tokio::test]
async fn unknown_version_is_refused_plainly() {
    let (_server, _l, url) = start(app(ServerOptions::default())).await;
    // Versions beyond u32 read as u32::MAX: still a version, not a malformed frame.
    for (v, shown) in [("99", "99"), ("4294967296", "4294967295")] {
        let mut peer = RawPeer::connect(&url).await;
        peer.send(&format!(r#"{{"t":"hello","v":{v}}}"#)).await;
        let error = peer.next_text().await.expect("error frame");
        assert!(error.contains("unsupported_version"), "{error}");
        let (code, reason) = peer.closed().await;
        assert_eq!(code, close::UNSUPPORTED_VERSION, "for v {v}");
        assert!(reason.contains(shown), "{reason}");
    }
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let (_server, _l, url) = start(app(ServerOptions::default().max_message_size(1024))).await;
    let ok = bystander(&url).await;
    let mut peer = RawPeer::hello(&url).await;
    let big = format!(r#"{{"t":"tell","topic":"x","msg":"{}"}}"#, "a".repeat(4096));
    peer.send(&big).await;
    assert_eq!(peer.closed().await.0, close::MESSAGE_TOO_BIG);
    // The native client's oversized ask costs it its connection, not its life: it reconnects.
    let e = within("ask", ok.ask::<_, ()>("add", &"b".repeat(4096)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), sss_server::codes::DISCONNECTED);
    still_serves(&ok).await;
}

#[tokio::test]
async fn silent_socket_is_closed_by_the_heartbeat() {
    let options = ServerOptions::default().heartbeat(Duration::from_millis(100));
    let (_server, _l, url) = start(app(options)).await;
    // The raw peer reads the server's pings but never answers them.
    let mut peer = RawPeer::hello(&url).await;
    let (frames, (code, _)) = peer.until_closed().await;
    assert!(!frames.is_empty(), "the server pinged before giving up");
    assert!(
        frames.iter().all(|f| f.contains(r#""t":"ping""#)),
        "{frames:?}"
    );
    assert_eq!(code, close::HEARTBEAT_TIMEOUT);
    // A peer that answers every ping stays connected across many intervals: each ping it
    // receives is an event proving the server still holds it, whatever the scheduling delays
    // (an earlier version watched a real client's status for 800 ms, which a busy machine could
    // fail by delaying a pong past the 200 ms limit).
    // Its own server, with a heartbeat long enough that only a stall of a second fails it.
    let options = ServerOptions::default().heartbeat(Duration::from_millis(500));
    let (_server, _l, url) = start(app(options)).await;
    let mut peer = RawPeer::hello(&url).await;
    for _ in 0..3 {
        let ping = peer.next_text().await.expect("the server keeps pinging");
        assert!(ping.contains(r#""t":"ping""#), "{ping}");
        peer.send(r#"{"t":"pong"}"#).await;
    }
    peer.send(r#"{"t":"ask","id":1,"topic":"add","msg":[1,2]}"#)
        .await;
    loop {
        let f = peer.next_text().await.expect("still connected");
        if f.contains(r#""t":"res""#) {
            break;
        }
    }
}

#[tokio::test]
async fn missing_hello_times_out() {
    let options = ServerOptions::default().handshake_timeout(Duration::from_millis(100));
    let (_server, _l, url) = start(app(options)).await;
    let mut peer = RawPeer::connect(&url).await;
    assert_eq!(peer.closed().await.0, close::HANDSHAKE_TIMEOUT);
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4004() {
    let options = ServerOptions::default().outbound_queue(8);
    let (server, _l, url) = start(app(options)).await;
    let ok = bystander(&url).await;
    let mut okay_sub = within("sub", ok.subscribe("quiet", None::<()>))
        .await
        .expect("sub");
    let mut peer = RawPeer::hello(&url).await;
    peer.send(r#"{"t":"sub","id":1,"ch":"firehose"}"#).await;
    let subok = peer.next_text().await.expect("subok");
    assert!(subok.contains("subok"), "{subok}");
    // The peer stops reading; 300 x 64 KiB overflow the socket buffers and the 8-frame queue.
    let chunk = "x".repeat(64 * 1024);
    for _ in 0..300 {
        server
            .publish("firehose", "m", &chunk)
            .await
            .expect("publish");
    }
    assert_eq!(peer.closed().await.0, close::SLOW_CONSUMER);
    server.publish("quiet", "m", &1).await.expect("publish");
    match within("publication", okay_sub.next()).await {
        Some(SubEvent::Publication(p)) => assert_eq!(p.msg.get(), "1"),
        other => panic!("{other:?}"),
    }
    still_serves(&ok).await;
}

#[tokio::test]
async fn too_many_concurrent_asks_are_refused_with_busy() {
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let builder =
        app(ServerOptions::default().max_concurrent_asks(4)).on_ask("hold", move |_s, ()| {
            let entered = entered_tx.clone();
            async move {
                let _ = entered.send(());
                std::future::pending::<()>().await;
                Ok::<_, Rejection>(())
            }
        });
    let (_server, _l, url) = start(builder).await;
    let c = bystander(&url).await;
    let held: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.ask::<_, ()>("hold", &()).await })
        })
        .collect();
    for _ in 0..4 {
        within("held ask reaches its handler", entered.recv()).await;
    }
    let e = within("ask", c.ask::<_, i64>("add", &(1, 1)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), sss_server::codes::BUSY);
    for h in held {
        h.abort();
    }
}
