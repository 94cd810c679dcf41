//! Server-side subscriptions: a server reads a channel as a client does, from any instance
//! (see [`Server::subscribe`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sss_core::protocol::classify_channel;
use sss_core::Position;
use tokio::sync::mpsc;

use crate::registry::Tap;
use crate::scaler::{History, Record};
use crate::server::Inner;
use crate::{Server, ServerError};

/// Publications a server-side subscription holds for its reader before it falls back to the
/// history (a reader that keeps up never does).
const QUEUE: usize = 1024;
/// First and largest delay between attempts to read the history while the scaler fails.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

static NEXT_TAP: AtomicU64 = AtomicU64::new(1);

/// What a [`ChannelStream`] yields.
#[derive(Debug, Clone)]
pub enum ChannelEvent {
    /// The channel's next publication, in position order.
    Publication(Arc<Record>),
    /// The history no longer reaches back to the last position this stream delivered (or the
    /// one it was asked to resume from): what was published in between is lost to it. Delivery
    /// goes on from `head`, the channel's position now. The same rule as a client's resync.
    Unrecoverable {
        /// The channel's position now.
        head: Position,
    },
}

/// A server-side subscription to one channel: a [`Stream`] of its publications, in order,
/// with nothing lost silently (see [`ChannelEvent::Unrecoverable`]). Publications that arrive
/// while the reader is slow wait in a bounded queue; beyond it, the stream catches up from the
/// scaler's history. Dropping it unsubscribes.
pub struct ChannelStream {
    events: BoxStream<'static, ChannelEvent>,
    start: Position,
    _tap: TapGuard,
}

impl std::fmt::Debug for ChannelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelStream")
            .field("channel", &self._tap.channel)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl ChannelStream {
    /// The position the stream started after: the channel's head when it subscribed, or the
    /// position it resumed from.
    pub fn start(&self) -> &Position {
        &self.start
    }
}

impl Stream for ChannelStream {
    type Item = ChannelEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        self.events.poll_next_unpin(cx)
    }
}

/// Removes the subscription from the registry (and the scaler's interest, if it was the
/// last) when the stream is dropped.
struct TapGuard {
    inner: Weak<Inner>,
    channel: String,
    key: u64,
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        inner.registry.remove_tap(&self.channel, self.key);
        let channel = std::mem::take(&mut self.channel);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = inner.registry.reconcile(&channel, &*inner.scaler).await;
            });
        }
    }
}

/// The stream's state: where it is in the channel, and what it has to say next.
struct Reader {
    inner: Weak<Inner>,
    channel: String,
    rx: mpsc::Receiver<Arc<Record>>,
    tap: Arc<Tap>,
    last: Position,
    ready: VecDeque<ChannelEvent>,
}

impl Reader {
    async fn next(&mut self) -> Option<ChannelEvent> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            if self.tap.lagged.swap(false, Ordering::Acquire) {
                // Publications were dropped for want of room: what is queued is older than
                // what the history has, read from there.
                while self.rx.try_recv().is_ok() {}
                self.catch_up().await?;
                continue;
            }
            let record = self.rx.recv().await?;
            let p = &record.position;
            if p.epoch == self.last.epoch && p.seq <= self.last.seq {
                continue;
            }
            if p.epoch == self.last.epoch && p.seq == self.last.seq + 1 {
                self.last = p.clone();
                return Some(ChannelEvent::Publication(record));
            }
            // A gap, or a new epoch: the history says which.
            self.catch_up().await?;
            let p = &record.position;
            if p.epoch == self.last.epoch && p.seq == self.last.seq + 1 {
                self.last = p.clone();
                self.ready.push_back(ChannelEvent::Publication(record));
            }
        }
    }

    /// Reads what was published after `last`, retrying while the scaler fails. `None` once the
    /// server is gone.
    async fn catch_up(&mut self) -> Option<()> {
        let mut delay = BACKOFF.0;
        let history = loop {
            let inner = self.inner.upgrade()?;
            match inner.scaler.history(&self.channel, &self.last).await {
                Ok(h) => break h,
                Err(e) => {
                    tracing::warn!(channel = self.channel, error = %e, "server-side subscription: history unavailable; retrying");
                }
            }
            drop(inner);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(BACKOFF.1);
        };
        match history {
            History::Recovered(records) => {
                for r in records {
                    let p = &r.position;
                    if p.epoch != self.last.epoch || p.seq > self.last.seq {
                        self.last = p.clone();
                        self.ready.push_back(ChannelEvent::Publication(r));
                    }
                }
            }
            History::Unrecoverable { head } => {
                self.last = head.clone();
                self.ready.push_back(ChannelEvent::Unrecoverable { head });
            }
        }
        Some(())
    }
}

impl Server {
    /// Subscribes this server to a channel, from now: the stream yields every publication
    /// made after the channel's head at the time of the call, from any instance, in order.
    /// For backends that react to what is published (indexers, bridges). Works on every
    /// instance, whether or not it has client subscribers of the channel.
    pub async fn subscribe(&self, channel: &str) -> Result<ChannelStream, ServerError> {
        self.open_stream(channel, None).await
    }

    /// Subscribes this server to a channel, resuming after `since` (a position a previous
    /// stream delivered): what was published after it comes first, from the history, or
    /// [`ChannelEvent::Unrecoverable`] if the history no longer reaches back to it.
    pub async fn subscribe_from(
        &self,
        channel: &str,
        since: Position,
    ) -> Result<ChannelStream, ServerError> {
        self.open_stream(channel, Some(since)).await
    }

    async fn open_stream(
        &self,
        channel: &str,
        since: Option<Position>,
    ) -> Result<ChannelStream, ServerError> {
        classify_channel(channel)?;
        let inner = &self.inner;
        let key = NEXT_TAP.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        let tap = Arc::new(Tap {
            tx,
            lagged: Default::default(),
        });
        // Registered before the scaler is asked to deliver and before the head is read, so
        // nothing published after the start can be missed (what arrives twice is skipped).
        inner.registry.insert_tap(channel, key, tap.clone());
        let guard = TapGuard {
            inner: Arc::downgrade(inner),
            channel: channel.to_owned(),
            key,
        };
        inner.registry.reconcile(channel, &*inner.scaler).await?;
        let (start, resume) = match since {
            Some(p) => (p, true),
            None => (inner.scaler.position(channel).await?, false),
        };
        let mut reader = Reader {
            inner: Arc::downgrade(inner),
            channel: channel.to_owned(),
            rx,
            tap,
            last: start.clone(),
            ready: VecDeque::new(),
        };
        if resume {
            reader
                .catch_up()
                .await
                .ok_or(crate::scaler::ScalerError::Stopped)?;
        }
        let events =
            futures::stream::unfold(
                reader,
                |mut r| async move { r.next().await.map(|e| (e, r)) },
            )
            .boxed();
        Ok(ChannelStream {
            events,
            start,
            _tap: guard,
        })
    }
}
