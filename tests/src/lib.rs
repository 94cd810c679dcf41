//! Shared helpers of the end-to-end tests: start servers on loopback, raw WebSocket peers.
#![forbid(unsafe_code)]

pub mod conformance;
pub mod redis_backend;
pub mod services;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sss_server::{Listening, Server, ServerBuilder};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound on any single wait in a test: a hung test fails instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(20);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Starts a test binary (`env!("CARGO_BIN_EXE_...")`) with `args`, killed when the returned
/// child is dropped, and waits for the first line it prints (its "ready" line).
pub async fn spawn_ready(exe: &str, args: &[&str]) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the process starts");
    let stdout = child.stdout.take().expect("stdout");
    let line = within(
        "the ready line",
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("read stdout")
    .expect("a line");
    (child, line)
}

/// Builds the server and listens on a free loopback port; returns it with its ws:// URL.
pub async fn start(builder: ServerBuilder) -> (Server, Listening, String) {
    init_tracing();
    let server = builder.build().await.expect("server starts");
    let listening = server.listen("127.0.0.1:0").await.expect("listens");
    let url = format!("ws://{}/ws", listening.local_addr());
    (server, listening, url)
}

/// Restarts a server on the same address: shuts it down (its clients see 1001 and reconnect),
/// then builds `next` and listens where it listened.
pub async fn restart(
    server: Server,
    listening: Listening,
    next: ServerBuilder,
) -> (Server, Listening) {
    let addr = listening.local_addr();
    server.shutdown(Duration::from_secs(5)).await;
    listening.stopped().await;
    let server = next.build().await.expect("server starts");
    let listening = server.listen(addr).await.expect("listens again");
    (server, listening)
}

/// A raw WebSocket peer that speaks the protocol by hand, to send what a real client never
/// would.
pub struct RawPeer {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl RawPeer {
    /// Connects without saying hello.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = within("raw connect", tokio_tungstenite::connect_async(url))
            .await
            .expect("raw connect");
        Self { ws }
    }

    /// Connects with a receive buffer of `bytes` (the kernel's minimum applies): a client on a
    /// slow link, whose data waits in the server's send queue while it reads.
    pub async fn connect_narrow(url: &str, bytes: u32) -> Self {
        let uri: http::Uri = url.parse().expect("url");
        let host = uri.host().expect("host");
        let port = uri.port_u16().expect("port");
        let addr = tokio::net::lookup_host((host, port))
            .await
            .expect("resolve")
            .next()
            .expect("an address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let tcp = within("tcp connect", socket.connect(addr))
            .await
            .expect("tcp connect");
        let (ws, _) = within(
            "raw connect",
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("raw connect");
        Self { ws }
    }

    /// Connects and completes the hello/welcome exchange.
    pub async fn hello(url: &str) -> Self {
        let peer = Self::connect(url).await;
        peer.welcomed().await
    }

    /// Says hello on a connected peer and reads the welcome.
    pub async fn welcomed(mut self) -> Self {
        let peer = &mut self;
        peer.send(r#"{"t":"hello","v":1}"#).await;
        let welcome = peer.next_text().await.expect("welcome");
        assert!(welcome.contains(r#""t":"welcome""#), "{welcome}");
        self
    }

    /// Sends one text frame.
    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("raw send");
    }

    /// Sends several text frames in one write: pipelined, as an attacker would, so the server
    /// reads them all before any async work it starts for the first can complete.
    pub async fn send_pipelined<S: AsRef<str>>(&mut self, frames: &[S]) {
        for f in frames {
            self.ws
                .feed(Message::Text(f.as_ref().into()))
                .await
                .expect("raw feed");
        }
        self.ws.flush().await.expect("raw flush");
    }

    /// Reads text frames up to and including the first one containing `marker`; returns the
    /// frames before it. A marker (the answer to an ask sent last) proves that nothing else
    /// arrived before it, without waiting for a time.
    pub async fn until_marker(&mut self, marker: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let t = self
                .next_text()
                .await
                .expect("connection open until the marker");
            if t.contains(marker) {
                return before;
            }
            before.push(t);
        }
    }

    /// Sends one message of any kind.
    pub async fn send_message(&mut self, m: Message) {
        self.ws.send(m).await.expect("raw send");
    }

    /// The next text frame, or `None` when the connection closed.
    pub async fn next_text(&mut self) -> Option<String> {
        loop {
            match within("raw frame", self.ws.next()).await {
                Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        self.until_closed().await.1
    }

    /// Reads until the server closes; returns the text frames read on the way, and the close
    /// code and reason.
    pub async fn until_closed(&mut self) -> (Vec<String>, (u16, String)) {
        let mut texts = Vec::new();
        loop {
            match within("close frame", self.ws.next()).await {
                Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
                Some(Ok(Message::Close(Some(f)))) => {
                    return (texts, (u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(Message::Close(None))) => return (texts, (1005, String::new())),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed without a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}
