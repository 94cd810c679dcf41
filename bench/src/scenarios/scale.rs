//! `scale`: K connections to one server process, from several loopback source addresses (one
//! address has about 28 000 ephemeral ports; see [`source_address`]). Measures the connect rate, the server's RSS per
//! connection, its user and kernel CPU while every connection sits idle with heartbeats, then,
//! with every connection subscribed to one channel, the time from one publication to its last
//! delivery, and the latency of one publication per second for `--duration` seconds.
//!
//! Both processes hold K sockets: the bench raises its soft `RLIMIT_NOFILE` to the hard limit,
//! and refuses to start (saying which limit) when the hard limit is below K plus headroom.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::Publisher;
use crate::child::{ServerProc, Spec};
use crate::opts::Opts;
use crate::procfs;
use crate::report::{histogram, record};
use crate::serve::Kind;
use crate::wire::{self, In, Stamped};
use crate::Result;

const CHANNEL: &str = "all";
/// Connections per source address (of ~28 000 ephemeral ports each).
const PER_SOURCE: usize = 20_000;
/// Descriptors each process needs beyond its connections.
const HEADROOM: u64 = 1_000;

/// The source address of connection `i`: 127.S.0.2, 127.S.0.3, ... (all of 127.0.0.0/8 is
/// loopback; 127.0.0.1 is the server's), [`PER_SOURCE`] connections each. `S` (1–250) comes
/// from the process id, so that a run does not use the last run's addresses: those ports stay
/// in TIME_WAIT for 60 s after it, and a second run of 19 000 connections from 127.0.0.2 a
/// minute after the first got only 9 232 of them.
fn source_address(i: usize) -> IpAddr {
    let salt = 1 + (std::process::id() % 250) as u8;
    let n = u8::try_from(2 + i / PER_SOURCE).unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(127, salt, 0, n))
}

/// What one scale run measured.
pub(crate) struct ScaleResult {
    pub(crate) connections: usize,
    pub(crate) connect_secs: f64,
    pub(crate) rss_per_connection: f64,
    /// Server CPU while every connection was idle: user and kernel, in cores.
    pub(crate) idle_user_cores: f64,
    pub(crate) idle_kernel_cores: f64,
    pub(crate) idle_secs: f64,
    pub(crate) subscribe_secs: f64,
    /// From one publication to its delivery to the last subscriber.
    pub(crate) publish_to_last_ms: f64,
    /// Latency of every delivery of the 1/s publications.
    pub(crate) hist: Histogram<u64>,
    pub(crate) published: u64,
    pub(crate) lost: u64,
    pub(crate) errors: u64,
}

/// What every connection's task shares with the run.
struct Shared {
    /// Deliveries of the timed publications, in µs.
    hist: Mutex<Histogram<u64>>,
    /// Latest delivery of the first publication, µs since the epoch.
    first_done_us: AtomicU64,
    /// Deliveries of the first publication.
    first_count: AtomicU64,
    /// Connections subscribed so far.
    subscribed: AtomicU64,
}

/// Phases the connections go through together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Subscribe,
    Stop,
}

/// Checks the descriptor limit both processes need.
fn check_limit(k: usize) -> Result<()> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    let need = k as u64 + HEADROOM;
    if hard < need {
        return Err(format!(
            "{k} connections need RLIMIT_NOFILE >= {need} in the server and in the load \
             generator; the hard limit here is {hard} (soft {soft}). Raise it (as root: \
             `ulimit -Hn {need}`, or LimitNOFILE= in a systemd unit) or pass --scale N with N \
             <= {}",
            hard.saturating_sub(HEADROOM)
        )
        .into());
    }
    Ok(())
}

/// Runs the scenario with `k` connections.
pub(crate) async fn run(o: &Opts, k: usize) -> Result<ScaleResult> {
    check_limit(k)?;
    let server = ServerProc::spawn(&Spec::new(Kind::Sss, o.server_cpus.clone())).await?;
    let r = measure(o, k, &server).await;
    server.stop().await;
    r
}

async fn measure(o: &Opts, k: usize, server: &ServerProc) -> Result<ScaleResult> {
    let addr = server.addrs[0];
    let pid = server.pid();
    // What every server pays once is not counted per connection.
    let mut first = wire::connect(addr).await?;
    wire::hello(&mut first, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = procfs::rss_bytes(pid)?;

    let shared = Arc::new(Shared {
        hist: Mutex::new(histogram()),
        first_done_us: AtomicU64::new(0),
        first_count: AtomicU64::new(0),
        subscribed: AtomicU64::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(1024);
    // Handshakes in flight: enough to keep both cores busy, few enough not to overflow the
    // listen backlog.
    let gate = Arc::new(Semaphore::new(256));
    let start = Instant::now();
    let tasks: Vec<_> = (0..k)
        .map(|i| {
            let source = source_address(i);
            tokio::spawn(connection(
                addr,
                source,
                gate.clone(),
                ready_tx.clone(),
                phase_rx.clone(),
                shared.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    let mut errors = 0;
    let setup_limit = Instant::now() + Duration::from_secs(600);
    for _ in 0..k {
        match tokio::time::timeout_at(setup_limit, ready_rx.recv()).await {
            Ok(Some(true)) => {}
            Ok(_) => errors += 1,
            Err(_) => return Err("connections not up within 600 s".into()),
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = procfs::rss_bytes(pid)?;
    let up = k - errors as usize;

    // Idle, with heartbeats: long enough for every connection's heartbeat to fire once.
    let idle = if o.smoke {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(30)
    };
    let (u0, s0) = procfs::cpu_split_us(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    let (u1, s1) = procfs::cpu_split_us(pid)?;
    let idle_secs = t0.elapsed().as_secs_f64();
    let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6 / idle_secs;

    // Everyone subscribes to one channel.
    let t0 = Instant::now();
    phase_tx.send_replace(Phase::Subscribe);
    let subscribed = wait_subscribed(&shared, up, t0 + Duration::from_secs(600)).await;
    let subscribe_secs = t0.elapsed().as_secs_f64();

    // One publication: until its last delivery.
    let mut publisher = Publisher::connect(addr, o.payload).await?;
    let sent_us = wire::now_us();
    let mut last_seq = publisher.publish(CHANNEL).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.first_count.load(Ordering::Acquire) < subscribed as u64 {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let publish_to_last_ms = shared
        .first_done_us
        .load(Ordering::Acquire)
        .saturating_sub(sent_us) as f64
        / 1000.0;

    // One publication per second.
    let seconds = if o.smoke {
        2
    } else {
        o.duration.as_secs().max(1)
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for _ in 0..seconds {
        tick.tick().await;
        last_seq = publisher.publish(CHANNEL).await?;
    }
    // Deliveries of the last publication arrive within a few seconds, or count as lost.
    let expected = seconds * subscribed as u64;
    let drain = Instant::now() + Duration::from_secs(30);
    while recorded(&shared) < expected && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = recorded(&shared);
    phase_tx.send_replace(Phase::Stop);
    let mut failed = 0;
    for t in tasks {
        if !matches!(
            tokio::time::timeout(Duration::from_secs(10), t).await,
            Ok(Ok(true))
        ) {
            failed += 1;
        }
    }
    drop(first);
    let hist = shared
        .hist
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(ScaleResult {
        connections: up,
        connect_secs,
        rss_per_connection: rss_after.saturating_sub(rss_before) as f64 / up.max(1) as f64,
        idle_user_cores: cores(u0, u1),
        idle_kernel_cores: cores(s0, s1),
        idle_secs,
        subscribe_secs,
        publish_to_last_ms,
        hist,
        published: last_seq,
        lost: expected.saturating_sub(got),
        errors: errors + failed + (up - subscribed) as u64,
    })
}

fn recorded(shared: &Shared) -> u64 {
    shared.hist.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Waits until `k` connections are subscribed, at most until `limit`; returns how many are.
async fn wait_subscribed(shared: &Shared, k: usize, limit: Instant) -> usize {
    loop {
        let n = shared.subscribed.load(Ordering::Acquire) as usize;
        if n >= k || Instant::now() > limit {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One connection: connects, says hello, holds (answering heartbeats), subscribes when told,
/// and records every delivery. Returns whether it lasted without error.
async fn connection(
    addr: SocketAddr,
    source: IpAddr,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<bool>,
    mut phase: watch::Receiver<Phase>,
    shared: Arc<Shared>,
) -> bool {
    let limit = Duration::from_secs(60);
    let setup = async {
        let _permit = gate.acquire().await?;
        // Small buffers: a quarter of a million of them must fit in the load generator.
        let mut ws = wire::connect_from(addr, Some(source), 1024).await?;
        wire::hello(&mut ws, limit).await?;
        Ok::<_, crate::Error>(ws)
    };
    let mut ws = match setup.await {
        Ok(ws) => {
            let _ = ready.send(true).await;
            ws
        }
        Err(e) => {
            eprintln!("scale: connection failed: {e}");
            let _ = ready.send(false).await;
            return false;
        }
    };
    drop(ready);
    let mut subscribed = false;
    let mut first = true;
    loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return false;
                }
                let now = *phase.borrow_and_update();
                match now {
                    Phase::Subscribe if !subscribed => {
                        let sub = format!(r#"{{"t":"sub","id":1,"ch":"{CHANNEL}"}}"#);
                        if wire::send(&mut ws, sub).await.is_err() {
                            return false;
                        }
                    }
                    Phase::Stop => return true,
                    _ => {}
                }
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_))) => continue,
                    _ => return false,
                };
                if text.as_str() == r#"{"t":"ping"}"# {
                    if wire::send(&mut ws, r#"{"t":"pong"}"#.to_owned()).await.is_err() {
                        return false;
                    }
                    continue;
                }
                let Ok(f) = In::parse(&text) else { return false };
                match &*f.t {
                    "subok" => {
                        subscribed = true;
                        shared.subscribed.fetch_add(1, Ordering::AcqRel);
                    }
                    "pub" => {
                        let now = wire::now_us();
                        let sent = f
                            .msg
                            .and_then(|m| serde_json::from_str::<Stamped>(m.get()).ok())
                            .map_or(now, |s| s.ts);
                        if first {
                            first = false;
                            shared.first_done_us.fetch_max(now, Ordering::AcqRel);
                            shared.first_count.fetch_add(1, Ordering::AcqRel);
                        } else {
                            let mut h = shared.hist.lock().unwrap_or_else(|e| e.into_inner());
                            record(&mut h, now.saturating_sub(sent));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
