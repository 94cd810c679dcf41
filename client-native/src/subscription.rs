//! A channel subscription as a stream.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::Stream;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use sss_core::client::{ClientError, Recovery};
use sss_core::protocol::{Member, PresenceStats};
use sss_core::Position;
use tokio::sync::{mpsc, oneshot};

use crate::driver::Command;
use crate::{answer, from_raw, RequestError};

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
    ///
    /// Presence is not resynced: joins and leaves missed meanwhile are not replayed. An
    /// application that shows the members asks again ([`Subscription::presence`]).
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
    /// Another socket joined the channel's presence. Only for a subscription made with
    /// [`SubscribeOptions::presence`] that the server granted presence, while it is live; never
    /// for this client's own socket. A user with three tabs open is three sockets: three joins
    /// (with the same [`Member::user`]).
    Join(Member),
    /// Another socket left the channel's presence: it unsubscribed, disconnected, was booted,
    /// or its server instance died and its membership expired. Delivered like
    /// [`SubEvent::Join`].
    Leave(Member),
    /// The subscription ended: the server removed it (`booted`), refused it on resubscription,
    /// or the client closed (code `closed`, with the close's reason, however it closed). No more
    /// events follow.
    Ended {
        /// Error code.
        code: String,
        /// Reason.
        reason: String,
    },
}

/// Options of [`Client::subscribe_with`](crate::Client::subscribe_with).
/// `SubscribeOptions::default()` asks for no presence events.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Whether the subscription's stream also yields the channel's join and leave events
    /// ([`SubEvent::Join`], [`SubEvent::Leave`]). Whether the channel has presence at all is
    /// the server's decision ([`Subscription::has_presence`]). Default: `false`.
    pub presence: bool,
}

impl SubscribeOptions {
    /// Sets [`SubscribeOptions::presence`].
    pub fn presence(mut self, on: bool) -> Self {
        self.presence = on;
        self
    }
}

/// What a [`Subscription`] handle shares with the driver: its identity (a channel whose
/// subscription ended may be subscribed again, with a new handle: the old handle must not
/// reach the new subscription), and what the server's last `subok` said about presence.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    presence: AtomicBool,
}

impl Shared {
    pub(crate) fn set_presence(&self, granted: bool) {
        self.presence.store(granted, Ordering::Relaxed);
    }
}

/// A live subscription: a [`Stream`] of [`SubEvent`]s. Dropping it unsubscribes.
///
/// Events are buffered without bound until read: read the stream, or drop it.
#[derive(Debug)]
pub struct Subscription {
    channel: String,
    recovery: Recovery,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<SubEvent>,
    cmd: mpsc::UnboundedSender<Command>,
}

impl Subscription {
    pub(crate) fn new(
        channel: String,
        recovery: Recovery,
        shared: Arc<Shared>,
        events: mpsc::UnboundedReceiver<SubEvent>,
        cmd: mpsc::UnboundedSender<Command>,
    ) -> Self {
        Self {
            channel,
            recovery,
            shared,
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

    /// Whether the subscription has presence, as the server said when it last (re)accepted it:
    /// [`Subscription::presence`] is answered, and join / leave events follow if they were
    /// asked for.
    pub fn has_presence(&self) -> bool {
        self.shared.presence.load(Ordering::Relaxed)
    }

    /// The channel's members, cluster-wide (in no particular order): one [`Member`] per
    /// subscribed socket, this one included.
    ///
    /// Behaves like an ask (same timeout; `disconnected` if the connection drops before the
    /// answer), but is sent only once the subscription is live: while it resyncs after a
    /// reconnect, the request waits for it. Errors (see [`RequestError::code`]):
    /// [`codes::NO_PRESENCE`](crate::codes::NO_PRESENCE) when the subscription has no
    /// presence, [`codes::NOT_SUBSCRIBED`](crate::codes::NOT_SUBSCRIBED) when it has ended,
    /// `unavailable` when the server could not reach its scaler.
    pub async fn presence(&self) -> Result<Vec<Member>, RequestError> {
        from_raw(&self.presence_request(false).await?)
    }

    /// The channel's presence counts: sockets, and distinct users among them. Like
    /// [`Subscription::presence`].
    pub async fn presence_stats(&self) -> Result<PresenceStats, RequestError> {
        from_raw(&self.presence_request(true).await?)
    }

    async fn presence_request(&self, stats: bool) -> Result<Box<RawValue>, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Presence {
                channel: self.channel.clone(),
                sub: self.shared.clone(),
                stats,
                reply: tx,
            })
            .map_err(|_| ClientError::Closed)?;
        answer(rx).await
    }

    /// Unsubscribes (the same as dropping it).
    pub fn unsubscribe(self) {}

    /// This subscription's publications of `topic`, each deserialized as `T`: a [`Stream`] of
    /// `Result<T, TopicError>`, in order. Publications of other topics, joins, leaves and
    /// resyncs with nothing lost are passed over; what the application must act on is an
    /// `Err`: a payload that is not a `T` ([`TopicError::Decode`], the stream goes on), lost
    /// publications ([`TopicError::Unrecoverable`]: reload the state, the stream goes on) and
    /// the end of the subscription ([`TopicError::Ended`], the last item).
    ///
    /// ```no_run
    /// # async fn f(client: sss_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use futures::StreamExt;
    /// #[derive(serde::Deserialize)]
    /// struct Msg { from: String, text: String }
    ///
    /// let mut msgs = client.subscribe("room:1", None::<()>).await?.topic::<Msg>("msg");
    /// while let Some(msg) = msgs.next().await {
    ///     let msg = msg?;
    ///     println!("{}: {}", msg.from, msg.text);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn topic<T: DeserializeOwned>(self, topic: impl Into<String>) -> Topic<T> {
        Topic {
            sub: self,
            topic: topic.into(),
            _t: PhantomData,
        }
    }
}

/// One topic of a [`Subscription`], typed: see [`Subscription::topic`]. Dropping it
/// unsubscribes.
#[derive(Debug)]
pub struct Topic<T> {
    sub: Subscription,
    topic: String,
    _t: PhantomData<fn() -> T>,
}

impl<T> Topic<T> {
    /// The subscription (its channel, presence, ...).
    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// What a [`Topic`] stream yields instead of a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The publication's payload is not a `T`. The stream goes on.
    #[error("the publication at {position} does not decode: {error}")]
    Decode {
        /// The publication's position.
        position: Position,
        /// Why it does not decode.
        error: serde_json::Error,
    },
    /// Publications were lost (the client resynced but the history no longer reached back):
    /// reload the state this topic feeds. Publications continue after `position`.
    #[error("publications were lost; they continue after {position}")]
    Unrecoverable {
        /// The channel's position from which publications continue.
        position: Position,
    },
    /// The subscription ended (as [`SubEvent::Ended`]); nothing follows.
    #[error("the subscription ended: {code}: {reason}")]
    Ended {
        /// Error code.
        code: String,
        /// Reason.
        reason: String,
    },
}

impl<T: DeserializeOwned> Stream for Topic<T> {
    type Item = Result<T, TopicError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let item = match ready!(Pin::new(&mut self.sub).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(SubEvent::Publication(p)) if p.topic == self.topic => {
                    p.decode().map_err(|error| TopicError::Decode {
                        position: p.position,
                        error,
                    })
                }
                Some(SubEvent::Unrecoverable { position }) => {
                    Err(TopicError::Unrecoverable { position })
                }
                Some(SubEvent::Ended { code, reason }) => Err(TopicError::Ended { code, reason }),
                Some(
                    SubEvent::Publication(_)
                    | SubEvent::Recovered { .. }
                    | SubEvent::Join(_)
                    | SubEvent::Leave(_),
                ) => continue,
            };
            return Poll::Ready(Some(item));
        }
    }
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
            sub: self.shared.clone(),
        });
    }
}
