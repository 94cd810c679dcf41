//! `presence`: M sockets join one channel's presence at once, then leave at once; a watcher
//! subscribed with presence events counts the joins and leaves. Reports the time from the first
//! `sub` to the last join event (and from the first close to the last leave event) and, over
//! Redis, the Redis commands it took: what presence costs per member.

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::child::{cluster_prefix, ServerProc, Spec};
use crate::opts::{Opts, ScalerOpt};
use crate::serve::Kind;
use crate::wire::{self, In, Ws};
use crate::Result;

/// The channel; the bench server grants presence to every channel named `presence:...`.
const CHANNEL: &str = "presence:bench";

/// Redis counters read before and after each phase.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RedisCounts {
    /// Commands processed, those run by scripts included.
    pub(crate) commands: u64,
    /// Script calls (`EVALSHA` and `EVAL`): one round trip each.
    pub(crate) scripts: u64,
}

impl RedisCounts {
    fn since(self, before: Self) -> Self {
        Self {
            commands: self.commands.saturating_sub(before.commands),
            scripts: self.scripts.saturating_sub(before.scripts),
        }
    }
}

/// What one run measured.
pub(crate) struct PresenceResult {
    pub(crate) members: usize,
    /// From the first member's `sub` to the watcher's last join event.
    pub(crate) join_time: Duration,
    /// From telling every member to close to the watcher's last leave event.
    pub(crate) leave_time: Duration,
    /// Over Redis: what the joins and the leaves cost.
    pub(crate) join_redis: Option<RedisCounts>,
    pub(crate) leave_redis: Option<RedisCounts>,
    pub(crate) errors: u64,
}

pub(crate) async fn run(o: &Opts) -> Result<PresenceResult> {
    let spec = match &o.scaler {
        ScalerOpt::Redis(_) => Spec::redis(&o.scaler, &cluster_prefix(), o.server_cpus.clone()),
        ScalerOpt::Memory => Spec::new(Kind::Sss, o.server_cpus.clone()),
        ScalerOpt::RedisCluster(_) => return Err(crate::scenarios::ONE_REDIS.into()),
    };
    let server = ServerProc::spawn(&spec).await?;
    let redis = match &o.scaler {
        ScalerOpt::Redis(url) => Some(redis_addr(url)?),
        ScalerOpt::Memory | ScalerOpt::RedisCluster(_) => None,
    };
    let r = measure(o, server.addrs[0], redis.as_deref()).await;
    server.stop().await;
    r
}

async fn measure(o: &Opts, addr: SocketAddr, redis: Option<&str>) -> Result<PresenceResult> {
    let limit = Duration::from_secs(60);
    let members = o.members.max(1);
    let mut watcher = wire::connect(addr).await?;
    wire::hello(&mut watcher, limit).await?;
    let sub = serde_json::json!({"t": "sub", "id": 1, "ch": CHANNEL, "presence": true});
    wire::send(&mut watcher, sub.to_string()).await?;
    let text = wire::expect(&mut watcher, limit).await?;
    if !text.contains(r#""presence":true"#) {
        return Err(format!("the watcher's subscription has no presence: {text}").into());
    }
    let before = counts(redis).await?;
    let (leave_tx, leave_rx) = watch::channel(false);
    let started = Instant::now();
    let tasks: Vec<_> = (0..members)
        .map(|_| tokio::spawn(member(addr, leave_rx.clone())))
        .collect();
    await_events(&mut watcher, "join", members, limit).await?;
    let join_time = started.elapsed();
    let joined = counts(redis).await?;
    let started = Instant::now();
    leave_tx.send_replace(true);
    await_events(&mut watcher, "leave", members, limit).await?;
    let leave_time = started.elapsed();
    let left = counts(redis).await?;
    let mut errors = 0;
    for t in join_all(tasks).await {
        if !matches!(t, Ok(Ok(()))) {
            errors += 1;
        }
    }
    Ok(PresenceResult {
        members,
        join_time,
        leave_time,
        join_redis: joined.zip(before).map(|(j, b)| j.since(b)),
        leave_redis: left.zip(joined).map(|(l, j)| l.since(j)),
        errors,
    })
}

/// Reads the watcher's frames until `count` events of `kind` arrived.
async fn await_events(ws: &mut Ws, kind: &str, count: usize, limit: Duration) -> Result<()> {
    let mut seen = 0;
    while seen < count {
        let text = wire::expect(ws, limit).await?;
        let f = In::parse(&text)?;
        if f.t == kind {
            seen += 1;
        } else if f.t != "join" && f.t != "leave" && f.t != "ping" {
            return Err(format!("watcher: expected {kind}, got {}", f.why()).into());
        }
    }
    Ok(())
}

/// One member: subscribes (a presence membership, no events), waits for `leave`, closes.
async fn member(addr: SocketAddr, mut leave: watch::Receiver<bool>) -> Result<()> {
    let limit = Duration::from_secs(60);
    let mut ws = wire::connect(addr).await?;
    wire::hello(&mut ws, limit).await?;
    wire::subscribe(&mut ws, 1, CHANNEL, None, limit).await?;
    leave.wait_for(|l| *l).await?;
    ws.close(None).await?;
    while let Ok(Some(_)) = wire::recv(&mut ws, Duration::from_secs(10)).await {}
    Ok(())
}

/// `host:port` of a `redis://host:port/...` URL.
fn redis_addr(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("presence: cannot read the Redis address of {url}"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default();
    Ok(host.to_owned())
}

/// The Redis counters, read with `INFO` over a plain connection (no client library on the
/// load side); `None` without Redis.
async fn counts(redis: Option<&str>) -> Result<Option<RedisCounts>> {
    let Some(addr) = redis else {
        return Ok(None);
    };
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"INFO all\r\n").await?;
    // A bulk string: `$<len>\r\n<text>\r\n`.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((len, _)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n")) {
                let len: usize = len.parse().unwrap_or(usize::MAX);
                if buf.len() >= len.saturating_add(len.to_string().len() + 5) {
                    break;
                }
            }
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| "INFO timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let stat = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let calls = |cmd: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Some(RedisCounts {
        commands: stat("total_commands_processed:"),
        scripts: calls("evalsha") + calls("eval"),
    }))
}
