//! The server the browser tests run against (`scripts/test-browser.sh` starts it).
//!
//! An sss-server on the embedded MemoryScaler, listening on a free loopback port (or
//! `--port N`), with handlers the wasm and JS tests exercise:
//!
//! | ask / tell            | what it does                                                        |
//! |-----------------------|---------------------------------------------------------------------|
//! | ask `echo`            | answers its message                                                 |
//! | ask `add` `[a, b]`    | answers `a + b`                                                     |
//! | ask `fail`            | refuses with the application code `app_error`                       |
//! | ask `never`           | never answers (ask timeouts)                                        |
//! | ask `publish` `{channel, count, topic?}` | publishes `1..=count` on `channel` (from another instance of the hub), answers the last seq |
//! | ask `restart` `{channel?, count?, downMs?}` | answers, then shuts the listener down (`Server::shutdown`), publishes `count` messages on `channel` while it is down, and listens again on the same port |
//! | ask `boot`            | boots the asking socket's channel given as message                  |
//! | tell `ping`           | tells `pong` back to the socket, with the same message              |
//!
//! The subscription parser refuses channels starting with `private:` (code `refused`) and any
//! query `{"deny": true}`; `room:` channels have presence, others not. The session parser
//! refuses `?deny=1` (`unauthorized`), takes a token `"tok-NAME"` in the `hello`'s `auth` as user
//! NAME (any other token: `unauthorized`, "bad token"), gives `?user=NAME` a user id, and
//! `?name=TEXT` the presence info `{"name": TEXT}`.
//!
//! Plain HTTP requests get files from the repository (only under `/pkg/` and `/tests/browser/`),
//! so the npm package's page is served from the same origin as the socket.
//!
//! Prints `LISTENING http://127.0.0.1:PORT` on stdout once it accepts connections, then runs
//! until killed.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use sss_server::{
    Body, Listening, MemoryScaler, Refusal, Rejection, Server, ServerBuilder, ServerOptions,
    Session,
};
use tokio::sync::Mutex;

/// Everything the handlers share.
struct Ctx {
    hub: MemoryScaler,
    /// Another instance of the same hub: publishes, and stays up across restarts.
    publisher: Server,
    addr: SocketAddr,
    root: PathBuf,
    /// The serving instance and its listener (taken during a restart).
    current: Mutex<Option<(Server, Listening)>>,
}

#[derive(Deserialize)]
struct PublishReq {
    channel: String,
    count: u64,
    #[serde(default = "default_topic")]
    topic: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RestartReq {
    channel: Option<String>,
    #[serde(default)]
    count: u64,
    #[serde(default)]
    down_ms: u64,
}

fn default_topic() -> String {
    "n".to_owned()
}

fn internal(e: impl std::fmt::Display) -> Rejection {
    Rejection::new("internal", e.to_string())
}

fn builder(ctx: &Arc<Ctx>) -> ServerBuilder {
    let publish_ctx = ctx.clone();
    let restart_ctx = ctx.clone();
    let files_ctx = ctx.clone();
    Server::builder(ctx.hub.instance())
        .options(ServerOptions::default().presence_prefixes(["room:"]))
        .session_parser(|req| async move {
            if req.query.get("deny").is_some_and(|v| v == "1") {
                return Err(Refusal::unauthorized("denied by the test server"));
            }
            // A token `tok-<user>` in the hello's auth; any other token is refused.
            let token = match req.auth() {
                None => None,
                Some(_) => Some(
                    req.auth_as::<String>()
                        .and_then(|t| t.strip_prefix("tok-").map(str::to_owned))
                        .ok_or_else(|| Refusal::unauthorized("bad token"))?,
                ),
            };
            let session = match token.or_else(|| req.query.get("user").cloned()) {
                Some(user) => Session::user(user),
                None => Session::anonymous(),
            };
            match req.query.get("name") {
                Some(name) => session
                    .with_info(&serde_json::json!({ "name": name }))
                    .map_err(|e| Refusal::forbidden(e.to_string())),
                None => Ok(session),
            }
        })
        .subscription_parser(|_socket, channel, query| async move {
            if channel.starts_with("private:") {
                return Err(Rejection::refused("private channel"));
            }
            let deny = query
                .and_then(|q| serde_json::from_str::<Value>(q.get()).ok())
                .is_some_and(|q| q.get("deny") == Some(&Value::Bool(true)));
            if deny {
                return Err(Rejection::refused("the query says deny"));
            }
            Ok(())
        })
        .on_ask(
            "echo",
            |_s, msg: Value| async move { Ok::<_, Rejection>(msg) },
        )
        .on_ask("add", |_s, (a, b): (f64, f64)| async move {
            Ok::<_, Rejection>(a + b)
        })
        .on_ask("fail", |_s, _msg: Value| async move {
            Err::<Value, _>(Rejection::new("app_error", "this ask always fails"))
        })
        .on_ask("never", |_s, _msg: Value| async move {
            std::future::pending::<()>().await;
            Ok::<Value, Rejection>(Value::Null)
        })
        .on_ask("publish", move |_s, req: PublishReq| {
            let ctx = publish_ctx.clone();
            async move {
                let mut last = 0;
                for n in 1..=req.count {
                    let pos = (ctx.publisher)
                        .publish(&req.channel, &req.topic, &n)
                        .await
                        .map_err(internal)?;
                    last = pos.seq;
                }
                Ok::<_, Rejection>(last)
            }
        })
        .on_ask("restart", move |_s, req: Option<RestartReq>| {
            let ctx = restart_ctx.clone();
            async move {
                let req = req.unwrap_or_default();
                let Some((server, listening)) = ctx.current.lock().await.take() else {
                    return Err(Rejection::new("busy", "already restarting"));
                };
                tokio::spawn(restart(ctx, server, listening, req));
                Ok::<_, Rejection>(true)
            }
        })
        .on_tell("ping", |socket, msg: Value| async move {
            let _ = socket.tell("pong", &msg);
        })
        .http_fallback(move |req| {
            let root = files_ctx.root.clone();
            let res = serve_file(&root, req.uri().path());
            async move { res }
        })
}

/// Shuts the serving instance down, publishes while it is down, and listens again on the same
/// port with a new instance of the same hub.
async fn restart(ctx: Arc<Ctx>, server: Server, listening: Listening, req: RestartReq) {
    // Let the `restart` answer reach the client before its socket is closed.
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown(Duration::from_secs(5)).await;
    listening.stopped().await;
    if let Some(channel) = &req.channel {
        for n in 1..=req.count {
            if let Err(e) = ctx.publisher.publish(channel, "down", &n).await {
                eprintln!("browser-test-server: publish while down failed: {e}");
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(req.down_ms)).await;
    match serve(&ctx).await {
        Ok(up) => *ctx.current.lock().await = Some(up),
        Err(e) => {
            eprintln!(
                "browser-test-server: cannot listen again on {}: {e}",
                ctx.addr
            );
            std::process::exit(1);
        }
    }
}

async fn serve(ctx: &Arc<Ctx>) -> std::io::Result<(Server, Listening)> {
    let server = builder(ctx).build().await.map_err(std::io::Error::other)?;
    let mut tries = 0;
    loop {
        match server.listen(ctx.addr).await {
            Ok(listening) => return Ok((server, listening)),
            Err(e) if tries < 50 && e.kind() == std::io::ErrorKind::AddrInUse => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Body> {
    let mut res = http::Response::new(Body::new(body.into()));
    *res.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        res.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    res
}

/// A file under `root`, for paths under `/pkg/` and `/tests/browser/` only.
fn serve_file(root: &Path, path: &str) -> http::Response<Body> {
    let path = if path == "/" {
        "/tests/browser/index.html"
    } else {
        path
    };
    let rel = Path::new(path.trim_start_matches('/'));
    let allowed = rel.starts_with("pkg") || rel.starts_with("tests/browser");
    let clean = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !allowed || !clean {
        return response(404, "text/plain", b"not found".to_vec());
    }
    let ext = rel.extension().and_then(|e| e.to_str()).unwrap_or("");
    let content_type = match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "json" | "map" => "application/json",
        "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    match std::fs::read(root.join(rel)) {
        Ok(body) => response(200, content_type, body),
        Err(_) => response(404, "text/plain", b"not found".to_vec()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    sss_tests::init_tracing();
    let mut port = 0u16;
    let mut root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--port", Some(p)) => port = p.parse().map_err(std::io::Error::other)?,
            ("--root", Some(r)) => root = PathBuf::from(r),
            _ => {
                eprintln!("usage: browser-test-server [--port N] [--root DIR]");
                std::process::exit(2);
            }
        }
    }
    let hub = MemoryScaler::default();
    let publisher = Server::builder(hub.instance())
        .build()
        .await
        .map_err(std::io::Error::other)?;
    // Bind once to learn the port, then let `serve` bind it for real (and again on restarts).
    let addr = {
        let probe = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        probe.local_addr()?
    };
    let ctx = Arc::new(Ctx {
        hub,
        publisher,
        addr,
        root,
        current: Mutex::new(None),
    });
    let up = serve(&ctx).await?;
    *ctx.current.lock().await = Some(up);
    println!("LISTENING http://{addr}");

    // Run until killed (the test script does that on exit).
    std::future::pending::<()>().await;
    Ok(())
}
