//! `fanout`: N subscribers on one channel, one publisher at R msgs/s with a send timestamp in
//! every message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{sleep_until, Instant};

use super::Publisher;
use crate::child::{cluster_prefix, CpuSnap, CpuUse, ServerProc, Spec};
use crate::opts::{Opts, ScalerOpt};
use crate::report::{histogram, record};
use crate::serve::Kind;
use crate::wire::{self, In, Stamped};
use crate::Result;

const CHANNEL: &str = "fan";

/// What one fan-out run measured.
pub(crate) struct FanoutResult {
    pub(crate) subscribers: usize,
    pub(crate) published: u64,
    pub(crate) deliveries: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) errors: u64,
    /// The publishing window (deliveries per second are counted over it).
    pub(crate) publish_window: Duration,
    pub(crate) hist: Histogram<u64>,
    /// From the first publication until every subscriber has the last one.
    pub(crate) cpu: CpuUse,
}

impl FanoutResult {
    pub(crate) fn per_second(&self) -> f64 {
        self.deliveries as f64 / self.publish_window.as_secs_f64().max(1e-9)
    }

    pub(crate) fn server_us_per_delivery(&self) -> f64 {
        self.cpu.server_us as f64 / self.deliveries.max(1) as f64
    }

    /// The user-space part of [`server_us_per_delivery`](Self::server_us_per_delivery).
    pub(crate) fn server_user_us_per_delivery(&self) -> f64 {
        self.cpu.server_user_us as f64 / self.deliveries.max(1) as f64
    }

    pub(crate) fn load_us_per_delivery(&self) -> f64 {
        self.cpu.load_us as f64 / self.deliveries.max(1) as f64
    }
}

/// Starts the server(s) and runs the fan-out.
///
/// Memory scaler: one process. Redis (one, or a cluster): two processes, the subscribers
/// split between them (alternating), the publisher on the first; CPU is summed over both.
///
/// `raw`: the fan-out floor instead (one process, see `serve::fanout_instance`).
pub(crate) async fn run(o: &Opts, cpus: Option<String>, raw: bool) -> Result<FanoutResult> {
    let servers = match &o.scaler {
        _ if raw => vec![ServerProc::spawn(&Spec::new(Kind::RawFanout, cpus)).await?],
        ScalerOpt::Memory => vec![ServerProc::spawn(&Spec::new(Kind::Sss, cpus)).await?],
        scaler @ (ScalerOpt::Redis(_) | ScalerOpt::RedisCluster(_)) => {
            let spec = Spec::redis(scaler, &cluster_prefix(), cpus);
            let a = ServerProc::spawn(&spec).await?;
            match ServerProc::spawn(&spec).await {
                Ok(b) => vec![a, b],
                Err(e) => {
                    a.stop().await;
                    return Err(e);
                }
            }
        }
    };
    let pids: Vec<u32> = servers.iter().map(ServerProc::pid).collect();
    let sub_addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addrs[0]).collect();
    let r = measure(o, &pids, &sub_addrs, sub_addrs[0]).await;
    for s in servers {
        s.stop().await;
    }
    r
}

/// Per-subscriber outcome.
struct SubStats {
    hist: Histogram<u64>,
    received: u64,
    lost: u64,
    duplicated: u64,
    error: Option<String>,
}

/// `Some((last seq published, drain deadline))` once the publisher is done.
type Finish = watch::Receiver<Option<(u64, Instant)>>;

async fn measure(
    o: &Opts,
    pids: &[u32],
    sub_addrs: &[SocketAddr],
    pub_addr: SocketAddr,
) -> Result<FanoutResult> {
    let n = o.subscribers;
    let gate = Arc::new(Semaphore::new(128));
    let (ready_tx, mut ready_rx) = mpsc::channel(n);
    let (finish_tx, finish_rx) = watch::channel(None);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(subscriber(
                sub_addrs[i % sub_addrs.len()],
                gate.clone(),
                ready_tx.clone(),
                finish_rx.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    let mut setup_errors = 0;
    let setup_deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..n {
        match tokio::time::timeout_at(setup_deadline, ready_rx.recv()).await {
            Ok(Some(true)) => {}
            Ok(Some(false)) | Ok(None) => setup_errors += 1,
            Err(_) => return Err("subscribers did not connect within 120 s".into()),
        }
    }
    let mut publisher = Publisher::connect(pub_addr, o.payload).await?;
    let total = (o.rate as f64 * o.duration.as_secs_f64()).ceil().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / o.rate as f64);
    let before = CpuSnap::take(pids)?;
    let start = Instant::now();
    let mut last_seq = 0;
    let mut publish_errors = 0;
    for i in 0..total {
        sleep_until(start + period * i as u32).await;
        match publisher.publish(CHANNEL).await {
            Ok(seq) => last_seq = seq,
            Err(e) => {
                publish_errors += 1;
                eprintln!("publish failed: {e}");
            }
        }
    }
    let publish_window = start.elapsed();
    let drain = Duration::from_secs(10);
    finish_tx.send_replace(Some((last_seq, Instant::now() + drain)));
    let mut hist = histogram();
    let (mut deliveries, mut lost, mut duplicated, mut errors) = (0, 0, 0, 0);
    for t in tasks {
        match t.await {
            Ok(s) => {
                hist.add(&s.hist)?;
                deliveries += s.received;
                lost += s.lost;
                duplicated += s.duplicated;
                if let Some(e) = s.error {
                    errors += 1;
                    eprintln!("subscriber failed: {e}");
                }
            }
            Err(e) => {
                errors += 1;
                eprintln!("subscriber task failed: {e}");
            }
        }
    }
    let after = CpuSnap::take(pids)?;
    if setup_errors > 0 {
        // Counted in `errors` too: each failed subscriber reports its setup error.
        eprintln!("{setup_errors} subscribers failed to subscribe");
    }
    Ok(FanoutResult {
        subscribers: n,
        published: last_seq,
        deliveries,
        lost,
        duplicated,
        errors: errors + publish_errors,
        publish_window,
        hist,
        cpu: before.until(&after),
    })
}

async fn subscriber(
    addr: SocketAddr,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<bool>,
    mut finish: Finish,
) -> SubStats {
    let mut st = SubStats {
        hist: histogram(),
        received: 0,
        lost: 0,
        duplicated: 0,
        error: None,
    };
    let limit = Duration::from_secs(10);
    let setup = async {
        let _permit = gate.acquire().await?;
        let mut ws = wire::connect(addr).await?;
        wire::hello(&mut ws, limit).await?;
        let ok = wire::subscribe(&mut ws, 1, CHANNEL, None, limit).await?;
        Ok::<_, crate::Error>((ws, ok))
    };
    let (mut ws, ok) = match setup.await {
        Ok(v) => {
            let _ = ready.send(true).await;
            v
        }
        Err(e) => {
            let _ = ready.send(false).await;
            st.error = Some(format!("setup: {e}"));
            return st;
        }
    };
    drop(ready);
    let mut last = ok.seq;
    loop {
        let target = *finish.borrow();
        if let Some((last_published, _)) = target {
            if last >= last_published {
                break;
            }
        }
        let far = Instant::now() + Duration::from_secs(3600);
        let deadline = target.map_or(far, |(_, d)| d);
        tokio::select! {
            r = wire::recv(&mut ws, Duration::from_secs(3600)) => match r {
                Ok(Some(text)) => {
                    if let Err(e) = on_pub(&mut st, &mut last, &ok.epoch, &text) {
                        st.error = Some(e.to_string());
                        break;
                    }
                }
                Ok(None) => {
                    st.error = Some("connection closed".into());
                    break;
                }
                Err(e) => {
                    st.error = Some(e.to_string());
                    break;
                }
            },
            r = finish.changed(), if target.is_none() => {
                if r.is_err() {
                    break;
                }
            }
            () = sleep_until(deadline) => break,
        }
    }
    if let Some((last_published, _)) = *finish.borrow() {
        st.lost += last_published.saturating_sub(last);
    }
    st
}

/// Checks one frame's continuity and records its latency.
fn on_pub(st: &mut SubStats, last: &mut u64, epoch: &str, text: &str) -> Result<()> {
    let f = In::parse(text)?;
    if f.t != "pub" {
        return Err(format!("unexpected frame {text}").into());
    }
    let pos = f.pos.ok_or("pub without pos")?;
    if pos.e != epoch {
        return Err(format!("epoch changed: {} -> {}", epoch, pos.e).into());
    }
    if pos.s <= *last {
        st.duplicated += 1;
        return Ok(());
    }
    st.lost += pos.s - *last - 1;
    *last = pos.s;
    st.received += 1;
    if let Some(msg) = f.msg {
        let stamped: Stamped = serde_json::from_str(msg.get())?;
        record(&mut st.hist, wire::now_us().saturating_sub(stamped.ts));
    }
    Ok(())
}
