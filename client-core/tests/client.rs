//! Deterministic tests of the sans-IO client against an in-memory fake server.

mod util;

use std::time::Duration;

use sss_core::client::{
    Action, AskError, AskId, Client, ClientError, Config, Event, Instant, Reconnect, Recovery,
    Status, SubscribeOptions,
};
use sss_core::protocol::{close, codes, ChannelError, ClientFrame, ServerFrame, MAX_TOPIC_LEN};
use util::{config, json, pos, AskMode, Pair, HB};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Ask outcomes as `(id, Ok(payload) | Err(code))`.
fn asks_done(events: &[Event]) -> Vec<(u64, Result<String, String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::AskDone { id, result } => Some((
                id.as_u64(),
                result
                    .as_ref()
                    .map(|msg| msg.get().to_owned())
                    .map_err(|e| e.code.clone()),
            )),
            _ => None,
        })
        .collect()
}

/// Publications as `(channel, seq, payload)`.
fn publications(events: &[Event]) -> Vec<(String, u64, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Publication {
                channel,
                msg,
                position,
                ..
            } => Some((channel.clone(), position.seq, msg.get().to_owned())),
            _ => None,
        })
        .collect()
}

/// Subscribed and resynced events as `(channel, position seq, recovery)`.
fn subscribed(events: &[Event]) -> Vec<(String, u64, Recovery)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Subscribed {
                channel, position, ..
            } => Some((channel.clone(), position.seq, Recovery::New)),
            Event::Resynced {
                channel,
                position,
                recovered,
                ..
            } => Some((
                channel.clone(),
                position.seq,
                if *recovered {
                    Recovery::Recovered
                } else {
                    Recovery::Unrecoverable
                },
            )),
            _ => None,
        })
        .collect()
}

fn statuses(events: &[Event]) -> Vec<Status> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Status(s) => Some(*s),
            _ => None,
        })
        .collect()
}

fn closed(events: &[Event]) -> Option<(u16, String)> {
    events.iter().find_map(|e| match e {
        Event::Closed { code, reason, .. } => Some((*code, reason.clone())),
        _ => None,
    })
}

/// The `sub` frames the server received, as `(channel, since seq)`.
fn subs_received(pair: &Pair) -> Vec<(String, Option<u64>)> {
    pair.server
        .received
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Sub { ch, since, .. } => Some((ch.clone(), since.as_ref().map(|s| s.seq))),
            _ => None,
        })
        .collect()
}

fn closes(pair: &Pair) -> Vec<u16> {
    pair.actions
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Close { code, .. } => Some(*code),
            Action::Connect { .. } => None,
        })
        .collect()
}

/// A connected pair subscribed to `room` (fresh), with events taken.
fn subscribed_pair() -> Pair {
    let mut pair = Pair::connected();
    pair.client
        .subscribe(pair.now, "room", SubscribeOptions::default())
        .expect("subscribe");
    pair.drive();
    assert_eq!(
        subscribed(&pair.take_events()),
        [("room".to_owned(), 0, Recovery::New)]
    );
    pair
}

#[test]
fn connects_says_hello_and_is_ready() {
    let mut pair = Pair::new(config());
    assert_eq!(pair.connects()[0].1, "ws://a");
    assert!(matches!(
        pair.server.received[0],
        ClientFrame::Hello { v: 1, auth: None }
    ));
    assert_eq!(pair.client.status(), Status::Ready);
    assert_eq!(statuses(&pair.take_events()), [Status::Ready]);
    assert_eq!(pair.client.socket_id(), Some("sock1"));
    assert_eq!(pair.client.user(), Some("ann"));
    assert_eq!(pair.client.session(), Some("sess"));
}

#[test]
fn no_url_means_closed() {
    let mut client = Client::new(Config::default(), Instant::from_millis(0));
    assert_eq!(client.status(), Status::Closed);
    assert_eq!(client.poll_action(), None);
    assert_eq!(
        client.tell(Instant::from_millis(0), "t", json("1")),
        Err(ClientError::Closed)
    );
}

#[test]
fn ask_success_with_increasing_ids() {
    let mut pair = Pair::connected();
    let a = pair
        .client
        .ask(pair.now, "add", json(r#"{"x":1}"#))
        .expect("ask");
    let b = pair.client.ask(pair.now, "add", json("2")).expect("ask");
    assert_eq!((a.as_u64(), b.as_u64()), (1, 2));
    pair.drive();
    assert!(matches!(
        &pair.server.received[1],
        ClientFrame::Ask { id: 1, topic, .. } if topic == "add"
    ));
    assert_eq!(
        asks_done(&pair.take_events()),
        [(1, Ok(r#"{"x":1}"#.to_owned())), (2, Ok("2".to_owned()))]
    );
    assert_eq!(pair.client.poll_timeout(), Some(pair.now + ms(2 * HB)));
}

/// Asks with their own timeouts, shorter and longer than the default, each time out on time.
#[test]
fn asks_with_their_own_timeouts() {
    let mut pair = Pair::connected();
    pair.server.ask_mode = AskMode::Ignore;
    let start = pair.now;
    let default = pair.client.ask(start, "a", json("1")).expect("ask");
    let short = (pair.client)
        .ask_with_timeout(start, "b", json("2"), ms(1_000))
        .expect("ask");
    let long = (pair.client)
        .ask_with_timeout(start, "c", json("3"), ms(20_000))
        .expect("ask");
    pair.drive();
    let timed_out = |pair: &mut Pair| {
        asks_done(&pair.take_events())
            .into_iter()
            .map(|(id, r)| (id, r.err()))
            .collect::<Vec<_>>()
    };
    let timeout = || Some(codes::TIMEOUT.to_owned());
    pair.advance(ms(1_000));
    assert_eq!(timed_out(&mut pair), [(short.as_u64(), timeout())]);
    pair.advance(ms(9_000));
    assert_eq!(timed_out(&mut pair), [(default.as_u64(), timeout())]);
    pair.advance(ms(9_999));
    assert!(timed_out(&mut pair).is_empty());
    pair.advance(ms(1));
    assert_eq!(timed_out(&mut pair), [(long.as_u64(), timeout())]);
}

#[test]
fn ask_rejected() {
    let mut pair = Pair::connected();
    pair.server.ask_mode = AskMode::Reject;
    let id = pair.client.ask(pair.now, "add", json("1")).expect("ask");
    pair.drive();
    let events = pair.take_events();
    match &events[..] {
        [Event::AskDone {
            id: done,
            result: Err(e),
        }] => {
            assert_eq!(*done, id);
            assert_eq!(e, &AskError::new("refused", "not today"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ask_times_out_and_late_answer_is_ignored() {
    let mut pair = Pair::connected();
    pair.server.ask_mode = AskMode::Ignore;
    let id = pair.client.ask(pair.now, "slow", json("1")).expect("ask");
    pair.drive();
    pair.advance(ms(9_999));
    assert!(asks_done(&pair.take_events()).is_empty());
    pair.advance(ms(1));
    let events = pair.take_events();
    assert_eq!(asks_done(&events), [(1, Err(codes::TIMEOUT.to_owned()))]);
    assert!(matches!(&events[0], Event::AskDone { result: Err(e), .. } if e.is_timeout()));
    pair.server_send(ServerFrame::Res {
        id: id.as_u64(),
        msg: json("\"late\""),
    });
    assert!(pair.take_events().is_empty());
    assert_eq!(pair.client.status(), Status::Ready);
}

#[test]
fn tells_both_ways() {
    let mut pair = Pair::connected();
    pair.client
        .tell(pair.now, "log", json(r#""hi""#))
        .expect("tell");
    pair.drive();
    assert!(matches!(
        pair.server.received.last(),
        Some(ClientFrame::Tell { topic, msg }) if topic == "log" && msg.get() == r#""hi""#
    ));
    pair.server_send(ServerFrame::Tell {
        topic: "notice".into(),
        msg: json("[1]"),
    });
    match &pair.take_events()[..] {
        [Event::Tell { topic, msg }] => assert_eq!((topic.as_str(), msg.get()), ("notice", "[1]")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn command_misuse_is_refused() {
    let mut pair = subscribed_pair();
    let now = pair.now;
    assert_eq!(
        pair.client
            .subscribe(now, "room", SubscribeOptions::default()),
        Err(ClientError::AlreadySubscribed)
    );
    assert_eq!(
        pair.client
            .subscribe(now, "a b", SubscribeOptions::default()),
        Err(ClientError::InvalidChannel(ChannelError::BadChar(' ')))
    );
    assert_eq!(
        pair.client.ask(now, "", json("1")),
        Err(ClientError::InvalidTopic)
    );
    let long = "x".repeat(MAX_TOPIC_LEN + 1);
    assert_eq!(
        pair.client.tell(now, &long, json("1")),
        Err(ClientError::InvalidTopic)
    );
    pair.drive();
    assert_eq!(subs_received(&pair).len(), 1);
}

#[test]
fn subscribe_accepted_and_refused() {
    let mut pair = Pair::connected();
    pair.publish_lost("room", "1");
    pair.publish_lost("room", "2");
    pair.client
        .subscribe(
            pair.now,
            "room",
            SubscribeOptions {
                query: Some(json(r#"{"k":1}"#)),
                ..SubscribeOptions::default()
            },
        )
        .expect("subscribe");
    pair.drive();
    assert!(matches!(
        &pair.server.received[1],
        ClientFrame::Sub { ch, q: Some(q), since: None, .. } if ch == "room" && q.get() == r#"{"k":1}"#
    ));
    assert_eq!(
        subscribed(&pair.take_events()),
        [("room".to_owned(), 2, Recovery::New)]
    );
    assert_eq!(pair.client.position("room"), Some(&pos("e1", 2)));

    pair.server.refuse.insert("secret".into());
    pair.client
        .subscribe(pair.now, "secret", SubscribeOptions::default())
        .expect("subscribe");
    pair.drive();
    match &pair.take_events()[..] {
        [Event::SubscribeFailed { channel, error }] => {
            assert_eq!(channel, "secret");
            assert_eq!(error.code, "refused");
        }
        other => panic!("{other:?}"),
    }
    // The refused subscription is gone: subscribing again is allowed.
    assert_eq!(
        pair.client
            .subscribe(pair.now, "secret", SubscribeOptions::default()),
        Ok(())
    );
}

#[test]
fn publications_in_order_and_duplicates_dropped() {
    let mut pair = subscribed_pair();
    for i in 1..=3 {
        pair.publish("room", &i.to_string());
    }
    // A duplicate of seq 2 and of seq 3, as after a replay overlapping live traffic.
    for seq in [2, 3] {
        pair.server_send(ServerFrame::Pub {
            ch: "room".into(),
            topic: "msg".into(),
            pos: pos("e1", seq),
            msg: json("0"),
        });
    }
    pair.publish("room", "4");
    let events = pair.take_events();
    assert_eq!(
        publications(&events),
        (1..=4)
            .map(|i| ("room".to_owned(), i, i.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(pair.client.position("room"), Some(&pos("e1", 4)));
    assert_eq!(subs_received(&pair).len(), 1, "no resync for duplicates");
}

#[test]
fn gap_triggers_resync_and_replay_is_delivered_once() {
    let mut pair = subscribed_pair();
    pair.publish("room", "1");
    pair.publish_lost("room", "2");
    pair.publish_lost("room", "3");
    pair.publish("room", "4");
    pair.publish("room", "5");
    let events = pair.take_events();
    assert_eq!(
        subs_received(&pair),
        [("room".to_owned(), None), ("room".to_owned(), Some(1))]
    );
    assert_eq!(
        subscribed(&events),
        [("room".to_owned(), 4, Recovery::Recovered)]
    );
    let seqs: Vec<u64> = publications(&events).iter().map(|p| p.1).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

#[test]
fn publications_while_awaiting_subok_or_unsubscribed_are_ignored() {
    let mut pair = Pair::connected();
    pair.client
        .subscribe(pair.now, "room", SubscribeOptions::default())
        .expect("subscribe");
    // Not driven yet: the sub awaits its subok, so a pub is ignored.
    pair.server_send(ServerFrame::Pub {
        ch: "room".into(),
        topic: "msg".into(),
        pos: pos("e1", 1),
        msg: json("1"),
    });
    pair.server_send(ServerFrame::Pub {
        ch: "other".into(),
        topic: "msg".into(),
        pos: pos("e1", 1),
        msg: json("1"),
    });
    assert!(publications(&pair.take_events()).is_empty());
    pair.client.unsubscribe(pair.now, "room");
    pair.drive();
    assert!(matches!(
        pair.server.received.last(),
        Some(ClientFrame::Unsub { ch }) if ch == "room"
    ));
    // The subok for the dropped subscription (already sent while driving) changed nothing.
    assert!(subscribed(&pair.take_events()).is_empty());
    assert_eq!(pair.client.position("room"), None);
}

#[test]
fn server_unsubbed_removes_the_subscription() {
    let mut pair = subscribed_pair();
    pair.server_send(ServerFrame::Unsubbed {
        ch: "room".into(),
        code: codes::BOOTED.into(),
        reason: "bye".into(),
    });
    match &pair.take_events()[..] {
        [Event::Unsubscribed { channel, code, .. }] => {
            assert_eq!((channel.as_str(), code.as_str()), ("room", codes::BOOTED));
        }
        other => panic!("{other:?}"),
    }
    pair.publish("room", "1");
    assert!(pair.take_events().is_empty());
    assert_eq!(
        pair.client
            .subscribe(pair.now, "room", SubscribeOptions::default()),
        Ok(())
    );
}

/// The delays between a failure and the next `Connect`, with their attempt numbers.
fn reconnect_delays(pair: &Pair, dropped_at: Instant) -> Vec<Duration> {
    let mut previous = dropped_at;
    pair.connects()
        .iter()
        .filter(|(t, _)| *t >= dropped_at)
        .map(|(t, _)| {
            let delay = t.saturating_duration_since(previous);
            previous = *t;
            delay
        })
        .collect()
}

fn backoff_run(seed: u64) -> (Pair, Vec<Duration>) {
    let mut pair = Pair::new(Config { seed, ..config() });
    pair.take_events();
    pair.server.up = false;
    let dropped_at = pair.now;
    pair.drop_connection(close::GOING_AWAY, "restart");
    pair.advance(ms(60_000));
    let delays = reconnect_delays(&pair, dropped_at);
    (pair, delays)
}

#[test]
fn reconnect_backs_off_with_full_jitter_and_rotates_urls() {
    let (mut pair, delays) = backoff_run(7);
    let policy = Reconnect::default();
    assert!(delays.len() >= 8, "{delays:?}");
    for (n, delay) in delays.iter().enumerate() {
        let n = u32::try_from(n).expect("small");
        assert!(*delay <= policy.ceiling(n), "attempt {n}: {delay:?}");
        assert!(policy.ceiling(n) <= ms(250 << n.min(20)).min(ms(10_000)));
    }
    // Jitter: the delays are not simply the ceilings, and they depend on the seed only.
    assert!(delays
        .iter()
        .enumerate()
        .any(|(n, d)| *d < Reconnect::default().ceiling(n as u32)));
    assert_eq!(backoff_run(7).1, delays);
    assert_ne!(backoff_run(8).1, delays);

    let urls: Vec<String> = pair.connects().into_iter().map(|(_, u)| u).collect();
    assert_eq!(
        urls[..5],
        ["ws://a", "ws://b", "ws://c", "ws://a", "ws://b"]
    );
    let events = pair.take_events();
    assert_eq!(
        statuses(&events)[..3],
        [
            Status::Reconnecting { attempt: 0 },
            Status::Reconnecting { attempt: 1 },
            Status::Reconnecting { attempt: 2 }
        ]
    );

    // Back up: welcomed, and the attempt count starts over.
    pair.server.up = true;
    pair.advance(ms(10_000));
    assert_eq!(pair.client.status(), Status::Ready);
    pair.take_events();
    pair.drop_connection(close::ABNORMAL, "");
    assert_eq!(
        statuses(&pair.take_events()),
        [Status::Reconnecting { attempt: 0 }]
    );
    pair.advance(ms(250));
    assert_eq!(pair.client.status(), Status::Ready);
}

#[test]
fn max_attempts_exhausted_closes_for_good() {
    let cfg = Config {
        reconnect: Reconnect {
            max_attempts: Some(3),
            ..Reconnect::default()
        },
        ..config()
    };
    let mut pair = Pair::new(cfg);
    pair.take_events();
    pair.server.up = false;
    pair.drop_connection(close::ABNORMAL, "gone");
    pair.advance(ms(600_000));
    let events = pair.take_events();
    assert_eq!(pair.connects().len(), 1 + 3);
    assert_eq!(pair.client.status(), Status::Closed);
    assert_eq!(statuses(&events).last(), Some(&Status::Closed));
    assert_eq!(closed(&events).map(|c| c.0), Some(close::ABNORMAL));
    assert!(matches!(events.last(), Some(Event::Closed { .. })));
    assert_eq!(pair.client.poll_timeout(), None);
    assert_eq!(
        pair.client.ask(pair.now, "x", json("1")),
        Err(ClientError::Closed)
    );
}

#[test]
fn reconnect_resubscribes_and_recovers_without_duplicates() {
    let mut pair = subscribed_pair();
    pair.client
        .subscribe(pair.now, "news", SubscribeOptions::default())
        .expect("subscribe");
    pair.drive();
    pair.publish("room", "1");
    pair.publish("room", "2");
    pair.take_events();
    pair.drop_connection(close::GOING_AWAY, "restart");
    pair.publish("room", "3");
    pair.publish("room", "4");
    pair.clear_received();
    pair.advance(ms(250));
    let events = pair.take_events();
    assert_eq!(
        subs_received(&pair),
        [("news".to_owned(), Some(0)), ("room".to_owned(), Some(2))]
    );
    assert_eq!(
        subscribed(&events),
        [
            ("news".to_owned(), 0, Recovery::Recovered),
            ("room".to_owned(), 4, Recovery::Recovered)
        ]
    );
    assert_eq!(
        publications(&events),
        [
            ("room".to_owned(), 3, "3".to_owned()),
            ("room".to_owned(), 4, "4".to_owned())
        ]
    );
    assert_eq!(
        statuses(&events),
        [
            Status::Reconnecting { attempt: 0 },
            Status::Syncing,
            Status::Ready
        ]
    );
    pair.publish("room", "5");
    pair.server_send(ServerFrame::Pub {
        ch: "room".into(),
        topic: "msg".into(),
        pos: pos("e1", 4),
        msg: json("4"),
    });
    assert_eq!(
        publications(&pair.take_events()),
        [("room".to_owned(), 5, "5".to_owned())]
    );
}

#[test]
fn syncing_lasts_until_every_resent_subscription_is_answered() {
    let mut pair = subscribed_pair();
    pair.client
        .subscribe(pair.now, "news", SubscribeOptions::default())
        .expect("subscribe");
    pair.drive();
    pair.take_events();
    pair.drop_connection(close::GOING_AWAY, "restart");
    // The server answers the resent subs only when told to.
    pair.server.refuse.insert("news".into());
    pair.advance(ms(250));
    assert_eq!(
        statuses(&pair.take_events()),
        [
            Status::Reconnecting { attempt: 0 },
            Status::Syncing,
            Status::Ready
        ]
    );
    assert_eq!(pair.client.position("news"), None);
    assert_eq!(pair.client.position("room"), Some(&pos("e1", 0)));
}

#[test]
fn reconnect_to_lost_history_is_unrecoverable() {
    let mut pair = subscribed_pair();
    pair.publish("room", "1");
    pair.take_events();
    pair.drop_connection(close::GOING_AWAY, "restart");
    pair.server.reset_epoch("room", "e2");
    pair.publish("room", "11");
    pair.advance(ms(250));
    let events = pair.take_events();
    match &events
        .iter()
        .filter(|e| matches!(e, Event::Subscribed { .. } | Event::Resynced { .. }))
        .collect::<Vec<_>>()[..]
    {
        [Event::Resynced {
            position,
            recovered,
            ..
        }] => {
            assert!(!recovered);
            assert_eq!(position, &pos("e2", 1));
        }
        other => panic!("{other:?}"),
    }
    assert!(publications(&events).is_empty());
    assert_eq!(pair.client.position("room"), Some(&pos("e2", 1)));
    pair.publish("room", "12");
    assert_eq!(
        publications(&pair.take_events()),
        [("room".to_owned(), 2, "12".to_owned())]
    );
}

#[test]
fn live_epoch_change_resyncs_as_unrecoverable() {
    let mut pair = subscribed_pair();
    pair.publish("room", "1");
    pair.server.reset_epoch("room", "e2");
    pair.publish("room", "2");
    let events = pair.take_events();
    assert_eq!(
        subscribed(&events),
        [("room".to_owned(), 1, Recovery::Unrecoverable)]
    );
    assert_eq!(publications(&events).len(), 1);
    assert_eq!(subs_received(&pair)[1], ("room".to_owned(), Some(1)));
}

#[test]
fn offline_queue_is_flushed_in_order_after_welcome() {
    let cfg = Config {
        offline_queue: 3,
        ..config()
    };
    let mut pair = Pair::new(cfg);
    pair.server.up = false;
    pair.drop_connection(close::ABNORMAL, "");
    let now = pair.now;
    let a = pair.client.ask(now, "one", json("1")).expect("queued");
    pair.client.tell(now, "two", json("2")).expect("queued");
    pair.client.ask(now, "three", json("3")).expect("queued");
    assert_eq!(
        pair.client.tell(now, "four", json("4")),
        Err(ClientError::QueueFull)
    );
    assert_eq!(
        pair.client.ask(now, "four", json("4")),
        Err(ClientError::QueueFull)
    );
    pair.client
        .subscribe(now, "room", SubscribeOptions::default())
        .expect("subscribe");
    pair.clear_received();
    pair.server.up = true;
    pair.advance(ms(1_000));
    assert_eq!(
        received_labels(&pair),
        ["hello", "sub room", "one", "two", "three"]
    );
    let done = asks_done(&pair.take_events());
    assert_eq!(
        done,
        [(a.as_u64(), Ok("1".to_owned())), (2, Ok("3".to_owned()))]
    );
}

#[test]
fn queued_ask_times_out_and_is_never_sent() {
    let mut pair = Pair::new(config());
    pair.server.up = false;
    pair.drop_connection(close::ABNORMAL, "");
    pair.client
        .ask(pair.now, "late", json("1"))
        .expect("queued");
    pair.client
        .tell(pair.now, "kept", json("1"))
        .expect("queued");
    pair.advance(ms(10_000));
    assert_eq!(
        asks_done(&pair.take_events()),
        [(1, Err(codes::TIMEOUT.to_owned()))]
    );
    pair.clear_received();
    pair.server.up = true;
    pair.advance(ms(20_000));
    assert!(!pair
        .server
        .received
        .iter()
        .any(|f| matches!(f, ClientFrame::Ask { .. })));
    assert!(pair
        .server
        .received
        .iter()
        .any(|f| matches!(f, ClientFrame::Tell { topic, .. } if topic == "kept")));
}

#[test]
fn sent_asks_fail_disconnected_and_are_not_resent() {
    let mut pair = Pair::connected();
    pair.server.ask_mode = AskMode::Ignore;
    pair.client.ask(pair.now, "slow", json("1")).expect("ask");
    pair.drive();
    pair.drop_connection(close::ABNORMAL, "");
    let events = pair.take_events();
    assert_eq!(
        asks_done(&events),
        [(1, Err(codes::DISCONNECTED.to_owned()))]
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::AskDone { result: Err(e), .. } if e.is_disconnected())));
    pair.clear_received();
    pair.advance(ms(1_000));
    assert_eq!(pair.client.status(), Status::Ready);
    assert!(!pair
        .server
        .received
        .iter()
        .any(|f| matches!(f, ClientFrame::Ask { .. })));
    // Nothing else times out later.
    pair.advance(ms(20_000));
    assert!(asks_done(&pair.take_events()).is_empty());
}

#[test]
fn heartbeat_keeps_alive_and_pong_answers_ping() {
    let mut pair = Pair::connected();
    pair.advance(ms(10 * HB));
    assert!(closes(&pair).is_empty());
    let pongs = pair
        .server
        .received
        .iter()
        .filter(|f| matches!(f, ClientFrame::Pong {}))
        .count();
    assert_eq!(pongs, 10);
    assert_eq!(pair.client.status(), Status::Ready);
}

#[test]
fn heartbeat_timeout_closes_and_reconnects() {
    let mut pair = Pair::connected();
    pair.server.pinging = false;
    let start = pair.now;
    pair.advance(ms(2 * HB - 1));
    assert!(closes(&pair).is_empty());
    pair.advance(ms(1));
    assert_eq!(closes(&pair), [close::HEARTBEAT_TIMEOUT]);
    assert_eq!(
        pair.actions
            .iter()
            .rev()
            .find(|(_, a)| matches!(a, Action::Close { .. }))
            .map(|(t, _)| *t),
        Some(start + ms(2 * HB))
    );
    assert_eq!(
        statuses(&pair.take_events())[0],
        Status::Reconnecting { attempt: 0 }
    );
    pair.advance(ms(250));
    assert_eq!(pair.connects().len(), 2);
    assert_eq!(pair.client.status(), Status::Ready);
}

#[test]
fn connect_timeout_counts_as_a_failed_attempt() {
    let mut pair = Pair::connected();
    pair.server.welcome = false;
    pair.drop_connection(close::ABNORMAL, "");
    pair.advance(ms(250));
    assert_eq!(pair.connects().len(), 2);
    pair.advance(ms(10_000));
    assert_eq!(closes(&pair), [close::HANDSHAKE_TIMEOUT]);
    assert!(statuses(&pair.take_events()).contains(&Status::Reconnecting { attempt: 1 }));
    pair.server.welcome = true;
    pair.advance(ms(1_000));
    assert_eq!(pair.client.status(), Status::Ready);
}

#[test]
fn final_close_codes_do_not_reconnect() {
    for code in [close::BOOTED, close::NORMAL] {
        let mut pair = Pair::connected();
        pair.server.ask_mode = AskMode::Ignore;
        pair.client.ask(pair.now, "x", json("1")).expect("ask");
        pair.drive();
        pair.server_send(ServerFrame::Error {
            code: "booted".into(),
            reason: "by admin".into(),
        });
        pair.drop_connection(code, "");
        let events = pair.take_events();
        assert_eq!(closed(&events), Some((code, "booted: by admin".to_owned())));
        assert_eq!(asks_done(&events), [(1, Err(codes::CLOSED.to_owned()))]);
        assert_eq!(statuses(&events), [Status::Closed]);
        pair.advance(ms(60_000));
        assert_eq!(pair.connects().len(), 1, "code {code} must not reconnect");
    }
}

#[test]
fn malformed_frame_is_a_protocol_error_and_reconnects() {
    for bad in [
        "not json",
        r#"{"t":"nope"}"#,
        r#"{"t":"res"}"#,
        r#"{"t":"welcome","v":1,"socket":"x","hb":1}"#,
    ] {
        let mut pair = Pair::connected();
        pair.server_send_text(bad);
        assert_eq!(closes(&pair), [close::PROTOCOL_ERROR], "{bad}");
        assert_eq!(
            pair.client.status(),
            Status::Reconnecting { attempt: 0 },
            "{bad}"
        );
        pair.advance(ms(250));
        assert_eq!(pair.client.status(), Status::Ready, "{bad}");
        assert_eq!(pair.connects().len(), 2);
    }
}

#[test]
fn unexpected_frame_before_welcome_is_a_protocol_error() {
    let mut pair = Pair::connected();
    pair.server.welcome = false;
    pair.drop_connection(close::ABNORMAL, "");
    pair.advance(ms(250));
    pair.server_send(ServerFrame::Pong {});
    pair.server_send(ServerFrame::Res {
        id: 1,
        msg: json("1"),
    });
    assert_eq!(closes(&pair), [close::PROTOCOL_ERROR]);
    assert!(pair
        .take_events()
        .iter()
        .all(|e| !matches!(e, Event::AskDone { .. })));
}

#[test]
fn wrong_protocol_version_closes_for_good() {
    let mut pair = Pair::connected();
    pair.server.welcome = false;
    pair.drop_connection(close::ABNORMAL, "");
    pair.advance(ms(250));
    pair.server_send(ServerFrame::Welcome {
        v: 99,
        socket: "s".into(),
        user: None,
        session: None,
        hb: HB,
    });
    assert_eq!(closes(&pair), [close::UNSUPPORTED_VERSION]);
    assert_eq!(pair.client.status(), Status::Closed);
    assert_eq!(
        closed(&pair.take_events()).map(|c| c.0),
        Some(close::UNSUPPORTED_VERSION)
    );
}

#[test]
fn hello_carries_the_auth_set_before_each_connection() {
    let mut pair = Pair::new(config());
    pair.client.set_auth(Some(json(r#"{"token":"t2"}"#)));
    pair.drop_connection(close::ABNORMAL, "");
    pair.advance(ms(250));
    let hellos: Vec<Option<String>> = pair
        .server
        .received
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Hello { auth, .. } => Some(auth.as_ref().map(|a| a.get().to_owned())),
            _ => None,
        })
        .collect();
    assert_eq!(hellos, [None, Some(r#"{"token":"t2"}"#.to_owned())]);
}

/// A `hello` the session parser refused: the `error` frame's code reaches the application with
/// the close, and the client does not try again.
#[test]
fn refused_hello_closes_for_good_with_the_servers_code() {
    let mut pair = Pair::connected();
    pair.server.welcome = false;
    pair.drop_connection(close::ABNORMAL, "");
    pair.advance(ms(250));
    pair.server_send(ServerFrame::Error {
        code: codes::UNAUTHORIZED.into(),
        reason: "token expired".into(),
    });
    pair.drop_connection(close::HANDSHAKE_REFUSED, "token expired");
    let connects = pair.connects().len();
    pair.advance(ms(60_000));
    assert_eq!(
        pair.connects().len(),
        connects,
        "no reconnect after a refusal"
    );
    assert_eq!(pair.client.status(), Status::Closed);
    let events = pair.take_events();
    let error = events.iter().find_map(|e| match e {
        Event::Closed { code, error, .. } => Some((*code, error.clone())),
        _ => None,
    });
    assert_eq!(
        error,
        Some((
            close::HANDSHAKE_REFUSED,
            Some(AskError::new(codes::UNAUTHORIZED, "token expired"))
        ))
    );
}

/// The policy both drivers' `connect` follow: with `fail_first_connect`, a first connection
/// that fails closes the client with that failure; without, it is retried.
#[test]
fn a_failed_first_connection_closes_when_asked() {
    for fail_first_connect in [true, false] {
        let now = Instant::from_millis(0);
        let config = Config {
            fail_first_connect,
            ..config()
        };
        let mut client = Client::new(config, now);
        client
            .subscribe(now, "room", SubscribeOptions::default())
            .expect("subscribe");
        assert!(matches!(client.poll_action(), Some(Action::Connect { .. })));
        client.handle_close(now, close::ABNORMAL, "connection refused");
        let events: Vec<Event> = std::iter::from_fn(|| client.poll_event()).collect();
        if fail_first_connect {
            assert_eq!(client.status(), Status::Closed);
            assert_eq!(
                closed(&events),
                Some((close::ABNORMAL, "connection refused".to_owned()))
            );
            assert!(matches!(
                &events[0],
                Event::SubscribeFailed { channel, error } if channel == "room" && error.is_closed()
            ));
            assert_eq!(client.poll_timeout(), None, "nothing more is scheduled");
        } else {
            assert_eq!(statuses(&events), [Status::Reconnecting { attempt: 0 }]);
            assert!(client.poll_timeout().is_some(), "a reconnect is scheduled");
        }
    }
    // After a welcome, a lost connection is retried either way.
    let mut pair = Pair::new(Config {
        fail_first_connect: true,
        ..config()
    });
    pair.drop_connection(close::ABNORMAL, "");
    assert_eq!(pair.client.status(), Status::Reconnecting { attempt: 0 });
}

/// A subscription resent after a reconnect before its first answer starts (`Subscribed`);
/// one that had started resyncs (`Resynced`).
#[test]
fn only_a_started_subscription_resyncs() {
    let mut pair = subscribed_pair();
    pair.server.defer_subs = true;
    pair.client
        .subscribe(pair.now, "news", SubscribeOptions::default())
        .expect("subscribe");
    pair.drive();
    pair.server.defer_subs = false;
    pair.drop_connection(close::GOING_AWAY, "restart");
    pair.advance(ms(250));
    let kinds: Vec<(String, &str)> = pair
        .take_events()
        .iter()
        .filter_map(|e| match e {
            Event::Subscribed { channel, .. } => Some((channel.clone(), "subscribed")),
            Event::Resynced { channel, .. } => Some((channel.clone(), "resynced")),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("news".to_owned(), "subscribed"),
            ("room".to_owned(), "resynced")
        ]
    );
}

/// However the client closes, every subscription ends with the close's reason before `Closed`.
#[test]
fn closing_ends_every_subscription_with_a_reason() {
    for by_app in [true, false] {
        let mut pair = subscribed_pair();
        if by_app {
            pair.client.close(pair.now);
            pair.drive();
        } else {
            pair.drop_connection(close::BOOTED, "booted by the server");
        }
        let events = pair.take_events();
        let reason = if by_app {
            "closed by the client"
        } else {
            "booted by the server"
        };
        assert!(
            matches!(
                &events[..],
                [
                    Event::Unsubscribed { channel, code, reason: r },
                    Event::Status(Status::Closed),
                    Event::Closed { .. },
                ] if channel == "room" && code == codes::CLOSED && r == reason
            ),
            "{events:?}"
        );
    }
}

#[test]
fn client_errors_have_the_codes_both_drivers_report() {
    assert_eq!(ClientError::Closed.code(), codes::CLOSED);
    assert_eq!(ClientError::QueueFull.code(), codes::QUEUE_FULL);
    assert_eq!(
        ClientError::InvalidChannel(ChannelError::Empty).code(),
        codes::INVALID_CHANNEL
    );
    assert_eq!(ClientError::AlreadySubscribed.code(), codes::INVALID);
    assert_eq!(ClientError::InvalidTopic.code(), codes::INVALID);
}

#[test]
fn user_close_fails_everything_with_closed() {
    let mut pair = Pair::connected();
    pair.server.ask_mode = AskMode::Ignore;
    pair.client
        .subscribe(pair.now, "room", SubscribeOptions::default())
        .expect("subscribe");
    let sent = pair.client.ask(pair.now, "x", json("1")).expect("ask");
    pair.drive();
    pair.take_events();
    pair.client.close(pair.now);
    pair.drive();
    let events = pair.take_events();
    assert_eq!(closes(&pair), [close::NORMAL]);
    assert_eq!(
        asks_done(&events),
        [(sent.as_u64(), Err(codes::CLOSED.to_owned()))]
    );
    assert!(matches!(&events[0], Event::AskDone { result: Err(e), .. } if e.is_closed()));
    assert_eq!(statuses(&events), [Status::Closed]);
    assert_eq!(closed(&events).map(|c| c.0), Some(close::NORMAL));
    assert!(matches!(events.last(), Some(Event::Closed { .. })));
    let now = pair.now;
    assert_eq!(
        pair.client.ask(now, "x", json("1")),
        Err(ClientError::Closed)
    );
    assert_eq!(
        pair.client.tell(now, "x", json("1")),
        Err(ClientError::Closed)
    );
    assert_eq!(
        pair.client.subscribe(now, "b", SubscribeOptions::default()),
        Err(ClientError::Closed)
    );
    pair.client.close(now);
    pair.client.handle_close(now, close::ABNORMAL, "");
    pair.advance(ms(60_000));
    assert!(pair.take_events().is_empty());
    assert_eq!(pair.connects().len(), 1);
}

#[test]
fn user_close_while_offline_fails_queued_asks() {
    let mut pair = Pair::new(config());
    pair.server.up = false;
    pair.drop_connection(close::ABNORMAL, "");
    let id: AskId = pair.client.ask(pair.now, "x", json("1")).expect("queued");
    pair.take_events();
    pair.client.close(pair.now);
    pair.drive();
    assert_eq!(
        asks_done(&pair.take_events()),
        [(id.as_u64(), Err(codes::CLOSED.to_owned()))]
    );
    assert!(closes(&pair).is_empty(), "no socket to close");
}

#[test]
fn garbage_never_panics() {
    let frames = [
        "",
        "{",
        "null",
        "[]",
        r#"{"t":"subok","id":99,"ch":"zz","pos":{"e":"x","s":1}}"#,
        r#"{"t":"subrej","id":99,"ch":"room","code":"x"}"#,
        r#"{"t":"pub","ch":"room","topic":"t","pos":{"e":"e1","s":18446744073709551615}}"#,
        r#"{"t":"rej","id":18446744073709551615,"code":"x"}"#,
        r#"{"t":"welcome","v":1,"socket":"s","hb":18446744073709551615}"#,
        r#"{"t":"unsubbed","ch":"nope","code":"x"}"#,
    ];
    for frame in frames {
        let mut pair = subscribed_pair();
        pair.publish("room", "1");
        pair.server_send_text(frame);
        pair.advance(ms(1_000));
        let mut fresh = Pair::new(config());
        fresh.server.welcome = false;
        fresh.drop_connection(close::ABNORMAL, "");
        fresh.advance(ms(250));
        fresh.server_send_text(frame);
        fresh.advance(ms(60_000));
    }
}

// ---- Presence ---------------------------------------------------------------------------------

const ANN: &str = r#"{"socket":"s-2","user":"ann","info":{"name":"Ann"}}"#;
const BOB: &str = r#"{"socket":"s-3","user":"bob"}"#;

fn with_presence() -> SubscribeOptions {
    SubscribeOptions {
        presence: true,
        ..SubscribeOptions::default()
    }
}

/// Join and leave events as `(channel, joined, member JSON)`.
fn members(events: &[Event]) -> Vec<(String, bool, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Join { channel, member } => Some((channel.clone(), true, member.get().into())),
            Event::Leave { channel, member } => Some((channel.clone(), false, member.get().into())),
            _ => None,
        })
        .collect()
}

/// The `presence` field of every `Subscribed` and `Resynced` event, as `(channel, presence)`.
fn presence_granted(events: &[Event]) -> Vec<(String, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Subscribed {
                channel, presence, ..
            }
            | Event::Resynced {
                channel, presence, ..
            } => Some((channel.clone(), *presence)),
            _ => None,
        })
        .collect()
}

/// The `presence` option of every `sub` frame the server received, as `(channel, presence)`.
fn presence_asked(pair: &Pair) -> Vec<(String, bool)> {
    pair.server
        .received
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Sub { ch, presence, .. } => Some((ch.clone(), *presence)),
            _ => None,
        })
        .collect()
}

/// The presence requests the server received, as `(id, channel, stats)`.
/// What the server received, in order, one short label per frame: `hello`, `sub <ch>`,
/// `pstats <ch>`, an ask's or tell's topic.
fn received_labels(pair: &Pair) -> Vec<String> {
    pair.server
        .received
        .iter()
        .map(|f| match f {
            ClientFrame::Hello { .. } => "hello".to_owned(),
            ClientFrame::Sub { ch, .. } => format!("sub {ch}"),
            ClientFrame::PresenceStats { ch, .. } => format!("pstats {ch}"),
            ClientFrame::Ask { topic, .. } | ClientFrame::Tell { topic, .. } => topic.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn presence_requests(pair: &Pair) -> Vec<(u64, String, bool)> {
    pair.server
        .received
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Presence { id, ch } => Some((*id, ch.clone(), false)),
            ClientFrame::PresenceStats { id, ch } => Some((*id, ch.clone(), true)),
            _ => None,
        })
        .collect()
}

/// A connected pair subscribed to `room` (with presence, events asked for) and to `quiet`
/// (with presence, no events asked for), with events taken.
fn presence_pair() -> Pair {
    let mut pair = Pair::connected();
    pair.server.presence.extend(["room".into(), "quiet".into()]);
    let now = pair.now;
    pair.client
        .subscribe(now, "room", with_presence())
        .expect("subscribe");
    pair.client
        .subscribe(now, "quiet", SubscribeOptions::default())
        .expect("subscribe");
    pair.drive();
    assert_eq!(
        presence_granted(&pair.take_events()),
        [("room".to_owned(), true), ("quiet".to_owned(), true)]
    );
    pair
}

#[test]
fn every_sub_carries_the_presence_option_and_subok_says_if_granted() {
    let mut pair = presence_pair();
    pair.client
        .subscribe(pair.now, "plain", with_presence())
        .expect("subscribe");
    pair.drive();
    // Asked for, but the server did not grant presence to `plain`.
    assert_eq!(
        presence_granted(&pair.take_events()),
        [("plain".to_owned(), false)]
    );
    // A gap: the resync asks again.
    pair.publish("room", "1");
    pair.publish_lost("room", "2");
    pair.publish("room", "3");
    // A reconnect: every resent `sub` asks again.
    pair.drop_connection(close::GOING_AWAY, "restart");
    pair.advance(ms(1_000));
    let asked = presence_asked(&pair);
    assert_eq!(
        asked,
        [
            ("room".to_owned(), true),
            ("quiet".to_owned(), false),
            ("plain".to_owned(), true),
            ("room".to_owned(), true),
            ("plain".to_owned(), true),
            ("quiet".to_owned(), false),
            ("room".to_owned(), true),
        ]
    );
    // The resyncs say again whether the subscription has presence, and replay no presence.
    let events = pair.take_events();
    assert_eq!(
        presence_granted(&events),
        [
            ("room".to_owned(), true),
            ("plain".to_owned(), false),
            ("quiet".to_owned(), true),
            ("room".to_owned(), true),
        ]
    );
    assert_eq!(members(&events), []);
}

#[test]
fn join_and_leave_reach_only_live_subscriptions_that_asked() {
    let mut pair = presence_pair();
    pair.member("room", ANN, true);
    pair.member("quiet", ANN, true);
    pair.member("room", BOB, true);
    pair.member("room", ANN, false);
    assert_eq!(
        members(&pair.take_events()),
        [
            ("room".to_owned(), true, ANN.to_owned()),
            ("room".to_owned(), true, BOB.to_owned()),
            ("room".to_owned(), false, ANN.to_owned()),
        ]
    );
    // Unknown channel: dropped.
    pair.server_send(ServerFrame::Join {
        ch: "nowhere".into(),
        m: json(ANN),
    });
    // While a resync is pending: dropped (the application asks again after `Subscribed`).
    pair.server.defer_subs = true;
    pair.publish_lost("room", "1");
    pair.publish("room", "2");
    pair.member("room", ANN, true);
    assert_eq!(members(&pair.take_events()), []);
    pair.answer_subs();
    pair.member("room", ANN, false);
    let events = pair.take_events();
    assert_eq!(
        presence_granted(&events),
        [("room".to_owned(), true)],
        "{events:?}"
    );
    assert_eq!(
        members(&events),
        [("room".to_owned(), false, ANN.to_owned())]
    );
    // After unsubscribing: dropped.
    pair.client.unsubscribe(pair.now, "room");
    pair.server_send(ServerFrame::Join {
        ch: "room".into(),
        m: json(BOB),
    });
    assert_eq!(members(&pair.take_events()), []);
}

#[test]
fn presence_requests_are_asks_with_their_own_frames() {
    let mut pair = presence_pair();
    pair.member("room", ANN, true);
    pair.member("room", BOB, true);
    pair.take_events();
    let now = pair.now;
    let ask = pair.client.ask(now, "add", json("1")).expect("ask");
    let list = pair.client.presence(now, "room").expect("presence");
    let stats = pair.client.presence_stats(now, "room").expect("stats");
    let no_presence = pair.client.presence(now, "plain");
    pair.drive();
    // One id space, in call order.
    assert_eq!((ask.as_u64(), list.as_u64(), stats.as_u64()), (1, 2, 3));
    assert_eq!(
        presence_requests(&pair),
        [(2, "room".to_owned(), false), (3, "room".to_owned(), true)]
    );
    // `plain` has no subscription: refused by the client itself, nothing sent.
    let no_presence = no_presence.expect("an id").as_u64();
    assert_eq!(no_presence, 4);
    assert_eq!(
        asks_done(&pair.take_events()),
        [
            (4, Err(codes::NOT_SUBSCRIBED.to_owned())),
            (1, Ok("1".to_owned())),
            (2, Ok(format!("[{ANN},{BOB}]"))),
            (3, Ok(r#"{"sockets":2,"users":2}"#.to_owned())),
        ]
    );
    // A subscription the server did not grant presence: the server refuses.
    pair.client
        .subscribe(pair.now, "plain", SubscribeOptions::default())
        .expect("subscribe");
    pair.drive();
    pair.client.presence(pair.now, "plain").expect("presence");
    pair.drive();
    assert_eq!(
        asks_done(&pair.take_events()),
        [(5, Err(codes::NO_PRESENCE.to_owned()))]
    );
}

#[test]
fn presence_requests_wait_for_the_subscriptions_subok() {
    let mut pair = Pair::connected();
    pair.server.presence.insert("room".into());
    pair.server.members.insert("room".into(), vec![ANN.into()]);
    pair.server.defer_subs = true;
    pair.client
        .subscribe(pair.now, "room", with_presence())
        .expect("subscribe");
    let early = pair.client.presence(pair.now, "room").expect("presence");
    pair.drive();
    assert_eq!(presence_requests(&pair), [], "held until subok");
    pair.answer_subs();
    assert_eq!(
        presence_requests(&pair),
        [(early.as_u64(), "room".to_owned(), false)]
    );
    assert_eq!(
        asks_done(&pair.take_events()),
        [(early.as_u64(), Ok(format!("[{ANN}]")))]
    );

    // Offline: held (not queued), and after the reconnect sent only once the resent `sub` is
    // accepted, never ahead of it.
    pair.server.up = false;
    pair.drop_connection(close::ABNORMAL, "");
    let offline = pair.client.presence_stats(pair.now, "room").expect("held");
    pair.clear_received();
    pair.server.up = true;
    pair.advance(ms(1_000));
    assert_eq!(presence_requests(&pair), []);
    assert_eq!(pair.client.status(), Status::Syncing);
    pair.answer_subs();
    assert_eq!(received_labels(&pair), ["hello", "sub room", "pstats room"]);
    assert_eq!(
        asks_done(&pair.take_events()),
        [(
            offline.as_u64(),
            Ok(r#"{"sockets":1,"users":1}"#.to_owned())
        )]
    );
}

#[test]
fn held_presence_requests_fail_when_their_subscription_goes() {
    let mut pair = Pair::connected();
    pair.server.defer_subs = true;
    pair.server.refuse.insert("secret".into());
    let now = pair.now;
    for ch in ["secret", "room"] {
        pair.client
            .subscribe(now, ch, with_presence())
            .expect("subscribe");
    }
    let refused = pair.client.presence(now, "secret").expect("held");
    let left = pair.client.presence(now, "room").expect("held");
    pair.client.unsubscribe(now, "room");
    pair.answer_subs();
    let events = pair.take_events();
    assert_eq!(
        asks_done(&events),
        [
            (left.as_u64(), Err(codes::NOT_SUBSCRIBED.to_owned())),
            (refused.as_u64(), Err(codes::NOT_SUBSCRIBED.to_owned())),
        ]
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::SubscribeFailed { channel, .. } if channel == "secret")));
    assert_eq!(presence_requests(&pair), []);

    // Closing fails what is still held with `closed`.
    pair.client
        .subscribe(pair.now, "again", with_presence())
        .expect("subscribe");
    let held = pair.client.presence(pair.now, "again").expect("held");
    pair.client.close(pair.now);
    pair.drive();
    assert_eq!(
        asks_done(&pair.take_events()),
        [(held.as_u64(), Err(codes::CLOSED.to_owned()))]
    );
}

#[test]
fn presence_requests_time_out_fail_disconnected_and_fill_the_offline_queue_like_asks() {
    let cfg = Config {
        offline_queue: 2,
        ..config()
    };
    let mut pair = Pair::new(cfg);
    pair.server.presence.insert("room".into());
    pair.client
        .subscribe(pair.now, "room", with_presence())
        .expect("subscribe");
    pair.drive();
    pair.take_events();

    // Sent, then the connection drops: `disconnected`, never resent.
    pair.server.ask_mode = AskMode::Ignore;
    let sent = pair.client.presence(pair.now, "room").expect("sent");
    pair.drive();
    pair.server.up = false;
    pair.drop_connection(close::ABNORMAL, "");
    assert_eq!(
        asks_done(&pair.take_events()),
        [(sent.as_u64(), Err(codes::DISCONNECTED.to_owned()))]
    );

    // Offline: held requests and queued asks share the offline queue's bound.
    let now = pair.now;
    let held = pair.client.presence(now, "room").expect("held");
    pair.client.ask(now, "add", json("1")).expect("queued");
    assert_eq!(
        pair.client.presence_stats(now, "room"),
        Err(ClientError::QueueFull)
    );
    assert_eq!(
        pair.client.tell(now, "t", json("1")),
        Err(ClientError::QueueFull)
    );

    // Held past the ask timeout: times out, and is never sent.
    pair.advance(ms(10_000));
    let done = asks_done(&pair.take_events());
    assert!(
        done.contains(&(held.as_u64(), Err(codes::TIMEOUT.to_owned()))),
        "{done:?}"
    );
    pair.clear_received();
    pair.server.up = true;
    pair.advance(ms(20_000));
    assert_eq!(presence_requests(&pair), []);
    assert_eq!(pair.client.status(), Status::Ready);

    // Sent and unanswered: times out like an ask.
    let slow = pair.client.presence(pair.now, "room").expect("sent");
    pair.drive();
    pair.advance(ms(10_000));
    assert_eq!(
        asks_done(&pair.take_events()),
        [(slow.as_u64(), Err(codes::TIMEOUT.to_owned()))]
    );
}

// ---- Opaque payloads (the browser driver's way: frames parsed outside the core) --------------

/// A payload the core cannot look into: a number standing for a value kept elsewhere (as the
/// browser keeps JS values), written out as JSON text only in the frames the client sends.
#[derive(Clone, Debug, PartialEq)]
struct Handle(u32);

impl sss_core::protocol::Payload for Handle {
    fn null() -> Self {
        Handle(0)
    }

    fn write_json(&self, out: &mut String) {
        out.push_str(&format!("\"h{}\"", self.0));
    }
}

/// The fields of a frame, as a driver that parsed it itself hands them over.
fn envelope(kind: &str) -> sss_core::protocol::Envelope<'_, Handle> {
    sss_core::protocol::Envelope {
        t: kind.into(),
        v: None,
        id: None,
        topic: None,
        ch: None,
        pos: None,
        recovered: None,
        presence: None,
        socket: None,
        user: None,
        session: None,
        hb: None,
        code: None,
        reason: None,
        msg: None,
        m: None,
    }
}

#[test]
fn payloads_of_any_type_pass_through_the_core_undecoded() {
    let t = Instant::from_millis(0);
    let mut client: Client<Handle> = Client::new_generic(config(), t);
    client.set_auth(Some(Handle(1)));
    assert!(matches!(client.poll_action(), Some(Action::Connect { .. })));
    client.handle_open(t);
    assert_eq!(
        client.poll_transmit().as_deref(),
        Some(r#"{"t":"hello","v":1,"auth":"h1"}"#)
    );
    let welcome = sss_core::protocol::Envelope {
        v: Some(1),
        socket: Some("s-1".into()),
        hb: Some(0),
        ..envelope("welcome")
    };
    client.handle_server_frame(t, ServerFrame::from_envelope(welcome));
    assert_eq!(client.status(), Status::Ready);
    let id = client.ask(t, "add", Handle(2)).expect("ask");
    assert_eq!(
        client.poll_transmit().as_deref(),
        Some(r#"{"t":"ask","id":1,"topic":"add","msg":"h2"}"#)
    );
    let res = sss_core::protocol::Envelope {
        id: Some(id.as_u64()),
        msg: Some(Handle(3)),
        ..envelope("res")
    };
    client.handle_server_frame(t, ServerFrame::from_envelope(res));
    // A `res` without its `msg` answers `null`, in the payload type's own terms.
    let id2 = client.ask(t, "add", Handle(4)).expect("ask");
    let bare = sss_core::protocol::Envelope {
        id: Some(id2.as_u64()),
        ..envelope("res")
    };
    client.handle_server_frame(t, ServerFrame::from_envelope(bare));
    let answers: Vec<_> = std::iter::from_fn(|| client.poll_event())
        .filter_map(|e| match e {
            Event::AskDone { id, result } => Some((id.as_u64(), result.ok())),
            _ => None,
        })
        .collect();
    assert_eq!(answers, [(1, Some(Handle(3))), (2, Some(Handle(0)))]);
}

#[test]
fn an_envelope_missing_a_required_field_is_a_protocol_error() {
    let t = Instant::from_millis(0);
    let mut client: Client<Handle> = Client::new_generic(config(), t);
    let _ = client.poll_action();
    client.handle_open(t);
    let _ = client.poll_transmit();
    // A `welcome` without its socket id.
    let welcome = sss_core::protocol::Envelope {
        v: Some(1),
        hb: Some(0),
        ..envelope("welcome")
    };
    client.handle_server_frame(t, ServerFrame::from_envelope(welcome));
    assert_eq!(
        client.poll_action(),
        Some(Action::Close {
            code: close::PROTOCOL_ERROR,
            reason: r#"frame "welcome" is missing field "socket""#.to_owned()
        })
    );
}
