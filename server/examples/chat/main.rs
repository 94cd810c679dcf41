//! The demo: a chat server on the embedded scaler, serving a small web app that uses the
//! `super-scaled-sockets` npm package (the WASM client) from plain JS.
//!
//! Run it with `scripts/demo.sh` (which builds the package first), or, once `pkg/dist` exists:
//! `cargo run -p sss-server --example chat -- [--addr 127.0.0.1:8080] [--origin URL]...`.
//!
//! - Log in with a name: the page sets a cookie `sss_user` the session parser reads; a program
//!   (Node, Rust) sends the name as its token instead, in the protocol's `hello`
//!   (`{ auth: "ann" }` in JS, `Options::default().auth(json!("ann"))` in Rust). No cookie and
//!   no token: no socket. The demo trusts the name, as it trusts the cookie; a real application
//!   verifies a signed token here.
//! - Rooms are channels: `room:lobby`, `room:rust`, `room:random`, and `room:secret`, which the
//!   subscription parser opens only with the password `letmein`.
//! - Every room has presence: the page lists who is in it (each user's `info` is their name)
//!   and shows who joins and leaves.
//! - Messages go by ask (`say`), "typing" notices by tell (`typing`), direct messages by ask
//!   (`dm`) into the recipient's user channel `#user:<name>`.
//! - Sockets are accepted only from the page's own origin (`http://<addr>`, and
//!   `http://localhost:<port>` on loopback): the session is a cookie, which a browser would send
//!   with an upgrade opened by any other site too. Add origins the browser uses to reach it
//!   (another host name, a proxy in front) with `--origin URL` or `SSS_DEMO_ORIGINS=URL,URL`.
//! - Operators' endpoints: `/metrics` (Prometheus), `/healthz`, `/readyz`. One instance answers
//!   them on its own port (`http://127.0.0.1:8080/metrics`); in the cluster each instance serves
//!   them on a port of its own (printed at start), since the proxy would pick one at random.
//!   Logs: `RUST_LOG=info,sss_server=debug` follows every handshake, ask and subscription.
//! - Worker mode (`--redis URL --workers M`): the instances hand `say`, `dm` and `typing` to
//!   M worker processes (`chat --worker --redis URL`, which it starts; more can be started by
//!   hand) through Redis, and run only sessions, subscriptions and the web app themselves.
//!   `scripts/demo.sh --cluster --workers 2` runs it all.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use sss_server::{
    Body, Grant, MemoryScaler, Refusal, Rejection, Scaler, Server, ServerOptions, Session, Socket,
};
use tokio::net::TcpListener;

const ROOMS: [&str; 4] = ["room:lobby", "room:rust", "room:random", "room:secret"];
const SECRET_PASSWORD: &str = "letmein";

#[derive(Deserialize)]
struct Say {
    room: String,
    text: String,
}

#[derive(Deserialize)]
struct Dm {
    to: String,
    text: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn valid_name(name: &str) -> bool {
    (1..=24).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn user_of(socket: &Socket) -> Result<String, Rejection> {
    socket
        .user()
        .map(str::to_owned)
        .ok_or_else(|| Rejection::refused("log in first"))
}

fn check_text(text: &str) -> Result<(), Rejection> {
    if text.trim().is_empty() || text.len() > 2000 {
        return Err(Rejection::new(
            "bad_message",
            "messages are 1 to 2000 bytes",
        ));
    }
    Ok(())
}

fn scaler_error(e: sss_server::ServerError) -> Rejection {
    Rejection::new(sss_server::codes::UNAVAILABLE, e.to_string())
}

/// A gateway (or the one instance): sessions, subscriptions, the web app. Its asks and tells
/// are added by [`handlers`], or routed to workers.
fn build(
    scaler: impl Scaler,
    web: PathBuf,
    pkg: PathBuf,
    origins: &[String],
    observability_endpoints: bool,
) -> sss_server::ServerBuilder {
    let options = ServerOptions::default()
        .allowed_origins(origins)
        .observability_endpoints(observability_endpoints);
    Server::builder(scaler)
        .options(options)
        .session_parser(|req| async move {
            let token: Option<String> = req.auth_as();
            let user = match (token.as_deref(), req.cookie("sss_user")) {
                (Some(token), _) => Some(token),
                (None, cookie) => cookie,
            };
            let user = user
                .filter(|u| valid_name(u))
                .ok_or_else(|| Refusal::unauthorized("log in first"))?;
            let session = req.cookie("sss_session").unwrap_or(user).to_owned();
            // What the other members of a room see of this user.
            Session::user(user)
                .with_session(session)
                .with_info(&json!({ "name": user }))
                .map_err(|e| Refusal::unauthorized(e.to_string()))
        })
        .subscription_parser(|_socket, channel, query| async move {
            if !ROOMS.contains(&channel.as_str()) {
                return Err(Rejection::new("no_such_room", format!("no room {channel}")));
            }
            if channel == "room:secret" {
                let password = query
                    .as_deref()
                    .and_then(|q| serde_json::from_str::<serde_json::Value>(q.get()).ok())
                    .and_then(|q| {
                        q.get("password")
                            .and_then(|p| p.as_str())
                            .map(str::to_owned)
                    });
                if password.as_deref() != Some(SECRET_PASSWORD) {
                    return Err(Rejection::refused("wrong password"));
                }
            }
            // Every room shows who is in it.
            Ok(Grant::with_presence())
        })
        .http_fallback(move |req| {
            let (web, pkg) = (web.clone(), pkg.clone());
            async move { serve_http(req, &web, &pkg).await }
        })
}

/// The chat's asks and tells: on the instances themselves, or on workers (`--worker`).
fn handlers(builder: sss_server::ServerBuilder) -> sss_server::ServerBuilder {
    builder
        .on_ask("say", |socket: Socket, say: Say| async move {
            let from = user_of(&socket)?;
            check_text(&say.text)?;
            if !ROOMS.contains(&say.room.as_str()) {
                return Err(Rejection::new("no_such_room", say.room));
            }
            let server = socket_server(&socket)?;
            let msg = json!({ "from": from, "text": say.text, "at": now_ms() });
            let pos = server
                .publish(&say.room, "msg", &msg)
                .await
                .map_err(scaler_error)?;
            Ok(pos.seq)
        })
        .on_ask("dm", |socket: Socket, dm: Dm| async move {
            let from = user_of(&socket)?;
            check_text(&dm.text)?;
            if !valid_name(&dm.to) {
                return Err(Rejection::new("bad_user", "no such user name"));
            }
            let server = socket_server(&socket)?;
            let msg = json!({ "from": from, "to": dm.to, "text": dm.text, "at": now_ms() });
            for user in [&dm.to, &from] {
                let channel = sss_server::user_channel(user);
                server
                    .publish(&channel, "dm", &msg)
                    .await
                    .map_err(scaler_error)?;
            }
            Ok(())
        })
        .on_tell("typing", |socket: Socket, room: String| async move {
            let (Ok(from), Ok(server)) = (user_of(&socket), socket_server(&socket)) else {
                return;
            };
            if ROOMS.contains(&room.as_str()) {
                let _ = server
                    .broadcast("typing", &json!({ "room": room, "from": from }))
                    .await;
            }
        })
}

fn socket_server(socket: &Socket) -> Result<Server, Rejection> {
    socket
        .server()
        .ok_or_else(|| Rejection::new(sss_server::codes::UNAVAILABLE, "shutting down"))
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// Resolves a URL path under `root`, refusing anything that would leave it.
fn safe_join(root: &Path, url_path: &str) -> Option<PathBuf> {
    let rel = Path::new(url_path.trim_start_matches('/'));
    if rel.components().all(|c| matches!(c, Component::Normal(_))) {
        Some(root.join(rel))
    } else {
        None
    }
}

async fn serve_http(req: Request<Incoming>, web: &Path, pkg: &Path) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/login" {
        let name = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("name=")))
            .unwrap_or("");
        if !valid_name(name) {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                "names are 1 to 24 letters, digits, _ or -",
            );
        }
        let session = format!("{name}-{:x}", now_ms());
        let mut res = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
        let h = res.headers_mut();
        h.insert(header::LOCATION, HeaderValue::from_static("/"));
        for cookie in [format!("sss_user={name}"), format!("sss_session={session}")] {
            if let Ok(v) = HeaderValue::from_str(&format!("{cookie}; Path=/; SameSite=Strict")) {
                h.append(header::SET_COOKIE, v);
            }
        }
        return res;
    }
    let file = match path.strip_prefix("/pkg/") {
        Some(rest) => safe_join(pkg, rest),
        None if path == "/" => Some(web.join("index.html")),
        None => safe_join(web, &path),
    };
    let Some(file) = file else {
        return respond(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "bad path",
        );
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => respond(StatusCode::OK, content_type(&file), bytes),
        Err(_) => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found",
        ),
    }
}

struct Args {
    addr: Option<String>,
    origins: Vec<String>,
    redis: Option<String>,
    /// Nodes of a Redis Cluster, instead of `redis`.
    redis_cluster: Vec<String>,
    instances: usize,
    /// Worker processes to start, and route the chat's asks and tells to.
    workers: usize,
    /// Run a worker instead of a server.
    worker: bool,
}

const USAGE: &str = "usage: chat [--addr HOST:PORT] [--origin URL]... \
     [--redis URL [--instances N] [--workers M] | --redis-cluster URL,URL.. [--instances N]] \
     | chat --worker --redis URL";

/// The topics the chat's instances hand to workers with `--workers`.
#[cfg(feature = "redis")]
const WORKER_ASKS: [&str; 2] = ["say", "dm"];
#[cfg(feature = "redis")]
const WORKER_TELLS: [&str; 1] = ["typing"];

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        addr: None,
        origins: Vec::new(),
        redis: None,
        redis_cluster: Vec::new(),
        instances: 1,
        workers: 0,
        worker: false,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value; {USAGE}"));
        match arg.as_str() {
            "--addr" => parsed.addr = Some(value()?),
            "--origin" => parsed.origins.push(value()?),
            "--redis" => parsed.redis = Some(value()?),
            "--redis-cluster" => {
                parsed.redis_cluster = value()?.split(',').map(str::to_owned).collect()
            }
            "--instances" => {
                parsed.instances = value()?.parse().map_err(|e| format!("--instances: {e}"))?
            }
            "--workers" => {
                parsed.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?
            }
            "--worker" => parsed.worker = true,
            other => return Err(format!("unknown argument {other}; {USAGE}")),
        }
    }
    let joined = parsed.redis.is_some() || !parsed.redis_cluster.is_empty();
    if parsed.instances == 0 || (parsed.instances > 1 && !joined) {
        return Err(format!(
            "several instances need --redis or --redis-cluster; {USAGE}"
        ));
    }
    if parsed.redis.is_some() && !parsed.redis_cluster.is_empty() {
        return Err(format!("--redis or --redis-cluster, not both; {USAGE}"));
    }
    if (parsed.worker || parsed.workers > 0) && parsed.redis.is_none() {
        return Err(format!("workers need --redis; {USAGE}"));
    }
    Ok(parsed)
}

/// The front port: the one asked for, else 8080 if free, else any free one.
async fn bind_front(addr: Option<&str>) -> std::io::Result<TcpListener> {
    match addr {
        Some(a) => TcpListener::bind(a).await,
        None => match TcpListener::bind("127.0.0.1:8080").await {
            Ok(l) => Ok(l),
            Err(_) => TcpListener::bind("127.0.0.1:0").await,
        },
    }
}

/// The origins the page is served from, whose sockets are accepted: the front address, its
/// `localhost` name on loopback, and those given with `--origin` or `SSS_DEMO_ORIGINS`. In the
/// cluster the browser talks to the proxy, which listens on the front address too.
fn page_origins(front: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut origins = Vec::new();
    if !front.ip().is_unspecified() {
        origins.push(format!("http://{front}"));
    }
    if front.ip().is_loopback() {
        origins.push(format!("http://localhost:{}", front.port()));
    }
    origins.extend(extra.iter().cloned());
    if let Ok(env) = std::env::var("SSS_DEMO_ORIGINS") {
        origins.extend(
            env.split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned),
        );
    }
    origins
}

/// A tiny round-robin TCP proxy, standing in for a load balancer (no sticky sessions).
async fn proxy(front: TcpListener, backends: Vec<SocketAddr>) {
    let mut next = 0;
    while let Ok((mut inbound, _)) = front.accept().await {
        let backend = backends[next % backends.len()];
        next += 1;
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[cfg(feature = "redis")]
async fn redis_scaler(
    url: &str,
) -> Result<sss_server::scaler::RedisScaler, sss_server::scaler::ScalerError> {
    sss_server::scaler::RedisScaler::connect(url, sss_server::scaler::RedisOptions::default()).await
}

/// Runs one worker: the chat's handlers, fed by the instances through Redis, until Ctrl-C.
#[cfg(feature = "redis")]
async fn work(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    use sss_server::worker::{Worker, WorkerOptions};
    let server = handlers(Server::builder(redis_scaler(url).await?))
        .build()
        .await?;
    let worker = Worker::start(&server, url, WorkerOptions::default()).await?;
    println!("chat worker {} ready", server.instance_id());
    stopped().await?;
    worker.stop(Duration::from_secs(5)).await;
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

/// Starts `n` worker processes (this program with `--worker`) and waits until each is ready.
/// They stop with this process (or with the Ctrl-C that reaches its whole process group).
#[cfg(feature = "redis")]
async fn spawn_workers(
    n: usize,
    url: &str,
) -> Result<Vec<tokio::process::Child>, Box<dyn std::error::Error>> {
    use tokio::io::AsyncBufReadExt;
    let mut children = Vec::new();
    for _ in 0..n {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["--worker", "--redis", url])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let ready = tokio::io::BufReader::new(stdout)
            .lines()
            .next_line()
            .await?;
        println!("{}", ready.ok_or("a worker exited before it was ready")?);
        children.push(child);
    }
    Ok(children)
}

/// The chat's asks and tells, in process or routed to workers.
fn route(builder: sss_server::ServerBuilder, args: &Args) -> sss_server::ServerBuilder {
    #[cfg(feature = "redis")]
    if let (true, Some(url)) = (args.workers > 0, &args.redis) {
        use sss_server::worker::{Gateway, WorkerOptions};
        let gateway = Gateway::new(url.clone(), WorkerOptions::default())
            .asks(WORKER_ASKS)
            .tells(WORKER_TELLS);
        return builder.gateway(gateway);
    }
    let _ = args;
    handlers(builder)
}

/// Waits for Ctrl-C or SIGTERM (what a test harness or a service manager sends), so that the
/// demo shuts down gracefully and its worker processes go with it.
async fn stopped() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = parse_args()?;
    #[cfg(feature = "redis")]
    if let (true, Some(url)) = (args.worker, &args.redis) {
        return work(url).await;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let web = root.join("examples/chat/web");
    // The package's ES module (its .wasm inlined) is served as /pkg/sss.js.
    let pkg = root.join("../pkg/dist");
    if !pkg.join("sss.js").exists() {
        tracing::warn!("pkg/dist is missing: build the package with scripts/build-pkg.sh");
    }
    let front = bind_front(args.addr.as_deref()).await?;
    let local: SocketAddr = front.local_addr()?;
    let origins = page_origins(local, &args.origins);
    if local.ip().is_unspecified() && args.origins.is_empty() {
        tracing::warn!(
            "listening on all interfaces: pass --origin http://HOST:{} for each name browsers use, \
             or their sockets are refused",
            local.port()
        );
    }
    tracing::info!(?origins, "sockets accepted from these origins");
    #[cfg(feature = "redis")]
    let _workers = match &args.redis {
        Some(url) => spawn_workers(args.workers, url).await?,
        None => Vec::new(),
    };
    let mut servers = Vec::new();
    match &args.redis {
        #[cfg(feature = "redis")]
        None if !args.redis_cluster.is_empty() => {
            for _ in 0..args.instances {
                let scaler = sss_server::scaler::RedisScaler::connect_cluster(
                    &args.redis_cluster,
                    sss_server::scaler::RedisOptions::default(),
                )
                .await?;
                let builder = build(scaler, web.clone(), pkg.clone(), &origins, false);
                servers.push(route(builder, &args).build().await?);
            }
        }
        #[cfg(not(feature = "redis"))]
        None if !args.redis_cluster.is_empty() => {
            return Err("--redis-cluster needs the example built with --features redis".into())
        }
        None => servers.push(
            route(
                build(MemoryScaler::default(), web, pkg, &origins, true),
                &args,
            )
            .build()
            .await?,
        ),
        #[cfg(feature = "redis")]
        Some(url) => {
            for _ in 0..args.instances {
                let scaler = redis_scaler(url).await?;
                let builder = build(scaler, web.clone(), pkg.clone(), &origins, false);
                servers.push(route(builder, &args).build().await?);
            }
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => return Err("--redis needs the example built with --features redis".into()),
    }
    let mut listenings = Vec::new();
    if let [server] = servers.as_slice() {
        listenings.push(server.listen_on(front)?);
        println!("metrics, health: http://{local}/metrics /healthz /readyz");
    } else {
        let mut backends = Vec::new();
        for server in &servers {
            let l = server.listen("127.0.0.1:0").await?;
            let ops = server.listen_observability("127.0.0.1:0").await?;
            println!(
                "instance {}: metrics, health: http://{}/metrics /healthz /readyz",
                l.local_addr(),
                ops.local_addr()
            );
            backends.push(l.local_addr());
            listenings.extend([l, ops]);
        }
        println!(
            "{} instances on {backends:?}, joined by Redis, behind a round-robin proxy",
            servers.len()
        );
        tokio::spawn(proxy(front, backends));
    }
    println!("Super Scaled Sockets chat demo: open http://{local}/ in a browser (Ctrl-C stops it)");
    stopped().await?;
    for server in &servers {
        server.shutdown(Duration::from_secs(2)).await;
    }
    Ok(())
}
