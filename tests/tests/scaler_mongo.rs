//! The scaler conformance suite against the MongoDB + Redis scaler, on a real `redis-server`
//! and a MongoDB-wire server, and what Redis losing its data, or handing a seq out twice, does
//! to a channel.
//!
//! The MongoDB server is SecantusDB (wire-compatible, spawned per test) unless `MONGODB_URI`
//! names one: the same tests then run unchanged against a real MongoDB.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use sss_server::scaler::{History, MongoOptions, MongoScaler, Scaler, ScalerError};
use sss_server::Position;
use sss_tests::conformance::{instances, msg, publish_retrying, Backend, Cluster, Node};
use sss_tests::services::{redis_admin, unique_prefix, MongoServer, Persistence, RedisServer};
use sss_tests::within;
use tokio::sync::mpsc;

/// A Redis and a MongoDB of the test's own; each cluster gets its own prefix (Redis keys and
/// MongoDB collection).
struct Mongo {
    redis: RedisServer,
    mongo: MongoServer,
}

/// The scaler's Redis keys for one channel (see the redis module's docs).
fn redis_keys(prefix: &str, channel: &str) -> [String; 3] {
    ["epoch", "seq", "hist"].map(|k| format!("{prefix}:{{{channel}}}:{k}"))
}

/// The history collection of a cluster, as an operator sees it.
async fn history_collection(
    mongo: &MongoServer,
    opts: &MongoOptions,
) -> mongodb::Collection<Document> {
    mongo
        .client()
        .await
        .database(&opts.database)
        .collection(&opts.collection())
}

fn options(prefix: String, redis_window: usize, history_size: usize) -> MongoOptions {
    MongoOptions {
        database: "sss_test".to_owned(),
        redis_window,
        history_size,
        prefix,
        ..MongoOptions::default()
    }
}

#[async_trait::async_trait]
impl Backend for Mongo {
    async fn cluster(&self, n: usize, history_size: usize) -> Cluster {
        // A window smaller than the history, so that recovery reads MongoDB too.
        let opts = options(unique_prefix(), (history_size / 4).max(1), history_size);
        let first = within(
            "mongo connect",
            MongoScaler::connect(self.mongo.uri(), self.redis.url(), opts.clone()),
        )
        .await
        .expect("connects to mongodb and redis");
        let url = self.redis.url().to_owned();
        let coll = history_collection(&self.mongo, &opts).await;
        Cluster {
            instances: instances(first, n, |s| s.instance().expect("instance")),
            forget: Box::new(move |channel| {
                let url = url.clone();
                let coll = coll.clone();
                let keys = redis_keys(&opts.prefix, &channel);
                Box::pin(async move {
                    // Both tiers lose the channel.
                    let deleted: u64 = redis::cmd("DEL")
                        .arg(&keys)
                        .query_async(&mut redis_admin(&url).await)
                        .await
                        .expect("DEL");
                    assert_eq!(deleted, 3, "the channel's keys existed");
                    let gone = within(
                        "delete_many",
                        coll.delete_many(doc! { "channel": channel }).into_future(),
                    )
                    .await
                    .expect("delete_many");
                    assert!(gone.deleted_count > 0, "the channel's history existed");
                })
            }),
        }
    }
}

async fn backend() -> Mongo {
    Mongo {
        redis: RedisServer::start().await,
        mongo: MongoServer::start().await,
    }
}

sss_tests::conformance_tests!(backend());

/// A publisher instance and a subscriber instance, started.
async fn pair(mongo: &MongoServer, redis: &str, opts: MongoOptions) -> (Node, Node) {
    sss_tests::init_tracing();
    let a = within("connect", MongoScaler::connect(mongo.uri(), redis, opts))
        .await
        .expect("connects");
    let b = a.instance().expect("instance");
    let mut nodes = Vec::new();
    for s in [a, b] {
        let scaler: Arc<dyn Scaler> = Arc::new(s);
        let (tx, events) = mpsc::unbounded_channel();
        within("start", scaler.start(tx)).await.expect("starts");
        nodes.push(Node { scaler, events });
    }
    let b = nodes.pop().expect("b");
    let a = nodes.pop().expect("a");
    (a, b)
}

fn seqs(records: &[Arc<sss_server::scaler::Record>]) -> Vec<u64> {
    records.iter().map(|r| r.position.seq).collect()
}

/// Redis restarts without its data: MongoDB keeps the channel's epoch and history, so the
/// channel goes on in the same epoch, positions older than the (lost) Redis window recover from
/// MongoDB, and the subscriber instance receives what follows exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_data_loss_keeps_the_epoch_and_history() {
    let mongo = MongoServer::start().await;
    let mut redis = RedisServer::spawn(Persistence::Ephemeral).await;
    let opts = MongoOptions {
        command_timeout: Duration::from_secs(2),
        ..options(unique_prefix(), 5, 1000)
    };
    let (a, mut b) = pair(&mongo, redis.url(), opts).await;
    b.scaler.subscribe("k").await.expect("subscribe");
    let mut before = Vec::new();
    for n in 1..=20 {
        before.push(a.scaler.publish("k", "t", &msg(n)).await.expect("publish"));
    }
    for p in &before {
        assert_eq!(&b.next_pub().await.1.position, p);
    }
    let epoch = before[0].epoch.clone();
    within("redis restart", redis.restart(false)).await;
    let mut after = Vec::new();
    for n in 21..=30 {
        after.push(publish_retrying(a.scaler.as_ref(), "k", n).await);
    }
    for (p, seq) in after.iter().zip(21..) {
        assert_eq!(
            *p,
            Position::new(epoch.clone(), seq),
            "same epoch, seq goes on"
        );
    }
    match within(
        "history",
        a.scaler.history("k", &Position::new(epoch.clone(), 2)),
    )
    .await
    .expect("history")
    {
        History::Recovered(r) => {
            assert_eq!(seqs(&r), (3..=30).collect::<Vec<_>>());
            for (record, n) in r.iter().zip(3..) {
                assert_eq!(record.msg.get(), msg(n).get());
            }
        }
        History::Unrecoverable { head } => panic!("unrecoverable across a redis loss ({head})"),
    }
    for p in &after {
        let (channel, record) = b.next_pub().await;
        assert_eq!((&*channel, &record.position), ("k", p));
    }
    b.expect_quiet(a.scaler.as_ref(), "marker").await;
    a.scaler.stop().await;
    b.scaler.stop().await;
}

/// Redis hands out a seq MongoDB already holds (as after a failover to a lagging replica):
/// the publish fails, the channel restarts in a new epoch, old positions are unrecoverable,
/// and the subscriber instance gets the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_handed_out_twice_starts_a_new_epoch() {
    let mongo = MongoServer::start().await;
    let redis = RedisServer::start().await;
    let opts = options(unique_prefix(), 5, 1000);
    let (a, mut b) = pair(&mongo, redis.url(), opts.clone()).await;
    b.scaler.subscribe("f").await.expect("subscribe");
    let mut last = Position::new("", 0);
    for n in 1..=10 {
        last = a.scaler.publish("f", "t", &msg(n)).await.expect("publish");
    }
    for seq in 1..=10 {
        assert_eq!(b.next_pub().await.1.position.seq, seq);
    }
    // Redis "forgets" the last three seqs (and its window, which a stream cannot rewind).
    let [_, seq_key, hist_key] = redis_keys(&opts.prefix, "f");
    let mut conn = redis_admin(redis.url()).await;
    let () = redis::cmd("SET")
        .arg(&seq_key)
        .arg(7)
        .arg("KEEPTTL")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let () = redis::cmd("DEL")
        .arg(&hist_key)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let r = within("publish", a.scaler.publish("f", "t", &msg(11))).await;
    assert!(matches!(r, Err(ScalerError::Unavailable(_))), "{r:?}");
    let head = a.scaler.position("f").await.expect("position");
    assert_ne!(head.epoch, last.epoch, "a new epoch");
    assert_eq!(head.seq, 0);
    match a.scaler.history("f", &last).await.expect("history") {
        History::Unrecoverable { head: h } => assert_eq!(h, head),
        History::Recovered(r) => panic!("recovered {} records of a forked epoch", r.len()),
    }
    let coll = history_collection(&mongo, &opts).await;
    let old = within(
        "count",
        coll.count_documents(doc! { "channel": "f", "epoch": &last.epoch })
            .into_future(),
    )
    .await
    .expect("count");
    assert_eq!(old, 0, "the forked epoch is gone from MongoDB");
    let p = a.scaler.publish("f", "t", &msg(12)).await.expect("publish");
    assert_eq!(p, Position::new(head.epoch.clone(), 1));
    // The subscriber saw the conflicting seq 8 live (dropped as a duplicate), then the new
    // epoch's first publication.
    let (_, record) = b.next_pub().await;
    assert_eq!(record.position, p);
    b.expect_quiet(a.scaler.as_ref(), "marker").await;
    a.scaler.stop().await;
    b.scaler.stop().await;
}

/// `connect` refuses a malformed URI and an unreachable MongoDB without hanging.
#[tokio::test]
async fn connect_errors() {
    let redis = RedisServer::start().await;
    let opts = MongoOptions {
        command_timeout: Duration::from_millis(500),
        ..MongoOptions::default()
    };
    let r = within(
        "bad uri",
        MongoScaler::connect("not a uri", redis.url(), opts.clone()),
    )
    .await;
    assert!(matches!(r, Err(ScalerError::Unavailable(_))), "{r:?}");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let started = tokio::time::Instant::now();
    let r = within(
        "connect to nothing",
        MongoScaler::connect(&format!("mongodb://127.0.0.1:{port}/"), redis.url(), opts),
    )
    .await;
    assert!(matches!(r, Err(ScalerError::Unavailable(_))), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the command timeout"
    );
}
