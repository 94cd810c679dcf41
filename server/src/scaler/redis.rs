//! The Redis scaler: history in Redis streams, fan-out over Redis pub/sub. See [`RedisScaler`].

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use ::redis::{Client, Msg, RedisResult, Script};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use sss_core::Position;
use tokio::sync::{mpsc, oneshot, Mutex as AsyncMutex};
use tokio::task::JoinHandle;

use super::{Control, History, Record, Scaler, ScalerError, ScalerEvent};

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
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            history_size: 1000,
            history_ttl: Duration::from_secs(300),
            prefix: "sss".to_owned(),
            command_timeout: Duration::from_secs(5),
        }
    }
}

/// Atomic per channel: reads or creates the epoch, takes the next seq, appends to the stream,
/// refreshes the three keys' expiry together, publishes the full record.
///
/// KEYS: epoch, seq, stream. ARGV: fresh epoch, ttl (ms), max stream length, pub/sub channel,
/// topic, msg (raw JSON).
const PUBLISH_LUA: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[3])
end
local seq = redis.call('INCR', KEYS[2])
local s = string.format('%d', seq)
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], s .. '-0', 't', ARGV[5], 'm', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[4], '{"e":' .. cjson.encode(epoch) .. ',"s":' .. s ..
  ',"t":' .. cjson.encode(ARGV[5]) .. ',"m":' .. ARGV[6] .. '}')
return {epoch, seq}
"#;

/// The channel's head; creates its epoch if it has none, so the answer is stable.
///
/// KEYS: epoch, seq, stream. ARGV: fresh epoch, ttl (ms).
const POSITION_LUA: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[3])
end
return {epoch, tonumber(redis.call('GET', KEYS[2]) or '0')}
"#;

/// The publications after a position, with the head, in one consistent read.
///
/// KEYS: epoch, seq, stream. ARGV: fresh epoch, ttl (ms), since epoch, since seq, mode.
/// Mode `strict`: `{epoch, seq, 0, {}}` when the history does not reach back to the position.
/// Mode `tail`: whatever is kept after the position (everything kept if the epoch differs).
/// Otherwise `{epoch, seq, 1, {{seq, topic, msg}, ...}}`.
const HISTORY_LUA: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[3])
end
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local strict = ARGV[5] == 'strict'
local since = tonumber(ARGV[4])
if ARGV[3] ~= epoch then
  if strict then return {epoch, head, 0, {}} end
  since = 0
end
if since >= head then
  if strict and since > head then return {epoch, head, 0, {}} end
  return {epoch, head, 1, {}}
end
local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end
if strict then
  local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
  if #first == 0 or seq_of(first[1][1]) > since + 1 then return {epoch, head, 0, {}} end
end
local out = {}
local entries = redis.call('XRANGE', KEYS[3], string.format('%d', since + 1) .. '-0', '+')
for i, entry in ipairs(entries) do
  local fields = entry[2]
  local topic, msg = '', 'null'
  for j = 1, #fields, 2 do
    if fields[j] == 't' then topic = fields[j + 1] elseif fields[j] == 'm' then msg = fields[j + 1] end
  end
  out[i] = {seq_of(entry[1]), topic, msg}
end
return {epoch, head, 1, out}
"#;

static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_LUA));
static POSITION: LazyLock<Script> = LazyLock::new(|| Script::new(POSITION_LUA));
static HISTORY: LazyLock<Script> = LazyLock::new(|| Script::new(HISTORY_LUA));

/// First and largest delay between attempts to reconnect the pub/sub connection.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// How often an idle pub/sub connection is checked with a PING.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Channels per SUBSCRIBE when resubscribing after a reconnection.
const SUBSCRIBE_BATCH: usize = 512;

/// A publication as it travels over pub/sub (built by [`PUBLISH_LUA`]).
#[derive(Deserialize)]
struct Wire {
    e: String,
    s: u64,
    t: String,
    m: Box<RawValue>,
}

type HistoryReply = (String, u64, i64, Vec<(u64, String, String)>);

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
    sink: Option<PubSubSink>,
    stopped: bool,
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct Shared {
    client: Client,
    conn: ConnectionManager,
    opts: RedisOptions,
    ttl_ms: u64,
    control_channel: String,
    pub_prefix: String,
    /// The channels this instance delivers, each with the last position it delivered (or the
    /// channel's head when it was subscribed).
    channels: Mutex<HashMap<String, Position>>,
    pubsub: AsyncMutex<PubSubState>,
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

    fn pub_channel(&self, channel: &str) -> String {
        format!("{}{channel}", self.pub_prefix)
    }

    async fn position(&self, channel: &str) -> Result<Position, ScalerError> {
        let [epoch_key, seq_key, hist_key] = self.keys(channel);
        let mut inv = POSITION.prepare_invoke();
        inv.key(epoch_key)
            .key(seq_key)
            .key(hist_key)
            .arg(new_epoch())
            .arg(self.ttl_ms);
        let mut conn = self.conn.clone();
        let (epoch, seq): (String, u64) = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(Position::new(epoch, seq))
    }

    /// The head and the records after `since` (`None` when unrecoverable in `Strict` mode).
    async fn read(
        &self,
        channel: &str,
        since: &Position,
        mode: Read,
    ) -> Result<(Position, Option<Vec<Record>>), ScalerError> {
        let [epoch_key, seq_key, hist_key] = self.keys(channel);
        let mut inv = HISTORY.prepare_invoke();
        inv.key(epoch_key)
            .key(seq_key)
            .key(hist_key)
            .arg(new_epoch())
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
        let head = Position::new(epoch, seq);
        if found == 0 {
            return Ok((head, None));
        }
        let records = entries
            .into_iter()
            .map(|(seq, topic, msg)| record(&head.epoch, seq, topic, msg))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((head, Some(records)))
    }

    /// Hands a publication to the instance unless it is not wanted or already delivered.
    /// Returns `false` once the instance no longer listens.
    fn deliver(
        &self,
        channel: &str,
        record: Record,
        events: &mpsc::UnboundedSender<ScalerEvent>,
    ) -> bool {
        let mut channels = lock(&self.channels);
        let Some(last) = channels.get_mut(channel) else {
            return true;
        };
        if last.epoch == record.position.epoch && record.position.seq <= last.seq {
            return true;
        }
        last.clone_from(&record.position);
        events
            .send(ScalerEvent::Publication {
                channel: Arc::from(channel),
                record: Arc::new(record),
            })
            .is_ok()
    }

    /// Decodes one pub/sub message. Returns `false` once the instance no longer listens.
    fn on_message(&self, msg: &Msg, events: &mpsc::UnboundedSender<ScalerEvent>) -> bool {
        let name = msg.get_channel_name();
        let payload = msg.get_payload_bytes();
        if name == self.control_channel {
            return match serde_json::from_slice::<Control>(payload) {
                Ok(c) => events.send(ScalerEvent::Control(c)).is_ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an undecodable control message");
                    true
                }
            };
        }
        let Some(channel) = name.strip_prefix(&self.pub_prefix) else {
            return true;
        };
        match serde_json::from_slice::<Wire>(payload) {
            Ok(w) => {
                let record = Record {
                    position: Position::new(w.e, w.s),
                    topic: w.t,
                    msg: w.m,
                };
                self.deliver(channel, record, events)
            }
            Err(e) => {
                tracing::warn!(channel, error = %e, "ignoring an undecodable publication");
                true
            }
        }
    }

    /// Opens the pub/sub connection, subscribes the control channel and every channel of
    /// interest, then delivers what each channel published since this instance last delivered
    /// it. Returns the connection's halves; live messages wait in the stream meanwhile.
    async fn connect_pubsub(
        &self,
        events: &mpsc::UnboundedSender<ScalerEvent>,
    ) -> Result<(PubSubSink, PubSubStream), ScalerError> {
        let mut state = self.pubsub.lock().await;
        if state.stopped {
            return Err(ScalerError::Stopped);
        }
        let (mut sink, stream) = self.bounded(self.client.get_async_pubsub()).await?.split();
        let channels: Vec<String> = lock(&self.channels).keys().cloned().collect();
        let mut names = vec![self.control_channel.clone()];
        names.extend(channels.iter().map(|c| self.pub_channel(c)));
        for batch in names.chunks(SUBSCRIBE_BATCH) {
            self.bounded(sink.subscribe(batch)).await?;
        }
        for channel in channels {
            let Some(last) = lock(&self.channels).get(&channel).cloned() else {
                continue;
            };
            let (_, missed) = self.read(&channel, &last, Read::Tail).await?;
            let missed = missed.unwrap_or_default();
            if !missed.is_empty() {
                tracing::debug!(channel, since = %last, missed = missed.len(), "catching up");
            }
            for record in missed {
                if !self.deliver(&channel, record, events) {
                    return Err(ScalerError::Stopped);
                }
            }
        }
        state.sink = Some(sink.clone());
        Ok((sink, stream))
    }

    /// Delivers the pub/sub stream until stopped, reconnecting whenever the connection drops.
    async fn run(
        self: Arc<Self>,
        events: mpsc::UnboundedSender<ScalerEvent>,
        (mut sink, mut stream): (PubSubSink, PubSubStream),
        mut stop: oneshot::Receiver<()>,
    ) {
        loop {
            let start = tokio::time::Instant::now() + KEEPALIVE;
            let mut keepalive = tokio::time::interval_at(start, KEEPALIVE);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    msg = stream.next() => match msg {
                        Some(msg) => {
                            if !self.on_message(&msg, &events) {
                                return;
                            }
                        }
                        None => break,
                    },
                    _ = keepalive.tick() => {
                        if let Err(e) = self.bounded(sink.ping::<::redis::Value>()).await {
                            tracing::warn!(error = %e, "redis pub/sub connection unresponsive");
                            break;
                        }
                    }
                }
            }
            drop(stream);
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            tokio::select! {
                _ = &mut stop => return,
                mut state = self.pubsub.lock() => state.sink = None,
            }
            let mut delay = BACKOFF.0;
            (sink, stream) = loop {
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(delay) => {}
                }
                tokio::select! {
                    _ = &mut stop => return,
                    r = self.connect_pubsub(&events) => match r {
                        Ok(halves) => break halves,
                        Err(ScalerError::Stopped) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, ?delay, "redis pub/sub reconnection failed");
                            delay = (delay * 2).min(BACKOFF.1);
                        }
                    },
                }
            };
            tracing::info!("redis pub/sub connection restored");
        }
    }
}

/// A scaler that joins server instances through Redis (feature `redis`).
///
/// Per channel `ch` (with the default prefix `sss`):
///
/// - `sss:{ch}:epoch` holds the channel's epoch, `sss:{ch}:seq` its last seq and `sss:{ch}:hist`
///   a stream of its publications with ids `<seq>-0`, trimmed to `history_size` entries. The
///   three keys share one hash tag and one expiry (`history_ttl` after the channel's last
///   publication), so they vanish together and the channel starts a new epoch; a seq is never
///   reused within an epoch.
/// - `sss:pub:ch` is the pub/sub channel that carries each publication in full, so an instance
///   never reads Redis per message. An instance subscribes only to the channels it has
///   subscribers for.
///
/// `sss:control` carries [`Control`] messages (as externally tagged JSON) to every instance.
///
/// One Lua script appends and publishes, so every subscriber sees one order per channel. When the
/// pub/sub connection drops (a Redis restart, a network fault), the instance reconnects with
/// backoff, subscribes again and reads what it missed from the streams before delivering anything
/// live, deduplicating by seq.
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
        let client =
            Client::open(url).map_err(|e| unavailable(format!("invalid Redis URL: {e}")))?;
        let scaler = Self::with_client(client, opts)?;
        let mut conn = scaler.shared.conn.clone();
        scaler
            .shared
            .bounded(::redis::cmd("PING").query_async::<()>(&mut conn))
            .await?;
        Ok(scaler)
    }

    /// Another instance on the same Redis with the same options (its own connections), as a
    /// second server process would have. Connects lazily.
    pub fn instance(&self) -> Result<Self, ScalerError> {
        Self::with_client(self.shared.client.clone(), self.shared.opts.clone())
    }

    fn with_client(client: Client, opts: RedisOptions) -> Result<Self, ScalerError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.command_timeout))
            .set_response_timeout(Some(opts.command_timeout))
            .set_max_delay(BACKOFF.1);
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unavailable)?;
        let ttl_ms = u64::try_from(opts.history_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                conn,
                ttl_ms,
                control_channel: format!("{}:control", opts.prefix),
                pub_prefix: format!("{}:pub:", opts.prefix),
                opts,
                channels: Mutex::new(HashMap::new()),
                pubsub: AsyncMutex::new(PubSubState {
                    sink: None,
                    stopped: false,
                }),
                running: Mutex::new(None),
            }),
        })
    }
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
        let previous = lock(&self.shared.running).replace(Running { stop, task });
        if let Some(previous) = previous {
            previous.task.abort();
        }
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        topic: &str,
        msg: &RawValue,
    ) -> Result<Position, ScalerError> {
        let s = &self.shared;
        let [epoch_key, seq_key, hist_key] = s.keys(channel);
        let mut inv = PUBLISH.prepare_invoke();
        inv.key(epoch_key)
            .key(seq_key)
            .key(hist_key)
            .arg(new_epoch())
            .arg(s.ttl_ms)
            .arg(s.opts.history_size)
            .arg(s.pub_channel(channel))
            .arg(topic)
            .arg(msg.get());
        let mut conn = s.conn.clone();
        let (epoch, seq): (String, u64) = s.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(Position::new(epoch, seq))
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
        lock(&s.channels).insert(channel.to_owned(), head);
        if let Err(e) = s.bounded(sink.subscribe(s.pub_channel(channel))).await {
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
            Some(mut sink) => s.bounded(sink.unsubscribe(s.pub_channel(channel))).await,
            // Down: the reconnection will not subscribe it again.
            None => Ok(()),
        }
    }

    async fn history(&self, channel: &str, since: &Position) -> Result<History, ScalerError> {
        Ok(
            match self.shared.read(channel, since, Read::Strict).await? {
                (_, Some(records)) => {
                    History::Recovered(records.into_iter().map(Arc::new).collect())
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
            ::redis::cmd("PUBLISH")
                .arg(&s.control_channel)
                .arg(payload)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    async fn stop(&self) {
        let s = &self.shared;
        {
            let mut state = s.pubsub.lock().await;
            state.stopped = true;
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
        if let Some(Running { stop, task }) = running {
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
