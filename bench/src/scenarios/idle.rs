//! `idle`: K welcomed connections held open; the server's RSS per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::child::{ServerProc, Spec};
use crate::opts::Opts;
use crate::procfs;
use crate::serve::Kind;
use crate::wire;
use crate::Result;

/// What one idle run measured.
pub(crate) struct IdleResult {
    pub(crate) kind: Kind,
    pub(crate) connections: usize,
    pub(crate) errors: u64,
    pub(crate) rss_before: u64,
    pub(crate) rss_after: u64,
}

impl IdleResult {
    pub(crate) fn per_connection(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.connections.max(1) as f64
    }
}

/// Starts a server of `kind`, opens and holds the connections, reads its RSS.
/// glibc told to serve blocks of 4 KiB and more by `mmap` (README, "Operating it"): the
/// HTTP handshake's 8 KiB buffer then leaves no hole in the heap.
pub(crate) const MMAP_THRESHOLD_4K: (&str, &str) =
    ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096");

/// K idle connections to a server of `kind`, with `env` in the server's environment.
pub(crate) async fn run(
    o: &Opts,
    kind: Kind,
    env: &[(&'static str, &'static str)],
) -> Result<IdleResult> {
    let mut spec = Spec::new(kind, o.server_cpus.clone());
    spec.env = env.to_vec();
    let server = ServerProc::spawn(&spec).await?;
    let r = measure(o, kind, &server).await;
    server.stop().await;
    r
}

async fn measure(o: &Opts, kind: Kind, server: &ServerProc) -> Result<IdleResult> {
    let addr = server.addrs[0];
    // One connection first, so what every server pays once (runtime, first allocations) is
    // not counted per connection.
    let mut first = wire::connect(addr).await?;
    handshake(&mut first, kind).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = procfs::rss_bytes(server.pid())?;
    let k = o.idle;
    let gate = Arc::new(Semaphore::new(256));
    let (ready_tx, mut ready_rx) = mpsc::channel(k);
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = (0..k)
        .map(|_| {
            tokio::spawn(hold(
                addr,
                kind,
                gate.clone(),
                ready_tx.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    let mut errors = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    for _ in 0..k {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(true)) => {}
            Ok(_) => errors += 1,
            Err(_) => return Err("idle connections not up within 180 s".into()),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = procfs::rss_bytes(server.pid())?;
    stop_tx.send_replace(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    drop(first);
    Ok(IdleResult {
        kind,
        connections: k - errors as usize,
        errors,
        rss_before,
        rss_after,
    })
}

/// `hello` / `welcome` for the sss server; one echoed message for the baseline.
async fn handshake(ws: &mut wire::Ws, kind: Kind) -> Result<()> {
    let limit = Duration::from_secs(30);
    match kind {
        Kind::Echo => {
            wire::send(ws, r#"{"t":"hello","v":1}"#.into()).await?;
            wire::expect(ws, limit).await.map(drop)
        }
        Kind::Sss | Kind::Gateway | Kind::Worker | Kind::RawFanout => wire::hello(ws, limit).await,
    }
}

async fn hold(
    addr: SocketAddr,
    kind: Kind,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let setup = async {
        let _permit = gate.acquire().await?;
        let mut ws = wire::connect(addr).await?;
        handshake(&mut ws, kind).await?;
        Ok::<_, crate::Error>(ws)
    };
    let mut ws = match setup.await {
        Ok(ws) => {
            let _ = ready.send(true).await;
            ws
        }
        Err(e) => {
            eprintln!("idle connection failed: {e}");
            let _ = ready.send(false).await;
            return;
        }
    };
    drop(ready);
    // Held (pings answered) until told to stop or the server goes; bounded by an hour.
    tokio::select! {
        _ = wire::recv(&mut ws, Duration::from_secs(3600)) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}
