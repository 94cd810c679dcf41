//! One server instance as its own process, for the multi-instance tests: an `sss-server` on a
//! Redis scaler, accepting every subscription (with presence on `room:` channels), with an ask
//! that publishes. `?user=NAME` on the socket's URL gives it a user id (and `{"name": NAME}` as
//! its presence info).
//!
//! Usage: `sss-node --redis URL [--addr HOST:PORT] [--history N] [--prefix P]
//! [--presence-ttl-ms MS]`. Prints
//! `listening on HOST:PORT` on stdout once it accepts connections; stops on SIGTERM or when
//! killed.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use sss_server::scaler::{RedisOptions, RedisScaler};
use sss_server::{Rejection, Server, ServerOptions, Session};

#[derive(Deserialize)]
struct Publish {
    channel: String,
    topic: String,
    msg: Box<RawValue>,
}

struct Args {
    addr: String,
    redis: String,
    history: usize,
    prefix: String,
    presence_ttl: Duration,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:0".into(),
        redis: String::new(),
        history: 1000,
        prefix: "sss".into(),
        presence_ttl: RedisOptions::default().presence_ttl,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => a.addr = value,
            "--redis" => a.redis = value,
            "--history" => a.history = value.parse().map_err(|e| format!("--history: {e}"))?,
            "--prefix" => a.prefix = value,
            "--presence-ttl-ms" => {
                let ms = value
                    .parse()
                    .map_err(|e| format!("--presence-ttl-ms: {e}"))?;
                a.presence_ttl = Duration::from_millis(ms);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.redis.is_empty() {
        return Err("--redis URL is required".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = args()?;
    let scaler = RedisScaler::connect(
        &args.redis,
        RedisOptions {
            history_size: args.history,
            prefix: args.prefix,
            presence_ttl: args.presence_ttl,
            ..RedisOptions::default()
        },
    )
    .await?;
    let server = Server::builder(scaler)
        .options(ServerOptions::default().presence_prefixes(["room:"]))
        .session_parser(|req| async move {
            Ok(match req.query.get("user") {
                Some(user) => Session::user(user.clone())
                    .with_info(&serde_json::json!({ "name": user }))
                    .map_err(|e| sss_server::Refusal::unauthorized(e.to_string()))?,
                None => Session::anonymous(),
            })
        })
        .on_ask("publish", |socket, p: Publish| async move {
            let server = socket
                .server()
                .ok_or_else(|| Rejection::new("unavailable", "stopping"))?;
            let pos = server
                .publish(&p.channel, &p.topic, &p.msg)
                .await
                .map_err(|e| Rejection::new("unavailable", e.to_string()))?;
            Ok::<_, Rejection>(pos)
        })
        .on_ask("instance", |socket, ()| async move {
            Ok::<_, Rejection>(socket.server().map(|s| s.instance_id().to_owned()))
        })
        .build()
        .await?;
    let listening = server.listen(&args.addr).await?;
    println!("listening on {}", listening.local_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    server.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
