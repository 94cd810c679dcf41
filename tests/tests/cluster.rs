//! Several server processes joined by one real Redis: publications from any instance reach
//! every subscriber on every instance, and killing an instance (SIGKILL) or restarting Redis
//! mid-stream loses nothing silently.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use sss_client::{Client, Options, SubEvent};
use sss_core::client::Reconnect;
use sss_server::scaler::{RedisOptions, RedisScaler};
use sss_server::Server;
use sss_tests::services::{Persistence, RedisServer};
use sss_tests::{init_tracing, spawn_ready, within, RawPeer};
use tokio::process::Child;
use tokio::sync::mpsc;

/// One `sss-node` process.
struct Node {
    child: Child,
    url: String,
}

impl Node {
    async fn spawn(redis: &str, history: usize) -> Node {
        Self::spawn_with(redis, &["--history", &history.to_string()]).await
    }

    async fn spawn_with(redis: &str, args: &[&str]) -> Node {
        let mut all = vec!["--redis", redis];
        all.extend_from_slice(args);
        let (child, line) = spawn_ready(env!("CARGO_BIN_EXE_sss-node"), &all).await;
        let addr = line.strip_prefix("listening on ").expect("listening line");
        Node {
            url: format!("ws://{addr}/ws"),
            child,
        }
    }

    /// SIGKILL: no goodbye to its clients.
    async fn kill9(&mut self) {
        self.child.kill().await.expect("kill -9");
    }
}

fn options() -> Options {
    Options::default().reconnect(Reconnect {
        base: Duration::from_millis(20),
        max: Duration::from_millis(300),
        max_attempts: None,
    })
}

/// Client `i` starts on node `i % n` and rotates over the others on reconnect, as a client
/// behind a load balancer would land anywhere.
async fn spread_clients(nodes: &[Node], count: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in 0..count {
        let urls: Vec<String> = (0..nodes.len())
            .map(|k| nodes[(i + k) % nodes.len()].url.clone())
            .collect();
        let c = within("connect", Client::connect_any(urls, options()))
            .await
            .expect("connects");
        clients.push(c);
    }
    clients
}

/// An in-process instance of the same cluster, used as the publisher.
async fn publisher(redis: &str) -> Server {
    let scaler = RedisScaler::connect(redis, RedisOptions::default())
        .await
        .expect("redis");
    Server::builder(scaler).build().await.expect("publisher")
}

#[tokio::test]
async fn publications_from_any_instance_reach_every_subscriber() {
    init_tracing();
    let redis = RedisServer::start().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::spawn(redis.url(), 1000).await);
    }
    let clients = spread_clients(&nodes, 6).await;
    let mut subs = Vec::new();
    for c in &clients {
        subs.push(
            within("sub", c.subscribe("room:all", None::<()>))
                .await
                .expect("sub"),
        );
    }
    // Each message is published by a different node, through an ask to that node.
    for n in 0..30u64 {
        let via = &clients[(n % 3) as usize];
        let msg = json!({"channel": "room:all", "topic": "n", "msg": n});
        within("publish", via.ask::<_, serde_json::Value>("publish", &msg))
            .await
            .expect("published");
    }
    for sub in &mut subs {
        for n in 0..30u64 {
            match within("publication", sub.next()).await {
                Some(SubEvent::Publication(p)) => {
                    assert_eq!(p.decode::<u64>().expect("n"), n);
                    assert_eq!(p.position.seq, n + 1);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

/// Per channel, what one client received: `(seq, value)` in arrival order, and whether it was
/// told the channel was unrecoverable.
#[derive(Default, Debug)]
struct Received {
    got: Vec<(u64, u64)>,
    unrecoverable: usize,
}

/// Subscribes `client` to every channel (each subscription is live when this returns, so
/// nothing published afterwards can be missed), then reads each in its own task.
async fn collect(
    client: &Client,
    channels: &[&'static str],
    per_channel: u64,
) -> Vec<tokio::task::JoinHandle<(String, Received)>> {
    let mut readers = Vec::new();
    for &ch in channels {
        let mut sub = within("sub", client.subscribe(ch, None::<()>))
            .await
            .expect("sub");
        readers.push(tokio::spawn(async move {
            let mut r = Received::default();
            while r.got.last().map_or(0, |&(_, v)| v) < per_channel {
                match within("publication", sub.next()).await {
                    Some(SubEvent::Publication(p)) => r
                        .got
                        .push((p.position.seq, p.decode::<u64>().expect("value"))),
                    Some(SubEvent::Unrecoverable { .. }) => r.unrecoverable += 1,
                    Some(SubEvent::Recovered { .. }) => {}
                    other => panic!("{ch}: {other:?}"),
                }
            }
            (ch.to_owned(), r)
        }));
    }
    readers
}

#[tokio::test]
async fn kill_9_an_instance_under_load_loses_nothing() {
    init_tracing();
    const CHANNELS: [&str; 3] = ["feed:a", "feed:b", "feed:c"];
    const PER_CHANNEL: u64 = 3334; // 10,002 publications in all
    let redis = RedisServer::start().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::spawn(redis.url(), 20_000).await);
    }
    let clients = spread_clients(&nodes, 9).await;
    let mut receivers = Vec::new();
    for c in &clients {
        receivers.extend(collect(c, &CHANNELS, PER_CHANNEL).await);
    }
    let publisher = publisher(redis.url()).await;
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    let publishing = tokio::spawn(async move {
        for n in 1..=PER_CHANNEL {
            for ch in CHANNELS {
                publisher.publish(ch, "n", &n).await.expect("publish");
            }
            let _ = progress_tx.send(n);
            if n % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    while within("progress", progress.recv())
        .await
        .expect("publishing")
        < PER_CHANNEL / 3
    {}
    nodes[0].kill9().await;
    within("publisher", publishing)
        .await
        .expect("publisher task");

    for r in receivers {
        let (ch, r) = within("receiver", r).await.expect("receiver task");
        assert_eq!(r.unrecoverable, 0, "{ch}: history covered the outage");
        let want: Vec<(u64, u64)> = (1..=PER_CHANNEL).map(|n| (n, n)).collect();
        assert!(
            r.got == want,
            "{ch}: {} received, not exactly 1..={PER_CHANNEL} once in order",
            r.got.len()
        );
    }
}

/// Redis restarted mid-stream: with its data every message arrives once, in order; without
/// it, a client that missed messages is told so (never a silent gap).
async fn redis_restart(keep_data: bool) {
    init_tracing();
    const PER_CHANNEL: u64 = 400;
    let mut redis = RedisServer::spawn(Persistence::AppendOnly).await;
    let nodes = vec![
        Node::spawn(redis.url(), 10_000).await,
        Node::spawn(redis.url(), 10_000).await,
    ];
    let clients = spread_clients(&nodes, 4).await;
    let mut receivers = Vec::new();
    for c in &clients {
        receivers.extend(collect(c, &["feed:r"], PER_CHANNEL).await);
    }
    let publisher = publisher(redis.url()).await;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    for n in 1..=PER_CHANNEL {
        if n == PER_CHANNEL / 2 {
            redis.restart(keep_data).await;
        }
        // While Redis comes back, a publish may fail; retry it (bounded).
        let mut tries = 0;
        while publisher.publish("feed:r", "n", &n).await.is_err() {
            tries += 1;
            assert!(tries < 200, "Redis did not come back");
            tick.tick().await;
        }
        tick.tick().await;
    }
    let mut results: HashMap<usize, Received> = HashMap::new();
    for (i, r) in receivers.into_iter().enumerate() {
        let (_, r) = within("receiver", r).await.expect("receiver");
        results.insert(i, r);
    }
    for (i, r) in &results {
        let values: Vec<u64> = r.got.iter().map(|&(_, v)| v).collect();
        let complete = values == (1..=PER_CHANNEL).collect::<Vec<_>>();
        if keep_data {
            assert!(
                complete,
                "client {i}: with Redis's data kept nothing is lost: {values:?}"
            );
            assert_eq!(r.unrecoverable, 0, "client {i}");
        } else {
            // Values only ever increase, and any value missing was announced.
            assert!(
                values.windows(2).all(|w| w[0] < w[1]),
                "client {i}: duplicates or disorder"
            );
            assert!(
                complete || r.unrecoverable > 0,
                "client {i} missed messages without being told: {values:?}"
            );
        }
    }
    if !keep_data {
        assert!(
            results.values().any(|r| r.unrecoverable > 0),
            "Redis lost its data: the epoch changed and clients were told"
        );
    }
}

#[tokio::test]
async fn redis_restart_with_its_data_loses_nothing() {
    redis_restart(true).await;
}

#[tokio::test]
async fn redis_restart_without_its_data_is_reported() {
    redis_restart(false).await;
}

/// A raw protocol peer of user `user` on `node`, subscribed to `channel`; with `events`, asking
/// for its presence events.
async fn member(node: &Node, user: &str, channel: &str, events: bool) -> (RawPeer, String) {
    let mut peer = RawPeer::connect(&format!("{}?user={user}", node.url)).await;
    peer.send(r#"{"t":"hello","v":1}"#).await;
    let welcome: Value =
        serde_json::from_str(&peer.next_text().await.expect("welcome")).expect("json");
    let socket = welcome["socket"].as_str().expect("socket id").to_owned();
    let sub = json!({"t": "sub", "id": 1, "ch": channel, "presence": events});
    peer.send(&sub.to_string()).await;
    let subok: Value = serde_json::from_str(&peer.next_text().await.expect("subok")).expect("json");
    assert_eq!(
        (subok["t"].as_str(), subok["presence"].as_bool()),
        (Some("subok"), Some(true))
    );
    (peer, socket)
}

/// The answer to a presence request `kind` (`presence` or `pstats`) with id `id`.
async fn ask_presence(peer: &mut RawPeer, kind: &str, id: u64, channel: &str) -> Value {
    peer.send(&json!({"t": kind, "id": id, "ch": channel}).to_string())
        .await;
    loop {
        let v: Value =
            serde_json::from_str(&peer.next_text().await.expect("answer")).expect("json");
        if v["t"] == "res" && v["id"] == id {
            return v["msg"].clone();
        }
        assert!(v["t"] != "rej", "presence refused: {v}");
    }
}

/// The next `join` or `leave` frame: (kind, socket, user).
async fn next_event(peer: &mut RawPeer) -> (String, String, String) {
    loop {
        let v: Value = serde_json::from_str(&peer.next_text().await.expect("event")).expect("json");
        if v["t"] == "join" || v["t"] == "leave" {
            let s = |x: &Value| x.as_str().unwrap_or_default().to_owned();
            return (s(&v["t"]), s(&v["m"]["socket"]), s(&v["m"]["user"]));
        }
    }
}

#[tokio::test]
async fn presence_across_processes_and_a_killed_instance() {
    init_tracing();
    let redis = RedisServer::start().await;
    // Members of a dead instance go within 4/3 of this (the sweep runs every third).
    let ttl_ms = 900;
    let ttl = ttl_ms.to_string();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::spawn_with(redis.url(), &["--presence-ttl-ms", &ttl]).await);
    }
    let ch = "room:presence";
    let (mut watcher, _) = member(&nodes[0], "wes", ch, true).await;
    let (mut ann1, ann1_id) = member(&nodes[1], "ann", ch, false).await;
    let (_ann2, ann2_id) = member(&nodes[1], "ann", ch, false).await;
    let (_bob, bob_id) = member(&nodes[2], "bob", ch, false).await;
    let mut joined = Vec::new();
    for _ in 0..3 {
        let (kind, socket, _) = next_event(&mut watcher).await;
        assert_eq!(kind, "join");
        joined.push(socket);
    }
    joined.sort();
    let mut expected = vec![ann1_id.clone(), ann2_id.clone(), bob_id.clone()];
    expected.sort();
    assert_eq!(joined, expected, "one join per socket, from every instance");
    // Counted and listed the same from every instance.
    assert_eq!(
        ask_presence(&mut watcher, "pstats", 10, ch).await,
        json!({"sockets": 4, "users": 3})
    );
    let members = ask_presence(&mut ann1, "presence", 11, ch).await;
    let mut users: Vec<&str> = members
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            m["info"]["name"]
                .as_str()
                .expect("info from the session parser")
        })
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["ann", "ann", "bob", "wes"]);

    // kill -9: no goodbye. Its member expires and its leave is announced, within the bound.
    let killed = std::time::Instant::now();
    nodes[2].kill9().await;
    let (kind, socket, user) = next_event(&mut watcher).await;
    let took = killed.elapsed();
    assert_eq!(
        (kind.as_str(), socket.as_str(), user.as_str()),
        ("leave", bob_id.as_str(), "bob")
    );
    let bound = Duration::from_millis(ttl_ms * 4 / 3) + Duration::from_secs(2);
    assert!(took < bound, "leave after {took:?}, bound {bound:?}");
    assert_eq!(
        ask_presence(&mut watcher, "pstats", 12, ch).await,
        json!({"sockets": 3, "users": 2})
    );
    // A socket that closes leaves at once.
    drop(ann1);
    let (kind, socket, _) = next_event(&mut watcher).await;
    assert_eq!(
        (kind.as_str(), socket.as_str()),
        ("leave", ann1_id.as_str())
    );
    assert_eq!(
        ask_presence(&mut watcher, "pstats", 13, ch).await,
        json!({"sockets": 2, "users": 2})
    );
}

/// A server-side subscription on one instance, reading what another publishes while Redis
/// restarts: with Redis's data, every publication once and in order; without it, a gap only
/// ever after an `Unrecoverable`.
async fn server_side_subscription_through_a_redis_restart(keep_data: bool) {
    use sss_server::ChannelEvent;
    init_tracing();
    const TOTAL: u64 = 200;
    let mut redis = RedisServer::spawn(Persistence::AppendOnly).await;
    let instance = || async {
        let scaler = RedisScaler::connect(redis.url(), RedisOptions::default())
            .await
            .expect("scaler");
        Server::builder(scaler).build().await.expect("server")
    };
    let (reader, writer) = (instance().await, instance().await);
    let mut stream = reader.subscribe("feed:s").await.expect("subscribe");
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let mut last = stream.start().clone();
    for n in 1..=TOTAL {
        if n == TOTAL / 2 {
            redis.restart(keep_data).await;
        }
        let mut tries = 0;
        last = loop {
            match writer.publish("feed:s", "n", &n).await {
                Ok(p) => break p,
                Err(_) => {
                    tries += 1;
                    assert!(tries < 200, "Redis did not come back");
                    tick.tick().await;
                }
            }
        };
    }
    let (mut got, mut told) = (Vec::new(), 0);
    while got.last() != Some(&TOTAL) {
        match within("a server-side event", stream.next()).await {
            Some(ChannelEvent::Publication(r)) => {
                got.push(serde_json::from_str::<u64>(r.msg.get()).expect("n"));
            }
            Some(ChannelEvent::Unrecoverable { head }) => {
                told += 1;
                got.push(0);
                // Delivery goes on after the head: nothing more comes if it is the last.
                if head == last {
                    break;
                }
            }
            None => panic!("the stream ended"),
        }
    }
    if keep_data {
        assert_eq!(
            got,
            (1..=TOTAL).collect::<Vec<_>>(),
            "nothing lost, nothing twice"
        );
        assert_eq!(told, 0);
    } else {
        // Every gap is right after the `Unrecoverable` (a 0 here).
        let mut expected = 1;
        for &n in &got {
            if n == 0 {
                continue;
            }
            let after_notice = got
                .iter()
                .position(|&x| x == n)
                .is_some_and(|i| i > 0 && got[i - 1] == 0);
            assert!(
                n == expected || (n > expected && after_notice),
                "silent gap before {n}: {got:?}"
            );
            expected = n + 1;
        }
        assert!(told > 0, "Redis lost its data: the stream was told");
    }
}

#[tokio::test]
async fn server_side_subscription_survives_a_redis_restart_with_its_data() {
    server_side_subscription_through_a_redis_restart(true).await;
}

#[tokio::test]
async fn server_side_subscription_reports_a_redis_restart_without_its_data() {
    server_side_subscription_through_a_redis_restart(false).await;
}
