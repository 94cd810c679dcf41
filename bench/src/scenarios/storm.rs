//! `reconnect-storm`: K subscribed clients on instance A; A dies; every client reconnects to
//! instance B, which shares A's history, and resyncs from its last position.
//!
//! With the memory scaler both instances live in ONE server process on one in-memory hub (a
//! process cannot share a `MemoryScaler` with another); "killing" A closes its listener and shuts
//! every connection down at the TCP level with no close frame, which is what the clients see
//! when a process is SIGKILLed. Over Redis (`--scaler redis`) the two instances are two server
//! processes on one Redis and A gets a real SIGKILL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{sleep, sleep_until, Instant};

use super::Publisher;
use crate::child::{cluster_prefix, CpuSnap, CpuUse, ServerProc, Spec};
use crate::opts::{Opts, ScalerOpt};
use crate::serve::Kind;
use crate::wire::{self, In, Rng, Ws};
use crate::Result;

/// What one storm measured.
pub(crate) struct StormResult {
    pub(crate) clients: usize,
    pub(crate) channels: usize,
    pub(crate) published: u64,
    pub(crate) resynced: usize,
    /// From the kill until the last client's `subok` on B.
    pub(crate) all_resynced: Option<Duration>,
    pub(crate) resync_p50: Duration,
    pub(crate) resync_p99: Duration,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) unrecovered: u64,
    pub(crate) reconnect_attempts: u64,
    pub(crate) errors: u64,
    pub(crate) cpu: CpuUse,
}

/// The server instances of the storm.
enum Cluster {
    /// Memory scaler: one process, two instances, instance 0 killable.
    OneProcess(ServerProc),
    /// Redis: two processes on one Redis; A (`None` once SIGKILLed) and B.
    TwoProcesses {
        a: Option<ServerProc>,
        a_addr: SocketAddr,
        b: Box<ServerProc>,
    },
}

impl Cluster {
    async fn start(o: &Opts) -> Result<Self> {
        match &o.scaler {
            ScalerOpt::Memory => {
                let mut spec = Spec::new(Kind::Sss, o.server_cpus.clone());
                spec.instances = 2;
                spec.killable = Some(0);
                Ok(Cluster::OneProcess(ServerProc::spawn(&spec).await?))
            }
            ScalerOpt::RedisCluster(_) => Err(crate::scenarios::ONE_REDIS.into()),
            ScalerOpt::Redis(_) => {
                let spec = Spec::redis(&o.scaler, &cluster_prefix(), o.server_cpus.clone());
                let a = ServerProc::spawn(&spec).await?;
                let b = match ServerProc::spawn(&spec).await {
                    Ok(b) => b,
                    Err(e) => {
                        a.stop().await;
                        return Err(e);
                    }
                };
                Ok(Cluster::TwoProcesses {
                    a_addr: a.addrs[0],
                    a: Some(a),
                    b: Box::new(b),
                })
            }
        }
    }

    fn addrs(&self) -> (SocketAddr, SocketAddr) {
        match self {
            Cluster::OneProcess(p) => (p.addrs[0], p.addrs[1]),
            Cluster::TwoProcesses { a_addr, b, .. } => (*a_addr, b.addrs[0]),
        }
    }

    /// The process whose CPU is measured (the one that survives).
    fn survivor_pid(&self) -> u32 {
        match self {
            Cluster::OneProcess(p) => p.pid(),
            Cluster::TwoProcesses { b, .. } => b.pid(),
        }
    }

    async fn kill_a(&mut self) -> Result<()> {
        match self {
            Cluster::OneProcess(p) => p.kill_instance(0).await,
            Cluster::TwoProcesses { a, .. } => match a.take() {
                Some(a) => a.sigkill().await,
                None => Ok(()),
            },
        }
    }

    async fn stop(self) {
        match self {
            Cluster::OneProcess(p) => p.stop().await,
            Cluster::TwoProcesses { a, b, .. } => {
                if let Some(a) = a {
                    a.stop().await;
                }
                b.stop().await;
            }
        }
    }
}

pub(crate) async fn run(o: &Opts) -> Result<StormResult> {
    let mut cluster = Cluster::start(o).await?;
    let r = measure(o, &mut cluster).await;
    cluster.stop().await;
    r
}

/// Last seq published per channel, and the drain deadline, once the publisher stopped.
type Finish = watch::Receiver<Option<(Arc<Vec<u64>>, Instant)>>;

#[derive(Default)]
struct Outcome {
    resynced_at: Option<Instant>,
    lost: u64,
    duplicated: u64,
    unrecovered: bool,
    attempts: u64,
    error: Option<String>,
}

fn channel(i: usize) -> String {
    format!("storm:{i}")
}

async fn measure(o: &Opts, cluster: &mut Cluster) -> Result<StormResult> {
    let (a, b) = cluster.addrs();
    let k = o.storm_clients;
    let gate = Arc::new(Semaphore::new(256));
    let (ready_tx, mut ready_rx) = mpsc::channel(k);
    let (resync_tx, mut resync_rx) = mpsc::unbounded_channel();
    let (finish_tx, finish_rx) = watch::channel(None);
    let tasks: Vec<_> = (0..k)
        .map(|i| {
            let c = StormClient {
                index: i % o.storm_channels,
                a,
                b,
                jitter: o.storm_jitter,
                rng: Rng::new(i as u64),
            };
            tokio::spawn(c.run(
                gate.clone(),
                ready_tx.clone(),
                resync_tx.clone(),
                finish_rx.clone(),
            ))
        })
        .collect();
    drop((ready_tx, resync_tx));
    let mut subscribed = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    for _ in 0..k {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(true)) => subscribed += 1,
            Ok(_) => {}
            Err(_) => return Err("storm clients not subscribed within 180 s".into()),
        }
    }
    // The publisher is on B and keeps publishing through the kill: what A's clients miss while
    // they reconnect must come back from the history.
    let (stop_tx, stop_rx) = watch::channel(false);
    let publisher = tokio::spawn(publish(
        b,
        o.payload,
        o.storm_channels,
        o.storm_rate,
        stop_rx,
    ));
    sleep(if o.smoke {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    })
    .await;
    let before = CpuSnap::take(&[cluster.survivor_pid()])?;
    let killed = Instant::now();
    cluster.kill_a().await?;
    let resync_deadline = killed + Duration::from_secs(60);
    let mut resynced = 0;
    while resynced < subscribed {
        match tokio::time::timeout_at(resync_deadline, resync_rx.recv()).await {
            Ok(Some(())) => resynced += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let after = CpuSnap::take(&[cluster.survivor_pid()])?;
    sleep(Duration::from_millis(500)).await;
    stop_tx.send_replace(true);
    let (finals, published, publish_errors) = publisher.await??;
    finish_tx.send_replace(Some((
        Arc::new(finals),
        Instant::now() + Duration::from_secs(15),
    )));
    let mut r = StormResult {
        clients: k,
        channels: o.storm_channels,
        published,
        resynced: 0,
        all_resynced: None,
        resync_p50: Duration::ZERO,
        resync_p99: Duration::ZERO,
        lost: 0,
        duplicated: 0,
        unrecovered: 0,
        reconnect_attempts: 0,
        errors: publish_errors,
        cpu: before.until(&after),
    };
    let mut times = Vec::with_capacity(k);
    for t in tasks {
        let out = t.await?;
        if let Some(at) = out.resynced_at {
            times.push(at.saturating_duration_since(killed));
        }
        r.lost += out.lost;
        r.duplicated += out.duplicated;
        r.unrecovered += u64::from(out.unrecovered);
        r.reconnect_attempts += out.attempts;
        if let Some(e) = out.error {
            r.errors += 1;
            if r.errors <= 5 {
                eprintln!("storm client: {e}");
            }
        }
    }
    times.sort();
    r.resynced = times.len();
    if r.resynced == k {
        r.all_resynced = times.last().copied();
    }
    let q = |f: f64| {
        times
            .get(((times.len() as f64 * f) as usize).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    r.resync_p50 = q(0.5);
    r.resync_p99 = q(0.99);
    Ok(r)
}

/// Publishes round-robin over the channels at `rate` until stopped. Returns the last seq per
/// channel, the number published, and the number of failed publications.
async fn publish(
    addr: SocketAddr,
    payload: usize,
    channels: usize,
    rate: u32,
    mut stop: watch::Receiver<bool>,
) -> Result<(Vec<u64>, u64, u64)> {
    let mut p = Publisher::connect(addr, payload).await?;
    let mut finals = vec![0; channels];
    let (mut count, mut errors) = (0u64, 0u64);
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now();
    // Bounded: at most ten minutes of publishing.
    let max = u64::from(rate) * 600;
    for i in 0..max {
        tokio::select! {
            () = sleep_until(start + period * i as u32) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let ch = (i as usize) % channels;
        match p.publish(&channel(ch)).await {
            Ok(seq) => {
                finals[ch] = seq;
                count += 1;
            }
            Err(e) => {
                errors += 1;
                eprintln!("storm publish failed: {e}");
            }
        }
    }
    Ok((finals, count, errors))
}

struct StormClient {
    index: usize,
    a: SocketAddr,
    b: SocketAddr,
    jitter: Duration,
    rng: Rng,
}

/// Reconnect attempts per client before it gives up.
const MAX_ATTEMPTS: u64 = 8;

impl StormClient {
    async fn run(
        mut self,
        gate: Arc<Semaphore>,
        ready: mpsc::Sender<bool>,
        resynced: mpsc::UnboundedSender<()>,
        mut finish: Finish,
    ) -> Outcome {
        let mut out = Outcome::default();
        let limit = Duration::from_secs(20);
        let ch = channel(self.index);
        let setup = async {
            let _permit = gate.acquire().await?;
            let mut ws = wire::connect(self.a).await?;
            wire::hello(&mut ws, limit).await?;
            let ok = wire::subscribe(&mut ws, 1, &ch, None, limit).await?;
            Ok::<_, crate::Error>((ws, ok))
        };
        let (ws, ok) = match setup.await {
            Ok(v) => {
                let _ = ready.send(true).await;
                v
            }
            Err(e) => {
                let _ = ready.send(false).await;
                out.error = Some(format!("setup: {e}"));
                return out;
            }
        };
        drop(ready);
        let epoch = ok.epoch;
        let mut last = ok.seq;
        let mut ws: Option<Ws> = Some(ws);
        let mut failures = 0u32;
        loop {
            let target = finish.borrow().clone();
            if let Some((finals, _)) = &target {
                if last >= finals[self.index] {
                    break;
                }
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let deadline = target.as_ref().map_or(far, |(_, d)| *d);
            let Some(conn) = ws.as_mut() else {
                // Lost: reconnect to B like the client core does (full jitter backoff).
                if out.attempts >= MAX_ATTEMPTS || Instant::now() >= deadline {
                    out.error = Some("gave up reconnecting".into());
                    break;
                }
                let cap = (self.jitter * 2u32.pow(failures.min(6))).min(Duration::from_secs(10));
                sleep(self.rng.upto(cap)).await;
                out.attempts += 1;
                let attempt = async {
                    let mut w = wire::connect(self.b).await?;
                    wire::hello(&mut w, limit).await?;
                    let id = 1 + out.attempts;
                    let ok = wire::subscribe(&mut w, id, &ch, Some((&epoch, last)), limit).await?;
                    Ok::<_, crate::Error>((w, ok))
                };
                match attempt.await {
                    Ok((w, ok)) => {
                        if ok.recovered != Some(true) {
                            out.unrecovered = true;
                            out.lost += ok.seq.saturating_sub(last);
                            last = ok.seq;
                        }
                        if out.resynced_at.is_none() {
                            out.resynced_at = Some(Instant::now());
                            let _ = resynced.send(());
                        }
                        failures = 0;
                        ws = Some(w);
                    }
                    Err(_) => failures += 1,
                }
                continue;
            };
            tokio::select! {
                r = wire::recv(conn, Duration::from_secs(3600)) => match r {
                    Ok(Some(text)) => {
                        if let Err(e) = on_pub(&mut out, &mut last, &epoch, &text) {
                            out.error = Some(e.to_string());
                            break;
                        }
                    }
                    // The instance died: reconnect.
                    Ok(None) | Err(_) => ws = None,
                },
                r = finish.changed(), if target.is_none() => {
                    if r.is_err() {
                        break;
                    }
                }
                () = sleep_until(deadline) => break,
            }
        }
        if let Some((finals, _)) = &*finish.borrow() {
            out.lost += finals[self.index].saturating_sub(last);
        }
        out
    }
}

fn on_pub(out: &mut Outcome, last: &mut u64, epoch: &str, text: &str) -> Result<()> {
    let f = In::parse(text)?;
    if f.t != "pub" {
        return Err(format!("unexpected frame {text}").into());
    }
    let pos = f.pos.ok_or("pub without pos")?;
    if pos.e != epoch {
        return Err(format!("epoch changed: {epoch} -> {}", pos.e).into());
    }
    if pos.s <= *last {
        out.duplicated += 1;
    } else {
        out.lost += pos.s - *last - 1;
        *last = pos.s;
    }
    Ok(())
}
