//! Presence through the native client (`sss-client`), against real servers on real sockets:
//! the members and counts of a channel, join and leave events on the subscription's stream (only
//! when asked for), three tabs of one user, a channel without presence, a subscription handle
//! that outlived its subscription, and a reconnect (events are not replayed; the app asks
//! again). The browser client is held to the same behaviour in tests/browser/client-cases.js and
//! tests/browser/package.test.cjs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use sss_client::{
    codes, Client, Member, Options, PresenceStats, RequestError, SubEvent, SubscribeOptions,
    Subscription,
};
use sss_core::client::Reconnect;
use sss_server::{Listening, MemoryScaler, Server, ServerOptions, Session};
use sss_tests::{init_tracing, within};

/// One instance of the cluster `hub`: `?user=NAME` names the user, `room:` channels have
/// presence, others do not.
async fn serve(hub: &MemoryScaler, addr: &str) -> (Server, Listening, String) {
    let server = Server::builder(hub.instance())
        .options(ServerOptions::default().presence_prefixes(["room:"]))
        .session_parser(|req| async move {
            Ok(match req.query.get("user") {
                Some(user) => Session::user(user.clone()),
                None => Session::anonymous(),
            })
        })
        .build()
        .await
        .expect("server");
    let listening = server.listen(addr).await.expect("listen");
    let url = format!("ws://{}/ws", listening.local_addr());
    (server, listening, url)
}

async fn client(url: &str, user: &str) -> Client {
    let options = Options::default().reconnect(Reconnect {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
        max_attempts: None,
    });
    within(
        "connect",
        Client::connect(format!("{url}?user={user}"), options),
    )
    .await
    .expect("connects")
}

async fn subscribe(c: &Client, channel: &str, events: bool) -> Subscription {
    let options = SubscribeOptions::default().presence(events);
    within("subscribe", c.subscribe_with(channel, None::<()>, options))
        .await
        .expect("subscribed")
}

/// The next event of `sub`, which must be a join (`true`) or a leave (`false`).
async fn next_member(sub: &mut Subscription) -> (bool, Member) {
    match within("a presence event", sub.next()).await {
        Some(SubEvent::Join(m)) => (true, m),
        Some(SubEvent::Leave(m)) => (false, m),
        other => panic!("expected a join or a leave, got {other:?}"),
    }
}

/// The users of `members`, sorted (one entry per socket).
fn users(members: &[Member]) -> Vec<String> {
    let mut users: Vec<String> = members.iter().filter_map(|m| m.user.clone()).collect();
    users.sort();
    users
}

async fn members(sub: &Subscription) -> Vec<Member> {
    within("presence", sub.presence()).await.expect("members")
}

async fn stats(sub: &Subscription) -> PresenceStats {
    within("presence stats", sub.presence_stats())
        .await
        .expect("stats")
}

fn code(r: Result<impl std::fmt::Debug, RequestError>) -> String {
    match r {
        Err(e) => e.code().to_owned(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// Publishes on `channel` and reads each of `subs` up to that publication, which must come next
/// on each: nothing (no presence event) arrived before it.
async fn nothing_before_publication(
    server: &Server,
    channel: &str,
    subs: &mut [&mut Subscription],
) {
    let position = server
        .publish(channel, "barrier", &())
        .await
        .expect("publish");
    for sub in subs {
        match within("the barrier publication", sub.next()).await {
            Some(SubEvent::Publication(p)) if p.position == position => {}
            other => panic!("expected the barrier publication first, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn members_stats_and_events_with_three_tabs_of_one_user() {
    init_tracing();
    let hub = MemoryScaler::default();
    let (server, _l1, url1) = serve(&hub, "127.0.0.1:0").await;
    let (_other, _l2, url2) = serve(&hub, "127.0.0.1:0").await;
    const ROOM: &str = "room:tabs";

    let ann = client(&url1, "ann").await;
    let mut watching = subscribe(&ann, ROOM, true).await;
    assert!(watching.has_presence());
    assert_eq!(users(&members(&watching).await), ["ann"]);

    // Bob opens three tabs, on both instances: three sockets, three joins, one user.
    let mut tabs = Vec::new();
    for url in [&url1, &url2, &url1] {
        let tab = client(url, "bob").await;
        let sub = subscribe(&tab, ROOM, false).await;
        let (joined, member) = next_member(&mut watching).await;
        assert!(joined);
        assert_eq!(member.user.as_deref(), Some("bob"));
        // The joined member is the tab itself: how an application finds itself in the list.
        let me = tab.identity().expect("welcomed");
        assert_eq!(
            (me.socket.as_str(), me.user.as_deref()),
            (member.socket.as_str(), Some("bob"))
        );
        tabs.push((tab, sub, member.socket));
    }
    let sockets: BTreeSet<&String> = tabs.iter().map(|(_, _, s)| s).collect();
    assert_eq!(sockets.len(), 3, "three distinct sockets");
    assert_eq!(
        stats(&watching).await,
        PresenceStats {
            sockets: 4,
            users: 2
        }
    );
    let listed = members(&tabs[1].1).await;
    assert_eq!(users(&listed), ["ann", "bob", "bob", "bob"]);
    for (_, _, socket) in &tabs {
        assert!(listed.iter().any(|m| &m.socket == socket), "{listed:?}");
    }

    // A tab that did not ask for events got none (its own join included), and ann got none but
    // the tabs' joins (never her own).
    let (_, quiet, _) = &mut tabs[0];
    nothing_before_publication(&server, ROOM, &mut [quiet, &mut watching]).await;

    // One tab unsubscribes, one closes: two leaves, with the sockets that joined.
    let (tab, sub, socket) = tabs.remove(0);
    drop(sub);
    let (joined, member) = next_member(&mut watching).await;
    assert!(!joined);
    assert_eq!(member.socket, socket);
    drop(tab);
    let (tab, _sub, socket) = tabs.remove(0);
    within("close", tab.close()).await;
    let (joined, member) = next_member(&mut watching).await;
    assert!(!joined);
    assert_eq!(member.socket, socket);
    assert_eq!(
        stats(&watching).await,
        PresenceStats {
            sockets: 2,
            users: 2
        }
    );
}

#[tokio::test]
async fn a_channel_without_presence_refuses_presence_requests() {
    init_tracing();
    let hub = MemoryScaler::default();
    let (server, _l, url) = serve(&hub, "127.0.0.1:0").await;
    let ann = client(&url, "ann").await;
    // Asked for, but not granted: no presence, no events.
    let mut plain = subscribe(&ann, "plain:1", true).await;
    assert!(!plain.has_presence());
    assert_eq!(code(plain.presence().await), codes::NO_PRESENCE);
    assert_eq!(code(plain.presence_stats().await), codes::NO_PRESENCE);
    let bob = client(&url, "bob").await;
    let _bob_sub = subscribe(&bob, "plain:1", true).await;
    nothing_before_publication(&server, "plain:1", &mut [&mut plain]).await;
}

#[tokio::test]
async fn a_handle_that_outlived_its_subscription_is_not_subscribed() {
    init_tracing();
    let hub = MemoryScaler::default();
    let (server, _l, url) = serve(&hub, "127.0.0.1:0").await;
    const ROOM: &str = "room:booted";
    let ann = client(&url, "ann").await;
    let mut old = subscribe(&ann, ROOM, true).await;
    server.boot_channel(ROOM).await.expect("boot");
    match within("ended", old.next()).await {
        Some(SubEvent::Ended { code, .. }) => assert_eq!(code, codes::BOOTED),
        other => panic!("{other:?}"),
    }
    assert_eq!(code(old.presence().await), codes::NOT_SUBSCRIBED);
    // Subscribed again: the old handle reaches neither the new subscription's members nor,
    // when dropped, the new subscription itself.
    let mut new = subscribe(&ann, ROOM, true).await;
    assert_eq!(code(old.presence_stats().await), codes::NOT_SUBSCRIBED);
    drop(old);
    assert_eq!(users(&members(&new).await), ["ann"]);
    let bob = client(&url, "bob").await;
    let _bob_sub = subscribe(&bob, ROOM, false).await;
    let (joined, member) = next_member(&mut new).await;
    assert!(joined);
    assert_eq!(member.user.as_deref(), Some("bob"));
}

#[tokio::test]
async fn a_reconnect_replays_no_presence_and_the_app_asks_again() {
    init_tracing();
    let hub = MemoryScaler::default();
    let (server, listening, url) = serve(&hub, "127.0.0.1:0").await;
    let (other, _l2, url2) = serve(&hub, "127.0.0.1:0").await;
    const ROOM: &str = "room:restart";

    let ann = client(&url, "ann").await;
    let mut ann_sub = subscribe(&ann, ROOM, true).await;
    let bob = client(&url2, "bob").await;
    let mut bob_sub = subscribe(&bob, ROOM, true).await;
    let (_, bob_member) = next_member(&mut ann_sub).await;
    let ann_before = members(&bob_sub).await;
    let ann_old = ann_before
        .iter()
        .find(|m| m.user.as_deref() == Some("ann"))
        .expect("ann is a member")
        .socket
        .clone();

    // Ann's instance goes down: bob sees her leave.
    let addr: SocketAddr = listening.local_addr();
    server.shutdown(Duration::from_secs(5)).await;
    listening.stopped().await;
    let (joined, member) = next_member(&mut bob_sub).await;
    assert_eq!((joined, member.socket.as_str()), (false, ann_old.as_str()));

    // While ann is away, carol comes and goes.
    let carol = client(&url2, "carol").await;
    let carol_sub = subscribe(&carol, ROOM, false).await;
    assert!(next_member(&mut bob_sub).await.0, "carol joins");
    drop(carol_sub);
    assert!(!next_member(&mut bob_sub).await.0, "carol leaves");

    // Ann's instance is back: ann resyncs and hears nothing of carol, nor of her own return.
    let (_server, _listening, _) = serve(&hub, &addr.to_string()).await;
    match within("resync", ann_sub.next()).await {
        Some(SubEvent::Recovered { .. }) => {}
        other => panic!("expected the resync, got {other:?}"),
    }
    // Bob sees ann's new socket join.
    let (joined, ann_new) = next_member(&mut bob_sub).await;
    assert!(joined);
    assert_eq!(ann_new.user.as_deref(), Some("ann"));
    assert_ne!(ann_new.socket, ann_old);
    nothing_before_publication(&other, ROOM, &mut [&mut ann_sub]).await;
    // The app asks again: the current members.
    let now: BTreeSet<String> = members(&ann_sub)
        .await
        .into_iter()
        .map(|m| m.socket)
        .collect();
    assert_eq!(now, BTreeSet::from([ann_new.socket, bob_member.socket]));
    // Events flow again after the resync.
    let dave = client(&url2, "dave").await;
    let _dave_sub = subscribe(&dave, ROOM, false).await;
    let (joined, member) = next_member(&mut ann_sub).await;
    assert!(joined);
    assert_eq!(member.user.as_deref(), Some("dave"));
}
