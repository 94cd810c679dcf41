//! The Redis scaler: history in Redis streams, fan-out over Redis pub/sub. See [`RedisScaler`].
//!
//! The same machinery (Lua scripts, interest-based pub/sub, reconnection and gap fill) also runs
//! in front of a durable [`Store`] (the MongoDB scaler): Redis then allocates seqs, keeps a short
//! window and fans out, and never invents an epoch on its own. See [`Store`].

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::{Client, ConnectionInfo, IntoConnectionInfo, RedisResult};
use serde_json::value::RawValue;
use sss_core::Position;
use tokio::sync::{mpsc, oneshot, Mutex as AsyncMutex};
use tokio::task::JoinHandle;

use super::{Control, History, Record, Scaler, ScalerError, ScalerEvent};
use sss_core::protocol::Member;

/// Settings of a [`RedisScaler`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Publications kept per channel (default 1000). A client whose last position is older is
    /// told its channel is unrecoverable.
    pub history_size: usize,
    /// How long a channel's history, seq and epoch live after its last publication (default 5
    /// minutes). Redis expires the channel as a whole: a channel idle for longer starts a new
    /// epoch. At least one millisecond.
    pub history_ttl: Duration,
    /// Prefix of every Redis key and pub/sub channel this scaler uses (default `sss`). Clusters
    /// sharing one Redis need distinct prefixes.
    pub prefix: String,
    /// Upper bound on each Redis command, connection attempt and (un)subscription (default 5
    /// seconds). While Redis is unreachable, operations fail with
    /// [`ScalerError::Unavailable`] within this time.
    pub command_timeout: Duration,
    /// How long a presence member outlives its instance's last refresh (default 15 s; each
    /// instance refreshes its members every third of this). The members of an instance that
    /// died without a goodbye disappear, with their leave events, at most 4/3 of this after it
    /// died (20 s by default).
    pub presence_ttl: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            history_size: 1000,
            history_ttl: Duration::from_secs(300),
            prefix: "sss".to_owned(),
            command_timeout: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(15),
        }
    }
}

mod conn;
mod presence;
mod pubsub;
mod scripts;
mod store;

use self::conn::Commands;
use self::pubsub::Sink;
use self::scripts::{HISTORY, POSITION, PUBLISH, RESTART, SEED};
pub(super) use self::store::{Appended, Store};

/// How often a script may find its channel unseeded (Redis lost it in between) before the
/// operation gives up.
const SEED_ATTEMPTS: usize = 3;

/// First and largest delay between attempts to reconnect the pub/sub connection.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// How long a cluster connection waits to connect to one node. Short, and few retries: a
/// connection that keeps retrying a killed master for long (the crate's default is 16 retries
/// with the full timeout each) holds up the requests to every other shard.
const CLUSTER_CONNECT: Duration = Duration::from_millis(500);
/// How often a cluster connection retries a request (after `MOVED`, `ASK` or a failure).
const CLUSTER_RETRIES: u32 = 3;

/// The end of every channel's pub/sub channel (see [`Shared::pub_channel`]).
const PUB_SUFFIX: &str = "}:pub";

/// Channels per SUBSCRIBE when resubscribing after a reconnection.
const SUBSCRIBE_BATCH: usize = 512;

type HistoryReply = (String, u64, i64, Vec<(u64, String, String, String)>);

/// Records read from the history, each with its id (see `publish.lua`) when Redis keeps one.
type Entries = Vec<(Record, Option<Box<str>>)>;

/// What an instance delivered last on a channel.
struct Cursor {
    /// The position delivered last (or the channel's head when it was subscribed).
    last: Position,
    /// The id of the record delivered last, when known: a record at the same seq with another
    /// id means the history forked. Every loss of Redis's data drops the pub/sub connection
    /// (a restart, a failover), and the catch-up that follows reads from this very record, so
    /// a fork is seen there, or live as the same seq arriving again.
    id: Option<Box<str>>,
    /// The history of `last.epoch` forked (Redis lost writes this instance had delivered): its
    /// records are not delivered, and the epoch is being ended (see `publish.lua`).
    forked: bool,
}

/// Where the instance's Redis is.
#[derive(Clone)]
enum Backend {
    /// One Redis (boxed: a client is 240 bytes, and there is one per instance).
    Single(Box<Client>),
    /// A Redis Cluster, known by some of its nodes.
    Cluster(Vec<ConnectionInfo>),
}

#[derive(Clone, Copy)]
enum Read {
    /// A client's resync: unrecoverable unless the history reaches back to the position.
    Strict,
    /// Closing this instance's own gap after a reconnection: whatever is kept.
    Tail,
}

/// The pub/sub connection's command half, `None` while it is down. Held across (un)subscription
/// round trips so they are ordered with reconnections.
struct PubSubState {
    sink: Option<Sink>,
    stopped: bool,
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    /// Refreshes this instance's presence members and sweeps expired ones.
    presence: JoinHandle<()>,
}

struct Shared {
    backend: Backend,
    conn: Commands,
    opts: RedisOptions,
    /// The durable tier, if any (see [`Store`]).
    store: Option<Arc<dyn Store>>,
    ttl_ms: u64,
    control_channel: String,
    pub_prefix: String,
    /// The channels this instance delivers, each with what it delivered last.
    channels: Mutex<HashMap<String, Cursor>>,
    /// Channels whose history forked, with the epoch to end (see [`Cursor::forked`]).
    forks: Mutex<Vec<(String, String)>>,
    /// This instance's presence members, refreshed while it runs.
    members: Mutex<presence::Members>,
    /// The channels whose presence this instance sweeps.
    presence_channels: Mutex<presence::PresenceChannels>,
    /// Shared by presence updates, exclusive to a refresh (see `presence.rs`).
    presence_gate: tokio::sync::RwLock<()>,
    pubsub: AsyncMutex<PubSubState>,
    /// Whether the pub/sub connection is up (subscribed and caught up), for [`Scaler::ready`]
    /// (which must not wait for `pubsub`'s lock, held across round trips).
    pubsub_up: AtomicBool,
    running: Mutex<Option<Running>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the map consistent; a panic elsewhere does not poison it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(e: impl std::fmt::Display) -> ScalerError {
    ScalerError::Unavailable(format!("redis: {e}"))
}

fn new_epoch() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now();
    let mut parts = [0u64; 2];
    for (i, part) in parts.iter_mut().enumerate() {
        // RandomState is seeded randomly per process (and varied per instance).
        *part = RandomState::new().hash_one((n, i, now, std::process::id()));
    }
    format!("{:016x}{:016x}", parts[0], parts[1])
}

/// A record's id (see `publish.lua`): unique per publication, short.
fn record_id() -> String {
    static NONCE: LazyLock<u64> = LazyLock::new(|| RandomState::new().hash_one(new_epoch()));
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{:x}.{:x}", *NONCE, COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn record(epoch: &str, seq: u64, topic: String, msg: String) -> Result<Record, ScalerError> {
    let msg = RawValue::from_string(msg).map_err(|e| unavailable(format!("bad record: {e}")))?;
    Ok(Record {
        position: Position::new(epoch, seq),
        topic,
        msg,
    })
}

impl Shared {
    /// Runs one Redis operation with the command timeout.
    async fn bounded<T>(&self, f: impl Future<Output = RedisResult<T>>) -> Result<T, ScalerError> {
        match tokio::time::timeout(self.opts.command_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("timed out")),
        }
    }

    fn keys(&self, channel: &str) -> [String; 3] {
        let base = format!("{}:{{{channel}}}", self.opts.prefix);
        [
            format!("{base}:epoch"),
            format!("{base}:seq"),
            format!("{base}:hist"),
        ]
    }

    /// The pub/sub channel of `channel`: in its hash slot, beside its keys, so a Redis Cluster
    /// publishes it from the script on the slot's master (sharded pub/sub).
    fn pub_channel(&self, channel: &str) -> String {
        format!("{}{channel}{PUB_SUFFIX}", self.pub_prefix)
    }

    fn publish_command(&self) -> &'static str {
        self.conn.publish_command()
    }

    /// The epoch a script may create for a channel without state: none with a store (the
    /// script answers "unseeded" and the store seeds the channel).
    fn fresh_epoch(&self) -> String {
        if self.store.is_some() {
            String::new()
        } else {
            new_epoch()
        }
    }

    /// Seeds a channel Redis has no state for from the store: its head, or a new epoch at seq 0
    /// when the store keeps nothing of the channel.
    async fn seed(&self, channel: &str) -> Result<(), ScalerError> {
        let Some(store) = &self.store else {
            return Err(unavailable("unseeded channel without a store"));
        };
        let (epoch, seq, fresh) = match store.head(channel).await? {
            Some(head) => (head.epoch, head.seq, false),
            None => (new_epoch(), 0, true),
        };
        let [epoch_key, seq_key, hist_key] = self.keys(channel);
        let mut inv = SEED.prepare_invoke();
        inv.key(epoch_key)
            .key(seq_key)
            .key(hist_key)
            .arg(&epoch)
            .arg(seq)
            .arg(self.ttl_ms);
        let mut conn = self.conn.clone();
        let (now, _, applied): (String, u64, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        tracing::debug!(
            channel,
            epoch = now,
            seq,
            applied,
            fresh,
            "seeded from the store"
        );
        if applied == 1 && fresh {
            store.retire(channel, &now).await?;
        }
        Ok(())
    }

    /// Ends the channel's epoch `epoch` after the store found it forked, so that every
    /// subscriber resyncs (as unrecoverable) instead of keeping a history the store disagrees
    /// with.
    async fn restart_epoch(&self, channel: &str, epoch: &str) -> Result<(), ScalerError> {
        let [epoch_key, seq_key, hist_key] = self.keys(channel);
        let mut inv = RESTART.prepare_invoke();
        inv.key(epoch_key)
            .key(seq_key)
            .key(hist_key)
            .arg(epoch)
            .arg(new_epoch())
            .arg(self.ttl_ms);
        let mut conn = self.conn.clone();
        let now: String = self.bounded(inv.invoke_async(&mut conn)).await?;
        tracing::warn!(channel, old = epoch, new = now, "history forked: new epoch");
        match &self.store {
            Some(store) if !now.is_empty() => store.retire(channel, &now).await,
            _ => Ok(()),
        }
    }

    async fn position(&self, channel: &str) -> Result<Position, ScalerError> {
        for _ in 0..SEED_ATTEMPTS {
            let [epoch_key, seq_key, hist_key] = self.keys(channel);
            let mut inv = POSITION.prepare_invoke();
            inv.key(epoch_key)
                .key(seq_key)
                .key(hist_key)
                .arg(self.fresh_epoch())
                .arg(self.ttl_ms);
            let mut conn = self.conn.clone();
            let (epoch, seq): (String, u64) = self.bounded(inv.invoke_async(&mut conn)).await?;
            if !epoch.is_empty() {
                return Ok(Position::new(epoch, seq));
            }
            self.seed(channel).await?;
        }
        Err(unavailable("the channel's state keeps vanishing"))
    }

    /// Appends and publishes; with a store, also keeps the publication there.
    async fn publish(
        &self,
        channel: &str,
        topic: &str,
        msg: &RawValue,
    ) -> Result<Position, ScalerError> {
        for _ in 0..SEED_ATTEMPTS {
            let [epoch_key, seq_key, hist_key] = self.keys(channel);
            let mut inv = PUBLISH.prepare_invoke();
            inv.key(epoch_key)
                .key(seq_key)
                .key(hist_key)
                .arg(self.fresh_epoch())
                .arg(self.ttl_ms)
                .arg(self.opts.history_size)
                .arg(self.pub_channel(channel))
                .arg(topic)
                .arg(msg.get())
                .arg(record_id())
                .arg(self.publish_command());
            let mut conn = self.conn.clone();
            let (epoch, seq): (String, u64) = self.bounded(inv.invoke_async(&mut conn)).await?;
            if epoch.is_empty() {
                self.seed(channel).await?;
                continue;
            }
            let position = Position::new(epoch, seq);
            let Some(store) = &self.store else {
                return Ok(position);
            };
            return match store.append(channel, &position, topic, msg).await? {
                Appended::Stored => Ok(position),
                Appended::Conflict => {
                    self.restart_epoch(channel, &position.epoch).await?;
                    Err(unavailable(format!(
                        "seq {position} of {channel} was handed out twice (Redis lost data); \
                         the channel restarted in a new epoch"
                    )))
                }
            };
        }
        Err(unavailable("the channel's state keeps vanishing"))
    }

    /// The head and the records after `since` (`None` when unrecoverable in `Strict` mode).
    /// With a store: the Redis window, preceded by what the store keeps of older positions.
    async fn read(
        &self,
        channel: &str,
        since: &Position,
        mode: Read,
    ) -> Result<(Position, Option<Entries>), ScalerError> {
        let Some(store) = &self.store else {
            return self.read_window(channel, since, mode).await;
        };
        let (head, kept) = self.read_window(channel, since, Read::Tail).await?;
        let kept = kept.unwrap_or_default();
        let from = if head.epoch == since.epoch {
            since.seq
        } else {
            match mode {
                Read::Strict => return Ok((head, None)),
                // Lua read everything kept of the new epoch.
                Read::Tail => 0,
            }
        };
        if from >= head.seq {
            return Ok(match mode {
                Read::Strict if from > head.seq => (head, None),
                _ => (head, Some(Vec::new())),
            });
        }
        let first = kept.first().map_or(head.seq + 1, |(r, _)| r.position.seq);
        if first <= from + 1 {
            return Ok((head, Some(kept)));
        }
        let older = if head.seq - from > store.reach() {
            None
        } else {
            store.range(channel, &head.epoch, from, first - 1).await?
        };
        Ok(match (older, mode) {
            (Some(older), _) => {
                let mut all: Entries = older.into_iter().map(|r| (r, None)).collect();
                all.extend(kept);
                (head, Some(all))
            }
            (None, Read::Strict) => (head, None),
            (None, Read::Tail) => (head, Some(kept)),
        })
    }

    /// [`read`](Self::read) from Redis alone: the kept window.
    async fn read_window(
        &self,
        channel: &str,
        since: &Position,
        mode: Read,
    ) -> Result<(Position, Option<Entries>), ScalerError> {
        for _ in 0..SEED_ATTEMPTS {
            let reply = self.read_once(channel, since, mode).await?;
            if let Some(reply) = reply {
                return Ok(reply);
            }
            self.seed(channel).await?;
        }
        Err(unavailable("the channel's state keeps vanishing"))
    }

    /// One history script run; `None` when the channel is unseeded.
    async fn read_once(
        &self,
        channel: &str,
        since: &Position,
        mode: Read,
    ) -> Result<Option<(Position, Option<Entries>)>, ScalerError> {
        let [epoch_key, seq_key, hist_key] = self.keys(channel);
        let mut inv = HISTORY.prepare_invoke();
        inv.key(epoch_key)
            .key(seq_key)
            .key(hist_key)
            .arg(self.fresh_epoch())
            .arg(self.ttl_ms)
            .arg(&since.epoch)
            .arg(since.seq)
            .arg(match mode {
                Read::Strict => "strict",
                Read::Tail => "tail",
            });
        let mut conn = self.conn.clone();
        let (epoch, seq, found, entries): HistoryReply =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        if epoch.is_empty() {
            return Ok(None);
        }
        let head = Position::new(epoch, seq);
        if found == 0 {
            return Ok(Some((head, None)));
        }
        let records = entries
            .into_iter()
            .map(|(seq, topic, msg, id)| {
                let id = (!id.is_empty()).then(|| id.into_boxed_str());
                Ok((record(&head.epoch, seq, topic, msg)?, id))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((head, Some(records))))
    }
}

/// A scaler that joins server instances through Redis (feature `redis`).
///
/// Per channel `ch` (with the default prefix `sss`):
///
/// - `sss:{ch}:epoch` holds the channel's epoch, `sss:{ch}:seq` its last seq and `sss:{ch}:hist`
///   a stream of its publications with ids `<seq>-0`, trimmed to `history_size` entries. The
///   three keys share one hash tag and one expiry (`history_ttl` after the channel's last
///   publication), so they vanish together and the channel starts a new epoch. Within an epoch
///   a seq names one record: each record carries a unique id, and an
///   instance that sees the history contradict what it delivered (Redis lost acknowledged
///   writes: a restart from an old snapshot, a failover to a replica that lagged) ends the
///   epoch, so that clients are told their channel is unrecoverable rather than miss a record.
/// - `sss:{ch}:pub` is the pub/sub channel that carries each publication in full, so an
///   instance never reads Redis per message. An instance subscribes only to the channels it has
///   subscribers for.
/// - `sss:{ch}:presence` and `sss:{ch}:presence:expiry` hold the channel's presence.
///
/// `sss:control` carries [`Control`] messages (as externally tagged JSON) to every instance.
///
/// One Lua script appends and publishes, so every subscriber sees one order per channel. When the
/// pub/sub connection drops (a Redis restart, a network fault), the instance reconnects with
/// backoff, subscribes again and reads what it missed from the streams before delivering anything
/// live, deduplicating by seq.
///
/// On a Redis Cluster ([`connect_cluster`](Self::connect_cluster)) the same keys and scripts
/// run on each channel's slot, and pub/sub is sharded.
///
/// Each value is one instance: a reconnecting command connection, and one pub/sub connection
/// (opened by [`start`](Scaler::start)) that subscribes only to the channels this instance has
/// subscribers for. While Redis is unreachable, operations fail with
/// [`ScalerError::Unavailable`] (never later than [`RedisOptions::command_timeout`]); the
/// pub/sub connection comes back on its own and delivers what the instance missed first.
pub struct RedisScaler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client's connection info may hold a password: left out.
        f.debug_struct("RedisScaler")
            .field("prefix", &self.shared.opts.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisScaler {
    /// Connects to Redis at `url` (`redis://[user:pass@]host[:port][/db]`, or `rediss://` for
    /// TLS) and checks that it answers.
    pub async fn connect(url: &str, opts: RedisOptions) -> Result<Self, ScalerError> {
        let scaler = Self::single(client(url)?, opts, None)?;
        scaler.ping().await?;
        Ok(scaler)
    }

    /// Connects to a Redis Cluster (Redis ≥ 7) known by `nodes` (URLs of some of its nodes, as
    /// for [`connect`](Self::connect)) and checks that it answers.
    ///
    /// Each channel's keys and pub/sub channel share one hash slot, so publishing stays one
    /// atomic script on that slot's master, and publications travel by sharded pub/sub
    /// (`SPUBLISH` / `SSUBSCRIBE`): each crosses only its shard, and an instance subscribes, on
    /// each shard, to the channels it has subscribers for. Control messages (broadcast,
    /// `tell_user`, boot) travel on one sharded channel, `<prefix>:control`, that every instance
    /// subscribes to. The connections follow `MOVED` / `ASK` (resharding) and failovers; after
    /// a failover an instance reads what it missed from the history. A failover that lost
    /// writes some instance had delivered ends the channel's epoch (its clients are told
    /// unrecoverable) instead of leaving a gap; one that lost nothing keeps it.
    ///
    /// The prefix must not hold `{` or `}`: it would change the hash tags.
    pub async fn connect_cluster<S: AsRef<str>>(
        nodes: &[S],
        opts: RedisOptions,
    ) -> Result<Self, ScalerError> {
        if opts.prefix.contains(['{', '}']) {
            return Err(unavailable("a Redis Cluster prefix must not hold braces"));
        }
        let infos = nodes
            .iter()
            .map(|n| n.as_ref().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()
            .map_err(|e| unavailable(format!("invalid Redis URL: {e}")))?;
        if infos.is_empty() {
            return Err(unavailable("no Redis Cluster node given"));
        }
        let client = cluster_client(&infos, &opts).build().map_err(unavailable)?;
        let conn = conn::Rebuilt::connect(client, opts.command_timeout)
            .await
            .map_err(unavailable)?;
        let scaler = Self::with(
            Backend::Cluster(infos),
            Commands::Cluster(Arc::new(conn)),
            opts,
            None,
        );
        scaler.ping().await?;
        Ok(scaler)
    }

    /// Another instance on the same Redis with the same options (its own pub/sub connection,
    /// as a second server process would have). Connects lazily.
    pub fn instance(&self) -> Result<Self, ScalerError> {
        let s = &self.shared;
        Ok(match &s.backend {
            Backend::Single(client) => {
                Self::single((**client).clone(), s.opts.clone(), s.store.clone())?
            }
            // The cluster connection routes every command by slot: shared.
            Backend::Cluster(_) => Self::with(
                s.backend.clone(),
                s.conn.clone(),
                s.opts.clone(),
                s.store.clone(),
            ),
        })
    }

    /// A scaler in front of a durable `store` (see [`Store`]); connects lazily.
    #[cfg_attr(not(feature = "mongo"), allow(dead_code))]
    pub(super) fn with_store(
        url: &str,
        opts: RedisOptions,
        store: Arc<dyn Store>,
    ) -> Result<Self, ScalerError> {
        Self::single(client(url)?, opts, Some(store))
    }

    /// Checks that Redis answers (within the command timeout) on the command connection.
    pub(super) async fn ping(&self) -> Result<(), ScalerError> {
        let mut conn = self.shared.conn.clone();
        self.shared
            .bounded(::redis::cmd("PING").query_async::<()>(&mut conn))
            .await
    }

    /// On one Redis, with a command connection that connects lazily.
    fn single(
        client: Client,
        opts: RedisOptions,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Self, ScalerError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.command_timeout))
            .set_response_timeout(Some(opts.command_timeout))
            .set_max_delay(BACKOFF.1);
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unavailable)?;
        Ok(Self::with(
            Backend::Single(Box::new(client)),
            Commands::Single(conn),
            opts,
            store,
        ))
    }

    fn with(
        backend: Backend,
        conn: Commands,
        opts: RedisOptions,
        store: Option<Arc<dyn Store>>,
    ) -> Self {
        let ttl_ms = u64::try_from(opts.history_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            shared: Arc::new(Shared {
                backend,
                conn,
                ttl_ms,
                store,
                control_channel: format!("{}:control", opts.prefix),
                pub_prefix: format!("{}:{{", opts.prefix),
                opts,
                channels: Mutex::new(HashMap::new()),
                forks: Mutex::new(Vec::new()),
                members: Mutex::new(HashMap::new()),
                presence_channels: Mutex::new(Default::default()),
                presence_gate: tokio::sync::RwLock::new(()),
                pubsub: AsyncMutex::new(PubSubState {
                    sink: None,
                    stopped: false,
                }),
                pubsub_up: AtomicBool::new(false),
                running: Mutex::new(None),
            }),
        }
    }
}

/// A Redis Cluster client's settings, the same for the command and the pub/sub connections.
fn cluster_client(nodes: &[ConnectionInfo], opts: &RedisOptions) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(CLUSTER_CONNECT.min(opts.command_timeout))
        .response_timeout(opts.command_timeout)
        .retries(CLUSTER_RETRIES)
}

fn client(url: &str) -> Result<Client, ScalerError> {
    Client::open(url).map_err(|e| unavailable(format!("invalid Redis URL: {e}")))
}

#[async_trait::async_trait]
impl Scaler for RedisScaler {
    async fn start(&self, events: mpsc::UnboundedSender<ScalerEvent>) -> Result<(), ScalerError> {
        if lock(&self.shared.running).is_some() {
            return Err(ScalerError::Unavailable("already started".into()));
        }
        let halves = self.shared.connect_pubsub(&events).await?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(self.shared.clone().run(events, halves, stopped));
        let presence = tokio::spawn(self.shared.clone().presence_keeper());
        let previous = lock(&self.shared.running).replace(Running {
            stop,
            task,
            presence,
        });
        if let Some(previous) = previous {
            previous.task.abort();
            previous.presence.abort();
        }
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        topic: &str,
        msg: &RawValue,
    ) -> Result<Position, ScalerError> {
        self.shared.publish(channel, topic, msg).await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), ScalerError> {
        let s = &self.shared;
        let state = s.pubsub.lock().await;
        if state.stopped {
            return Err(ScalerError::Stopped);
        }
        let Some(mut sink) = state.sink.clone() else {
            return Err(unavailable("pub/sub connection is down"));
        };
        if lock(&s.channels).contains_key(channel) {
            return Ok(());
        }
        // Whatever is published from here on is delivered, also across a reconnection.
        let head = s.position(channel).await?;
        let cursor = Cursor {
            last: head,
            id: None,
            forked: false,
        };
        lock(&s.channels).insert(channel.to_owned(), cursor);
        if let Err(e) = s.bounded(sink.subscribe(&[s.pub_channel(channel)])).await {
            lock(&s.channels).remove(channel);
            return Err(e);
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), ScalerError> {
        let s = &self.shared;
        let state = s.pubsub.lock().await;
        if lock(&s.channels).remove(channel).is_none() {
            return Ok(());
        }
        match state.sink.clone() {
            Some(mut sink) => s.bounded(sink.unsubscribe(&[s.pub_channel(channel)])).await,
            // Down: the reconnection will not subscribe it again.
            None => Ok(()),
        }
    }

    async fn history(&self, channel: &str, since: &Position) -> Result<History, ScalerError> {
        Ok(
            match self.shared.read(channel, since, Read::Strict).await? {
                (_, Some(entries)) => {
                    History::Recovered(entries.into_iter().map(|(r, _)| Arc::new(r)).collect())
                }
                (head, None) => History::Unrecoverable { head },
            },
        )
    }

    async fn position(&self, channel: &str) -> Result<Position, ScalerError> {
        self.shared.position(channel).await
    }

    async fn control(&self, msg: Control) -> Result<(), ScalerError> {
        let s = &self.shared;
        let payload = serde_json::to_string(&msg).map_err(unavailable)?;
        let mut conn = s.conn.clone();
        s.bounded(
            ::redis::cmd(s.publish_command())
                .arg(&s.control_channel)
                .arg(payload)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    async fn presence_update(
        &self,
        channel: &str,
        joined: &[Arc<Member>],
        left: &[Arc<Member>],
    ) -> Result<(), ScalerError> {
        self.shared.presence_update(channel, joined, left).await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<Member>, ScalerError> {
        self.shared.presence(channel).await
    }

    /// Ready when Redis answers a PING and the pub/sub connection is up.
    async fn ready(&self) -> Result<(), ScalerError> {
        if !self.shared.pubsub_up.load(Ordering::Relaxed) {
            return Err(unavailable("pub/sub connection is down"));
        }
        self.ping().await
    }

    async fn stop(&self) {
        let s = &self.shared;
        s.leave_presence().await;
        {
            let mut state = s.pubsub.lock().await;
            state.stopped = true;
            s.pubsub_up.store(false, Ordering::Relaxed);
            let channels: Vec<String> = lock(&s.channels).drain().map(|(c, _)| c).collect();
            if let Some(mut sink) = state.sink.take() {
                let mut names = vec![s.control_channel.clone()];
                names.extend(channels.iter().map(|c| s.pub_channel(c)));
                for batch in names.chunks(SUBSCRIBE_BATCH) {
                    // The connection closes right after; a failure here changes nothing.
                    let _ = s.bounded(sink.unsubscribe(batch)).await;
                }
            }
        }
        let running = lock(&s.running).take();
        if let Some(Running {
            stop,
            task,
            presence,
        }) = running
        {
            presence.abort();
            let _ = stop.send(());
            let abort = task.abort_handle();
            if tokio::time::timeout(s.opts.command_timeout, task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}
