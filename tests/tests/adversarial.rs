//! Attacks on a socket, over real sockets: each test's name says the attack, and each one
//! failed on the server before its socket logic became a state machine. Frames are pipelined in
//! one TCP write where the attack needs it; "nothing else arrived" is proven by the answer to an
//! ask sent last (a marker), never by waiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sss_server::{close, MemoryScaler, Rejection, Server, ServerBuilder, ServerOptions, Session};
use sss_tests::{start, within, RawPeer};
use tokio::sync::Semaphore;

/// The chat demo's rules: users from the query string, `room:secret` needs a password, and a
/// `mark` ask that answers its argument (the marker).
fn app(options: ServerOptions) -> ServerBuilder {
    Server::builder(MemoryScaler::default())
        .options(options)
        .session_parser(|req| async move {
            let user = req.query.get("user").cloned().unwrap_or_default();
            Ok(Session::user(user.clone()).with_session(format!("s-{user}")))
        })
        .subscription_parser(|_socket, channel, query| async move {
            match channel.as_str() {
                "room:secret" => match query.as_deref().map(|q| q.get()) {
                    Some(r#"{"password":"letmein"}"#) => Ok(()),
                    _ => Err(Rejection::refused("wrong password")),
                },
                c if c.starts_with("room:") => Ok(()),
                _ => Err(Rejection::new("no_such_room", "rooms are room:*")),
            }
        })
        .on_ask("mark", |_s, n: u64| async move {
            Ok::<_, Rejection>(format!("marker-{n}"))
        })
}

fn sub(id: u64, ch: &str) -> String {
    json!({"t": "sub", "id": id, "ch": ch}).to_string()
}

fn sub_since(id: u64, ch: &str, epoch: &str, seq: u64) -> String {
    json!({"t": "sub", "id": id, "ch": ch, "since": {"e": epoch, "s": seq}}).to_string()
}

fn mark(n: u64) -> String {
    json!({"t": "ask", "id": 1_000_000 + n, "topic": "mark", "msg": n}).to_string()
}

fn kinds(frames: &[String]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            let v: serde_json::Value = serde_json::from_str(f).expect("json");
            match v["code"].as_str() {
                Some(code) => format!("{}:{code}", v["t"].as_str().unwrap_or_default()),
                None => v["t"].as_str().unwrap_or_default().to_owned(),
            }
        })
        .collect()
}

/// Pipelines `frames` then a marker, and returns what arrived before the marker.
async fn pipelined(peer: &mut RawPeer, frames: &[String], n: u64) -> Vec<String> {
    let mut all = frames.to_vec();
    all.push(mark(n));
    peer.send_pipelined(&all).await;
    peer.until_marker(&format!("marker-{n}")).await
}

/// Reads frames until every `sub` id in `ids` is answered; returns them all.
async fn answers(peer: &mut RawPeer, ids: &[u64]) -> Vec<String> {
    let mut frames = Vec::new();
    let mut open: Vec<u64> = ids.to_vec();
    while !open.is_empty() {
        let f = peer.next_text().await.expect("connection open");
        let v: serde_json::Value = serde_json::from_str(&f).expect("json");
        if matches!(v["t"].as_str(), Some("subok" | "subrej")) {
            let id = v["id"].as_u64().expect("id");
            assert!(
                open.contains(&id),
                "sub {id} answered twice or unasked: {f}"
            );
            open.retain(|&o| o != id);
        }
        frames.push(f);
    }
    frames
}

/// Pipelined `sub`s for a channel the socket may not read are each answered with a refusal
/// (the older ones as superseded while the parser decides), and the channel's publications
/// never reach the socket, before or after.
async fn refused_however_pipelined(channel: &str, code: &str) {
    let (server, _l, url) = start(app(ServerOptions::default())).await;
    let epoch = match server.publish(channel, "dm", &"before").await {
        Ok(p) => p.epoch,
        Err(_) => "e".to_owned(), // an invalid name cannot be published to either
    };
    for round in 0..20 {
        let mut eve = RawPeer::hello(&format!("{url}?user=eve")).await;
        let frames = [
            sub(1, channel),
            sub(2, channel),
            sub_since(3, channel, &epoch, 0),
            sub(4, channel),
        ];
        eve.send_pipelined(&frames).await;
        let got = kinds(&answers(&mut eve, &[1, 2, 3, 4]).await);
        let expected: Vec<String> = if code == "refused" {
            // The parser is asked for the newest only; the older ones are superseded at once.
            let mut e = vec!["subrej:superseded".to_owned(); 3];
            e.push(format!("subrej:{code}"));
            e
        } else {
            vec![format!("subrej:{code}"); 4]
        };
        assert_eq!(got, expected, "round {round}");
        let _ = server.publish(channel, "dm", &"secret").await;
        let after = pipelined(&mut eve, &[], round).await;
        assert!(after.is_empty(), "round {round}: {after:?}");
        // A resync from the start is a new subscription too, and is refused again.
        eve.send_pipelined(&[sub_since(5, channel, &epoch, 0)])
            .await;
        assert_eq!(
            kinds(&answers(&mut eve, &[5]).await),
            [format!("subrej:{code}")]
        );
        let after = pipelined(&mut eve, &[], 100 + round).await;
        assert!(after.is_empty(), "round {round}: {after:?}");
    }
}

#[tokio::test]
async fn pipelined_subs_cannot_read_another_users_direct_messages() {
    refused_however_pipelined("#user:bob", "reserved_channel").await;
}

#[tokio::test]
async fn pipelined_subs_cannot_open_a_password_room() {
    refused_however_pipelined("room:secret", "refused").await;
}

#[tokio::test]
async fn pipelined_subs_cannot_use_an_invalid_channel_name() {
    refused_however_pipelined("bad name!", "invalid_channel").await;
}

#[tokio::test]
async fn pipelined_subs_cannot_use_a_reserved_name() {
    refused_however_pipelined("#admin", "reserved_channel").await;
}

#[tokio::test]
async fn sub_unsub_sub_in_one_write_keeps_receiving() {
    let (server, _l, url) = start(app(ServerOptions::default())).await;
    for round in 0..20u64 {
        let ch = format!("room:{round}");
        let mut peer = RawPeer::hello(&format!("{url}?user=ann")).await;
        peer.send_pipelined(&[
            sub(1, &ch),
            json!({"t": "unsub", "ch": ch}).to_string(),
            sub(2, &ch),
        ])
        .await;
        let got = kinds(&answers(&mut peer, &[1, 2]).await);
        assert_eq!(got, ["subrej:cancelled", "subok"], "round {round}");
        let pos = server.publish(&ch, "m", &round).await.expect("publish");
        let after = pipelined(&mut peer, &[], round).await;
        assert_eq!(
            kinds(&after),
            ["pub"],
            "round {round}: a publication at {pos}"
        );
        assert_eq!(server.local_channels(), 1, "round {round}");
        drop(peer);
        within("the channel to be freed", async {
            while server.local_channels() != 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
}

#[tokio::test]
async fn superseded_and_cancelled_subs_are_answered_on_the_wire() {
    let (_server, _l, url) = start(app(ServerOptions::default())).await;
    let mut peer = RawPeer::hello(&format!("{url}?user=ann")).await;
    peer.send_pipelined(&[
        sub(1, "room:a"),
        sub(2, "room:a"),
        sub(3, "room:b"),
        json!({"t": "unsub", "ch": "room:b"}).to_string(),
    ])
    .await;
    let got = kinds(&answers(&mut peer, &[1, 2, 3]).await);
    assert_eq!(
        got,
        ["subrej:superseded", "subrej:cancelled", "subok"],
        "sub 1 superseded and sub 3 cancelled at once; sub 2 answered by the parser"
    );
}

#[tokio::test]
async fn subscriptions_beyond_the_per_socket_limit_are_refused() {
    let (_server, _l, url) = start(app(ServerOptions::default().max_subscriptions(3))).await;
    let mut peer = RawPeer::hello(&format!("{url}?user=ann")).await;
    let frames: Vec<String> = (1..=5).map(|n| sub(n, &format!("room:{n}"))).collect();
    peer.send_pipelined(&frames).await;
    let mut got = kinds(&answers(&mut peer, &[1, 2, 3, 4, 5]).await);
    got.sort();
    assert_eq!(
        got,
        ["subok", "subok", "subok", "subrej:limit", "subrej:limit"]
    );
}

#[tokio::test]
async fn a_hundred_thousand_channels_subscribed_and_left_are_all_freed() {
    let scaler = MemoryScaler::default();
    let probe = scaler.instance();
    let (server, _l, url) =
        start(Server::builder(scaler).options(ServerOptions::default().max_subscriptions(1000)))
            .await;
    let mut peer = RawPeer::hello(&url).await;
    for batch in 0..100u64 {
        let ids: Vec<u64> = (1..=1000).collect();
        let subs: Vec<String> = ids
            .iter()
            .map(|n| sub(*n, &format!("c:{batch}:{n}")))
            .collect();
        peer.send_pipelined(&subs).await;
        answers(&mut peer, &ids).await;
        let unsubs: Vec<String> = ids
            .iter()
            .map(|n| json!({"t": "unsub", "ch": format!("c:{batch}:{n}")}).to_string())
            .collect();
        peer.send_pipelined(&unsubs).await;
    }
    drop(peer);
    within("every channel to be freed", async {
        while server.local_channels() != 0 || probe.channel_count() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn tell_flood_at_a_slow_handler_holds_a_bounded_number_of_tasks() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (r, p, d, g) = (running.clone(), peak.clone(), done.clone(), gate.clone());
    let builder = app(ServerOptions::default().max_concurrent_tells(8)).on_tell(
        "slow",
        move |_s, _n: u64| {
            let (r, p, d, g) = (r.clone(), p.clone(), d.clone(), g.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                // Held until the handler ends; the test opens the gate for all at once.
                let _permit = g.acquire().await;
                r.fetch_sub(1, Ordering::SeqCst);
                d.fetch_add(1, Ordering::SeqCst);
            }
        },
    );
    let (_server, _l, url) = start(builder).await;
    let mut peer = RawPeer::hello(&url).await;
    let tells: Vec<String> = (0..5000)
        .map(|n| json!({"t": "tell", "topic": "slow", "msg": n}).to_string())
        .collect();
    // The server stops reading at 8 tells in flight; the rest wait in socket buffers.
    let sender = tokio::spawn(async move {
        peer.send_pipelined(&tells).await;
        peer
    });
    within("8 handlers running", async {
        while running.load(Ordering::SeqCst) < 8 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    gate.add_permits(5000);
    let mut peer = within("the flood to be sent", sender)
        .await
        .expect("sender");
    let after = pipelined(&mut peer, &[], 1).await;
    assert!(after.is_empty(), "{after:?}");
    within("every tell handled", async {
        while done.load(Ordering::SeqCst) != 5000 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        peak.load(Ordering::SeqCst) <= 8,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn a_panicking_tell_handler_frees_its_slot_and_the_socket_goes_on() {
    // Tells run on their socket's task, at once when they do not wait: a panic, whether the
    // handler makes its future or runs it, must neither end the socket nor keep a slot of
    // the 2 allowed in flight (the server would then stop reading the socket for good).
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let builder =
        app(ServerOptions::default().max_concurrent_tells(2)).on_tell("boom", move |_s, n: u64| {
            assert!(!n.is_multiple_of(2), "a panic before the future");
            let d = d.clone();
            async move {
                assert!(!n.is_multiple_of(3), "a panic in the future");
                d.fetch_add(1, Ordering::SeqCst);
            }
        });
    let (_server, _l, url) = start(builder).await;
    let mut peer = RawPeer::hello(&url).await;
    let tells: Vec<String> = (0..100u64)
        .map(|n| json!({"t": "tell", "topic": "boom", "msg": n}).to_string())
        .collect();
    let after = pipelined(&mut peer, &tells, 1).await;
    assert!(after.is_empty(), "{after:?}");
    // The odd numbers below 100 that 3 does not divide: 33 handlers ran to the end.
    within("every tell handled", async {
        while done.load(Ordering::SeqCst) != 33 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(pipelined(&mut peer, &[], 2).await.is_empty());
}

#[tokio::test]
async fn a_panicking_ask_handler_is_answered_internal_and_the_socket_goes_on() {
    // An ask handler makes its future on its socket's task and runs it there when it does not
    // wait: a panic in either is the ask's `internal` rejection, and the next asks are answered.
    let builder = app(ServerOptions::default()).on_ask("boom", |_s, n: u64| {
        assert!(!n.is_multiple_of(2), "a panic before the future");
        async move {
            assert!(!n.is_multiple_of(3), "a panic in the future");
            Ok::<_, Rejection>(n)
        }
    });
    let (_server, _l, url) = start(builder).await;
    let mut peer = RawPeer::hello(&url).await;
    let asks: Vec<String> = (1..=30u64)
        .map(|n| json!({"t": "ask", "id": n, "topic": "boom", "msg": n}).to_string())
        .collect();
    let answered = pipelined(&mut peer, &asks, 1).await;
    let mut seen = Vec::new();
    for frame in &answered {
        let v: serde_json::Value = serde_json::from_str(frame).expect("json");
        let n = v["id"].as_u64().expect("an answer");
        let expected = if n.is_multiple_of(2) || n.is_multiple_of(3) {
            json!({"t": "rej", "id": n, "code": "internal"})
        } else {
            json!({"t": "res", "id": n, "msg": n})
        };
        assert_eq!(v["t"], expected["t"], "{frame}");
        assert_eq!(v.get("code"), expected.get("code"), "{frame}");
        assert_eq!(v.get("msg"), expected.get("msg"), "{frame}");
        seen.push(n);
    }
    assert_eq!(
        seen,
        (1..=30).collect::<Vec<_>>(),
        "every ask answered once, in order"
    );
    assert!(pipelined(&mut peer, &[], 2).await.is_empty());
}

/// A peer with a narrow receive window, subscribed to `channel`, that has read the first of
/// `count` publications of `chunk` bytes and none of the rest: the server's writes to it back up
/// (it stops reading the peer while they are blocked), and what it sends next waits unread.
async fn backed_up_subscriber(
    server: &Server,
    url: &str,
    user: &str,
    channel: &str,
    chunk: usize,
    count: usize,
) -> RawPeer {
    let peer = RawPeer::connect_narrow(&format!("{url}?user={user}"), 4096).await;
    let mut peer = peer.welcomed().await;
    peer.send_pipelined(&[sub(1, channel)]).await;
    assert_eq!(kinds(&answers(&mut peer, &[1]).await), ["subok"]);
    let payload = "x".repeat(chunk);
    for _ in 0..count {
        server
            .publish(channel, "m", &payload)
            .await
            .expect("publish");
    }
    // The first publication proves the server is writing them (up to 64 in one write).
    let first = peer.next_text().await.expect("a publication");
    assert!(first.contains(r#""t":"pub""#), "{first}");
    peer
}

#[tokio::test]
async fn slow_consumer_that_wrote_many_asks_still_gets_its_4004_close_frame() {
    let (server, _l, url) = start(app(ServerOptions::default().outbound_queue(64))).await;
    for round in 0..3 {
        // 2.5 MiB backed up: at the close the server's send queue still holds publications
        // ahead of the close frame.
        let mut peer =
            backed_up_subscriber(&server, &url, "ann", "room:firehose", 64 * 1024, 40).await;
        // Asks the server cannot read while its write blocks, then publications until its
        // queue overflows: closing with the asks unread made the kernel reset the connection,
        // destroying the queued publications and the 4004 close frame.
        let asks: Vec<String> = (0..1000).map(mark).collect();
        peer.send_pipelined(&asks).await;
        let chunk = "x".repeat(64 * 1024);
        for _ in 0..200 {
            server
                .publish("room:firehose", "m", &chunk)
                .await
                .expect("publish");
        }
        let (_, (code, _)) = peer.until_closed().await;
        assert_eq!(code, close::SLOW_CONSUMER, "round {round}");
    }
}

#[tokio::test]
async fn a_close_frame_queued_behind_unread_data_is_not_lost_to_a_reset() {
    let (server, _l, url) = start(app(ServerOptions::default())).await;
    for round in 0..3 {
        let user = format!("ann{round}");
        // 6 MiB: more than the socket buffers hold.
        let mut peer = backed_up_subscriber(&server, &url, &user, "room:big", 64 * 1024, 96).await;
        // Frames the server cannot read while its write is blocked; then it closes the socket.
        let asks: Vec<String> = (0..1000).map(mark).collect();
        peer.send_pipelined(&asks).await;
        server.boot_user(&user).await.expect("boot");
        // The close frame is queued behind megabytes the peer has not read: it arrives only if
        // the server does not reset the connection over the unread asks.
        let (frames, (code, _)) = peer.until_closed().await;
        assert_eq!(code, close::BOOTED, "round {round}");
        assert!(
            !frames.is_empty(),
            "round {round}: the publications before the close"
        );
    }
}

#[tokio::test]
async fn a_socket_killed_mid_frame_is_gone_without_waiting_for_the_write_timeout() {
    // A write timeout beyond the test's patience: the kill must not wait for it.
    let options = ServerOptions::default().write_timeout(Duration::from_secs(600));
    let (server, _l, url) = start(app(options)).await;
    // 6 MiB, more than the socket buffers hold: the server's write blocks inside a frame.
    let _peer = backed_up_subscriber(&server, &url, "ann", "room:stuck", 64 * 1024, 96).await;
    assert_eq!(server.local_sockets(), 1);
    server.boot_user("ann").await.expect("boot");
    // The peer never reads again: the rest of the frame and the close frame cannot go out.
    // The socket leaves at once; its close gives up after the linger.
    within("the booted socket to leave", async {
        while server.local_sockets() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn oversized_message_then_more_data_gets_1009_not_a_reset() {
    let (server, _l, url) = start(app(ServerOptions::default().max_message_size(1024))).await;
    for round in 0..3 {
        // Publications the peer has not read yet wait in the server's send queue...
        let mut peer = backed_up_subscriber(&server, &url, "ann", "room:feed", 16 * 1024, 16).await;
        // ...when the peer sends a message over the limit, whose rest the server never reads.
        let big = json!({"t": "tell", "topic": "x", "msg": "a".repeat(512 * 1024)}).to_string();
        peer.send_pipelined(&[big]).await;
        let (_, (code, _)) = peer.until_closed().await;
        assert_eq!(code, close::MESSAGE_TOO_BIG, "round {round}");
    }
}
