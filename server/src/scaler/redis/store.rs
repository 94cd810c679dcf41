//! The durable history tier a Redis scaler can run in front of (the MongoDB scaler's).

use serde_json::value::RawValue;
use sss_core::Position;

use crate::scaler::{Record, ScalerError};

/// What a [`Store`] made of a publication Redis sequenced.
// Only the `mongo` feature's store makes these.
#[cfg_attr(not(feature = "mongo"), allow(dead_code))]
pub(in crate::scaler) enum Appended {
    /// Written (or already there, identical).
    Stored,
    /// The store holds a different publication at this position of this epoch: Redis handed
    /// the seq out twice (it lost data, or failed over to a lagging replica).
    Conflict,
}

/// A durable history tier behind the Redis machinery (the MongoDB scaler's collection).
///
/// With a store, Redis allocates seqs (in `publish.lua`, together with the stream append and
/// the PUBLISH, so live order is exact) and keeps only a short window; the store keeps every
/// publication and the channel's epoch:
///
/// - When Redis has no state for a channel (it lost its data, or the keys expired), the scripts
///   answer "unseeded" instead of inventing an epoch, and the channel is seeded from
///   [`head`](Store::head): the same epoch continues at the same seq. Only a channel the store
///   has nothing (live) of starts a new epoch, and [`retire`](Store::retire) then drops what the
///   store still holds of older epochs.
/// - Each publication is [`append`](Store::append)ed after Redis sequenced it, before `publish`
///   returns. A [`Conflict`](Appended::Conflict) ends the channel's epoch (subscribers resync as
///   unrecoverable) rather than letting two histories coexist.
/// - Reads take the Redis window first and ask [`range`](Store::range) only for what is older.
#[async_trait::async_trait]
pub(in crate::scaler) trait Store: Send + Sync + 'static {
    /// The channel's newest kept publication's position, `None` if none is kept.
    async fn head(&self, channel: &str) -> Result<Option<Position>, ScalerError>;
    /// Keeps a publication. Returns [`Appended::Conflict`] if the position holds another one.
    async fn append(
        &self,
        channel: &str,
        position: &Position,
        topic: &str,
        msg: &RawValue,
    ) -> Result<Appended, ScalerError>;
    /// Every publication of `epoch` with `since < seq <= upto`, oldest first; `None` unless all
    /// of them are kept.
    async fn range(
        &self,
        channel: &str,
        epoch: &str,
        since: u64,
        upto: u64,
    ) -> Result<Option<Vec<Record>>, ScalerError>;
    /// Drops the channel's publications of every epoch but `epoch` (a new epoch began).
    async fn retire(&self, channel: &str, epoch: &str) -> Result<(), ScalerError>;
    /// How far behind the head a read may reach (publications), whatever is kept.
    fn reach(&self) -> u64;
}
