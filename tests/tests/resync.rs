//! Reconnect and resync: a server restarted under subscribed clients while publications keep
//! coming, and a history trimmed past a client's position.

use std::time::Duration;

use futures::StreamExt;
use sss_client::{Client, Options, Recovery, SubEvent};
use sss_core::client::Reconnect;
use sss_server::{Listening, MemoryOptions, MemoryScaler, Server};
use sss_tests::{init_tracing, within};
use tokio::sync::mpsc;

fn fast_reconnect() -> Options {
    Options::default().reconnect(Reconnect {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
        max_attempts: None,
    })
}

async fn serve(hub: &MemoryScaler, addr: &str) -> (Server, Listening) {
    let server = Server::builder(hub.instance())
        .build()
        .await
        .expect("server");
    let listening = server.listen(addr).await.expect("listen");
    (server, listening)
}

/// A publishing instance, a listening instance, and one client subscribed to `channel` on it.
struct Subscribed {
    publisher: Server,
    server: Server,
    listening: Listening,
    client: Client,
    sub: sss_client::Subscription,
}

async fn subscribed(hub: &MemoryScaler, channel: &str) -> Subscribed {
    let publisher = Server::builder(hub.instance())
        .build()
        .await
        .expect("publisher");
    let (server, listening) = serve(hub, "127.0.0.1:0").await;
    let url = format!("ws://{}/ws", listening.local_addr());
    let client = within("connect", Client::connect(&url, fast_reconnect()))
        .await
        .expect("connects");
    let sub = within("sub", client.subscribe(channel, None::<()>))
        .await
        .expect("sub");
    Subscribed {
        publisher,
        server,
        listening,
        client,
        sub,
    }
}

async fn restart(server: Server, listening: Listening, hub: &MemoryScaler) -> (Server, Listening) {
    sss_tests::restart(server, listening, Server::builder(hub.instance())).await
}

#[tokio::test]
async fn restart_under_load_loses_nothing() {
    init_tracing();
    const CLIENTS: usize = 5;
    const TOTAL: u64 = 600;
    let hub = MemoryScaler::default();
    // Publications come from another instance of the cluster, which stays up throughout.
    let publisher = Server::builder(hub.instance())
        .build()
        .await
        .expect("publisher");
    let (server, listening) = serve(&hub, "127.0.0.1:0").await;
    let url = format!("ws://{}/ws", listening.local_addr());

    let mut receivers = Vec::new();
    for _ in 0..CLIENTS {
        let client = within("connect", Client::connect(&url, fast_reconnect()))
            .await
            .expect("connects");
        let mut sub = within("sub", client.subscribe("room:live", None::<()>))
            .await
            .expect("sub");
        receivers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut recoveries = 0;
            while (got.len() as u64) < TOTAL {
                match within("publication", sub.next()).await {
                    Some(SubEvent::Publication(p)) => {
                        got.push((p.position.seq, p.decode::<u64>().expect("number")))
                    }
                    Some(SubEvent::Recovered { .. }) => recoveries += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            drop(client);
            (got, recoveries)
        }));
    }

    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    let publishing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        for n in 1..=TOTAL {
            tick.tick().await;
            publisher
                .publish("room:live", "n", &n)
                .await
                .expect("publish");
            let _ = progress_tx.send(n);
        }
    });
    // Restart the clients' server a third of the way through.
    while within("progress", progress.recv())
        .await
        .expect("publishing")
        < TOTAL / 3
    {}
    let (_server, _listening) = restart(server, listening, &hub).await;

    within("publisher", publishing)
        .await
        .expect("publisher task");
    for r in receivers {
        let (got, recoveries) = within("receiver", r).await.expect("receiver task");
        let want: Vec<(u64, u64)> = (1..=TOTAL).map(|n| (n, n)).collect();
        assert_eq!(got, want, "every message exactly once, in order");
        assert!(recoveries >= 1, "the client resynced after the restart");
    }
}

#[tokio::test]
async fn trimmed_history_is_reported_unrecoverable() {
    init_tracing();
    let hub = MemoryScaler::new(MemoryOptions {
        history_size: 5,
        ..MemoryOptions::default()
    });
    let Subscribed {
        publisher,
        server,
        listening,
        client,
        mut sub,
    } = subscribed(&hub, "room:t").await;
    assert_eq!(sub.recovery(), Recovery::New);
    publisher.publish("room:t", "n", &1).await.expect("publish");
    assert!(matches!(
        within("first", sub.next()).await,
        Some(SubEvent::Publication(_))
    ));

    // While the client is away, 20 publications go by: more than the history keeps.
    let addr = listening.local_addr();
    server.shutdown(Duration::from_secs(5)).await;
    listening.stopped().await;
    within(
        "reconnecting",
        client.wait_status(|s| s != sss_client::ClientStatus::Ready),
    )
    .await;
    for n in 2..=21 {
        publisher.publish("room:t", "n", &n).await.expect("publish");
    }
    let (_server, _listening) = serve(&hub, &addr.to_string()).await;

    match within("resync", sub.next()).await {
        Some(SubEvent::Unrecoverable { position }) => assert_eq!(position.seq, 21),
        other => panic!("expected unrecoverable, got {other:?}"),
    }
    publisher
        .publish("room:t", "n", &22)
        .await
        .expect("publish");
    match within("live again", sub.next()).await {
        Some(SubEvent::Publication(p)) => {
            assert_eq!(p.position.seq, 22);
            assert_eq!(p.decode::<u64>().expect("number"), 22);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn asks_issued_while_reconnecting_are_sent_after() {
    init_tracing();
    let hub = MemoryScaler::default();
    let build = |hub: &MemoryScaler| {
        Server::builder(hub.instance()).on_ask("add", |_s, (a, b): (i64, i64)| async move {
            Ok::<_, sss_server::Rejection>(a + b)
        })
    };
    let server = build(&hub).build().await.expect("server");
    let listening = server.listen("127.0.0.1:0").await.expect("listen");
    let addr = listening.local_addr();
    let client = within(
        "connect",
        Client::connect(format!("ws://{addr}/ws"), fast_reconnect()),
    )
    .await
    .expect("connects");
    server.shutdown(Duration::from_secs(5)).await;
    listening.stopped().await;
    within(
        "reconnecting",
        client.wait_status(|s| s != sss_client::ClientStatus::Ready),
    )
    .await;
    let pending = {
        let c = client.clone();
        tokio::spawn(async move { c.ask::<_, i64>("add", &(40, 2)).await })
    };
    let server = build(&hub).build().await.expect("server");
    let _listening = server.listen(addr).await.expect("listen again");
    let sum = within("queued ask", pending)
        .await
        .expect("task")
        .expect("ask");
    assert_eq!(sum, 42);
}

#[tokio::test]
async fn lost_history_new_epoch_is_reported_live() {
    init_tracing();
    let hub = MemoryScaler::default();
    let Subscribed {
        publisher,
        client: _client,
        mut sub,
        ..
    } = subscribed(&hub, "room:e").await;
    for n in 1..=5 {
        publisher.publish("room:e", "n", &n).await.expect("publish");
    }
    for _ in 1..=5 {
        assert!(matches!(
            within("pub", sub.next()).await,
            Some(SubEvent::Publication(_))
        ));
    }
    // The scaler loses the channel's history: seqs restart at 1 in a new epoch, lower than
    // what the client has seen. The client must hear about it, not wait for seq 6.
    hub.reset_channel("room:e");
    publisher
        .publish("room:e", "n", &100)
        .await
        .expect("publish");
    match within("resync", sub.next()).await {
        Some(SubEvent::Unrecoverable { position }) => assert_eq!(position.seq, 1),
        other => panic!("expected unrecoverable, got {other:?}"),
    }
    publisher
        .publish("room:e", "n", &101)
        .await
        .expect("publish");
    match within("live", sub.next()).await {
        Some(SubEvent::Publication(p)) => {
            assert_eq!((p.position.seq, p.decode::<u64>().expect("n")), (2, 101));
        }
        other => panic!("{other:?}"),
    }
}
