//! The MongoDB + Redis scaler: durable history in MongoDB, sequencing, a short window and
//! fan-out in Redis. See [`MongoScaler`].

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use serde::Deserialize;
use serde_json::value::RawValue;
use sss_core::protocol::Member;
use sss_core::Position;
use tokio::sync::mpsc;

use super::redis::{Appended, RedisOptions, RedisScaler, Store};
use super::{Control, History, Record, Scaler, ScalerError, ScalerEvent};

/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;
/// MongoDB's errors for an index that exists with other options.
const INDEX_CONFLICT: [i32; 2] = [85, 86];
/// Name of the TTL index on `at`.
const TTL_INDEX: &str = "at_ttl";

/// Settings of a [`MongoScaler`].
#[derive(Clone, Debug)]
pub struct MongoOptions {
    /// MongoDB database holding the history (default `sss`).
    pub database: String,
    /// Publications per channel kept in Redis (the stream window, default 100). Recovery reads
    /// this window first and MongoDB only for older positions.
    pub redis_window: usize,
    /// How far behind a channel's head a recovery may reach, in publications (default 10 000).
    /// A client further behind is told its channel is unrecoverable, whatever MongoDB keeps.
    pub history_size: usize,
    /// How long a publication is kept in MongoDB (a TTL index on its `at` date; default 1 hour).
    /// Reads ignore expired publications even before MongoDB's TTL monitor (which runs about
    /// once a minute) removes them. Redis forgets a channel's state after the same time without
    /// publications. At least one second.
    pub history_ttl: Duration,
    /// Prefix of every Redis key and pub/sub channel, and of the MongoDB collection
    /// (`<prefix>_history`); default `sss`. Clusters sharing a Redis or a database need distinct
    /// prefixes.
    pub prefix: String,
    /// Upper bound on each Redis command, MongoDB operation, connection attempt and
    /// (un)subscription (default 5 seconds). While either backend is unreachable, operations
    /// fail with [`ScalerError::Unavailable`] within this time (twice it for a `publish`, which
    /// uses both).
    pub command_timeout: Duration,
    /// Presence is kept in Redis: see `RedisOptions::presence_ttl` (default 15 s).
    pub presence_ttl: Duration,
}

impl Default for MongoOptions {
    fn default() -> Self {
        Self {
            database: "sss".to_owned(),
            redis_window: 100,
            history_size: 10_000,
            history_ttl: Duration::from_secs(3600),
            prefix: "sss".to_owned(),
            command_timeout: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(15),
        }
    }
}

impl MongoOptions {
    /// The MongoDB collection holding the history.
    pub fn collection(&self) -> String {
        format!("{}_history", self.prefix)
    }
}

/// One publication as MongoDB keeps it. `msg` is the payload's JSON text, byte for byte.
#[derive(Deserialize)]
struct Doc {
    seq: i64,
    epoch: String,
    topic: String,
    msg: String,
}

fn unavailable(e: impl std::fmt::Display) -> ScalerError {
    ScalerError::Unavailable(format!("mongodb: {e}"))
}

/// The server's error code, if the error carries one.
fn code(e: &MongoError) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

fn seq_i64(seq: u64) -> Result<i64, ScalerError> {
    i64::try_from(seq).map_err(|_| unavailable(format!("seq {seq} out of range")))
}

/// The MongoDB side of a [`MongoScaler`]: a [`Store`] for the Redis machinery.
struct MongoStore {
    coll: Collection<Document>,
    ttl: Duration,
    reach: u64,
    timeout: Duration,
}

impl MongoStore {
    /// Runs one MongoDB operation with the command timeout.
    async fn bounded<T>(
        &self,
        f: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, ScalerError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("timed out")),
        }
    }

    /// Checks that MongoDB answers (within the command timeout).
    async fn ping(&self) -> Result<(), ScalerError> {
        let admin = self.coll.client().database("admin");
        self.bounded(admin.run_command(doc! { "ping": 1 }))
            .await
            .map(drop)
    }

    /// Publications written before this are expired, whether or not MongoDB removed them yet.
    fn cutoff(&self) -> DateTime {
        let now = SystemTime::now();
        DateTime::from_system_time(now.checked_sub(self.ttl).unwrap_or(SystemTime::UNIX_EPOCH))
    }

    /// Creates the indexes: unique (channel, seq), and the TTL index on `at` (its expiry
    /// updated if it exists with another).
    async fn ensure_indexes(&self) -> Result<(), ScalerError> {
        let unique = IndexModel::builder()
            .keys(doc! { "channel": 1, "seq": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("channel_seq".to_owned())
                    .build(),
            )
            .build();
        self.bounded(self.coll.create_index(unique)).await?;
        let ttl = IndexModel::builder()
            .keys(doc! { "at": 1 })
            .options(
                IndexOptions::builder()
                    .expire_after(self.ttl)
                    .name(TTL_INDEX.to_owned())
                    .build(),
            )
            .build();
        let created = tokio::time::timeout(self.timeout, self.coll.create_index(ttl)).await;
        match created {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if code(&e).is_some_and(|c| INDEX_CONFLICT.contains(&c)) => {
                // Another history_ttl than the last deployment's: change the index's expiry.
                let secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
                let cmd = doc! {
                    "collMod": self.coll.name(),
                    "index": { "name": TTL_INDEX, "expireAfterSeconds": secs },
                };
                self.bounded(
                    self.coll
                        .client()
                        .database(self.coll.namespace().db.as_str())
                        .run_command(cmd),
                )
                .await
                .map(drop)
            }
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("timed out")),
        }
    }
}

#[async_trait::async_trait]
impl Store for MongoStore {
    async fn head(&self, channel: &str) -> Result<Option<Position>, ScalerError> {
        let found = self
            .bounded(
                self.coll
                    .clone_with_type::<Doc>()
                    .find_one(doc! { "channel": channel, "at": { "$gt": self.cutoff() } })
                    .sort(doc! { "seq": -1 }),
            )
            .await?;
        found
            .map(|d| {
                let seq = u64::try_from(d.seq).map_err(|_| unavailable("negative seq"))?;
                Ok(Position::new(d.epoch, seq))
            })
            .transpose()
    }

    async fn append(
        &self,
        channel: &str,
        position: &Position,
        topic: &str,
        msg: &RawValue,
    ) -> Result<Appended, ScalerError> {
        let seq = seq_i64(position.seq)?;
        let record = doc! {
            "channel": channel,
            "seq": seq,
            "epoch": &position.epoch,
            "topic": topic,
            "msg": msg.get(),
            "at": DateTime::now(),
        };
        // Insert first (the common case, one indexed write). The unique index refuses a
        // second publication at (channel, seq): a stale one of another epoch is replaced, one
        // of this epoch is a conflict. A few rounds, as the stale one may vanish meanwhile.
        for _ in 0..3 {
            let inserted = tokio::time::timeout(self.timeout, self.coll.insert_one(&record)).await;
            match inserted {
                Ok(Ok(_)) => return Ok(Appended::Stored),
                Ok(Err(e)) if code(&e) == Some(DUPLICATE_KEY) => {}
                Ok(Err(e)) => return Err(unavailable(e)),
                Err(_) => return Err(unavailable("timed out")),
            }
            let there = self
                .bounded(
                    self.coll
                        .clone_with_type::<Doc>()
                        .find_one(doc! { "channel": channel, "seq": seq }),
                )
                .await?;
            let Some(there) = there else {
                continue;
            };
            if there.epoch == position.epoch {
                // The same publication written twice (a retried write) is no conflict.
                return Ok(if there.topic == topic && there.msg == msg.get() {
                    Appended::Stored
                } else {
                    Appended::Conflict
                });
            }
            let filter = doc! { "channel": channel, "seq": seq, "epoch": &there.epoch };
            let replaced = self.bounded(self.coll.replace_one(filter, &record)).await?;
            if replaced.matched_count == 1 {
                return Ok(Appended::Stored);
            }
        }
        Err(unavailable(format!(
            "cannot write seq {position} of {channel}: its slot keeps changing"
        )))
    }

    async fn range(
        &self,
        channel: &str,
        epoch: &str,
        since: u64,
        upto: u64,
    ) -> Result<Option<Vec<Record>>, ScalerError> {
        let want = upto.saturating_sub(since);
        if want == 0 {
            return Ok(Some(Vec::new()));
        }
        let filter = doc! {
            "channel": channel,
            "epoch": epoch,
            "seq": { "$gt": seq_i64(since)?, "$lte": seq_i64(upto)? },
            "at": { "$gt": self.cutoff() },
        };
        let docs: Vec<Doc> = self
            .bounded(async {
                self.coll
                    .clone_with_type::<Doc>()
                    .find(filter)
                    .sort(doc! { "seq": 1 })
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        // (channel, seq) is unique: all of them are there iff as many as wanted came back.
        if docs.len() as u64 != want {
            return Ok(None);
        }
        let mut records = Vec::with_capacity(docs.len());
        for (d, seq) in docs.into_iter().zip(since + 1..) {
            if u64::try_from(d.seq) != Ok(seq) {
                return Ok(None);
            }
            let msg = RawValue::from_string(d.msg)
                .map_err(|e| unavailable(format!("bad record: {e}")))?;
            records.push(Record {
                position: Position::new(d.epoch, seq),
                topic: d.topic,
                msg,
            });
        }
        Ok(Some(records))
    }

    async fn retire(&self, channel: &str, epoch: &str) -> Result<(), ScalerError> {
        self.bounded(
            self.coll
                .delete_many(doc! { "channel": channel, "epoch": { "$ne": epoch } }),
        )
        .await
        .map(drop)
    }

    fn reach(&self) -> u64 {
        self.reach
    }
}

/// A scaler that keeps the durable history in MongoDB and joins instances through Redis
/// (feature `mongo`).
///
/// # What is where
///
/// - **MongoDB**, collection `<prefix>_history` of [`MongoOptions::database`]: one document per
///   publication, `{channel, seq, epoch, topic, msg, at}` (`msg` is the payload's JSON text, kept
///   byte for byte), with a unique index on `(channel, seq)` and a TTL index on the date `at`
///   ([`MongoOptions::history_ttl`]). This is the history, and the durable record of each
///   channel's epoch and head: the channel's newest kept publication.
/// - **Redis**: the [`RedisScaler`]'s keys and scripts, with the stream trimmed to
///   [`MongoOptions::redis_window`] entries. Redis allocates seqs and carries every publication
///   in full over pub/sub, so no instance reads MongoDB per live message; an instance
///   subscribes only to the channels it has subscribers for.
///
/// # How a seq is allocated
///
/// One Lua script in Redis takes the channel's next seq, appends the record to the window and
/// PUBLISHes it, atomically per channel: every subscriber on every instance sees one order, with
/// any number of concurrent publishers on any number of instances. The record is then upserted
/// into MongoDB keyed `(channel, seq)` before `publish` returns (so a successful publish is
/// durable; a publish that fails after Redis took it may still have been delivered live).
///
/// # Epochs, and Redis losing its data
///
/// Redis is a cache of each channel's epoch and seq; MongoDB holds them durably. When Redis has
/// no state for a channel (it restarted without its data, or the keys expired after
/// `history_ttl` without publications), the scripts do not start a new epoch: the instance
/// reads the channel's newest kept publication from MongoDB and seeds Redis with its epoch and
/// seq (set-if-absent, so concurrent instances agree). The channel goes on in the same epoch and
/// clients recover across the Redis loss from MongoDB. A channel starts a new epoch only when
/// MongoDB keeps nothing of it (expired, or never published); what MongoDB still holds of older
/// epochs is then removed.
///
/// If Redis hands a seq out twice (it lost data while a publish was between Redis and MongoDB,
/// or failed over to a replica that lags), the upsert finds another publication of the same
/// epoch at that `(channel, seq)`: the scaler then ends the epoch (a new epoch in Redis, the old
/// one removed from MongoDB) and that `publish` fails. Subscribers are told their channel is
/// unrecoverable rather than keeping a history MongoDB disagrees with.
///
/// # Recovery
///
/// [`history`](Scaler::history) reads the Redis window first; only when the window does not
/// reach back to the requested position does it read the older publications from MongoDB (one
/// indexed range query), so a client offline for longer than the window still recovers every
/// publication. It is unrecoverable only when MongoDB no longer has them all (expired, removed,
/// another epoch) or they are more than [`MongoOptions::history_size`] behind. An instance whose
/// pub/sub connection dropped catches up the same way.
///
/// Every MongoDB operation and Redis command is bounded by [`MongoOptions::command_timeout`].
///
/// The project's tests run this scaler against SecantusDB, a MongoDB-wire-compatible server,
/// and unchanged against a real MongoDB when `MONGODB_URI` is set.
pub struct MongoScaler {
    redis: RedisScaler,
    store: Arc<MongoStore>,
    url: String,
    opts: MongoOptions,
}

impl std::fmt::Debug for MongoScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URIs may hold passwords: left out.
        f.debug_struct("MongoScaler")
            .field("database", &self.opts.database)
            .field("prefix", &self.opts.prefix)
            .finish_non_exhaustive()
    }
}

impl MongoScaler {
    /// Connects to MongoDB at `mongo_uri` (`mongodb://…` or `mongodb+srv://…`, as
    /// `MONGODB_URI` gives it) and Redis at `redis_url` (as `REDIS_URL` gives it), checks that
    /// both answer and creates the history's indexes.
    pub async fn connect(
        mongo_uri: &str,
        redis_url: &str,
        opts: MongoOptions,
    ) -> Result<Self, ScalerError> {
        let parsed = tokio::time::timeout(opts.command_timeout, ClientOptions::parse(mongo_uri))
            .await
            .map_err(|_| unavailable("resolving the URI timed out"))?;
        let mut client_opts = parsed.map_err(|e| unavailable(format!("invalid URI: {e}")))?;
        client_opts.server_selection_timeout = Some(opts.command_timeout);
        client_opts.connect_timeout = Some(opts.command_timeout);
        if client_opts.app_name.is_none() {
            client_opts.app_name = Some("sss".to_owned());
        }
        let client = Client::with_options(client_opts).map_err(unavailable)?;
        let coll = client
            .database(&opts.database)
            .collection::<Document>(&opts.collection());
        let store = Arc::new(MongoStore {
            coll,
            ttl: opts.history_ttl.max(Duration::from_secs(1)),
            reach: u64::try_from(opts.history_size).unwrap_or(u64::MAX),
            timeout: opts.command_timeout,
        });
        store.ping().await?;
        store.ensure_indexes().await?;
        let redis = Self::redis(redis_url, &opts, store.clone())?;
        redis.ping().await?;
        Ok(Self {
            redis,
            store,
            url: redis_url.to_owned(),
            opts,
        })
    }

    /// Another instance on the same Redis and MongoDB with the same options, as a second server
    /// process would have: its own Redis connections (opened lazily), the MongoDB client's
    /// connection pool shared.
    pub fn instance(&self) -> Result<Self, ScalerError> {
        Ok(Self {
            redis: Self::redis(&self.url, &self.opts, self.store.clone())?,
            store: self.store.clone(),
            url: self.url.clone(),
            opts: self.opts.clone(),
        })
    }

    fn redis(
        url: &str,
        opts: &MongoOptions,
        store: Arc<MongoStore>,
    ) -> Result<RedisScaler, ScalerError> {
        let redis_opts = RedisOptions {
            history_size: opts.redis_window.max(1),
            history_ttl: opts.history_ttl.max(Duration::from_secs(1)),
            prefix: opts.prefix.clone(),
            command_timeout: opts.command_timeout,
            presence_ttl: opts.presence_ttl,
        };
        RedisScaler::with_store(url, redis_opts, store)
    }
}

#[async_trait::async_trait]
impl Scaler for MongoScaler {
    async fn start(&self, events: mpsc::UnboundedSender<ScalerEvent>) -> Result<(), ScalerError> {
        self.redis.start(events).await
    }

    async fn publish(
        &self,
        channel: &str,
        topic: &str,
        msg: &RawValue,
    ) -> Result<Position, ScalerError> {
        self.redis.publish(channel, topic, msg).await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), ScalerError> {
        self.redis.subscribe(channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), ScalerError> {
        self.redis.unsubscribe(channel).await
    }

    async fn history(&self, channel: &str, since: &Position) -> Result<History, ScalerError> {
        self.redis.history(channel, since).await
    }

    async fn position(&self, channel: &str) -> Result<Position, ScalerError> {
        self.redis.position(channel).await
    }

    async fn control(&self, msg: Control) -> Result<(), ScalerError> {
        self.redis.control(msg).await
    }

    async fn presence_update(
        &self,
        channel: &str,
        joined: &[Arc<Member>],
        left: &[Arc<Member>],
    ) -> Result<(), ScalerError> {
        self.redis.presence_update(channel, joined, left).await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<Member>, ScalerError> {
        self.redis.presence(channel).await
    }

    /// Ready when Redis is (commands and the pub/sub connection) and MongoDB answers a ping.
    async fn ready(&self) -> Result<(), ScalerError> {
        self.redis.ready().await?;
        self.store.ping().await
    }

    async fn stop(&self) {
        self.redis.stop().await;
    }
}
