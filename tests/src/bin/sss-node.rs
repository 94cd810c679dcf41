//! One server instance as its own process, for the multi-instance tests: an `sss-server` on a
//! Redis scaler, accepting every subscription, with an ask that publishes.
//!
//! Usage: `sss-node --redis URL [--addr HOST:PORT] [--history N] [--prefix P]`. Prints
//! `listening on HOST:PORT` on stdout once it accepts connections; stops on SIGTERM or when
//! killed.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use sss_server::scaler::{RedisOptions, RedisScaler};
use sss_server::{Rejection, Server};

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
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:0".into(),
        redis: String::new(),
        history: 1000,
        prefix: "sss".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => a.addr = value,
            "--redis" => a.redis = value,
            "--history" => a.history = value.parse().map_err(|e| format!("--history: {e}"))?,
            "--prefix" => a.prefix = value,
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
            ..RedisOptions::default()
        },
    )
    .await?;
    let server = Server::builder(scaler)
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
