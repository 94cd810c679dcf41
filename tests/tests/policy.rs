//! The policies the client core decides for both drivers, seen from the native client (the
//! browser client's twins are in tests/browser/client-cases.js): a failed first `connect`, a
//! resync's outcome, what closing does to subscriptions, the codes of refused commands.

use std::time::Duration;

use futures::StreamExt;
use sss_client::{
    codes, Client, ClientStatus, ConnectError, Options, Reconnect, SubEvent, Subscription,
};
use sss_server::{MemoryScaler, Server, ServerBuilder, Session};
use sss_tests::{restart, start, within};

fn app(scaler: MemoryScaler) -> ServerBuilder {
    Server::builder(scaler).session_parser(|req| async move {
        Ok(match req.query.get("user") {
            Some(user) => Session::user(user.clone()),
            None => Session::anonymous(),
        })
    })
}

fn quick() -> Options {
    Options::default().reconnect(Reconnect {
        base: Duration::from_millis(10),
        ..Reconnect::default()
    })
}

/// An address nothing listens on.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("ws://{addr}/ws")
}

async fn next_event(sub: &mut Subscription) -> SubEvent {
    within("a subscription event", sub.next())
        .await
        .expect("an event before the stream ends")
}

#[tokio::test]
async fn a_failed_first_connect_is_reported_and_a_background_client_retries() {
    let url = dead_url().await;
    match within("connect", Client::connect(url.clone(), quick())).await {
        Err(ConnectError::Closed { code, .. }) => assert_eq!(code, 1006),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let client = Client::new(vec![url], quick());
    let status = within(
        "reconnecting",
        client.wait_status(|s| matches!(s, ClientStatus::Reconnecting { .. })),
    )
    .await;
    assert!(
        matches!(status, ClientStatus::Reconnecting { .. }),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_resync_that_lost_nothing_is_recovered() {
    let hub = MemoryScaler::default();
    let (server, listening, url) = start(app(hub.instance())).await;
    let client = within("connect", Client::connect(url, quick()))
        .await
        .expect("connects");
    let mut room = within("subscribe", client.subscribe("room:1", None::<()>))
        .await
        .expect("subscribed");
    let (_server, _listening) = restart(server, listening, app(hub.instance())).await;
    match next_event(&mut room).await {
        SubEvent::Recovered { .. } => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn closing_ends_every_subscription_with_a_reason() {
    let (server, _listening, url) = start(app(MemoryScaler::default())).await;
    // Closed by the application.
    let client = within("connect", Client::connect(url.clone(), quick()))
        .await
        .expect("connects");
    let mut room = within("subscribe", client.subscribe("room:1", None::<()>))
        .await
        .expect("subscribed");
    client.close().await;
    match next_event(&mut room).await {
        SubEvent::Ended { code, reason } => {
            assert_eq!(
                (code.as_str(), reason.as_str()),
                (codes::CLOSED, "closed by the client")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(within("end of stream", room.next()).await.is_none());
    // Closed for good by the server (a boot is final).
    let ann = within(
        "connect",
        Client::connect(format!("{url}?user=ann"), quick()),
    )
    .await
    .expect("connects");
    let mut room = within("subscribe", ann.subscribe("room:1", None::<()>))
        .await
        .expect("subscribed");
    server.boot_user("ann").await.expect("boot");
    match next_event(&mut room).await {
        SubEvent::Ended { code, reason } => {
            assert_eq!(code, codes::CLOSED);
            assert!(!reason.is_empty(), "the close's reason");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refused_commands_have_the_cores_codes() {
    let (_server, _listening, url) = start(app(MemoryScaler::default())).await;
    let client = within("connect", Client::connect(url, quick()))
        .await
        .expect("connects");
    let e = within("subscribe", client.subscribe("no spaces", None::<()>))
        .await
        .expect_err("invalid channel");
    assert_eq!(e.code(), codes::INVALID_CHANNEL);
    client.close().await;
    let e = within("ask", client.ask::<_, ()>("add", &()))
        .await
        .expect_err("closed");
    assert_eq!(e.code(), codes::CLOSED);
}
