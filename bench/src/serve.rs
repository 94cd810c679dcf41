//! The `serve` subcommand: the server side of the benchmark, run as a child process.
//!
//! `sss-bench serve --kind sss|echo|gateway|worker [--instances N] [--killable I] [--scaler memory|redis
//! --redis-url URL [--redis-prefix P]]` listens on loopback port 0, prints `READY <addr>[,<addr>...]` on stdout, and
//! then reads commands on stdin:
//!
//! - `kill I`: instance `I` (started with `--killable I`) dies as if its process had been
//!   SIGKILLed: its listener closes and every connection it accepted is shut down at the TCP level,
//!   with no WebSocket close frame. The other instances keep running on the same in-memory hub,
//!   which is how the reconnect storm has two instances share history with the memory scaler.
//! - end of input: the process exits (so a dying load generator takes its servers along).
//!
//! Kind `sss` is a Super Scaled Sockets server with ask handlers `echo` (answers the request
//! as is) and `publish` (`{"ch":..,"msg":..}`: publishes `msg` on `ch` with topic `m`, answers the
//! publication's seq). Kind `gateway` is the same server routing `echo` and `note` to workers,
//! and kind `worker` a worker with those handlers (it prints `READY` with no address); both
//! need `--scaler redis`. Kind `echo` is the raw baseline: a tokio-tungstenite server that sends every
//! text message back.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use sss_server::{codes, MemoryScaler, Rejection, Scaler, Server, ServerOptions, Socket};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::opts::ScalerOpt;
use crate::Result;

/// What a server child serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A Super Scaled Sockets server.
    Sss,
    /// A raw tokio-tungstenite echo server (the baseline).
    Echo,
    /// A Super Scaled Sockets server routing `echo` and `note` to workers (worker mode).
    Gateway,
    /// A worker running the handlers for gateways (no listener).
    Worker,
    /// The fan-out floor: a raw tokio-tungstenite server that speaks just enough of the
    /// protocol for the `fanout` load (see [`fanout_instance`]).
    RawFanout,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Sss => "sss",
            Kind::Echo => "echo",
            Kind::Gateway => "gateway",
            Kind::Worker => "worker",
            Kind::RawFanout => "fanout-raw",
        }
    }
}

struct ServeArgs {
    kind: Kind,
    instances: usize,
    killable: Option<usize>,
    scaler: ScalerOpt,
    /// Key prefix of the Redis scaler: the processes of one cluster share it, and every cluster
    /// the load side starts has its own (runs never see each other's channels).
    redis_prefix: String,
}

fn parse(args: &[String]) -> Result<ServeArgs> {
    let mut a = ServeArgs {
        kind: Kind::Sss,
        instances: 1,
        killable: None,
        scaler: ScalerOpt::Memory,
        redis_prefix: "sss".to_owned(),
    };
    let mut redis = None;
    let mut url = String::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--kind" => {
                a.kind = match value()?.as_str() {
                    "sss" => Kind::Sss,
                    "echo" => Kind::Echo,
                    "gateway" => Kind::Gateway,
                    "worker" => Kind::Worker,
                    "fanout-raw" => Kind::RawFanout,
                    k => return Err(format!("unknown kind {k}").into()),
                }
            }
            "--instances" => a.instances = value()?.parse::<usize>()?.max(1),
            "--killable" => a.killable = Some(value()?.parse()?),
            "--scaler" => {
                redis = match value()?.as_str() {
                    "memory" => None,
                    "redis" => Some(false),
                    "redis-cluster" => Some(true),
                    s => return Err(format!("unknown scaler {s}").into()),
                }
            }
            "--redis-url" => url = value()?,
            "--redis-prefix" => a.redis_prefix = value()?,
            other => return Err(format!("serve: unknown option {other}").into()),
        }
    }
    match redis {
        Some(false) => a.scaler = ScalerOpt::Redis(url),
        Some(true) => a.scaler = ScalerOpt::RedisCluster(url),
        None => {}
    }
    Ok(a)
}

/// Entry point of `sss-bench serve`.
pub(crate) fn main(args: &[String]) -> ExitCode {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("serve: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("serve: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One listening instance, and how to kill it.
struct Instance {
    addr: SocketAddr,
    killer: Option<Killer>,
}

/// The accept loop of a killable instance, and a duplicate of every connection it accepted.
struct Killer {
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Killer {
    /// What SIGKILL does to the instance's sockets: the listener goes away and every connection
    /// is shut down by the kernel, without a WebSocket close frame.
    fn kill(&self) {
        self.accept.abort();
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for c in conns {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut instances = Vec::new();
    // Kept until the process ends (a dropped worker stops taking jobs).
    let mut worker = None;
    match args.kind {
        Kind::Echo => {
            for _ in 0..args.instances {
                instances.push(echo_instance().await?);
            }
        }
        Kind::Sss | Kind::Gateway => {
            let scalers = scalers(&args).await?;
            for (i, scaler) in scalers.into_iter().enumerate() {
                let server = build_server(scaler, gateway(&args)?).await?;
                instances.push(sss_instance(server, args.killable == Some(i)).await?);
            }
        }
        Kind::RawFanout => instances.push(fanout_instance().await?),
        Kind::Worker => {
            // It listens to nobody: READY with no address.
            let scaler = scalers(&args)
                .await?
                .into_iter()
                .next()
                .ok_or("no scaler")?;
            let server = build_server(scaler, None).await?;
            worker = Some(start_worker(&server, &args).await?);
        }
    }
    let addrs: Vec<String> = instances.iter().map(|i| i.addr.to_string()).collect();
    println!("READY {}", addrs.join(","));
    let _worker = worker;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|w| w.parse::<usize>().ok()),
        ) {
            (Some("kill"), Some(i)) => match instances.get(i).and_then(|i| i.killer.as_ref()) {
                Some(k) => {
                    k.kill();
                    println!("KILLED {i}");
                }
                None => eprintln!("serve: instance {i} is not killable"),
            },
            _ => eprintln!("serve: unknown command {line:?}"),
        }
    }
    Ok(())
}

/// One scaler per instance, all joined into one cluster.
async fn scalers(args: &ServeArgs) -> Result<Vec<BoxedScaler>> {
    match &args.scaler {
        ScalerOpt::Memory => {
            let first = MemoryScaler::default();
            let others: Vec<BoxedScaler> = (1..args.instances)
                .map(|_| BoxedScaler::Memory(first.instance()))
                .collect();
            let mut all = vec![BoxedScaler::Memory(first)];
            all.extend(others);
            Ok(all)
        }
        ScalerOpt::Redis(url) => {
            redis_scalers(&[url], false, &args.redis_prefix, args.instances).await
        }
        ScalerOpt::RedisCluster(urls) => {
            let nodes: Vec<&str> = urls.split(',').collect();
            redis_scalers(&nodes, true, &args.redis_prefix, args.instances).await
        }
    }
}

/// A scaler of some implementation, before it goes into a server.
enum BoxedScaler {
    Memory(MemoryScaler),
    #[cfg(feature = "redis")]
    Redis(sss_server::scaler::RedisScaler),
}

#[cfg(not(feature = "redis"))]
async fn redis_scalers(
    _nodes: &[&str],
    _cluster: bool,
    _prefix: &str,
    _n: usize,
) -> Result<Vec<BoxedScaler>> {
    Err("--scaler redis needs sss-bench built with `--features redis`".into())
}

/// `n` instances on the Redis at `nodes[0]`, or on the Redis Cluster of `nodes` (the load side
/// runs one per process, two processes).
#[cfg(feature = "redis")]
async fn redis_scalers(
    nodes: &[&str],
    cluster: bool,
    prefix: &str,
    n: usize,
) -> Result<Vec<BoxedScaler>> {
    use sss_server::scaler::{RedisOptions, RedisScaler};
    let opts = RedisOptions {
        prefix: prefix.to_owned(),
        ..RedisOptions::default()
    };
    let first = match nodes {
        _ if cluster => RedisScaler::connect_cluster(nodes, opts).await?,
        [url, ..] => RedisScaler::connect(url, opts).await?,
        [] => return Err("no Redis URL".into()),
    };
    let mut all = Vec::with_capacity(n);
    for _ in 1..n {
        all.push(BoxedScaler::Redis(first.instance()?));
    }
    all.insert(0, BoxedScaler::Redis(first));
    Ok(all)
}

#[derive(Deserialize)]
struct PublishReq {
    ch: String,
    msg: Box<RawValue>,
}

/// What a worker-mode server needs to reach the workers.
#[cfg(feature = "redis")]
type Route = sss_server::worker::Gateway;
#[cfg(not(feature = "redis"))]
type Route = ();
#[cfg(feature = "redis")]
type WorkerHandle = sss_server::worker::Worker;
#[cfg(not(feature = "redis"))]
type WorkerHandle = ();

#[cfg(feature = "redis")]
fn worker_options(args: &ServeArgs) -> sss_server::worker::WorkerOptions {
    sss_server::worker::WorkerOptions {
        prefix: args.redis_prefix.clone(),
        ..Default::default()
    }
}

/// For kind `gateway`: `echo` asks and `note` tells go to the workers on the same Redis.
#[cfg(feature = "redis")]
fn gateway(args: &ServeArgs) -> Result<Option<Route>> {
    Ok(match (&args.kind, &args.scaler) {
        (Kind::Gateway, ScalerOpt::Redis(url)) => Some(
            sss_server::worker::Gateway::new(url.clone(), worker_options(args))
                .asks(["echo"])
                .tells(["note"]),
        ),
        (Kind::Gateway, _) => return Err("kind gateway needs --scaler redis".into()),
        _ => None,
    })
}

#[cfg(not(feature = "redis"))]
fn gateway(args: &ServeArgs) -> Result<Option<Route>> {
    match args.kind {
        Kind::Gateway => Err("worker mode needs sss-bench built with `--features redis`".into()),
        _ => Ok(None),
    }
}

#[cfg(feature = "redis")]
async fn start_worker(server: &Server, args: &ServeArgs) -> Result<WorkerHandle> {
    let ScalerOpt::Redis(url) = &args.scaler else {
        return Err("kind worker needs --scaler redis".into());
    };
    Ok(sss_server::worker::Worker::start(server, url, worker_options(args)).await?)
}

#[cfg(not(feature = "redis"))]
async fn start_worker(_server: &Server, _args: &ServeArgs) -> Result<WorkerHandle> {
    Err("worker mode needs sss-bench built with `--features redis`".into())
}

async fn build_server(scaler: BoxedScaler, route: Option<Route>) -> Result<Server> {
    fn with_handlers<S: Scaler>(scaler: S) -> sss_server::ServerBuilder {
        Server::builder(scaler)
            // The presence scenario's channel.
            .options(ServerOptions::default().presence_prefixes(["presence:"]))
            .on_ask("echo", |_socket: Socket, msg: Box<RawValue>| async move {
                Ok::<_, Rejection>(msg)
            })
            .on_tell("note", |_socket: Socket, _msg: Box<RawValue>| async move {})
            .on_ask("publish", |socket: Socket, req: PublishReq| async move {
                let server = socket
                    .server()
                    .ok_or_else(|| Rejection::new(codes::INTERNAL, "server gone"))?;
                let pos = server
                    .publish(&req.ch, "m", &*req.msg)
                    .await
                    .map_err(|e| Rejection::new(codes::UNAVAILABLE, e.to_string()))?;
                Ok::<_, Rejection>(pos.seq)
            })
    }
    let builder = match scaler {
        BoxedScaler::Memory(s) => with_handlers(s),
        #[cfg(feature = "redis")]
        BoxedScaler::Redis(s) => with_handlers(s),
    };
    #[cfg(feature = "redis")]
    let builder = match route {
        Some(gateway) => builder.gateway(gateway),
        None => builder,
    };
    #[cfg(not(feature = "redis"))]
    let _ = route;
    Ok(builder.build().await?)
}

async fn sss_instance(server: Server, killable: bool) -> Result<Instance> {
    if !killable {
        let listening = server.listen("127.0.0.1:0").await?;
        let addr = listening.local_addr();
        // The listener runs until the process ends.
        tokio::spawn(listening.stopped());
        return Ok(Instance { addr, killer: None });
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
    let held = conns.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            let Ok(tcp) = keep_duplicate(tcp, &held) else {
                continue;
            };
            let server = server.clone();
            tokio::spawn(async move { server.serve_io(tcp, Some(peer)).await });
        }
    });
    Ok(Instance {
        addr,
        killer: Some(Killer { accept, conns }),
    })
}

/// Keeps a duplicate of the connection's descriptor, so the instance can be killed later.
fn keep_duplicate(
    tcp: TcpStream,
    held: &Mutex<Vec<std::net::TcpStream>>,
) -> std::io::Result<TcpStream> {
    tcp.set_nodelay(true)?;
    let std = tcp.into_std()?;
    let dup = std.try_clone()?;
    held.lock().unwrap_or_else(|e| e.into_inner()).push(dup);
    TcpStream::from_std(std)
}

async fn echo_instance() -> Result<Instance> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            tokio::spawn(echo_conn(tcp));
        }
    });
    Ok(Instance { addr, killer: None })
}

/// The raw servers' WebSocket settings: the sss server's (`ServerOptions::ws_config` in
/// server/src/server.rs), so that the floors differ from it by the framework's work only.
/// tungstenite's default read buffer (128 KiB, zeroed at every read) made the raw echo server
/// spend 17 % of its CPU in `memset`, and up to 3.9 µs per tell where the sss server spent 2.6.
fn raw_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(4096)
}

/// The baseline's whole per-connection work: read a message, write it back (a tell, which
/// has no answer, is read and dropped).
async fn echo_conn(tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(raw_ws_config())).await
    else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if msg.to_text().is_ok_and(|t| t.starts_with(r#"{"t":"tell""#)) {
            continue;
        }
        if msg.is_text() || msg.is_binary() {
            if ws.send(msg).await.is_err() {
                break;
            }
        } else if msg.is_close() {
            break;
        }
    }
}

/// The raw fan-out server's subscribers: each connection's outbound queue.
type Subscribers = Arc<Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Utf8Bytes>>>>;

/// The fan-out floor: what any fan-out server must do and nothing else. It answers `hello`
/// with a fixed `welcome`, a `sub` with a `subok` at the current seq (one channel, whatever
/// its name), and an ask `publish` by encoding one `pub` frame, handing the same bytes to every
/// subscriber's queue, and answering the seq. No auth, no history, no heartbeat, no limits.
async fn fanout_instance() -> Result<Instance> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let subscribers: Subscribers = Arc::default();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            tokio::spawn(fanout_conn(tcp, subscribers.clone(), seq.clone()));
        }
    });
    Ok(Instance { addr, killer: None })
}

/// The envelope of a client frame, as the raw fan-out server reads it.
#[derive(Deserialize)]
struct RawFrame<'a> {
    t: &'a str,
    #[serde(default)]
    id: u64,
    #[serde(default, borrow)]
    msg: Option<&'a RawValue>,
}

async fn fanout_conn(
    tcp: TcpStream,
    subscribers: Subscribers,
    seq: Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    let _ = tcp.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(raw_ws_config())).await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Utf8Bytes>();
    // Writes what is queued in one flush, as the sss server does.
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 64).await > 0 {
            for frame in batch.drain(..) {
                if sink.feed(Message::Text(frame)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Ok(text) = msg.to_text() else { continue };
        let Ok(f) = serde_json::from_str::<RawFrame>(text) else {
            continue;
        };
        let reply = match f.t {
            "hello" => r#"{"t":"welcome","v":1,"socket":"raw","hb":25000}"#.to_owned(),
            "sub" => {
                subscribers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(tx.clone());
                let s = seq.load(Ordering::SeqCst);
                format!(
                    r#"{{"t":"subok","id":{},"ch":"fan","pos":{{"e":"raw","s":{s}}}}}"#,
                    f.id
                )
            }
            "ask" => {
                let Some(req) = f
                    .msg
                    .and_then(|m| serde_json::from_str::<PublishReq>(m.get()).ok())
                else {
                    continue;
                };
                // The lock orders the seq with the hand-out: subscribers get seqs in order.
                let subs = subscribers.lock().unwrap_or_else(|e| e.into_inner());
                let s = seq.fetch_add(1, Ordering::SeqCst) + 1;
                let frame = Utf8Bytes::from(format!(
                    r#"{{"t":"pub","ch":"{}","topic":"m","pos":{{"e":"raw","s":{s}}},"msg":{}}}"#,
                    req.ch,
                    req.msg.get()
                ));
                for sub in subs.iter() {
                    let _ = sub.send(frame.clone());
                }
                drop(subs);
                format!(r#"{{"t":"res","id":{},"msg":{s}}}"#, f.id)
            }
            _ => continue,
        };
        if tx.send(Utf8Bytes::from(reply)).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
