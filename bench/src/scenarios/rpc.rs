//! `rpc` and `baseline`: C connections doing sequential asks (or echoes) with a small payload;
//! `tells`: the same with T tells written before each ask, in the same write.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::{sleep_until, Instant};

use crate::child::{CpuSnap, CpuUse, ServerProc, Spec};
use crate::opts::Opts;
use crate::report::{histogram, record};
use crate::serve::Kind;
use crate::wire::{self, In, Ws};
use crate::Result;

/// What one rpc (or baseline) run measured.
pub(crate) struct RpcResult {
    pub(crate) kind: Kind,
    pub(crate) connections: usize,
    /// Tells written before each ask.
    pub(crate) tells: usize,
    /// Round trips completed in the measured window.
    pub(crate) count: u64,
    pub(crate) errors: u64,
    pub(crate) hist: Histogram<u64>,
    /// CPU of every process measured (the server and `others`) and of the load generator.
    pub(crate) cpu: CpuUse,
    /// Server CPU µs of each group of processes measured: the server, then each of `others`.
    pub(crate) parts: Vec<u64>,
}

impl RpcResult {
    pub(crate) fn per_second(&self) -> f64 {
        self.count as f64 / self.cpu.wall.as_secs_f64().max(1e-9)
    }

    pub(crate) fn server_us_per_rt(&self) -> f64 {
        self.cpu.server_us as f64 / self.count.max(1) as f64
    }

    /// The user-space part of [`server_us_per_rt`](Self::server_us_per_rt).
    pub(crate) fn server_user_us_per_rt(&self) -> f64 {
        self.cpu.server_user_us as f64 / self.count.max(1) as f64
    }

    /// Tells (and the asks after them) handled per second.
    pub(crate) fn tells_per_second(&self) -> f64 {
        self.per_second() * self.tells as f64
    }

    /// Server CPU per frame handled (each tell and each ask).
    pub(crate) fn server_us_per_frame(&self) -> f64 {
        self.server_us_per_rt() / (self.tells + 1) as f64
    }

    /// The user-space part of [`server_us_per_frame`](Self::server_us_per_frame).
    pub(crate) fn server_user_us_per_frame(&self) -> f64 {
        self.server_user_us_per_rt() / (self.tells + 1) as f64
    }

    pub(crate) fn load_us_per_rt(&self) -> f64 {
        self.cpu.load_us as f64 / self.count.max(1) as f64
    }
}

/// Starts a server of `kind` and drives it, with `tells` tells before each ask.
pub(crate) async fn run(
    o: &Opts,
    kind: Kind,
    cpus: Option<String>,
    tells: usize,
) -> Result<RpcResult> {
    let server = ServerProc::spawn(&Spec::new(kind, cpus)).await?;
    let r = measure(o, kind, &server, &[], tells).await;
    server.stop().await;
    r
}

const MAX_ASKS_PER_CONNECTION: u64 = 100_000_000;

/// Drives `server`; its CPU, and that of each group of processes in `others` (workers, Redis),
/// counts as the server's.
pub(crate) async fn measure(
    o: &Opts,
    kind: Kind,
    server: &ServerProc,
    others: &[Vec<u32>],
    tells: usize,
) -> Result<RpcResult> {
    let addr = server.addrs[0];
    let limit = Duration::from_secs(10);
    let mut conns = Vec::with_capacity(o.connections);
    for _ in 0..o.connections {
        let mut ws = wire::connect(addr).await?;
        if kind != Kind::Echo {
            wire::hello(&mut ws, limit).await?;
        }
        conns.push(ws);
    }
    let warmup = if o.smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let start = Instant::now() + Duration::from_millis(50);
    let from = start + warmup;
    let until = from + o.duration;
    let payload: Arc<str> = wire::pad(o.payload).into();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|ws| {
            let window = Window { start, from, until };
            tokio::spawn(ask_loop(ws, kind, payload.clone(), tells, window))
        })
        .collect();
    let mut groups = vec![vec![server.pid()]];
    groups.extend(others.iter().cloned());
    let all: Vec<u32> = groups.iter().flatten().copied().collect();
    sleep_until(from).await;
    let before = CpuSnap::take(&all)?;
    let parts_before = groups
        .iter()
        .map(|g| CpuSnap::take(g))
        .collect::<Result<Vec<_>>>()?;
    sleep_until(until).await;
    let after = CpuSnap::take(&all)?;
    let parts = groups
        .iter()
        .zip(&parts_before)
        .map(|(g, b)| Ok(b.until(&CpuSnap::take(g)?).server_us))
        .collect::<Result<Vec<_>>>()?;
    let mut hist = histogram();
    let (mut count, mut errors) = (0, 0);
    for t in tasks {
        match t.await {
            Ok(Ok((n, h))) => {
                count += n;
                hist.add(&h)?;
            }
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("rpc connection failed: {e}");
            }
            Err(e) => {
                errors += 1;
                eprintln!("rpc task failed: {e}");
            }
        }
    }
    Ok(RpcResult {
        kind,
        connections: o.connections,
        tells,
        count,
        errors,
        hist,
        cpu: before.until(&after),
        parts,
    })
}

/// When a connection's loop starts, from when it counts, and when it stops.
struct Window {
    start: Instant,
    from: Instant,
    until: Instant,
}

/// Sequential asks (each after `tells` tells, in the same write) until `until`; those started
/// after `from` are counted.
async fn ask_loop(
    mut ws: Ws,
    kind: Kind,
    payload: Arc<str>,
    tells: usize,
    w: Window,
) -> Result<(u64, Histogram<u64>)> {
    sleep_until(w.start).await;
    let want = match kind {
        // The echo server sends the ask frame itself back.
        Kind::Echo => "ask",
        Kind::Sss | Kind::Gateway | Kind::Worker | Kind::RawFanout => "res",
    };
    let tell = format!(r#"{{"t":"tell","topic":"note","msg":{payload}}}"#);
    let mut hist = histogram();
    let mut count = 0;
    for id in 1..=MAX_ASKS_PER_CONNECTION {
        let t0 = Instant::now();
        if t0 >= w.until {
            break;
        }
        for _ in 0..tells {
            wire::feed(&mut ws, tell.clone()).await?;
        }
        let frame = format!(r#"{{"t":"ask","id":{id},"topic":"echo","msg":{payload}}}"#);
        wire::send(&mut ws, frame).await?;
        let text = wire::expect(&mut ws, Duration::from_secs(10)).await?;
        let answer = In::parse(&text)?;
        if answer.t != want || answer.id != Some(id) {
            return Err(format!("ask {id}: unexpected answer {text}").into());
        }
        if t0 >= w.from {
            record(&mut hist, t0.elapsed().as_micros() as u64);
            count += 1;
        }
    }
    Ok((count, hist))
}
