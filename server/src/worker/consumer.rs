//! The worker side of worker mode: takes jobs from a group's stream, runs the server's handlers
//! on them, and sends answers, tells and boots back to the gateways.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use ::redis::{Client, Value};
use futures::FutureExt;
use serde_json::value::RawValue;
use sss_core::protocol::codes;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::{
    bounded, connect, millis, now_ms, redis_error, Job, Kind, ToGateway, WireRejection,
    WorkerError, WorkerOptions,
};
use crate::machine::AskOutcome;
use crate::metrics::WorkerEvent;
use crate::server::Inner;
use crate::socket::{ask_outcome, guarded, Peer};
use crate::{Rejection, Server, Session, Socket};

/// The consumer group every worker of a group's stream reads in.
const CONSUMER_GROUP: &str = "workers";
/// How long one read waits for jobs before it looks at `stop` again.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// Delay after a failed read before the next one.
const RETRY: Duration = Duration::from_millis(200);
/// Room for answers, tells and acknowledgements on their way to Redis.
const OUTBOX: usize = 4096;
/// Most outgoing messages sent to Redis in one round trip.
const OUTBOX_BATCH: usize = 512;
/// Claim rounds between two looks for consumers of workers that are gone.
const FORGET_EVERY: u64 = 20;
/// Claim times (`claim_idle`) a consumer must have been silent, holding nothing, to be gone.
const FORGET_AFTER: u32 = 10;

/// Something a worker sends to Redis, in order.
enum Outgoing {
    /// Publish on a gateway's channel.
    Publish { channel: String, payload: String },
    /// The job is done: acknowledge it and delete it from the stream.
    Done(String),
}

/// A socket connected to a gateway, as a worker's handler sees it.
pub(crate) struct RemoteSocket {
    pub(crate) id: String,
    pub(crate) session: Session,
    pub(crate) server: Weak<Inner>,
    /// Its gateway's channel.
    channel: String,
    outbox: mpsc::Sender<Outgoing>,
}

impl RemoteSocket {
    fn send(&self, msg: &ToGateway) {
        let Ok(payload) = serde_json::to_string(msg) else {
            return;
        };
        let out = Outgoing::Publish {
            channel: self.channel.clone(),
            payload,
        };
        // `tell` and `boot` do not wait; a worker with thousands of them queued (Redis down or
        // far behind) drops more rather than holding them without limit.
        if self.outbox.try_send(out).is_err() {
            tracing::warn!(
                socket = self.id,
                "dropped a tell or boot: the worker's outbox is full"
            );
        }
    }

    pub(crate) fn tell(&self, topic: &str, msg: Box<RawValue>) {
        self.send(&ToGateway::Tell {
            s: self.id.clone(),
            t: topic.to_owned(),
            m: msg,
        });
    }

    pub(crate) fn boot(&self) {
        self.send(&ToGateway::Boot { s: self.id.clone() });
    }
}

/// A running worker: takes jobs of its group from Redis and runs its server's `on_ask` and
/// `on_tell` handlers on them (see the [module docs](super)).
///
/// ```no_run
/// use sss_server::worker::{Worker, WorkerOptions};
/// use sss_server::scaler::{RedisOptions, RedisScaler};
/// use sss_server::{Rejection, Server};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let url = "redis://127.0.0.1/";
/// let server = Server::builder(RedisScaler::connect(url, RedisOptions::default()).await?)
///     .on_ask("add", |_socket, (a, b): (i64, i64)| async move { Ok::<_, Rejection>(a + b) })
///     .build()
///     .await?;
/// let worker = Worker::start(&server, url, WorkerOptions::default()).await?;
/// tokio::signal::ctrl_c().await?;
/// worker.stop(std::time::Duration::from_secs(10)).await;
/// # Ok(()) }
/// ```
///
/// It runs until [`stop`](Self::stop)ped, which lets the handlers running finish; dropping it
/// stops taking jobs at once (the handlers running still finish and answer).
pub struct Worker {
    consumer: Arc<Consumer>,
    stop: watch::Sender<bool>,
    reader: JoinHandle<()>,
    claimer: JoinHandle<()>,
    sender: JoinHandle<()>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.consumer.name)
            .field("stream", &self.consumer.stream)
            .finish_non_exhaustive()
    }
}

struct Consumer {
    /// The server whose handlers run (held: a worker is its server's reason to live).
    server: Server,
    opts: WorkerOptions,
    stream: String,
    /// This worker's consumer name: its server's instance id.
    name: String,
    /// Acknowledgements, claims, answers.
    conn: ConnectionManager,
    /// Blocking reads, on a connection of their own (a blocked read holds its connection).
    reader: ConnectionManager,
    permits: Arc<Semaphore>,
    outbox: mpsc::Sender<Outgoing>,
    /// The jobs this worker is running, by entry id: kept claimed (see [`Consumer::touch`]).
    running: Mutex<HashSet<String>>,
}

/// One entry of the stream: its id and its job (absent if it was deleted meanwhile).
type Entry = (String, Option<Vec<u8>>);

impl Worker {
    /// Starts taking jobs of `opts.group` from the Redis at `redis_url`, for `server`'s
    /// handlers. The consumer group is created if it is not there yet, reading from the start
    /// of the stream, so jobs routed before any worker ran are not lost.
    pub async fn start(
        server: &Server,
        redis_url: &str,
        opts: WorkerOptions,
    ) -> Result<Self, WorkerError> {
        let client = Client::open(redis_url).map_err(redis_error)?;
        let conn = connect(&client, &opts, opts.command_timeout).await?;
        let reader = connect(&client, &opts, READ_BLOCK + opts.command_timeout).await?;
        let (outbox, queued) = mpsc::channel(OUTBOX);
        let consumer = Arc::new(Consumer {
            server: server.clone(),
            stream: opts.stream(),
            name: server.instance_id().to_owned(),
            permits: Arc::new(Semaphore::new(opts.concurrency.max(1))),
            opts,
            conn,
            reader,
            outbox,
            running: Mutex::default(),
        });
        consumer.create_group().await?;
        let (stop, _) = watch::channel(false);
        Ok(Self {
            reader: tokio::spawn(consumer.clone().read(stop.subscribe())),
            claimer: tokio::spawn(consumer.clone().claim(stop.subscribe())),
            sender: tokio::spawn(send(
                consumer.conn.clone(),
                consumer.stream.clone(),
                consumer.opts.command_timeout,
                queued,
            )),
            consumer,
            stop,
        })
    }

    /// Stops taking jobs, waits up to `grace` for the handlers running now to finish and
    /// their answers to be sent, then stops. Jobs it could not finish stay in the stream and
    /// are claimed by another worker after [`WorkerOptions::claim_idle`].
    pub async fn stop(self, grace: Duration) {
        self.stop.send_replace(true);
        let _ = self.reader.await;
        let all = u32::try_from(self.consumer.opts.concurrency.max(1)).unwrap_or(u32::MAX);
        let idle = self.consumer.permits.clone().acquire_many_owned(all);
        let finished = tokio::time::timeout(grace, idle).await.is_ok();
        self.claimer.abort();
        if finished {
            // Every handler is done and its answer queued: the outbox closes once the last
            // sender goes with the consumer, after the sender sent everything.
            drop(self.consumer);
            let _ = tokio::time::timeout(grace, self.sender).await;
        } else {
            // Handlers still run: nothing more of theirs goes out, and their jobs, no longer
            // kept claimed, go to another worker.
            self.sender.abort();
        }
    }
}

/// The entries of an `XREADGROUP` or `XAUTOCLAIM` entry list.
fn entries(list: &Value) -> Vec<Entry> {
    let Value::Array(items) = list else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else {
                return None;
            };
            let id = match parts.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let job = match parts.get(1) {
                Some(Value::Array(fields)) => fields.chunks(2).find_map(|kv| match kv {
                    [Value::BulkString(k), Value::BulkString(v)] if k == b"j" => Some(v.clone()),
                    _ => None,
                }),
                _ => None,
            };
            Some((id, job))
        })
        .collect()
}

/// The entries of an `XREADGROUP` reply (RESP2 array or RESP3 map of one stream).
fn read_reply(reply: &Value) -> Vec<Entry> {
    match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(kv) => kv.get(1).map(entries),
                _ => None,
            })
            .flatten()
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, v)| entries(v)).collect(),
        _ => Vec::new(),
    }
}

/// Resolves once `stop` says so (or its sender is gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not be held across an await.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// A consumer's name, pending jobs and idle milliseconds, from `XINFO CONSUMERS` (a flat
/// field list in RESP2, a map in RESP3).
fn consumer_info(v: &Value) -> Option<(String, u64, u64)> {
    let pairs: Vec<(&Value, &Value)> = match v {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|kv| Some((kv.first()?, kv.get(1)?)))
            .collect(),
        Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
        _ => return None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let (mut name, mut pending, mut idle) = (None, None, None);
    for (k, v) in pairs {
        match (text(k).as_deref(), v) {
            (Some("name"), v) => name = text(v),
            (Some("pending"), Value::Int(n)) => pending = u64::try_from(*n).ok(),
            (Some("idle"), Value::Int(n)) => idle = u64::try_from(*n).ok(),
            _ => {}
        }
    }
    Some((name?, pending?, idle?))
}

fn is_nogroup(e: &::redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl Consumer {
    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, WorkerError> {
        bounded(self.opts.command_timeout, f).await
    }

    /// Creates the consumer group (and the stream) unless there.
    async fn create_group(&self) -> Result<(), WorkerError> {
        let mut conn = self.conn.clone();
        let mut cmd = ::redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&self.stream)
            .arg(CONSUMER_GROUP)
            .arg("0")
            .arg("MKSTREAM");
        let create = async {
            match cmd.query_async::<Value>(&mut conn).await {
                // There already: what this wants.
                Err(e) if e.code() == Some("BUSYGROUP") => Ok(Value::Nil),
                r => r,
            }
        };
        self.bounded(create).await?;
        // Listed from the start (a blocked read that got nothing yet does not create it).
        let mut cmd = ::redis::cmd("XGROUP");
        cmd.arg("CREATECONSUMER")
            .arg(&self.stream)
            .arg(CONSUMER_GROUP)
            .arg(&self.name);
        self.bounded(cmd.query_async::<Value>(&mut conn))
            .await
            .map(drop)
    }

    /// Permits for up to `batch` jobs: waits for the first one.
    async fn permits(&self) -> Vec<OwnedSemaphorePermit> {
        let Ok(first) = self.permits.clone().acquire_owned().await else {
            return Vec::new();
        };
        let mut permits = vec![first];
        while permits.len() < self.opts.batch.max(1) {
            match self.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        permits
    }

    /// Takes new jobs until stopped, as many at once as it has room for.
    async fn read(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let block = millis(READ_BLOCK);
        loop {
            let permits = tokio::select! {
                _ = stopped(&mut stop) => return,
                p = self.permits() => p,
            };
            let mut conn = self.reader.clone();
            let mut cmd = ::redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(CONSUMER_GROUP)
                .arg(&self.name)
                .arg("COUNT")
                .arg(permits.len())
                .arg("BLOCK")
                .arg(block)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">");
            let read = cmd.query_async::<Value>(&mut conn);
            let reply = tokio::select! {
                _ = stopped(&mut stop) => return,
                r = read => r,
            };
            match reply {
                Ok(reply) => self.run_all(read_reply(&reply), permits),
                Err(e) => {
                    if is_nogroup(&e) {
                        // Redis lost the group (restarted without persistence): make it anew.
                        if let Err(e) = self.create_group().await {
                            tracing::warn!(error = %e, "worker: cannot create the consumer group");
                        }
                    } else {
                        tracing::warn!(error = %e, "worker: reading jobs failed");
                    }
                    drop(permits);
                    tokio::select! {
                        _ = stopped(&mut stop) => return,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }

    /// Claims the jobs that stayed unacknowledged with any worker (a dead one, typically) for
    /// longer than `claim_idle`, and runs them.
    async fn claim(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = (self.opts.claim_idle / 2).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(every);
        let mut rounds = 0u64;
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = tick.tick() => {}
            }
            self.touch().await;
            rounds += 1;
            if rounds.is_multiple_of(FORGET_EVERY) {
                self.forget_gone_consumers().await;
            }
            let mut cursor = "0-0".to_owned();
            loop {
                let permits = self.permits().await;
                let mut conn = self.conn.clone();
                let mut cmd = ::redis::cmd("XAUTOCLAIM");
                cmd.arg(&self.stream)
                    .arg(CONSUMER_GROUP)
                    .arg(&self.name)
                    .arg(millis(self.opts.claim_idle))
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(permits.len());
                let claim = cmd.query_async::<Value>(&mut conn);
                let reply = match self.bounded(claim).await {
                    Ok(Value::Array(reply)) => reply,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "worker: claiming idle jobs failed");
                        break;
                    }
                };
                let claimed = reply.get(1).map(entries).unwrap_or_default();
                if !claimed.is_empty() {
                    tracing::info!(jobs = claimed.len(), "worker: claimed jobs left idle");
                    for _ in &claimed {
                        self.server
                            .inner
                            .metrics
                            .worker_event(WorkerEvent::JobClaimed);
                    }
                }
                self.run_all(claimed, permits);
                cursor = match reply.first() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(Value::SimpleString(s)) => s.clone(),
                    _ => break,
                };
                if cursor == "0-0" {
                    break;
                }
            }
        }
    }

    /// Removes from the group the consumers of workers that are gone: each worker process is
    /// a consumer of its own, and without this every restart would leave one behind for good.
    /// A consumer is gone when it holds no job and has not read for `FORGET_AFTER` claim times
    /// (and at least `FORGET_AFTER` seconds). Redis does not count a blocked read that got
    /// nothing as activity, so a live worker that got no job for that long is removed too:
    /// harmless, it holds nothing, and its next job makes it anew.
    async fn forget_gone_consumers(&self) {
        let mut conn = self.conn.clone();
        let mut cmd = ::redis::cmd("XINFO");
        cmd.arg("CONSUMERS").arg(&self.stream).arg(CONSUMER_GROUP);
        let Ok(Value::Array(consumers)) = self.bounded(cmd.query_async::<Value>(&mut conn)).await
        else {
            return;
        };
        let limit = millis(
            self.opts
                .claim_idle
                .saturating_mul(FORGET_AFTER)
                .max(READ_BLOCK * FORGET_AFTER),
        );
        for consumer in consumers {
            let Some((name, pending, idle)) = consumer_info(&consumer) else {
                continue;
            };
            if pending == 0 && idle > limit && name != self.name {
                let mut cmd = ::redis::cmd("XGROUP");
                cmd.arg("DELCONSUMER")
                    .arg(&self.stream)
                    .arg(CONSUMER_GROUP)
                    .arg(&name);
                if self
                    .bounded(cmd.query_async::<Value>(&mut conn))
                    .await
                    .is_ok()
                {
                    tracing::debug!(consumer = name, "worker: forgot a consumer that is gone");
                }
            }
        }
    }

    /// Resets the idle time of the jobs this worker is running, so that no other worker
    /// claims them while it is alive, however long their handlers take.
    async fn touch(&self) {
        let ids: Vec<String> = self.running().iter().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        let mut cmd = ::redis::cmd("XCLAIM");
        cmd.arg(&self.stream)
            .arg(CONSUMER_GROUP)
            .arg(&self.name)
            .arg(0)
            .arg(&ids)
            .arg("JUSTID");
        if let Err(e) = self.bounded(cmd.query_async::<Value>(&mut conn)).await {
            tracing::warn!(error = %e, "worker: keeping its jobs claimed failed");
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run_all(self: &Arc<Self>, entries: Vec<Entry>, permits: Vec<OwnedSemaphorePermit>) {
        for ((id, job), permit) in entries.into_iter().zip(permits) {
            // A job claimed while this worker still runs it (it took longer than
            // `claim_idle` between two touches) is not run twice here.
            if self.running().insert(id.clone()) {
                tokio::spawn(self.clone().run(id, job, permit));
            }
        }
    }

    /// Runs one job, sends its answer, then marks it done. Whatever happens to the handler,
    /// the job ends acknowledged or (if this process dies first) stays to be claimed.
    async fn run(self: Arc<Self>, id: String, job: Option<Vec<u8>>, _permit: OwnedSemaphorePermit) {
        let job = match job.map(|j| serde_json::from_slice::<Job>(&j)) {
            Some(Ok(job)) => job,
            Some(Err(e)) => {
                tracing::warn!(id, error = %e, "worker: dropping an undecodable job");
                return self.done(id).await;
            }
            None => return self.done(id).await,
        };
        if now_ms() > job.d {
            tracing::debug!(
                id,
                topic = job.t,
                "worker: dropping a job past its deadline"
            );
            self.server
                .inner
                .metrics
                .worker_event(WorkerEvent::JobExpired);
            return self.done(id).await;
        }
        let inner = &self.server.inner;
        let channel = self.opts.gateway_channel(&job.g);
        let socket = Socket(Peer::Remote(Arc::new(RemoteSocket {
            id: job.s,
            session: Session {
                user: job.u,
                session: job.e,
                ..Session::default()
            },
            server: Arc::downgrade(inner),
            channel: channel.clone(),
            outbox: self.outbox.clone(),
        })));
        match job.k {
            Kind::Ask => {
                let answer = ask(inner, &job.t, socket, job.m).await;
                let reply = ToGateway::Reply {
                    i: job.i,
                    r: answer.map_err(|r| WireRejection {
                        code: r.code,
                        reason: r.reason,
                    }),
                };
                if let Ok(payload) = serde_json::to_string(&reply) {
                    let _ = self
                        .outbox
                        .send(Outgoing::Publish { channel, payload })
                        .await;
                }
            }
            Kind::Tell => tell(inner, &job.t, socket, job.m).await,
        }
        self.done(id).await;
    }

    async fn done(&self, id: String) {
        self.running().remove(&id);
        let _ = self.outbox.send(Outgoing::Done(id)).await;
    }
}

/// Sends what handlers queued, in order, many per round trip. A batch that fails is
/// logged and dropped: its asks time out at their gateways as `unavailable`, and its jobs,
/// unacknowledged, are claimed and run again.
async fn send(
    conn: ConnectionManager,
    stream: String,
    limit: Duration,
    mut queued: mpsc::Receiver<Outgoing>,
) {
    let mut batch = Vec::with_capacity(OUTBOX_BATCH);
    while queued.recv_many(&mut batch, OUTBOX_BATCH).await > 0 {
        let mut pipe = ::redis::pipe();
        let mut done = Vec::new();
        for out in batch.drain(..) {
            match out {
                Outgoing::Publish { channel, payload } => {
                    pipe.publish(channel, payload).ignore();
                }
                Outgoing::Done(id) => done.push(id),
            }
        }
        if !done.is_empty() {
            pipe.xack(&stream, CONSUMER_GROUP, &done).ignore();
            pipe.xdel(&stream, &done).ignore();
        }
        let mut conn = conn.clone();
        match tokio::time::timeout(limit, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "worker: sending answers failed"),
            Err(_) => tracing::warn!("worker: sending answers timed out"),
        }
    }
}

/// Runs an ask's handler as the gateway would have.
async fn ask(
    inner: &Inner,
    topic: &str,
    socket: Socket,
    msg: Box<RawValue>,
) -> Result<Box<RawValue>, Rejection> {
    let Some(route) = inner.asks.get(topic) else {
        return Err(Rejection::new(
            codes::UNKNOWN_TOPIC,
            format!("no worker handler for {topic}"),
        ));
    };
    let start = Instant::now();
    let outcome =
        ask_outcome(guarded(tracing::Span::none(), || (route.handler)(socket, msg)).await);
    if matches!(outcome, AskOutcome::Panicked) {
        tracing::warn!(topic, "ask handler panicked in a worker");
    }
    inner
        .metrics
        .ask_answered(&route.series, outcome.code(), start.elapsed());
    outcome.into_answer()
}

/// Runs a tell's handler as the gateway would have.
async fn tell(inner: &Inner, topic: &str, socket: Socket, msg: Box<RawValue>) {
    let Some(route) = inner.tells.get(topic) else {
        tracing::warn!(topic, "worker: no handler for a routed tell");
        return;
    };
    route.series.inc();
    if AssertUnwindSafe((route.handler)(socket, msg))
        .catch_unwind()
        .await
        .is_err()
    {
        tracing::warn!(topic, "tell handler panicked in a worker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, job: &str) -> Value {
        Value::Array(vec![bulk(id), Value::Array(vec![bulk("j"), bulk(job)])])
    }

    #[test]
    fn read_replies_in_resp2_and_resp3_give_the_same_entries() {
        let list = Value::Array(vec![entry("1-0", "a"), entry("2-0", "b")]);
        let want = vec![
            ("1-0".to_owned(), Some(b"a".to_vec())),
            ("2-0".to_owned(), Some(b"b".to_vec())),
        ];
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("stream"), list.clone()])]);
        let resp3 = Value::Map(vec![(bulk("stream"), list)]);
        assert_eq!(read_reply(&resp2), want);
        assert_eq!(read_reply(&resp3), want);
        // A read that timed out.
        assert!(read_reply(&Value::Nil).is_empty());
    }

    #[test]
    fn an_entry_without_its_job_field_is_kept_without_a_job() {
        // XAUTOCLAIM before Redis 7 lists deleted entries with no fields.
        let list = Value::Array(vec![
            Value::Array(vec![bulk("3-0"), Value::Nil]),
            Value::Array(vec![bulk("4-0"), Value::Array(vec![bulk("x"), bulk("y")])]),
        ]);
        assert_eq!(
            entries(&list),
            vec![("3-0".to_owned(), None), ("4-0".to_owned(), None)]
        );
    }

    #[test]
    fn consumer_info_reads_resp2_and_resp3() {
        let fields = vec![
            bulk("name"),
            bulk("w1"),
            bulk("pending"),
            Value::Int(2),
            bulk("idle"),
            Value::Int(1500),
            bulk("inactive"),
            Value::Int(-1),
        ];
        let want = Some(("w1".to_owned(), 2, 1500));
        assert_eq!(consumer_info(&Value::Array(fields.clone())), want);
        let map = fields
            .chunks(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect();
        assert_eq!(consumer_info(&Value::Map(map)), want);
        assert_eq!(
            consumer_info(&Value::Array(vec![bulk("name"), bulk("w1")])),
            None
        );
    }
}
