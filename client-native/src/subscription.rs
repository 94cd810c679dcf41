//! A channel subscription as a stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use sss_core::client::Recovery;
use sss_core::Position;
use tokio::sync::mpsc;

use crate::driver::Command;

/// One publication on a channel.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Channel.
    pub channel: String,
    /// Topic it was published under.
    pub topic: String,
    /// Payload (raw JSON); see [`Publication::decode`].
    pub msg: Box<RawValue>,
    /// Its position: `seq` increases by one per publication of the channel.
    pub position: Position,
}

impl Publication {
    /// Deserializes the payload.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.msg.get())
    }
}

/// What a [`Subscription`] yields, in order.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SubEvent {
    /// The next publication. Each is delivered once, in order, across reconnects.
    Publication(Publication),
    /// The client reconnected (or saw a gap) and resynced the channel with nothing lost: the
    /// missed publications followed or follow in order.
    Recovered {
        /// The channel's position when the resync happened.
        position: Position,
    },
    /// The client resynced the channel but publications were lost (the history was trimmed or
    /// its epoch changed): reload the state this channel feeds. Publications continue after
    /// `position`.
    Unrecoverable {
        /// The channel's position from which publications continue.
        position: Position,
    },
    /// The subscription ended: the server removed it (`booted`), refused it on resubscription,
    /// or the client closed. No more events follow.
    Ended {
        /// Error code.
        code: String,
        /// Reason.
        reason: String,
    },
}

/// A live subscription: a [`Stream`] of [`SubEvent`]s. Dropping it unsubscribes.
///
/// Events are buffered without bound until read: read the stream, or drop it.
#[derive(Debug)]
pub struct Subscription {
    channel: String,
    recovery: Recovery,
    events: mpsc::UnboundedReceiver<SubEvent>,
    cmd: mpsc::UnboundedSender<Command>,
}

impl Subscription {
    pub(crate) fn new(
        channel: String,
        recovery: Recovery,
        events: mpsc::UnboundedReceiver<SubEvent>,
        cmd: mpsc::UnboundedSender<Command>,
    ) -> Self {
        Self {
            channel,
            recovery,
            events,
            cmd,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// How the subscription started.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Unsubscribes (the same as dropping it).
    pub fn unsubscribe(self) {}
}

impl Stream for Subscription {
    type Item = SubEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SubEvent>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.cmd.send(Command::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
        });
    }
}
