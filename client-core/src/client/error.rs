//! Errors of the client state machine.

use std::fmt;

use crate::protocol::{codes, decimal, join, ChannelError, MAX_TOPIC_LEN};

/// Why an ask (or a subscription) failed.
///
/// `code` is one of [`codes`]: from the server (`rej`, `subrej`, `unsubbed`) or raised by the
/// client itself ([`codes::TIMEOUT`], [`codes::DISCONNECTED`], [`codes::CLOSED`]); applications
/// may also use codes of their own. It is `Clone` so one failure can reach every pending ask.
///
/// Its `Display` is `code: reason` (written by hand, as
/// [`ProtocolError`](crate::protocol::ProtocolError)'s is).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AskError {
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable reason.
    pub reason: String,
}

impl AskError {
    /// An error from its code and reason.
    pub fn new(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            reason: reason.into(),
        }
    }

    /// `code: reason`, what [`Display`](fmt::Display) writes (built without `core::fmt`'s
    /// machinery, as [`ClientError::message`]).
    pub fn message(&self) -> String {
        join(&[&self.code, ": ", &self.reason])
    }

    /// No answer arrived within the ask timeout.
    pub fn is_timeout(&self) -> bool {
        self.code == codes::TIMEOUT
    }

    /// The connection dropped after the ask was sent: the server may or may not have run it.
    pub fn is_disconnected(&self) -> bool {
        self.code == codes::DISCONNECTED
    }

    /// The client was closed before an answer arrived.
    pub fn is_closed(&self) -> bool {
        self.code == codes::CLOSED
    }

    pub(super) fn timeout() -> Self {
        Self::new(codes::TIMEOUT, "no answer within the ask timeout")
    }

    pub(super) fn disconnected() -> Self {
        Self::new(
            codes::DISCONNECTED,
            "the connection dropped before the answer arrived",
        )
    }

    pub(super) fn closed() -> Self {
        Self::new(codes::CLOSED, "the client is closed")
    }

    /// A presence request for a channel without a subscription (code
    /// [`codes::NOT_SUBSCRIBED`], as the server would answer). Public so that drivers answer a
    /// request made on the handle of a subscription that has ended the same way.
    pub fn not_subscribed() -> Self {
        Self::new(
            codes::NOT_SUBSCRIBED,
            "the client holds no subscription to this channel",
        )
    }
}

/// A command the client could not accept (API misuse or local limits; nothing was sent).
/// (`Display` by hand, as [`AskError`]'s.)
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The client is closed for good (by [`Client::close`](super::Client::close) or a final
    /// connection loss). Its wire code is [`codes::CLOSED`].
    Closed,
    /// The client is not connected and its offline queue is full. Its wire code is
    /// [`codes::QUEUE_FULL`].
    QueueFull,
    /// The client is already subscribed to this channel.
    AlreadySubscribed,
    /// The channel name is not valid.
    InvalidChannel(ChannelError),
    /// The topic is empty or longer than [`MAX_TOPIC_LEN`] bytes.
    InvalidTopic,
}

impl fmt::Display for AskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for AskError {}

impl ClientError {
    /// What [`Display`](fmt::Display) writes, built without `core::fmt`'s machinery (see
    /// [`ProtocolError::message`](crate::protocol::ProtocolError::message)).
    pub fn message(&self) -> String {
        match self {
            Self::Closed => "the client is closed".to_owned(),
            Self::QueueFull => "the offline queue is full".to_owned(),
            Self::AlreadySubscribed => "already subscribed to this channel".to_owned(),
            Self::InvalidChannel(e) => join(&["invalid channel: ", &e.message()]),
            Self::InvalidTopic => join(&[
                "invalid topic: empty or longer than ",
                &decimal(MAX_TOPIC_LEN as u64),
                " bytes",
            ]),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidChannel(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ChannelError> for ClientError {
    fn from(e: ChannelError) -> Self {
        Self::InvalidChannel(e)
    }
}

impl ClientError {
    /// The stable code both clients report this error with (see [`codes`]).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Closed => codes::CLOSED,
            Self::QueueFull => codes::QUEUE_FULL,
            Self::InvalidChannel(_) => codes::INVALID_CHANNEL,
            Self::AlreadySubscribed | Self::InvalidTopic => codes::INVALID,
        }
    }
}
