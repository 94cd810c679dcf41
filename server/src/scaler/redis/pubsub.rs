//! The pub/sub side of an instance: one connection subscribed to the channels it has
//! subscribers for, reconnected with backoff, and what it missed read from the streams before
//! anything live is delivered. On a Redis Cluster, sharded pub/sub: the cluster connection
//! subscribes each channel on its shard's master and resubscribes across failovers and
//! resharding, and each resubscription first reads what the channel missed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{PubSubSink, PubSubStream};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Msg, ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use sss_core::Position;
use tokio::sync::{mpsc, oneshot};

use super::presence::{PresenceWire, PRESENCE_MARK};
use super::{
    cluster_client, lock, unavailable, Backend, Cursor, Read, Shared, BACKOFF, PUB_SUFFIX,
    SUBSCRIBE_BATCH,
};
use crate::scaler::{Control, Record, ScalerError, ScalerEvent};

/// The command half of the pub/sub connection.
#[derive(Clone)]
pub(in crate::scaler) enum Sink {
    /// On one Redis.
    Single(PubSubSink),
    /// On a Redis Cluster: sharded subscriptions (RESP3), each sent to its channel's shard.
    Sharded(ClusterConnection),
}

impl Sink {
    pub(super) async fn subscribe(&mut self, names: &[String]) -> RedisResult<()> {
        match self {
            Self::Single(s) => s.subscribe(names).await,
            // One at a time: channels of several slots in one SSUBSCRIBE are refused.
            Self::Sharded(c) => {
                for name in names {
                    c.ssubscribe(name).await?;
                }
                Ok(())
            }
        }
    }

    pub(super) async fn unsubscribe(&mut self, names: &[String]) -> RedisResult<()> {
        match self {
            Self::Single(s) => s.unsubscribe(names).await,
            Self::Sharded(c) => {
                for name in names {
                    c.sunsubscribe(name).await?;
                }
                Ok(())
            }
        }
    }
}

/// The message half of the pub/sub connection.
pub(super) enum Source {
    /// On one Redis: ends when the connection drops.
    Single(PubSubStream),
    /// On a Redis Cluster: the pushes of every shard's connection, which the cluster connection
    /// re-establishes by itself.
    Sharded(mpsc::UnboundedReceiver<PushInfo>),
}

/// A message from a [`Source`], as it came (no copy).
enum Incoming {
    Single(Msg),
    /// Pub/sub channel, payload.
    Sharded(Vec<u8>, Vec<u8>),
    /// A shard ended the subscription to this pub/sub channel: this instance's own unsubscribe,
    /// or (if the instance still delivers the channel) its slot moved to another master.
    Unsubscribed(Vec<u8>),
}

impl Incoming {
    /// Pub/sub channel and payload of a message.
    fn parts(&self) -> Option<(&[u8], &[u8])> {
        match self {
            Self::Single(msg) => Some((msg.get_channel_name().as_bytes(), msg.get_payload_bytes())),
            Self::Sharded(name, payload) => Some((name, payload)),
            Self::Unsubscribed(_) => None,
        }
    }
}

impl Source {
    /// The next message; `None` once the connection dropped (on a cluster: any shard's).
    async fn next(&mut self) -> Option<Incoming> {
        match self {
            Self::Single(stream) => stream.next().await.map(Incoming::Single),
            Self::Sharded(pushes) => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::SMessage => {
                        let mut data = push.data.into_iter();
                        if let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) =
                            (data.next(), data.next())
                        {
                            return Some(Incoming::Sharded(name, payload));
                        }
                    }
                    PushKind::SUnsubscribe => {
                        if let Some(Value::BulkString(name)) = push.data.into_iter().next() {
                            return Some(Incoming::Unsubscribed(name));
                        }
                    }
                    PushKind::Disconnection => {
                        tracing::warn!("a redis cluster pub/sub connection dropped");
                        return None;
                    }
                    _ => {}
                }
            },
        }
    }
}

/// How often an idle pub/sub connection is checked with a PING.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// A publication as it travels over pub/sub (built by `publish.lua`).
#[derive(Deserialize)]
struct Wire {
    e: String,
    s: u64,
    /// The record's id (see `publish.lua`); empty from older versions.
    #[serde(default)]
    i: String,
    t: String,
    m: Box<RawValue>,
}

impl Shared {
    /// Hands a publication to the instance unless it is not wanted or already delivered.
    /// `id` is the record's id, when known: a record at the seq delivered last with another id
    /// marks the channel forked (see [`Cursor::forked`]) and is not delivered. Returns `false`
    /// once the instance no longer listens.
    fn deliver(
        &self,
        channel: &str,
        record: Record,
        id: Option<&str>,
        events: &mpsc::UnboundedSender<ScalerEvent>,
    ) -> bool {
        let mut channels = lock(&self.channels);
        let Some(cursor) = channels.get_mut(channel) else {
            return true;
        };
        let position = &record.position;
        if cursor.last.epoch == position.epoch {
            let other_id = match (id, cursor.id.as_deref()) {
                (Some(id), Some(mine)) => !id.is_empty() && id != mine,
                _ => false,
            };
            let forked = cursor.forked || (position.seq == cursor.last.seq && other_id);
            if forked {
                if !cursor.forked {
                    tracing::warn!(channel, at = %position, "history forked (Redis lost writes this instance delivered): ending the epoch");
                }
                cursor.forked = true;
                // Again on every record of the forked epoch, until ending it succeeded.
                lock(&self.forks).push((channel.to_owned(), position.epoch.clone()));
                return true;
            }
            if position.seq <= cursor.last.seq {
                return true;
            }
        }
        *cursor = Cursor {
            last: position.clone(),
            id: id.filter(|i| !i.is_empty()).map(Box::from),
            forked: false,
        };
        events
            .send(ScalerEvent::Publication {
                channel: Arc::from(channel),
                record: Arc::new(record),
            })
            .is_ok()
    }

    /// Delivers what `channel` published since this instance last delivered it, checking that
    /// the history still holds what it delivered. Returns `false` once the instance no longer
    /// listens.
    async fn catch_up(
        &self,
        channel: &str,
        events: &mpsc::UnboundedSender<ScalerEvent>,
    ) -> Result<bool, ScalerError> {
        let Some(last) = lock(&self.channels).get(channel).map(|c| c.last.clone()) else {
            return Ok(true);
        };
        // From the record delivered last, so that its id is checked too.
        let since = Position::new(last.epoch.clone(), last.seq.saturating_sub(1));
        let (head, missed) = self.read(channel, &since, Read::Tail).await?;
        if head.epoch == last.epoch && head.seq < last.seq {
            // The history went back past what was delivered: Redis lost those writes.
            let mut channels = lock(&self.channels);
            if let Some(cursor) = channels.get_mut(channel) {
                if cursor.last.epoch == last.epoch && !cursor.forked {
                    tracing::warn!(channel, delivered = %last, %head, "history lost records this instance delivered: ending the epoch");
                    cursor.forked = true;
                    lock(&self.forks).push((channel.to_owned(), last.epoch.clone()));
                }
            }
            return Ok(true);
        }
        let missed = missed.unwrap_or_default();
        if missed.len() > 1 {
            tracing::debug!(channel, since = %last, missed = missed.len() - 1, "catching up");
        }
        for (record, id) in missed {
            if !self.deliver(channel, record, id.as_deref(), events) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Ends the epochs that forked (see [`Cursor::forked`]); a failure is retried at the
    /// channel's next record.
    async fn settle_forks(&self) {
        let forks = std::mem::take(&mut *lock(&self.forks));
        let mut done: Vec<&(String, String)> = Vec::new();
        for fork in &forks {
            if done.contains(&fork) {
                continue;
            }
            done.push(fork);
            if let Err(e) = self.restart_epoch(&fork.0, &fork.1).await {
                tracing::warn!(channel = fork.0, error = %e, "ending a forked epoch failed");
            }
        }
    }

    /// Decodes one pub/sub message. Returns `false` once the instance no longer listens.
    fn on_message(
        &self,
        name: &[u8],
        payload: &[u8],
        events: &mpsc::UnboundedSender<ScalerEvent>,
    ) -> bool {
        if name == self.control_channel.as_bytes() {
            return match serde_json::from_slice::<Control>(payload) {
                Ok(c) => events.send(ScalerEvent::Control(c)).is_ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an undecodable control message");
                    true
                }
            };
        }
        let Some(channel) = self.channel_of(name) else {
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
                self.deliver(channel, record, Some(&w.i), events)
            }
            Err(e) => {
                tracing::warn!(channel, error = %e, "ignoring an undecodable publication");
                true
            }
        }
    }

    /// The channel a pub/sub channel carries (see [`Shared::pub_channel`]).
    fn channel_of<'a>(&self, name: &'a [u8]) -> Option<&'a str> {
        let name = std::str::from_utf8(name).ok()?;
        name.strip_prefix(&self.pub_prefix)?
            .strip_suffix(PUB_SUFFIX)
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
    /// it. Returns the connection's halves; live messages wait in the source meanwhile.
    pub(super) async fn connect_pubsub(
        &self,
        events: &mpsc::UnboundedSender<ScalerEvent>,
    ) -> Result<(Sink, Source), ScalerError> {
        let mut state = self.pubsub.lock().await;
        if state.stopped {
            return Err(ScalerError::Stopped);
        }
        let (mut sink, source) = match &self.backend {
            Backend::Single(client) => {
                let (sink, stream) = self.bounded(client.get_async_pubsub()).await?.split();
                (Sink::Single(sink), Source::Single(stream))
            }
            Backend::Cluster(nodes) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let client = cluster_client(nodes, &self.opts)
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()
                    .map_err(unavailable)?;
                let conn = self.bounded(client.get_async_connection()).await?;
                (Sink::Sharded(conn), Source::Sharded(rx))
            }
        };
        let channels: Vec<String> = lock(&self.channels).keys().cloned().collect();
        let mut names = vec![self.control_channel.clone()];
        names.extend(channels.iter().map(|c| self.pub_channel(c)));
        for batch in names.chunks(SUBSCRIBE_BATCH) {
            self.bounded(sink.subscribe(batch)).await?;
        }
        for channel in channels {
            if !self.catch_up(&channel, events).await? {
                return Err(ScalerError::Stopped);
            }
        }
        self.settle_forks().await;
        state.sink = Some(sink.clone());
        self.pubsub_up.store(true, Ordering::Relaxed);
        Ok((sink, source))
    }

    /// Delivers the pub/sub messages until stopped, reconnecting whenever the connection drops.
    ///
    /// On a Redis Cluster, any shard's connection dropping (its master failed) rebuilds the
    /// whole pub/sub connection the same way: a new cluster connection learns the slot map
    /// afresh (the failed master's replica once it took over), subscribes every channel on its
    /// shard and catches each up from the history. The cluster connection's own resubscription
    /// is not relied on: it follows a failover only once a command refreshes its slot map.
    pub(super) async fn run(
        self: Arc<Self>,
        events: mpsc::UnboundedSender<ScalerEvent>,
        (mut sink, mut source): (Sink, Source),
        mut stop: oneshot::Receiver<()>,
    ) {
        loop {
            let start = tokio::time::Instant::now() + KEEPALIVE;
            let mut keepalive = tokio::time::interval_at(start, KEEPALIVE);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    msg = source.next() => match msg {
                        Some(Incoming::Unsubscribed(name)) => {
                            let moved = self.channel_of(&name).is_some_and(|c| lock(&self.channels).contains_key(c));
                            if moved {
                                // Redis ends a shard channel's subscriptions when its slot
                                // migrates: subscribe afresh, where the slot is now.
                                tracing::warn!(channel = %String::from_utf8_lossy(&name), "a slot moved to another master");
                                break;
                            }
                        }
                        Some(msg) => {
                            if let Some((name, payload)) = msg.parts() {
                                if !self.on_message(name, payload, &events) {
                                    return;
                                }
                                self.settle_forks().await;
                            }
                        }
                        None => break,
                    },
                    _ = keepalive.tick() => {
                        // A cluster connection checks its nodes itself.
                        let Sink::Single(single) = &mut sink else { continue };
                        if let Err(e) = self.bounded(single.ping::<::redis::Value>()).await {
                            tracing::warn!(error = %e, "redis pub/sub connection unresponsive");
                            break;
                        }
                    }
                }
            }
            drop((sink, source));
            self.pubsub_up.store(false, Ordering::Relaxed);
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            tokio::select! {
                _ = &mut stop => return,
                mut state = self.pubsub.lock() => state.sink = None,
            }
            let mut delay = BACKOFF.0;
            (sink, source) = loop {
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
