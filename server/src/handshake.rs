//! The HTTP side: the WebSocket upgrade, the session parser's view of it, and listening.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::field::Empty;
use tracing::{debug, debug_span, warn, Instrument};

use crate::metrics::Refused;
use crate::server::Inner;
use crate::Server;

/// The body type of the HTTP responses the server produces.
pub type Body = Full<Bytes>;

/// What the session parser sees of a WebSocket handshake: the HTTP upgrade request, and the
/// credentials the client's `hello` carried ([`auth`](Self::auth)).
#[derive(Debug, Clone)]
pub struct HandshakeRequest {
    /// Request URI (path and query).
    pub uri: Uri,
    /// All request headers.
    pub headers: HeaderMap,
    /// Cookies from the `Cookie` header, by name.
    pub cookies: HashMap<String, String>,
    /// Query-string parameters, percent-decoded.
    pub query: HashMap<String, String>,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
    /// The peer's address, when the server knows it.
    pub peer: Option<SocketAddr>,
    /// The `hello`'s `auth`.
    auth: Option<Box<RawValue>>,
}

impl HandshakeRequest {
    pub(crate) fn from_parts(uri: Uri, headers: HeaderMap, peer: Option<SocketAddr>) -> Self {
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            })
            .collect();
        let query = uri
            .query()
            .map(|q| {
                q.split('&')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (percent_decode(k), percent_decode(v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self {
            uri,
            headers,
            cookies,
            query,
            origin,
            peer,
            auth: None,
        }
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// The credentials the client's `hello` carried (its `auth` option: a token, or any JSON),
    /// as raw JSON; `None` when it sent none. A JSON string `"abc"` reads `"\"abc\""` here:
    /// see [`auth_as`](Self::auth_as).
    pub fn auth(&self) -> Option<&RawValue> {
        self.auth.as_deref()
    }

    /// The `hello`'s credentials deserialized as `T`: `None` when there are none or they are
    /// not a `T` (for a plain token, `T = String`).
    pub fn auth_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.auth()?.get()).ok()
    }

    /// The request with the `hello`'s credentials.
    pub(crate) fn with_auth(mut self, auth: Option<Box<RawValue>>) -> Self {
        self.auth = auth;
        self
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The session parser's refusal of a `hello`: the client gets an `error` frame with this code
/// and reason, then close [`close::HANDSHAKE_REFUSED`](crate::close::HANDSHAKE_REFUSED), and does
/// not reconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Refusal {
    /// Stable code: [`codes::UNAUTHORIZED`](crate::codes::UNAUTHORIZED),
    /// [`codes::FORBIDDEN`](crate::codes::FORBIDDEN), or the application's own.
    pub code: String,
    /// Human-readable reason.
    pub reason: String,
}

impl Refusal {
    /// A refusal with an application code.
    pub fn new(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            reason: reason.into(),
        }
    }

    /// Code `unauthorized`: no credentials, or bad ones.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(sss_core::protocol::codes::UNAUTHORIZED, reason)
    }

    /// Code `forbidden`: valid credentials, not allowed here.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(sss_core::protocol::codes::FORBIDDEN, reason)
    }
}

pub(crate) fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// A handshake refused: why, and the answer.
fn refused(why: Refused, status: StatusCode, body: impl Into<Bytes>) -> (Refused, Response<Body>) {
    (why, text_response(status, body))
}

/// Whether a request asks for a WebSocket upgrade.
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.method() == Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

impl Server {
    /// Handles one HTTP request that should be a WebSocket upgrade: checks it, runs the allowed
    /// origins check, and answers `101 Switching Protocols` (the socket then runs in its own
    /// task, where the session parser sees the request and the `hello`) or the refusal.
    ///
    /// Use this to mount the server in a hyper or axum application; [`Server::listen`] uses it
    /// for every request.
    pub async fn upgrade<B>(&self, req: Request<B>, peer: Option<SocketAddr>) -> Response<Body>
    where
        B: Send + 'static,
    {
        let start = Instant::now();
        let span = debug_span!(
            "handshake",
            peer = peer.map(tracing::field::display),
            socket = Empty
        );
        let answer = self.handshake(req, peer).instrument(span.clone()).await;
        let metrics = &self.inner.metrics;
        metrics.handshake.observe(start.elapsed());
        match answer {
            Ok(res) => {
                span.in_scope(|| debug!("handshake accepted"));
                res
            }
            Err((why, res)) => {
                metrics.refused(why);
                span.in_scope(|| debug!(status = res.status().as_u16(), "handshake refused"));
                res
            }
        }
    }

    /// [`upgrade`](Self::upgrade) less its bookkeeping: the `101` answer, or why not and the
    /// refusal.
    async fn handshake<B>(
        &self,
        mut req: Request<B>,
        peer: Option<SocketAddr>,
    ) -> Result<Response<Body>, (Refused, Response<Body>)>
    where
        B: Send + 'static,
    {
        let inner = &self.inner;
        if !is_upgrade_request(&req) {
            let body = "expected a WebSocket upgrade";
            return Err(refused(
                Refused::BadRequest,
                StatusCode::UPGRADE_REQUIRED,
                body,
            ));
        }
        let key = match req.headers().get(header::SEC_WEBSOCKET_KEY) {
            Some(k) => k.as_bytes().to_owned(),
            None => {
                let body = "missing Sec-WebSocket-Key";
                return Err(refused(Refused::BadRequest, StatusCode::BAD_REQUEST, body));
            }
        };
        if req
            .headers()
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            let mut res = text_response(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only");
            res.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Err((Refused::BadRequest, res));
        }
        if inner.shutting_down() {
            let body = "server is shutting down";
            return Err(refused(
                Refused::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
                body,
            ));
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        let hs = HandshakeRequest::from_parts(parts.uri, parts.headers, peer);
        if let Some(allowed) = &inner.options.allowed_origins {
            if let Some(origin) = &hs.origin {
                if !allowed.iter().any(|a| a == origin) {
                    debug!(origin, "origin not allowed");
                    return Err(refused(
                        Refused::Origin,
                        StatusCode::FORBIDDEN,
                        "origin not allowed",
                    ));
                }
            }
        }
        let socket = crate::socket::new_socket_id(&inner.instance);
        tracing::Span::current().record("socket", &*socket.1);
        let inner: Arc<Inner> = inner.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(inner.ws_config()),
                    )
                    .await;
                    let task = crate::socket::run(inner, ws, hs, socket);
                    // A task of its own: it lives as long as the connection, and holds only the
                    // socket (this one, with the upgrade's state, ends here).
                    tokio::spawn(task);
                }
                Err(e) => debug!(error = %e, "upgrade failed"),
            }
        });
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(&key)) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        Ok(res)
    }

    /// Listens on `addr` (ws://) until [`Server::shutdown`]. Every request is answered by
    /// [`Server::upgrade`] unless [`ServerBuilder::http_fallback`](crate::ServerBuilder::http_fallback)
    /// was set, in which case requests that are not upgrades go to the fallback.
    pub async fn listen(&self, addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<Listening> {
        self.listen_inner(addr, None).await
    }

    /// Listens on `addr` and terminates TLS itself (wss://) with the given rustls configuration.
    pub async fn listen_tls(
        &self,
        addr: impl tokio::net::ToSocketAddrs,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Listening> {
        self.listen_inner(addr, Some(tokio_rustls::TlsAcceptor::from(tls)))
            .await
    }

    async fn listen_inner(
        &self,
        addr: impl tokio::net::ToSocketAddrs,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Listening> {
        let listener = bind(addr).await?;
        self.serve_listener(listener, tls, Face::App)
    }

    /// Serves connections from a listener the application bound itself (ws://), until
    /// [`Server::shutdown`].
    pub fn listen_on(&self, listener: TcpListener) -> std::io::Result<Listening> {
        self.serve_listener(listener, None, Face::App)
    }

    /// Listens on `addr` for the operator's HTTP endpoints only, until [`Server::shutdown`]:
    /// `GET /metrics`, `/healthz` and `/readyz` (see [`Server::observability_response`]), `404`
    /// for anything else. Its connections do not count towards
    /// [`max_connections`](crate::ServerOptions::max_connections), so that a server at its
    /// limit still answers its probes; they have a limit of their own (64 at once).
    pub async fn listen_observability(
        &self,
        addr: impl tokio::net::ToSocketAddrs,
    ) -> std::io::Result<Listening> {
        let listener = bind(addr).await?;
        self.serve_listener(listener, None, Face::Observability)
    }

    fn serve_listener(
        &self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        face: Face,
    ) -> std::io::Result<Listening> {
        let local = listener.local_addr()?;
        let server = self.clone();
        let mut stop = self.inner.stop_rx.clone();
        let task = tokio::spawn(async move {
            let mut backoff = None;
            let mut accept_errors = LogLimiter::new(LOG_SUMMARY_EVERY);
            let mut refusals = LogLimiter::new(LOG_SUMMARY_EVERY);
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.wait_for(|s| *s) => break,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors (EMFILE, ENFILE) and the like: the pending
                        // connection stays queued and `accept` fails again at once, so retrying
                        // right away spins (hundreds of log lines a second). Back off, and
                        // let a closing connection free a descriptor meanwhile.
                        let delay = next_backoff(backoff);
                        backoff = Some(delay);
                        match accept_errors.on_event(Instant::now()) {
                            Some(suppressed) => warn!(
                                error = %e,
                                retry_in = ?delay,
                                errors_since_last_report = suppressed,
                                "accept failed; backing off"
                            ),
                            None => debug!(error = %e, retry_in = ?delay, "accept failed"),
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop.wait_for(|s| *s) => break,
                        }
                        continue;
                    }
                };
                backoff = None;
                if let Some(n) = accept_errors.flush(Instant::now()) {
                    warn!(errors_since_last_report = n, "accept works again");
                }
                let options = &server.inner.options;
                let admitted = match face {
                    Face::App => server.inner.connections.admit(
                        peer.ip(),
                        options.max_connections,
                        options.max_connections_per_ip,
                    ),
                    Face::Observability => server.inner.observability_connections.admit(
                        peer.ip(),
                        OBSERVABILITY_MAX_CONNECTIONS,
                        None,
                    ),
                };
                let guard = match admitted {
                    Ok(guard) => guard,
                    Err(limit) => {
                        server.inner.metrics.refused(limit.into());
                        match refusals.on_event(Instant::now()) {
                            Some(suppressed) => warn!(
                                %peer,
                                %limit,
                                refused_since_last_report = suppressed,
                                "connection refused"
                            ),
                            None => debug!(%peer, %limit, "connection refused"),
                        }
                        // A TLS client could not read a plain-text answer, and answering in
                        // TLS would cost a handshake per refused connection: just close.
                        if tls.is_none() {
                            refuse(&tcp, limit);
                        }
                        continue;
                    }
                };
                let server = server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let tcp = Counted {
                        _guard: guard,
                        io: tcp,
                    };
                    match tls {
                        // Boxed: inline, the TLS handshake's state made every connection's
                        // task ~4.6 KB until the upgrade, plain ones too, and a short-lived
                        // allocation of 4-8 KB per connection fragments glibc's heap (idle
                        // 4.41-4.71 KB per connection at 5k before, 3.88-4.03 KB after).
                        Some(acceptor) => {
                            Box::pin(async move {
                                let timeout = server.inner.options.header_read_timeout;
                                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                                    Ok(Ok(stream)) => {
                                        server.serve_http(stream, Some(peer), face).await
                                    }
                                    Ok(Err(e)) => {
                                        server.inner.metrics.refused(Refused::TlsHandshake);
                                        debug!(error = %e, "TLS handshake failed");
                                    }
                                    Err(_) => {
                                        server.inner.metrics.refused(Refused::TlsHandshake);
                                        debug!(%peer, "TLS handshake timed out");
                                    }
                                }
                            })
                            .await
                        }
                        None => server.serve_http(tcp, Some(peer), face).await,
                    }
                });
            }
        });
        Ok(Listening { local, task })
    }

    /// Serves one accepted connection (plain TCP, a TLS stream, or any byte stream) as HTTP/1.1,
    /// answering WebSocket upgrades with [`Server::upgrade`]. A connection that has not sent a
    /// complete request head within [`ServerOptions::header_read_timeout`](crate::ServerOptions::header_read_timeout)
    /// is closed.
    pub async fn serve_io<I>(&self, io: I, peer: Option<SocketAddr>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_http(io, peer, Face::App).await;
    }

    async fn serve_http<I>(&self, io: I, peer: Option<SocketAddr>, face: Face)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let server = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let server = server.clone();
            async move {
                Ok::<_, Infallible>(match face {
                    Face::App => server.answer(req, peer).await,
                    Face::Observability => match server.observability_response(&req).await {
                        Some(res) => res,
                        None => text_response(StatusCode::NOT_FOUND, "not found"),
                    },
                })
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            // hyper only enforces the header read timeout with a timer (and panics without one).
            .timer(TokioTimer::new())
            .header_read_timeout(self.inner.options.header_read_timeout)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            if e.is_timeout() {
                self.inner.metrics.refused(Refused::HeaderTimeout);
            }
            debug!(error = %e, "http connection ended with an error");
        }
    }

    /// One request on the application's listener: a WebSocket upgrade, an observability
    /// endpoint when they are on, or the HTTP fallback.
    async fn answer(&self, req: Request<Incoming>, peer: Option<SocketAddr>) -> Response<Body> {
        if !is_upgrade_request(&req) {
            if self.inner.options.observability_endpoints {
                if let Some(res) = self.observability_response(&req).await {
                    return res;
                }
            }
            if let Some(fallback) = &self.inner.http_fallback {
                return fallback(req).await;
            }
        }
        self.upgrade(req, peer).await
    }
}

/// What a listener serves.
#[derive(Clone, Copy, Debug)]
enum Face {
    /// WebSocket upgrades, and the rest per the server's options.
    App,
    /// Only `/metrics`, `/healthz` and `/readyz`.
    Observability,
}

/// TCP connections the observability listeners of one server hold at once: scrapers and probes
/// need a handful; the limit keeps a listener reachable by mistake from holding many.
const OBSERVABILITY_MAX_CONNECTIONS: usize = 64;

/// How often a repeating log line (accept errors, refused connections) is written at most.
const LOG_SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// First wait after a failed `accept`.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest wait between `accept` attempts: a freed descriptor is used within a second.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The wait after a failed `accept`, given the previous wait (`None` after a success): 10 ms,
/// doubling up to 1 s.
fn next_backoff(prev: Option<Duration>) -> Duration {
    match prev {
        None => BACKOFF_MIN,
        Some(d) => d.saturating_mul(2).clamp(BACKOFF_MIN, BACKOFF_MAX),
    }
}

/// Rate limit for a log line an attacker or an exhausted resource can repeat at the rate of a
/// hot loop: the first event is logged, then at most one line per interval, which carries the
/// count of events not logged since the last line.
#[derive(Debug)]
struct LogLimiter {
    interval: Duration,
    last_line: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_line: None,
            suppressed: 0,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.last_line
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval)
    }

    /// One event: `Some(events not logged since the last line)` when this one is to be logged,
    /// `None` when it is only counted.
    fn on_event(&mut self, now: Instant) -> Option<u64> {
        if self.due(now) {
            self.last_line = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Things went well: `Some(events not logged yet)` when there are some and a line is due,
    /// so the tail of a burst is reported too.
    fn flush(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed == 0 || !self.due(now) {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Which connection limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LimitExceeded {
    /// [`ServerOptions::max_connections`](crate::ServerOptions::max_connections).
    #[error("max_connections")]
    Server,
    /// [`ServerOptions::max_connections_per_ip`](crate::ServerOptions::max_connections_per_ip).
    #[error("max_connections_per_ip")]
    PerIp,
}

impl From<LimitExceeded> for Refused {
    fn from(limit: LimitExceeded) -> Self {
        match limit {
            LimitExceeded::Server => Refused::MaxConnections,
            LimitExceeded::PerIp => Refused::MaxConnectionsPerIp,
        }
    }
}

impl LimitExceeded {
    /// The HTTP response that refuses the connection.
    fn response(self) -> String {
        let (status, body) = match self {
            Self::Server => (
                "503 Service Unavailable",
                "server at its connection limit\n",
            ),
            Self::PerIp => (
                "429 Too Many Requests",
                "too many connections from your address\n",
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

/// Answers a connection refused by a limit without running hyper on it, and without waiting
/// on the client: a new socket's send buffer is empty, so the short answer fits in one
/// non-blocking write.
fn refuse(tcp: &tokio::net::TcpStream, limit: LimitExceeded) {
    let _ = tcp.try_write(limit.response().as_bytes());
    // Read what the client already sent: closing a socket with unread data sends a reset
    // instead of a FIN, and some systems then discard the answer before the client reads it.
    let mut buf = [0u8; 4096];
    for _ in 0..4 {
        match tcp.try_read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// TCP connections the listeners of one server hold, in total and per client IP.
#[derive(Debug, Default)]
pub(crate) struct ConnectionCounts {
    state: Mutex<CountState>,
}

#[derive(Debug, Default)]
struct CountState {
    total: usize,
    /// Only the addresses with at least one connection (entries are removed at zero), and only
    /// while a per-IP limit is set.
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnectionCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, CountState> {
        // The critical sections cannot panic; recover the counts if one ever did.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connections held now.
    pub(crate) fn total(&self) -> usize {
        self.lock().total
    }

    /// Counts one more connection from `ip`, or says which limit it would exceed. The
    /// connection is counted until the guard drops.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max: usize,
        max_per_ip: Option<usize>,
    ) -> Result<ConnectionGuard, LimitExceeded> {
        let mut state = self.lock();
        if state.total >= max {
            return Err(LimitExceeded::Server);
        }
        let ip = match max_per_ip {
            Some(limit) => {
                // An IPv4 client of a dual-stack listener appears as ::ffff:a.b.c.d.
                let ip = ip.to_canonical();
                let n = state.per_ip.entry(ip).or_insert(0);
                if *n >= limit {
                    if *n == 0 {
                        state.per_ip.remove(&ip);
                    }
                    return Err(LimitExceeded::PerIp);
                }
                *n += 1;
                Some(ip)
            }
            None => None,
        };
        state.total += 1;
        Ok(ConnectionGuard {
            counts: self.clone(),
            ip,
        })
    }
}

/// One counted connection; dropping it releases the count.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    counts: Arc<ConnectionCounts>,
    /// The address counted per IP (`None` when no per-IP limit was set at admission).
    ip: Option<IpAddr>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut state = self.counts.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = state.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A connection's byte stream with its count: the guard lives as long as the socket, through
/// the HTTP phase and, moved into hyper's upgraded stream, the WebSocket's life.
struct Counted<I> {
    // Declared first so it drops first: the count is released before the socket is closed, so
    // a client that sees the close can rely on its slot being free.
    _guard: ConnectionGuard,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accept queue length asked of the kernel (capped by `net.core.somaxconn`). Tokio's
/// `TcpListener::bind` asks for 1024: when thousands of clients reconnect at once (an instance
/// died) the queue overflowed, SYNs were dropped and those clients waited a whole SYN
/// retransmission (1 s, then 3 s) before they could resync.
const BACKLOG: u32 = 8192;

/// `TcpListener::bind` with a longer accept queue: tries each resolved address in turn.
async fn bind(addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let bound = socket.and_then(|s| {
            // As std and tokio do on Unix: a restarted server can rebind at once.
            #[cfg(unix)]
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(BACKLOG)
        });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

/// A running listener: its address, and a handle to wait on.
#[derive(Debug)]
pub struct Listening {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Listening {
    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits until the listener stops (after [`Server::shutdown`]).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cookies_and_query() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; sid=\"x y\""));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://o"));
        let uri: Uri = "/ws?token=a%20b&x=1+2&flag".parse().expect("uri");
        let hs = HandshakeRequest::from_parts(uri, headers, None);
        assert_eq!(hs.cookie("a"), Some("1"));
        assert_eq!(hs.cookie("sid"), Some("x y"));
        assert_eq!(hs.cookie("b"), Some("2"));
        assert_eq!(hs.query.get("token").map(String::as_str), Some("a b"));
        assert_eq!(hs.query.get("x").map(String::as_str), Some("1 2"));
        assert_eq!(hs.query.get("flag").map(String::as_str), Some(""));
        assert_eq!(hs.origin.as_deref(), Some("http://o"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn accept_backoff_doubles_from_10ms_to_1s_and_restarts_after_a_success() {
        let mut waits = Vec::new();
        let mut prev = None;
        for _ in 0..10 {
            let d = next_backoff(prev);
            waits.push(d.as_millis());
            prev = Some(d);
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        // The loop passes `None` after a successful accept.
        assert_eq!(next_backoff(None), Duration::from_millis(10));
    }

    #[test]
    fn repeated_errors_log_the_first_then_one_summary_per_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut log = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(log.on_event(t0), Some(0), "the first error is logged");
        // A spinning loop: 1000 errors in the next 9.99 s are only counted.
        for i in 1..=1000 {
            assert_eq!(log.on_event(t0 + ms(i * 9)), None);
        }
        assert_eq!(
            log.flush(t0 + ms(9_999)),
            None,
            "no line before the interval"
        );
        assert_eq!(
            log.on_event(t0 + ms(10_000)),
            Some(1000),
            "the summary counts them"
        );
        // A burst's tail is reported by the first success once a line is due.
        log.on_event(t0 + ms(10_001));
        log.on_event(t0 + ms(10_002));
        assert_eq!(log.flush(t0 + ms(15_000)), None);
        assert_eq!(log.flush(t0 + ms(20_000)), Some(2));
        assert_eq!(log.flush(t0 + ms(40_000)), None, "nothing left to report");
    }

    #[test]
    fn connection_counts_enforce_both_limits_and_forget_idle_addresses() {
        let counts = Arc::new(ConnectionCounts::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "::ffff:10.0.0.2".parse().expect("ip");
        let a1 = counts.admit(a, 3, Some(2)).expect("a1");
        let a2 = counts.admit(a, 3, Some(2)).expect("a2");
        assert_eq!(
            counts.admit(a, 3, Some(2)).err(),
            Some(LimitExceeded::PerIp)
        );
        let b1 = counts.admit(b, 3, Some(2)).expect("b1");
        assert_eq!(
            counts.admit(b, 3, Some(2)).err(),
            Some(LimitExceeded::Server)
        );
        assert_eq!(counts.total(), 3);
        assert_eq!(counts.lock().per_ip.len(), 2);
        assert!(
            counts
                .lock()
                .per_ip
                .contains_key(&"10.0.0.2".parse::<IpAddr>().expect("ip")),
            "a mapped IPv4 address is counted as the IPv4 address"
        );
        drop((a1, a2, b1));
        assert_eq!(counts.total(), 0);
        assert!(counts.lock().per_ip.is_empty(), "no entry left at zero");
        // A zero per-IP limit refuses without leaving an entry behind.
        assert_eq!(
            counts.admit(a, 3, Some(0)).err(),
            Some(LimitExceeded::PerIp)
        );
        assert!(counts.lock().per_ip.is_empty());
    }

    #[test]
    fn refusal_responses_are_complete_http_responses() {
        for (limit, status) in [
            (LimitExceeded::Server, "503 Service Unavailable"),
            (LimitExceeded::PerIp, "429 Too Many Requests"),
        ] {
            let r = limit.response();
            let (head, body) = r.split_once("\r\n\r\n").expect("head and body");
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{head}"
            );
            assert!(head.contains("\r\nConnection: close"), "{head}");
            assert!(
                head.contains(&format!("\r\nContent-Length: {}", body.len())),
                "{head}"
            );
        }
    }
}
