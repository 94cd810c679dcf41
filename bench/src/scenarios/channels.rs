//! `channels`: many distinct channels subscribed and left again; the server's RSS before, with
//! every channel subscribed, and after they were all left (is channel state freed?).

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::child::{ServerProc, Spec};
use crate::opts::Opts;
use crate::procfs;
use crate::serve::Kind;
use crate::wire::{self, In, Ws};
use crate::Result;

/// `sub` frames a socket has in flight at once: the answers stay well within the server's
/// outbound queue (1024 frames by default), so the load side may send before it reads.
const WINDOW: usize = 250;

/// Rounds of subscribe-and-leave, each on new channel names. Freed state brings the RSS back
/// after every round; state kept forever grows it by about the same amount per round, while an
/// allocator that keeps freed pages (for reuse) grows it only once: the second round tells the
/// two apart.
pub(crate) const ROUNDS: usize = 2;

/// What one run measured.
pub(crate) struct ChannelsResult {
    pub(crate) channels: usize,
    pub(crate) sockets: usize,
    pub(crate) errors: u64,
    pub(crate) rss_before: u64,
    /// Per round: RSS with every channel subscribed.
    pub(crate) rss_peak: Vec<u64>,
    /// Per round: RSS once every channel was left and every socket closed.
    pub(crate) rss_after: Vec<u64>,
    /// The subscribing of the first round (all sockets at once).
    pub(crate) subscribe_time: Duration,
}

impl ChannelsResult {
    /// RSS after the last round, as a fraction of the RSS before (1.0 = all given back).
    pub(crate) fn retained_ratio(&self) -> f64 {
        self.rss_after.last().copied().unwrap_or(0) as f64 / self.rss_before.max(1) as f64
    }

    pub(crate) fn peak(&self) -> u64 {
        self.rss_peak.iter().copied().max().unwrap_or(0)
    }
}

/// Starts a server on the memory scaler and runs the rounds against it.
pub(crate) async fn run(o: &Opts) -> Result<ChannelsResult> {
    let server = ServerProc::spawn(&Spec::new(Kind::Sss, o.server_cpus.clone())).await?;
    let r = measure(o, &server).await;
    server.stop().await;
    r
}

/// Time for the server to finish what the last frames started before its RSS is read (the
/// `idle` scenario waits the same): there is no event that says it is done.
const SETTLE: Duration = Duration::from_secs(1);

async fn measure(o: &Opts, server: &ServerProc) -> Result<ChannelsResult> {
    let addr = server.addrs[0];
    let pid = server.pid();
    let sockets = o.channel_sockets.clamp(1, o.channels.max(1));
    let per_socket = o.channels.div_ceil(sockets);
    // One round trip first, so what every server pays once is not counted.
    let mut first = wire::connect(addr).await?;
    wire::hello(&mut first, Duration::from_secs(10)).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_before = procfs::rss_bytes(pid)?;
    let mut r = ChannelsResult {
        channels: per_socket * sockets,
        sockets,
        errors: 0,
        rss_before,
        rss_peak: Vec::new(),
        rss_after: Vec::new(),
        subscribe_time: Duration::ZERO,
    };
    for round in 0..ROUNDS {
        let (ready_tx, mut ready_rx) = mpsc::channel(sockets);
        let (leave_tx, leave_rx) = watch::channel(false);
        let started = Instant::now();
        let tasks: Vec<_> = (0..sockets)
            .map(|s| {
                let names = (0..per_socket)
                    .map(|i| format!("gc{round}:{s}:{i}"))
                    .collect();
                tokio::spawn(socket(addr, names, ready_tx.clone(), leave_rx.clone()))
            })
            .collect();
        drop(ready_tx);
        let deadline = Instant::now() + Duration::from_secs(300);
        for _ in 0..sockets {
            match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
                Ok(Some(())) => {}
                // A failed socket reports its error when joined.
                Ok(None) => break,
                Err(_) => return Err("channels not subscribed within 300 s".into()),
            }
        }
        if round == 0 {
            r.subscribe_time = started.elapsed();
        }
        tokio::time::sleep(SETTLE).await;
        r.rss_peak.push(procfs::rss_bytes(pid)?);
        leave_tx.send_replace(true);
        for t in join_all(tasks).await {
            match t {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    r.errors += 1;
                    eprintln!("channels socket failed: {e}");
                }
                Err(e) => {
                    r.errors += 1;
                    eprintln!("channels socket task failed: {e}");
                }
            }
        }
        tokio::time::sleep(SETTLE).await;
        r.rss_after.push(procfs::rss_bytes(pid)?);
        eprintln!(
            "channels round {}: peak {:.1} MB, after {:.1} MB (before {:.1} MB)",
            round + 1,
            mb(*r.rss_peak.last().unwrap_or(&0)),
            mb(*r.rss_after.last().unwrap_or(&0)),
            mb(rss_before)
        );
    }
    drop(first);
    Ok(r)
}

pub(crate) fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One socket: subscribes to `names` (pipelined, [`WINDOW`] at a time), says so on `ready`,
/// waits for `leave`, unsubscribes from all of them and closes.
async fn socket(
    addr: SocketAddr,
    names: Vec<String>,
    ready: mpsc::Sender<()>,
    mut leave: watch::Receiver<bool>,
) -> Result<()> {
    let limit = Duration::from_secs(30);
    let mut ws = wire::connect(addr).await?;
    wire::hello(&mut ws, limit).await?;
    let mut id = 0u64;
    for window in names.chunks(WINDOW) {
        for ch in window {
            id += 1;
            wire::send(&mut ws, format!(r#"{{"t":"sub","id":{id},"ch":"{ch}"}}"#)).await?;
        }
        for _ in window {
            let text = wire::expect(&mut ws, limit).await?;
            let f = In::parse(&text)?;
            if f.t != "subok" {
                return Err(format!("expected subok, got {}", f.why()).into());
            }
        }
    }
    // Fails only if the scenario gave up waiting.
    let _ = ready.send(()).await;
    drop(ready);
    leave.wait_for(|l| *l).await?;
    for ch in &names {
        wire::send(&mut ws, format!(r#"{{"t":"unsub","ch":"{ch}"}}"#)).await?;
    }
    // `unsub` has no answer: an ask answered after them shows the server has read them all.
    wire::send(
        &mut ws,
        r#"{"t":"ask","id":1,"topic":"echo","msg":null}"#.to_owned(),
    )
    .await?;
    loop {
        let text = wire::expect(&mut ws, limit).await?;
        let f = In::parse(&text)?;
        match (&*f.t, f.id) {
            ("res", Some(1)) => break,
            ("unsubbed" | "pub", _) => {}
            _ => return Err(format!("expected res 1, got {}", f.why()).into()),
        }
    }
    close(&mut ws).await
}

/// Sends a close frame and waits for the server's (or the end of the connection).
async fn close(ws: &mut Ws) -> Result<()> {
    ws.close(None).await?;
    while let Ok(Some(_)) = wire::recv(ws, Duration::from_secs(10)).await {}
    Ok(())
}
