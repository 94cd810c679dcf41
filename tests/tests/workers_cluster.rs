//! Worker mode with real processes: 2 gateways and 3 workers (`sss-node`) on one real Redis.
//! 10 000 asks from clients spread over both gateways, while one worker is killed with
//! SIGKILL and another is added: every ask is answered exactly once (a result, or
//! `unavailable`/`timeout`), and every routed tell runs at least once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sss_tests::services::{unique_prefix, RedisServer};
use sss_tests::{init_tracing, spawn_ready, within, RawPeer};
use tokio::process::Child;
use tokio::sync::watch;

const CLIENTS: usize = 20;
const ASKS_PER_CLIENT: usize = 500;
const TELLS_PER_CLIENT: usize = 50;
/// Asks each client keeps in flight.
const WINDOW: usize = 32;
/// How long a job stays with a worker, unacknowledged, before another claims it.
const CLAIM_IDLE: Duration = Duration::from_millis(500);

/// One `sss-node` process and the first line it printed.
struct Node {
    child: Child,
    line: String,
}

async fn spawn(redis: &str, prefix: &str, args: &[&str]) -> Node {
    let mut all = vec!["--redis", redis, "--prefix", prefix];
    all.extend_from_slice(args);
    let (child, line) = spawn_ready(env!("CARGO_BIN_EXE_sss-node"), &all).await;
    Node { child, line }
}

async fn gateway(redis: &str, prefix: &str) -> (Node, String) {
    let node = spawn(
        redis,
        prefix,
        &[
            "--gateway-asks",
            "work,boom",
            "--gateway-tells",
            "note",
            "--ask-timeout-ms",
            "5000",
        ],
    )
    .await;
    let addr = node.line.strip_prefix("listening on ").expect("listening");
    let url = format!("ws://{addr}/ws");
    (node, url)
}

async fn worker(redis: &str, prefix: &str) -> (Node, String) {
    let idle = CLAIM_IDLE.as_millis().to_string();
    let node = spawn(redis, prefix, &["--worker", "--claim-idle-ms", &idle]).await;
    let id = node
        .line
        .strip_prefix("worker ready ")
        .expect("worker line")
        .to_owned();
    (node, id)
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Answers per ask id: (outcome, worker) for each answer.
    answers: HashMap<u64, Vec<Result<String, String>>>,
    /// How often each tell came back.
    noted: HashMap<u64, usize>,
    /// Asks answered only after a worker's claim time: jobs another worker claimed.
    claimed: usize,
}

/// Sends `ASKS_PER_CLIENT` asks (`WINDOW` in flight) and `TELLS_PER_CLIENT` tells, and reads
/// until every ask is answered and every tell came back.
async fn run_client(
    url: String,
    client: usize,
    answered: Arc<AtomicUsize>,
    progress: watch::Sender<usize>,
) -> Seen {
    let mut peer = RawPeer::hello(&url).await;
    let mut seen = Seen::default();
    let mut next = 0usize;
    let mut tells = 0usize;
    let mut sent_at = HashMap::new();
    let start = Instant::now();
    let ask = |i: usize| {
        let n = client * ASKS_PER_CLIENT + i;
        format!(
            r#"{{"t":"ask","id":{},"topic":"work","msg":{{"n":{n},"ms":20}}}}"#,
            i + 1
        )
    };
    let tell = |i: usize| {
        let n = client * TELLS_PER_CLIENT + i;
        format!(r#"{{"t":"tell","topic":"note","msg":{n}}}"#)
    };
    let first: Vec<String> = (0..WINDOW).map(ask).collect();
    sent_at.extend((1..=WINDOW as u64).map(|id| (id, start)));
    peer.send_pipelined(&first).await;
    next += WINDOW;
    let done =
        |seen: &Seen| seen.answers.len() == ASKS_PER_CLIENT && seen.noted.len() == TELLS_PER_CLIENT;
    while !done(&seen) {
        let text = peer.next_text().await.expect("connection stays open");
        let frame: Value = serde_json::from_str(&text).expect("json frame");
        match frame["t"].as_str() {
            Some("res") | Some("rej") => {
                let id = frame["id"].as_u64().expect("id");
                let outcome = match frame["t"].as_str() {
                    Some("res") => Ok(frame["msg"]["worker"].as_str().unwrap_or("").to_owned()),
                    _ => Err(frame["code"].as_str().unwrap_or("").to_owned()),
                };
                let answers = seen.answers.entry(id).or_default();
                answers.push(outcome);
                if answers.len() == 1 {
                    if sent_at.get(&id).is_some_and(|t| t.elapsed() >= CLAIM_IDLE) {
                        seen.claimed += 1;
                    }
                    let total = answered.fetch_add(1, Ordering::Relaxed) + 1;
                    progress.send_replace(total);
                }
                if next < ASKS_PER_CLIENT {
                    peer.send(&ask(next)).await;
                    next += 1;
                    sent_at.insert(next as u64, Instant::now());
                }
                // One tell every ten answers, until all are sent.
                if tells < TELLS_PER_CLIENT && next.is_multiple_of(10) {
                    peer.send(&tell(tells)).await;
                    tells += 1;
                }
            }
            Some("tell") if frame["topic"] == "noted" => {
                let n = frame["msg"].as_u64().expect("n");
                *seen.noted.entry(n).or_default() += 1;
            }
            _ => {}
        }
        // Tells not sent yet because the asks ran out.
        while next >= ASKS_PER_CLIENT && tells < TELLS_PER_CLIENT {
            peer.send(&tell(tells)).await;
            tells += 1;
        }
    }
    // A marker: the answer to one more ask, sent once every ask was answered; any second
    // answer to an earlier ask that the gateway let through before it is counted.
    peer.send(r#"{"t":"ask","id":999999,"topic":"instance","msg":null}"#)
        .await;
    for text in peer.until_marker(r#""id":999999"#).await {
        let frame: Value = serde_json::from_str(&text).expect("json frame");
        if let Some(id) = frame["id"].as_u64() {
            seen.answers
                .entry(id)
                .or_default()
                .push(Err("late".to_owned()));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_asks_exactly_once_while_a_worker_is_killed_and_another_added() {
    init_tracing();
    let redis = RedisServer::start().await;
    let prefix = unique_prefix();
    let (_g1, first) = gateway(redis.url(), &prefix).await;
    let (_g2, second) = gateway(redis.url(), &prefix).await;
    let gateways = [first, second];
    let (mut doomed, doomed_id) = worker(redis.url(), &prefix).await;
    let _w2 = worker(redis.url(), &prefix).await;
    let _w3 = worker(redis.url(), &prefix).await;

    let answered = Arc::new(AtomicUsize::new(0));
    let (progress, mut watch_progress) = watch::channel(0usize);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = gateways[c % 2].clone();
            tokio::spawn(run_client(url, c, answered.clone(), progress.clone()))
        })
        .collect();

    let total = CLIENTS * ASKS_PER_CLIENT;
    within("2000 answers", watch_progress.wait_for(|n| *n >= 2000))
        .await
        .expect("progress");
    doomed.child.kill().await.expect("kill -9 a worker");
    within("5000 answers", watch_progress.wait_for(|n| *n >= 5000))
        .await
        .expect("progress");
    let (_w4, added_id) = worker(redis.url(), &prefix).await;

    let mut by_worker: HashMap<String, usize> = HashMap::new();
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut noted_twice = 0;
    let mut claimed = 0;
    for (c, client) in clients.into_iter().enumerate() {
        let seen = within("a client's asks and tells", client)
            .await
            .expect("client task");
        assert_eq!(
            seen.answers.len(),
            ASKS_PER_CLIENT,
            "client {c}: every ask answered"
        );
        for (id, answers) in &seen.answers {
            assert_eq!(
                answers.len(),
                1,
                "client {c}, ask {id}: exactly one answer: {answers:?}"
            );
            match &answers[0] {
                Ok(worker) => *by_worker.entry(worker.clone()).or_default() += 1,
                Err(code) => *errors.entry(code.clone()).or_default() += 1,
            }
        }
        assert_eq!(
            seen.noted.len(),
            TELLS_PER_CLIENT,
            "client {c}: every tell ran"
        );
        noted_twice += seen.noted.values().filter(|n| **n > 1).count();
        claimed += seen.claimed;
    }
    eprintln!(
        "{total} asks: answered by worker {by_worker:?}, errors {errors:?}; answered after a \
         claim: {claimed}; tells run twice: {noted_twice}"
    );
    for code in errors.keys() {
        assert!(
            code == "unavailable" || code == "timeout",
            "only unavailable or timeout may replace a result: {errors:?}"
        );
    }
    let failed: usize = errors.values().sum();
    assert!(
        failed * 100 <= total,
        "at most 1% unanswered by a worker: {errors:?}"
    );
    assert!(
        by_worker.get(&doomed_id).copied().unwrap_or(0) > 0,
        "the killed worker had served"
    );
    assert!(
        by_worker.get(&added_id).copied().unwrap_or(0) > 0,
        "the added worker served"
    );
}
