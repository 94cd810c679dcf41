//! The scaler the server really calls: the application's, with every operation counted and
//! timed (`sss_scaler_*` metrics).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde_json::value::RawValue;
use sss_core::protocol::Member;
use sss_core::Position;
use tokio::sync::mpsc;

use super::{Control, History, Scaler, ScalerError, ScalerEvent};
use crate::metrics::{Metrics, ScalerOp};

/// A thin forwarder around the application's scaler: every method calls the inner one, and
/// the operations the server makes at run time are counted and timed. (A method it did not
/// forward would silently run the trait's default instead of the scaler's own.)
pub(crate) struct Metered {
    inner: Arc<dyn Scaler>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub(crate) fn new(inner: Arc<dyn Scaler>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(
        &self,
        op: ScalerOp,
        f: impl Future<Output = Result<T, ScalerError>>,
    ) -> Result<T, ScalerError> {
        let start = Instant::now();
        let result = f.await;
        self.metrics
            .scaler(op)
            .record(start.elapsed(), result.is_ok());
        result
    }
}

#[async_trait::async_trait]
impl Scaler for Metered {
    async fn start(&self, events: mpsc::UnboundedSender<ScalerEvent>) -> Result<(), ScalerError> {
        self.inner.start(events).await
    }

    async fn publish(
        &self,
        channel: &str,
        topic: &str,
        msg: &RawValue,
    ) -> Result<Position, ScalerError> {
        self.timed(ScalerOp::Publish, self.inner.publish(channel, topic, msg))
            .await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), ScalerError> {
        self.timed(ScalerOp::Subscribe, self.inner.subscribe(channel))
            .await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), ScalerError> {
        self.timed(ScalerOp::Unsubscribe, self.inner.unsubscribe(channel))
            .await
    }

    async fn history(&self, channel: &str, since: &Position) -> Result<History, ScalerError> {
        self.timed(ScalerOp::History, self.inner.history(channel, since))
            .await
    }

    async fn position(&self, channel: &str) -> Result<Position, ScalerError> {
        self.timed(ScalerOp::Position, self.inner.position(channel))
            .await
    }

    async fn control(&self, msg: Control) -> Result<(), ScalerError> {
        self.timed(ScalerOp::Control, self.inner.control(msg)).await
    }

    async fn presence_update(
        &self,
        channel: &str,
        joined: &[Arc<Member>],
        left: &[Arc<Member>],
    ) -> Result<(), ScalerError> {
        let update = self.inner.presence_update(channel, joined, left);
        self.timed(ScalerOp::PresenceUpdate, update).await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<Member>, ScalerError> {
        self.timed(ScalerOp::Presence, self.inner.presence(channel))
            .await
    }

    async fn ready(&self) -> Result<(), ScalerError> {
        self.timed(ScalerOp::Ready, self.inner.ready()).await
    }

    async fn stop(&self) {
        self.inner.stop().await;
    }
}
