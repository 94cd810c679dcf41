//! Fan-out of one publication to 1000 local subscribers, through the public API only.
//!
//! Each subscriber is a real socket of the server ([`Server::serve_io`]) over an in-memory duplex
//! pipe, with a raw WebSocket client on the other end that only counts frames (no JSON): what is
//! measured is the server's whole path per publication — the scaler, the registry, 1000 queue
//! pushes, 1000 socket tasks waking and each writing one WebSocket frame — without TCP. Run with
//! `cargo bench -p sss-server --bench fanout`.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sss_server::{MemoryScaler, Server, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Notify;

const SUBSCRIBERS: usize = 1000;
const CHANNEL: &str = "fan";

/// A masked client text frame (mask key 0: the payload is unchanged).
fn client_frame(text: &str) -> Vec<u8> {
    assert!(text.len() < 126);
    let mut f = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(text.as_bytes());
    f
}

/// Removes every complete server frame at the front of `buf`; returns their payloads' count and
/// whether one of them contains `needle`.
fn take_frames(buf: &mut Vec<u8>, needle: &[u8]) -> (usize, bool) {
    let (mut n, mut found) = (0, false);
    loop {
        if buf.len() < 2 {
            break;
        }
        let (hdr, len) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
            126 => break,
            127 => panic!("frame too large for this bench"),
            l => (2, l as usize),
        };
        if buf.len() < hdr + len {
            break;
        }
        found |= !needle.is_empty()
            && buf[hdr..hdr + len]
                .windows(needle.len())
                .any(|w| w == needle);
        buf.drain(..hdr + len);
        n += 1;
    }
    (n, found)
}

/// Connects one subscriber and returns its client end once subscribed.
async fn subscriber(server: &Server) -> DuplexStream {
    let (mut client, end) = tokio::io::duplex(64 * 1024);
    let s = server.clone();
    tokio::spawn(async move { s.serve_io(end, None).await });
    client
        .write_all(
            b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("write upgrade");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        client.read_exact(&mut b).await.expect("read upgrade");
        head.push(b[0]);
    }
    client
        .write_all(&client_frame(r#"{"t":"hello","v":1}"#))
        .await
        .expect("hello");
    client
        .write_all(&client_frame(&format!(
            r#"{{"t":"sub","id":1,"ch":"{CHANNEL}"}}"#
        )))
        .await
        .expect("sub");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await.expect("read");
        assert!(n > 0, "server closed");
        buf.extend_from_slice(&chunk[..n]);
        if take_frames(&mut buf, b"\"subok\"").1 {
            return client;
        }
    }
}

/// Counts the frames a subscriber receives into `pending`, notifying when it reaches zero.
async fn count_frames(mut client: DuplexStream, pending: Arc<AtomicUsize>, done: Arc<Notify>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let Ok(n) = client.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let (frames, _) = take_frames(&mut buf, b"");
        if frames > 0 && pending.fetch_sub(frames, Ordering::AcqRel) == frames {
            done.notify_one();
        }
    }
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pending = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let server = rt.block_on(async {
        let server = Server::builder(MemoryScaler::default())
            .options(ServerOptions::default().heartbeat(Duration::from_secs(3600)))
            .build()
            .await
            .expect("server");
        for _ in 0..SUBSCRIBERS {
            let client = subscriber(&server).await;
            tokio::spawn(count_frames(client, pending.clone(), done.clone()));
        }
        server
    });
    let payload = serde_json::json!({"from": "ann", "text": "a message of about one hundred bytes, give or take"});
    let mut group = c.benchmark_group("fan-out");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.bench_function("publish to 1000 local subscribers", |b| {
        b.to_async(&rt).iter(|| async {
            pending.store(SUBSCRIBERS, Ordering::Release);
            server
                .publish(CHANNEL, "msg", &payload)
                .await
                .expect("publish");
            done.notified().await;
        })
    });
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
