//! The pub/sub side of an instance: one connection subscribed to the channels it has
//! subscribers for, reconnected with backoff, and what it missed read from the streams before
//! anything live is delivered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{PubSubSink, PubSubStream};
use ::redis::Msg;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use sss_core::Position;
use tokio::sync::{mpsc, oneshot};

use super::presence::{PresenceWire, PRESENCE_MARK};
use super::{lock, Read, Shared, BACKOFF, SUBSCRIBE_BATCH};
use crate::scaler::{Control, Record, ScalerError, ScalerEvent};

/// How often an idle pub/sub connection is checked with a PING.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// A publication as it travels over pub/sub (built by `publish.lua`).
#[derive(Deserialize)]
struct Wire {
    e: String,
    s: u64,
    t: String,
    m: Box<RawValue>,
}

impl Shared {
    /// Hands a publication to the instance unless it is not wanted or already delivered.
    /// Returns `false` once the instance no longer listens.
    fn deliver(
        &self,
        channel: &str,
        record: Record,
        events: &mpsc::UnboundedSender<ScalerEvent>,
    ) -> bool {
        let mut channels = lock(&self.channels);
        let Some(last) = channels.get_mut(channel) else {
            return true;
        };
        if last.epoch == record.position.epoch && record.position.seq <= last.seq {
            return true;
        }
        last.clone_from(&record.position);
        events
            .send(ScalerEvent::Publication {
                channel: Arc::from(channel),
                record: Arc::new(record),
            })
            .is_ok()
    }

    /// Decodes one pub/sub message. Returns `false` once the instance no longer listens.
    fn on_message(&self, msg: &Msg, events: &mpsc::UnboundedSender<ScalerEvent>) -> bool {
        let name = msg.get_channel_name();
        let payload = msg.get_payload_bytes();
        if name == self.control_channel {
            return match serde_json::from_slice::<Control>(payload) {
                Ok(c) => events.send(ScalerEvent::Control(c)).is_ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an undecodable control message");
                    true
                }
            };
        }
        let Some(channel) = name.strip_prefix(&self.pub_prefix) else {
            return true;
        };
        if payload.starts_with(PRESENCE_MARK) {
            return self.on_presence(channel, payload, events);
        }
        match serde_json::from_slice::<Wire>(payload) {
            Ok(w) => {
                let record = Record {
                    position: Position::new(w.e, w.s),
                    topic: w.t,
                    msg: w.m,
                };
                self.deliver(channel, record, events)
            }
            Err(e) => {
                tracing::warn!(channel, error = %e, "ignoring an undecodable publication");
                true
            }
        }
    }

    /// Hands a presence change to the instance if it still delivers the channel. Returns
    /// `false` once the instance no longer listens.
    fn on_presence(
        &self,
        channel: &str,
        payload: &[u8],
        events: &mpsc::UnboundedSender<ScalerEvent>,
    ) -> bool {
        let w = match serde_json::from_slice::<PresenceWire>(payload) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(channel, error = %e, "ignoring an undecodable presence change");
                return true;
            }
        };
        if !lock(&self.channels).contains_key(channel) {
            return true;
        }
        events
            .send(ScalerEvent::Presence {
                channel: Arc::from(channel),
                joined: w.p == "join",
                member: Arc::new(w.who),
            })
            .is_ok()
    }

    /// Opens the pub/sub connection, subscribes the control channel and every channel of
    /// interest, then delivers what each channel published since this instance last delivered
    /// it. Returns the connection's halves; live messages wait in the stream meanwhile.
    pub(super) async fn connect_pubsub(
        &self,
        events: &mpsc::UnboundedSender<ScalerEvent>,
    ) -> Result<(PubSubSink, PubSubStream), ScalerError> {
        let mut state = self.pubsub.lock().await;
        if state.stopped {
            return Err(ScalerError::Stopped);
        }
        let (mut sink, stream) = self.bounded(self.client.get_async_pubsub()).await?.split();
        let channels: Vec<String> = lock(&self.channels).keys().cloned().collect();
        let mut names = vec![self.control_channel.clone()];
        names.extend(channels.iter().map(|c| self.pub_channel(c)));
        for batch in names.chunks(SUBSCRIBE_BATCH) {
            self.bounded(sink.subscribe(batch)).await?;
        }
        for channel in channels {
            let Some(last) = lock(&self.channels).get(&channel).cloned() else {
                continue;
            };
            let (_, missed) = self.read(&channel, &last, Read::Tail).await?;
            let missed = missed.unwrap_or_default();
            if !missed.is_empty() {
                tracing::debug!(channel, since = %last, missed = missed.len(), "catching up");
            }
            for record in missed {
                if !self.deliver(&channel, record, events) {
                    return Err(ScalerError::Stopped);
                }
            }
        }
        state.sink = Some(sink.clone());
        self.pubsub_up.store(true, Ordering::Relaxed);
        Ok((sink, stream))
    }

    /// Delivers the pub/sub stream until stopped, reconnecting whenever the connection drops.
    pub(super) async fn run(
        self: Arc<Self>,
        events: mpsc::UnboundedSender<ScalerEvent>,
        (mut sink, mut stream): (PubSubSink, PubSubStream),
        mut stop: oneshot::Receiver<()>,
    ) {
        loop {
            let start = tokio::time::Instant::now() + KEEPALIVE;
            let mut keepalive = tokio::time::interval_at(start, KEEPALIVE);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    msg = stream.next() => match msg {
                        Some(msg) => {
                            if !self.on_message(&msg, &events) {
                                return;
                            }
                        }
                        None => break,
                    },
                    _ = keepalive.tick() => {
                        if let Err(e) = self.bounded(sink.ping::<::redis::Value>()).await {
                            tracing::warn!(error = %e, "redis pub/sub connection unresponsive");
                            break;
                        }
                    }
                }
            }
            drop(stream);
            self.pubsub_up.store(false, Ordering::Relaxed);
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            tokio::select! {
                _ = &mut stop => return,
                mut state = self.pubsub.lock() => state.sink = None,
            }
            let mut delay = BACKOFF.0;
            (sink, stream) = loop {
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(delay) => {}
                }
                tokio::select! {
                    _ = &mut stop => return,
                    r = self.connect_pubsub(&events) => match r {
                        Ok(halves) => break halves,
                        Err(ScalerError::Stopped) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, ?delay, "redis pub/sub reconnection failed");
                            delay = (delay * 2).min(BACKOFF.1);
                        }
                    },
                }
            };
            tracing::info!("redis pub/sub connection restored");
        }
    }
}
