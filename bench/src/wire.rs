//! A lightweight client speaking the Super Scaled Sockets wire protocol over tokio-tungstenite.
//!
//! The load side uses this rather than `sss-client` so that thousands of connections cost the
//! load generator little: one task and one socket each, frames parsed without copying.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::Result;

/// A client connection.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// The server frames the load side looks at (unknown fields are ignored).
#[derive(Deserialize)]
pub(crate) struct In<'a> {
    #[serde(borrow)]
    pub(crate) t: Cow<'a, str>,
    pub(crate) id: Option<u64>,
    #[serde(borrow)]
    pub(crate) pos: Option<Pos<'a>>,
    #[serde(borrow)]
    pub(crate) msg: Option<&'a RawValue>,
    pub(crate) recovered: Option<bool>,
    #[serde(borrow)]
    pub(crate) code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) reason: Option<Cow<'a, str>>,
}

/// A position, borrowed.
#[derive(Deserialize)]
pub(crate) struct Pos<'a> {
    #[serde(borrow)]
    pub(crate) e: Cow<'a, str>,
    pub(crate) s: u64,
}

/// The timestamp the publishers put in every publication.
#[derive(Deserialize)]
pub(crate) struct Stamped {
    pub(crate) ts: u64,
}

impl<'a> In<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<Self> {
        Ok(serde_json::from_str(text)?)
    }

    /// The `code: reason` of a refusal, for error messages.
    pub(crate) fn why(&self) -> String {
        format!(
            "{} {}: {}",
            self.t,
            self.code.as_deref().unwrap_or("?"),
            self.reason.as_deref().unwrap_or("")
        )
    }
}

/// Microseconds since the Unix epoch: comparable between the processes of one machine.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// An application payload of about `size` bytes: `{"pad":"xxx…"}`.
pub(crate) fn pad(size: usize) -> String {
    format!(r#"{{"pad":"{}"}}"#, "x".repeat(size.saturating_sub(10)))
}

/// A publication payload of about `size` bytes carrying the send time.
pub(crate) fn stamped(size: usize) -> String {
    format!(
        r#"{{"ts":{},"pad":"{}"}}"#,
        now_us(),
        "x".repeat(size.saturating_sub(30))
    )
}

/// Opens a WebSocket to `addr` (no protocol handshake yet).
pub(crate) async fn connect(addr: SocketAddr) -> Result<Ws> {
    connect_from(addr, None, 16 * 1024).await
}

/// Opens a WebSocket to `addr` from the local address `source` (any when `None`), with a read
/// buffer of `read_buffer` bytes.
pub(crate) async fn connect_from(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    read_buffer: usize,
) -> Result<Ws> {
    let tcp = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{addr}/"), tcp, Some(config))
            .await?;
    Ok(ws)
}

/// Sends one text frame.
/// Queues a text frame for the next `send` (which writes everything queued at once).
pub(crate) async fn feed(ws: &mut Ws, text: String) -> Result<()> {
    ws.feed(Message::Text(text.into())).await?;
    Ok(())
}

pub(crate) async fn send(ws: &mut Ws, text: String) -> Result<()> {
    ws.send(Message::Text(text.into())).await?;
    Ok(())
}

/// The next text frame, `Ok(None)` once the connection is closed. Server pings are answered on
/// the way. Fails after `limit` without a frame.
pub(crate) async fn recv(ws: &mut Ws, limit: Duration) -> Result<Option<Utf8Bytes>> {
    loop {
        let msg = tokio::time::timeout(limit, ws.next())
            .await
            .map_err(|_| format!("no frame within {limit:?}"))?;
        match msg {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) if t.as_str() == r#"{"t":"ping"}"# => {
                send(ws, r#"{"t":"pong"}"#.to_owned()).await?;
            }
            Some(Ok(Message::Text(t))) => return Ok(Some(t)),
            Some(Ok(_)) => {}
        }
    }
}

/// The next text frame; a closed connection is an error.
pub(crate) async fn expect(ws: &mut Ws, limit: Duration) -> Result<Utf8Bytes> {
    recv(ws, limit)
        .await?
        .ok_or_else(|| "connection closed".into())
}

/// `hello` / `welcome`.
pub(crate) async fn hello(ws: &mut Ws, limit: Duration) -> Result<()> {
    send(ws, r#"{"t":"hello","v":1}"#.to_owned()).await?;
    let text = expect(ws, limit).await?;
    let frame = In::parse(&text)?;
    if frame.t != "welcome" {
        return Err(format!("expected welcome, got {}", frame.why()).into());
    }
    Ok(())
}

/// Where a subscription starts: the channel's position and, for a resync, whether the history
/// reached back.
pub(crate) struct Subok {
    pub(crate) epoch: String,
    pub(crate) seq: u64,
    pub(crate) recovered: Option<bool>,
}

/// `sub` / `subok`, with `since` = `(epoch, seq)` for a resync.
pub(crate) async fn subscribe(
    ws: &mut Ws,
    id: u64,
    channel: &str,
    since: Option<(&str, u64)>,
    limit: Duration,
) -> Result<Subok> {
    let frame = match since {
        None => serde_json::json!({"t": "sub", "id": id, "ch": channel}),
        Some((e, s)) => {
            serde_json::json!({"t": "sub", "id": id, "ch": channel, "since": {"e": e, "s": s}})
        }
    };
    send(ws, frame.to_string()).await?;
    let text = expect(ws, limit).await?;
    let frame = In::parse(&text)?;
    match (&*frame.t, frame.id, frame.pos) {
        ("subok", Some(i), Some(pos)) if i == id => Ok(Subok {
            epoch: pos.e.into_owned(),
            seq: pos.s,
            recovered: frame.recovered,
        }),
        _ => Err(format!("expected subok {id}, got {text}").into()),
    }
}

/// A small, fast, seeded random number generator (splitmix64), for jitter.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniformly random duration in `[0, max]`.
    pub(crate) fn upto(&mut self, max: Duration) -> Duration {
        let ms = max.as_micros() as u64;
        Duration::from_micros(if ms == 0 { 0 } else { self.next() % (ms + 1) })
    }
}
