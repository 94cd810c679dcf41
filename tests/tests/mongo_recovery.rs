//! The MongoDB tier of recovery, end to end: a client (sss-client, real server) offline for
//! longer than the Redis window recovers from MongoDB, and is told the channel is unrecoverable
//! once MongoDB no longer has what it missed.
//!
//! Runs against SecantusDB (a MongoDB-wire-compatible server, spawned per test) unless
//! `MONGODB_URI` names a MongoDB, and a `redis-server` of its own unless `REDIS_URL` is set.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::doc;
use sss_client::{Client, ClientStatus, Options, SubEvent, Subscription};
use sss_core::client::Reconnect;
use sss_server::scaler::{MongoOptions, MongoScaler};
use sss_server::{Listening, Server};
use sss_tests::services::{MongoServer, RedisServer};
use sss_tests::{init_tracing, within};

/// Publications Redis keeps per channel in these tests.
const WINDOW: usize = 10;
/// Publications while the client is away: five windows.
const AWAY: u64 = 50;
const CHANNEL: &str = "room:m";

fn fast_reconnect() -> Options {
    Options::default().reconnect(Reconnect {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
        max_attempts: None,
    })
}

/// Everything one test runs on.
struct Setup {
    mongo: MongoServer,
    _redis: RedisServer,
    opts: MongoOptions,
    hub: MongoScaler,
    /// Another instance of the cluster, which stays up and publishes.
    publisher: Server,
}

impl Setup {
    async fn new() -> Self {
        init_tracing();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let redis = RedisServer::start().await;
        let mongo = MongoServer::start().await;
        let opts = MongoOptions {
            database: "sss_test".to_owned(),
            redis_window: WINDOW,
            prefix: format!(
                "sss_rec_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
            ..MongoOptions::default()
        };
        let hub = within(
            "connect",
            MongoScaler::connect(mongo.uri(), redis.url(), opts.clone()),
        )
        .await
        .expect("connects to mongodb and redis");
        let publisher = Server::builder(hub.instance().expect("instance"))
            .build()
            .await
            .expect("publisher");
        Self {
            mongo,
            _redis: redis,
            opts,
            hub,
            publisher,
        }
    }

    /// A server instance of the cluster, listening on `addr`.
    async fn serve(&self, addr: &str) -> (Server, Listening) {
        let server = Server::builder(self.hub.instance().expect("instance"))
            .build()
            .await
            .expect("server");
        let listening = server.listen(addr).await.expect("listen");
        (server, listening)
    }

    async fn publish(&self, n: u64) {
        within("publish", self.publisher.publish(CHANNEL, "n", &n))
            .await
            .expect("publish");
    }

    /// A client subscribed through the returned server, having received publication 1; then
    /// the server goes away, [`AWAY`] more publications go by (2..=51) and `meanwhile` runs,
    /// and the server comes back on the same address.
    async fn away_and_back<F: std::future::Future<Output = ()>>(
        &self,
        meanwhile: impl FnOnce() -> F,
    ) -> (Client, Subscription, Server, Listening) {
        let (server, listening) = self.serve("127.0.0.1:0").await;
        let addr = listening.local_addr();
        let client = within(
            "connect",
            Client::connect(format!("ws://{addr}/ws"), fast_reconnect()),
        )
        .await
        .expect("connects");
        let mut sub = within("sub", client.subscribe(CHANNEL, None::<()>))
            .await
            .expect("sub");
        self.publish(1).await;
        match within("first", sub.next()).await {
            Some(SubEvent::Publication(p)) => assert_eq!(p.position.seq, 1),
            other => panic!("expected publication 1, got {other:?}"),
        }
        server.shutdown(Duration::from_secs(5)).await;
        listening.stopped().await;
        within(
            "reconnecting",
            client.wait_status(|s| s != ClientStatus::Ready),
        )
        .await;
        for n in 2..=1 + AWAY {
            self.publish(n).await;
        }
        meanwhile().await;
        let (server, listening) = self.serve(&addr.to_string()).await;
        (client, sub, server, listening)
    }
}

/// Offline for five Redis windows: every publication comes back from MongoDB (and the window),
/// in order, exactly once, then the live stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_longer_than_the_redis_window_recovers_from_mongodb() {
    let setup = Setup::new().await;
    let (_client, mut sub, _server, _listening) = setup.away_and_back(|| async {}).await;
    let mut got = Vec::new();
    let mut recovered = 0;
    while (got.len() as u64) < AWAY {
        match within("recovered publication", sub.next()).await {
            Some(SubEvent::Publication(p)) => {
                got.push((p.position.seq, p.decode::<u64>().expect("number")));
            }
            Some(SubEvent::Recovered { position }) => {
                assert_eq!(position.seq, 1 + AWAY);
                recovered += 1;
            }
            other => panic!("expected the missed publications, got {other:?}"),
        }
    }
    let want: Vec<(u64, u64)> = (2..=1 + AWAY).map(|n| (n, n)).collect();
    assert_eq!(got, want, "every missed publication once, in order");
    assert_eq!(recovered, 1, "one resync, with nothing lost");
    // Nothing more was queued: the next event is the next live publication.
    setup.publish(2 + AWAY).await;
    match within("live", sub.next()).await {
        Some(SubEvent::Publication(p)) => {
            assert_eq!(p.position.seq, 2 + AWAY);
            assert_eq!(p.decode::<u64>().expect("number"), 2 + AWAY);
        }
        other => panic!("expected the live publication, got {other:?}"),
    }
}

/// Offline for five Redis windows while MongoDB loses the oldest missed publications (as its
/// TTL monitor removes expired ones): the client is told the channel is unrecoverable, at the
/// head, and the live stream goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_gone_from_mongodb_is_unrecoverable() {
    let setup = Setup::new().await;
    let coll = setup
        .mongo
        .client()
        .await
        .database(&setup.opts.database)
        .collection::<mongodb::bson::Document>(&setup.opts.collection());
    let (_client, mut sub, _server, _listening) = setup
        .away_and_back(|| async {
            let gone = within(
                "delete_many",
                coll.delete_many(doc! { "channel": CHANNEL, "seq": { "$lte": 30 } })
                    .into_future(),
            )
            .await
            .expect("delete_many");
            assert_eq!(gone.deleted_count, 30);
        })
        .await;
    match within("resync", sub.next()).await {
        Some(SubEvent::Unrecoverable { position }) => assert_eq!(position.seq, 1 + AWAY),
        other => panic!("expected unrecoverable, got {other:?}"),
    }
    setup.publish(2 + AWAY).await;
    match within("live", sub.next()).await {
        Some(SubEvent::Publication(p)) => {
            assert_eq!(p.position.seq, 2 + AWAY);
            assert_eq!(p.decode::<u64>().expect("number"), 2 + AWAY);
        }
        other => panic!("expected the live publication, got {other:?}"),
    }
}
