//! Three server processes on a real local Redis Cluster: 10,000 publications over 100 channels
//! while the master of one shard is killed with SIGKILL and its replica takes over. Every client
//! gets every publication exactly once and in order, or is told its channel is unrecoverable
//! before any gap; channels on the other shards lose nothing and keep their epoch.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use sss_client::{Client, Options, SubEvent};
use sss_core::client::Reconnect;
use sss_server::scaler::{RedisOptions, RedisScaler};
use sss_server::Server;
use sss_tests::services::RedisCluster;
use sss_tests::{init_tracing, spawn_ready, within};
use tokio::sync::mpsc;

const CHANNELS: usize = 100;
const PER_CHANNEL: u64 = 100;
/// Publications made before the kill.
const BEFORE_KILL: u64 = 3000;

/// What one subscription saw, in order.
#[derive(Debug, PartialEq)]
enum Seen {
    Value(u64),
    Unrecoverable,
}

fn channel(i: usize) -> String {
    format!("feed:{i}")
}

#[tokio::test]
async fn kill_9_a_master_under_load_loses_nothing_silently() {
    init_tracing();
    let mut cluster = RedisCluster::spawn().await;
    let urls = cluster.urls().join(",");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let args = ["--redis-cluster", &urls, "--history", "1000"];
        let (child, line) = spawn_ready(env!("CARGO_BIN_EXE_sss-node"), &args).await;
        let addr = line.strip_prefix("listening on ").expect("listening line");
        nodes.push((child, format!("ws://{addr}/ws")));
    }
    let options = Options::default().reconnect(Reconnect {
        base: Duration::from_millis(20),
        max: Duration::from_millis(300),
        max_attempts: None,
    });
    // Two clients per server process, each subscribed to every channel.
    let mut readers = Vec::new();
    let mut clients = Vec::new();
    for i in 0..6 {
        let url = nodes[i % 3].1.clone();
        let client = within("connect", Client::connect(url, options.clone()))
            .await
            .expect("connects");
        for c in 0..CHANNELS {
            let mut sub = within("subscribe", client.subscribe(&channel(c), None::<()>))
                .await
                .expect("subscribes");
            readers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    // Longer than `within`: a failover takes seconds.
                    let next = tokio::time::timeout(Duration::from_secs(60), sub.next()).await;
                    let next =
                        next.unwrap_or_else(|_| panic!("{}: stuck after {seen:?}", channel(c)));
                    match next {
                        Some(SubEvent::Publication(p)) => {
                            let n = p.decode::<u64>().expect("a number");
                            seen.push(Seen::Value(n));
                            if n == PER_CHANNEL {
                                return (c, seen);
                            }
                        }
                        Some(SubEvent::Unrecoverable { .. }) => seen.push(Seen::Unrecoverable),
                        Some(SubEvent::Recovered { .. }) => {}
                        other => panic!("{}: {other:?}", channel(c)),
                    }
                }
            }));
        }
        clients.push(client);
    }

    let scaler = RedisScaler::connect_cluster(&cluster.urls(), RedisOptions::default())
        .await
        .expect("the publisher connects");
    let publisher = Arc::new(Server::builder(scaler).build().await.expect("publisher"));
    // The values whose publish failed at least once (and was retried): a failed publish may
    // still have been appended, so these may arrive twice, one right after the other.
    let retried = Arc::new(Mutex::new(HashSet::<(usize, u64)>::new()));
    let (progress, mut published) = mpsc::unbounded_channel();
    let mut publishers = Vec::new();
    for c in 0..CHANNELS {
        let (publisher, retried, progress) = (publisher.clone(), retried.clone(), progress.clone());
        publishers.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for n in 1..=PER_CHANNEL {
                let start = tokio::time::Instant::now();
                let mut tries = 0;
                while let Err(e) = publisher.publish(&channel(c), "n", &n).await {
                    tracing::debug!(channel = channel(c), n, error = %e, "publish retried");
                    retried.lock().expect("retried").insert((c, n));
                    tries += 1;
                    assert!(tries < 600, "{}: the cluster did not recover", channel(c));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                slowest = slowest.max(start.elapsed());
                let _ = progress.send(());
            }
            slowest
        }));
    }
    drop(progress);
    for _ in 0..BEFORE_KILL {
        within("progress", published.recv())
            .await
            .expect("publishing");
    }
    let killed = cluster
        .kill_master_of(&format!("sss:{{{}}}", channel(0)))
        .await;
    tracing::info!(killed, "a master was killed and its replica took over");
    let mut slowest = Duration::ZERO;
    for p in publishers {
        slowest = slowest.max(p.await.expect("publisher task"));
    }

    let retried = retried.lock().expect("retried").clone();
    let mut failed_shard = HashSet::new();
    for c in 0..CHANNELS {
        if cluster.master_of(&format!("sss:{{{}}}", channel(c))).await
            == cluster.master_of(&format!("sss:{{{}}}", channel(0))).await
        {
            failed_shard.insert(c);
        }
    }
    let (mut gaps, mut unrecoverable, mut doubled) = (0, 0, 0);
    for r in readers {
        let (c, seen) = r.await.expect("reader task");
        let mut last = 0;
        let mut told = false;
        let mut values = Vec::new();
        for s in &seen {
            match *s {
                Seen::Unrecoverable => {
                    told = true;
                    unrecoverable += 1;
                }
                Seen::Value(n) if n == last && retried.contains(&(c, n)) => doubled += 1,
                Seen::Value(n) => {
                    assert!(n > last, "{}: {n} after {last}: {seen:?}", channel(c));
                    if n != last + 1 {
                        assert!(
                            told,
                            "{}: {} to {n} missed without being told: {seen:?}",
                            channel(c),
                            last + 1
                        );
                        gaps += 1;
                    }
                    last = n;
                    told = false;
                    values.push(n);
                }
            }
        }
        if !failed_shard.contains(&c) {
            // Its history survived: nothing lost, and the epoch kept.
            assert!(
                !seen.contains(&Seen::Unrecoverable)
                    && values == (1..=PER_CHANNEL).collect::<Vec<_>>(),
                "{}: on a shard that did not fail: {seen:?}",
                channel(c)
            );
        }
    }
    println!(
        "redis cluster failover: {} of {CHANNELS} channels on the killed shard, {} publishes retried, \
         {gaps} gaps (each told), {unrecoverable} unrecoverable, {doubled} retried values twice, \
         slowest publish (retries included) {slowest:?}",
        failed_shard.len(),
        retried.len()
    );
    drop(clients);
}
