//! The operator's HTTP endpoints: `/metrics`, `/healthz` and `/readyz`.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

use crate::handshake::{text_response, Body};
use crate::scaler::ScalerError;
use crate::Server;

/// Why [`Server::ready`] says the server should not be sent traffic.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    /// [`Server::shutdown`] was called.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The scaler's readiness check did not answer within
    /// [`ready_timeout`](crate::ServerOptions::ready_timeout).
    #[error("the scaler's readiness check timed out")]
    Timeout,
    /// The scaler's readiness check failed.
    #[error(transparent)]
    Scaler(#[from] ScalerError),
    /// This server routes topics to workers and cannot hear their answers now (its Redis
    /// pub/sub connection is down).
    #[error("the workers' answer channel is down")]
    Workers,
}

impl Server {
    /// Every metric of this server in the Prometheus text format (version 0.0.4), as
    /// `/metrics` serves it: to serve it from the application's own HTTP routes. The metrics
    /// are listed in the README ("Operating it").
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render()
    }

    /// Whether this instance can take traffic, as `/readyz` answers it: it is not shutting
    /// down, and its scaler's [`ready`](crate::Scaler::ready) check (Redis, MongoDB) passed
    /// within [`ready_timeout`](crate::ServerOptions::ready_timeout).
    pub async fn ready(&self) -> Result<(), NotReady> {
        if self.inner.shutting_down() {
            return Err(NotReady::ShuttingDown);
        }
        #[cfg(feature = "redis")]
        if self.inner.gateways.iter().any(|g| !g.is_up()) {
            return Err(NotReady::Workers);
        }
        let check = self.inner.scaler.ready();
        match tokio::time::timeout(self.inner.options.ready_timeout, check).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(NotReady::Timeout),
        }
    }

    /// Answers the operator's endpoints, `None` for any other request (to route it elsewhere):
    ///
    /// - `GET /metrics`: [`render_metrics`](Self::render_metrics), `200` with the Prometheus
    ///   text format's content type;
    /// - `GET /healthz`: `200 ok` whenever the process answers (liveness);
    /// - `GET /readyz`: `200 ready` when [`ready`](Self::ready) passes, else `503` with the
    ///   reason (readiness: the scaler is unreachable, or the server is shutting down).
    ///
    /// `HEAD` is answered like `GET`. Only the path is matched (a query string is ignored).
    /// The server answers these on its own listeners when
    /// [`observability_endpoints`](crate::ServerOptions::observability_endpoints) is on, and
    /// [`listen_observability`](Self::listen_observability) serves them on an address of
    /// their own; an application that mounts the server in its own HTTP stack calls this.
    pub async fn observability_response<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return None;
        }
        Some(match req.uri().path() {
            "/metrics" => {
                let mut res = text_response(StatusCode::OK, Bytes::from(self.render_metrics()));
                res.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
                res
            }
            "/healthz" => text_response(StatusCode::OK, "ok\n"),
            "/readyz" => match self.ready().await {
                Ok(()) => text_response(StatusCode::OK, "ready\n"),
                Err(e) => {
                    text_response(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n"))
                }
            },
            _ => return None,
        })
    }
}
