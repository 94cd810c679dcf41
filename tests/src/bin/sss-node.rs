//! One server instance as its own process, for the multi-instance tests: an `sss-server` on a
//! Redis scaler, accepting every subscription (with presence on `room:` channels), with an ask
//! that publishes. `?user=NAME` on the socket's URL gives it a user id (and `{"name": NAME}` as
//! its presence info).
//!
//! Worker mode: `--gateway-asks a,b` and `--gateway-tells c` route those topics to workers;
//! `--worker` runs a worker instead of listening (prints `worker ready INSTANCE`), with an ask
//! `work` (`{"n":N,"ms":MS}`: waits MS, answers `{"n":N,"worker":INSTANCE}`), an ask `boom`
//! that panics, and a tell `note` that tells the socket `noted` with the same message.
//!
//! `--redis-cluster URL,URL,..` runs on a Redis Cluster instead of `--redis URL` (not with
//! worker mode).
//!
//! Usage: `sss-node --redis URL [--addr HOST:PORT] [--history N] [--prefix P]
//! [--presence-ttl-ms MS] [--gateway-asks T,..] [--gateway-tells T,..] [--ask-timeout-ms MS]
//! [--worker] [--claim-idle-ms MS]`. Prints
//! `listening on HOST:PORT` on stdout once it accepts connections; stops on SIGTERM or when
//! killed.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use sss_server::scaler::{RedisOptions, RedisScaler};
use sss_server::worker::{Gateway, Worker, WorkerOptions};
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
    redis_cluster: Vec<String>,
    history: usize,
    prefix: String,
    presence_ttl: Duration,
    gateway_asks: Vec<String>,
    gateway_tells: Vec<String>,
    worker: bool,
    workers: WorkerOptions,
}

#[derive(Deserialize)]
struct Work {
    n: u64,
    ms: u64,
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn ms(flag: &str, v: &str) -> Result<Duration, String> {
    v.parse()
        .map(Duration::from_millis)
        .map_err(|e| format!("{flag}: {e}"))
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:0".into(),
        redis: String::new(),
        redis_cluster: Vec::new(),
        history: 1000,
        prefix: "sss".into(),
        presence_ttl: RedisOptions::default().presence_ttl,
        gateway_asks: Vec::new(),
        gateway_tells: Vec::new(),
        worker: false,
        workers: WorkerOptions::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--worker" {
            a.worker = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => a.addr = value,
            "--redis" => a.redis = value,
            "--redis-cluster" => a.redis_cluster = list(&value),
            "--history" => a.history = value.parse().map_err(|e| format!("--history: {e}"))?,
            "--prefix" => a.prefix = value,
            "--presence-ttl-ms" => {
                let ms = value
                    .parse()
                    .map_err(|e| format!("--presence-ttl-ms: {e}"))?;
                a.presence_ttl = Duration::from_millis(ms);
            }
            "--gateway-asks" => a.gateway_asks = list(&value),
            "--gateway-tells" => a.gateway_tells = list(&value),
            "--ask-timeout-ms" => a.workers.ask_timeout = ms(&flag, &value)?,
            "--claim-idle-ms" => a.workers.claim_idle = ms(&flag, &value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.redis.is_empty() == a.redis_cluster.is_empty() {
        return Err("one of --redis URL and --redis-cluster URL,.. is required".into());
    }
    if !a.redis_cluster.is_empty()
        && (a.worker || !a.gateway_asks.is_empty() || !a.gateway_tells.is_empty())
    {
        return Err("worker mode needs --redis".into());
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
    let opts = RedisOptions {
        history_size: args.history,
        presence_ttl: args.presence_ttl,
        prefix: args.prefix.clone(),
        ..RedisOptions::default()
    };
    let scaler = if args.redis_cluster.is_empty() {
        RedisScaler::connect(&args.redis, opts).await?
    } else {
        RedisScaler::connect_cluster(&args.redis_cluster, opts).await?
    };
    let workers = WorkerOptions {
        prefix: args.prefix.clone(),
        ..args.workers.clone()
    };
    if args.worker {
        return work(scaler, &args.redis, workers).await;
    }
    let mut builder = Server::builder(scaler);
    if !args.gateway_asks.is_empty() || !args.gateway_tells.is_empty() {
        let gateway = Gateway::new(args.redis.clone(), workers)
            .asks(args.gateway_asks.clone())
            .tells(args.gateway_tells.clone());
        builder = builder.gateway(gateway);
    }
    let server = builder
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

/// Runs a worker until SIGTERM (or SIGKILL).
async fn work(
    scaler: RedisScaler,
    redis: &str,
    opts: WorkerOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder(scaler)
        .on_ask("work", |socket, w: Work| async move {
            tokio::time::sleep(Duration::from_millis(w.ms)).await;
            let worker = socket.server().map(|s| s.instance_id().to_owned());
            Ok::<_, Rejection>(serde_json::json!({ "n": w.n, "worker": worker }))
        })
        .on_ask("boom", |_socket, (): ()| async move {
            if true {
                panic!("a handler bug");
            }
            Ok::<_, Rejection>(())
        })
        .on_tell("note", |socket, n: Box<RawValue>| async move {
            let _ = socket.tell("noted", &n);
        })
        .build()
        .await?;
    let worker = Worker::start(&server, redis, opts).await?;
    println!("worker ready {}", server.instance_id());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    worker.stop(Duration::from_secs(5)).await;
    Ok(())
}
