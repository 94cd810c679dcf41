//! The HTTP side: the WebSocket upgrade, the session parser's view of it, and listening.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use crate::server::Inner;
use crate::Server;

/// The body type of the HTTP responses the server produces.
pub type Body = Full<Bytes>;

/// What the session parser sees of a WebSocket handshake.
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
        }
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
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

/// The session parser's refusal of a handshake: the client gets this HTTP status and reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {reason}")]
pub struct Refusal {
    /// HTTP status of the refusal (e.g. 401, 403).
    pub status: StatusCode,
    /// Reason, sent as the response body.
    pub reason: String,
}

impl Refusal {
    /// A refusal with a status and reason.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    /// 401 Unauthorized.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, reason)
    }

    /// 403 Forbidden.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, reason)
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
    /// origins check and the session parser, and answers `101 Switching Protocols` (the socket
    /// then runs in its own task) or the refusal.
    ///
    /// Use this to mount the server in a hyper or axum application; [`Server::listen`] uses it
    /// for every request.
    pub async fn upgrade<B>(&self, mut req: Request<B>, peer: Option<SocketAddr>) -> Response<Body>
    where
        B: Send + 'static,
    {
        let inner = &self.inner;
        if !is_upgrade_request(&req) {
            return text_response(StatusCode::UPGRADE_REQUIRED, "expected a WebSocket upgrade");
        }
        let key = match req.headers().get(header::SEC_WEBSOCKET_KEY) {
            Some(k) => k.as_bytes().to_owned(),
            None => return text_response(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"),
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
            return res;
        }
        if inner.shutting_down() {
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        let hs = HandshakeRequest::from_parts(parts.uri, parts.headers, peer);
        if let Some(allowed) = &inner.options.allowed_origins {
            if let Some(origin) = &hs.origin {
                if !allowed.iter().any(|a| a == origin) {
                    debug!(origin, "origin not allowed");
                    return text_response(StatusCode::FORBIDDEN, "origin not allowed");
                }
            }
        }
        let session = match &inner.session_parser {
            Some(parser) => match parser(hs).await {
                Ok(s) => s,
                Err(refusal) => {
                    debug!(%refusal, "handshake refused");
                    return text_response(refusal.status, refusal.reason);
                }
            },
            None => crate::Session::anonymous(),
        };
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
                    crate::socket::run(inner, ws, session).await;
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
        res
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
        self.serve_listener(listener, tls)
    }

    /// Serves connections from a listener the application bound itself (ws://), until
    /// [`Server::shutdown`].
    pub fn listen_on(&self, listener: TcpListener) -> std::io::Result<Listening> {
        self.serve_listener(listener, None)
    }

    fn serve_listener(
        &self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Listening> {
        let local = listener.local_addr()?;
        let server = self.clone();
        let mut stop = self.inner.stop_rx.clone();
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.wait_for(|s| *s) => break,
                };
                match accepted {
                    Ok((tcp, peer)) => {
                        let server = server.clone();
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            let _ = tcp.set_nodelay(true);
                            match tls {
                                Some(acceptor) => match acceptor.accept(tcp).await {
                                    Ok(stream) => server.serve_io(stream, Some(peer)).await,
                                    Err(e) => debug!(error = %e, "TLS handshake failed"),
                                },
                                None => server.serve_io(tcp, Some(peer)).await,
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off a little, keep serving.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(Listening { local, task })
    }

    /// Serves one accepted connection (plain TCP, a TLS stream, or any byte stream) as HTTP/1.1,
    /// answering WebSocket upgrades with [`Server::upgrade`].
    pub async fn serve_io<I>(&self, io: I, peer: Option<SocketAddr>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let server = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let server = server.clone();
            async move {
                let res = match (&server.inner.http_fallback, is_upgrade_request(&req)) {
                    (Some(fallback), false) => fallback(req).await,
                    _ => server.upgrade(req, peer).await,
                };
                Ok::<_, Infallible>(res)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            debug!(error = %e, "http connection ended with an error");
        }
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
}
