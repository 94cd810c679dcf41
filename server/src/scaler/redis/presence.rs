//! Presence in Redis: who is subscribed to a channel, on every instance.
//!
//! Per channel, a hash `<prefix>:{<channel>}:presence` maps socket ids to member JSON and a
//! sorted set `<prefix>:{<channel>}:presence:expiry` holds its socket ids by the time they
//! expire: both in the channel's hash slot, so every script touches one slot (Redis Cluster).
//! Each instance keeps the members it added, refreshes them every third of `presence_ttl`, and
//! at the same pace sweeps the expired members (of any instance) of the channels whose presence
//! it used and still delivers: the members of an instance that died without a goodbye are
//! removed, and their leave announced once, at most `presence_ttl` plus one sweep period after
//! its last refresh, wherever someone listens. Joins and leaves are published on the channel's
//! pub/sub channel, in order with its publications.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sss_core::protocol::Member;

use super::scripts::{PRESENCE, PRESENCE_REFRESH, PRESENCE_SWEEP, PRESENCE_UPDATE};
use super::{lock, unavailable, Shared};
use crate::scaler::ScalerError;

/// Members refreshed per script run, and most members one sweep run removes: bounds the time
/// Redis spends in one script.
const BATCH: usize = 500;
/// Presence scripts (refreshes, sweeps) of one maintenance run in flight at once.
const IN_FLIGHT: usize = 32;

/// A presence change as it travels over pub/sub (built by the presence scripts). Told apart
/// from a publication by its first key.
#[derive(serde::Deserialize)]
pub(super) struct PresenceWire {
    pub(super) p: String,
    pub(super) who: Member,
}

/// The start of every [`PresenceWire`] message (a publication starts with `{"e":`).
pub(super) const PRESENCE_MARK: &[u8] = b"{\"p\":";

/// This instance's members: (channel, socket id) -> member JSON.
pub(super) type Members = HashMap<(String, String), String>;

/// The channels whose presence this instance used (updated or read): those it sweeps.
pub(super) type PresenceChannels = HashSet<String>;

impl Shared {
    fn presence_key(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:presence", self.opts.prefix)
    }

    fn expiry_key(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:presence:expiry", self.opts.prefix)
    }

    /// Remembers that this instance uses `channel`'s presence, so it sweeps it.
    fn uses_presence(&self, channel: &str) {
        let mut used = lock(&self.presence_channels);
        if !used.contains(channel) {
            used.insert(channel.to_owned());
        }
    }

    fn presence_ttl_ms(&self) -> u64 {
        u64::try_from(self.opts.presence_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub(super) async fn presence_update(
        &self,
        channel: &str,
        joined: &[Arc<Member>],
        left: &[Arc<Member>],
    ) -> Result<(), ScalerError> {
        let mut inv = PRESENCE_UPDATE.prepare_invoke();
        self.uses_presence(channel);
        inv.key(self.presence_key(channel))
            .key(self.expiry_key(channel))
            .arg(self.presence_ttl_ms())
            .arg(self.pub_channel(channel))
            .arg(self.publish_command())
            .arg(joined.len());
        let mut jsons = Vec::with_capacity(joined.len());
        for m in joined {
            let json = serde_json::to_string(&**m).map_err(unavailable)?;
            inv.arg(&m.socket).arg(&json);
            jsons.push(json);
        }
        for m in left {
            inv.arg(&m.socket);
        }
        // Never while a refresh runs: a refresh that read this member before its leave and
        // wrote after it would bring it back (as a join nobody left again).
        let _gate = self.presence_gate.read().await;
        // Forgotten first: a leave that fails is not refreshed, and expires.
        {
            let mut members = lock(&self.members);
            for m in left {
                members.remove(&(channel.to_owned(), m.socket.clone()));
            }
        }
        let mut conn = self.conn.clone();
        self.bounded(inv.invoke_async::<()>(&mut conn)).await?;
        let mut members = lock(&self.members);
        for (m, json) in joined.iter().zip(jsons) {
            members.insert((channel.to_owned(), m.socket.clone()), json);
        }
        Ok(())
    }

    pub(super) async fn presence(&self, channel: &str) -> Result<Vec<Member>, ScalerError> {
        self.uses_presence(channel);
        let mut inv = PRESENCE.prepare_invoke();
        inv.key(self.presence_key(channel))
            .key(self.expiry_key(channel));
        let mut conn = self.conn.clone();
        let jsons: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
        jsons
            .iter()
            .map(|j| serde_json::from_str(j).map_err(|e| unavailable(format!("bad member: {e}"))))
            .collect()
    }

    /// Refreshes this instance's members, then sweeps expired ones.
    async fn maintain_presence(&self) -> Result<(), ScalerError> {
        let gate = self.presence_gate.write().await;
        let mut mine: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for ((channel, socket), json) in lock(&self.members).iter() {
            mine.entry(channel.clone())
                .or_default()
                .push((socket.clone(), json.clone()));
        }
        // A channel's batches in flight together, and several channels' (the connection
        // pipelines them): one at a time, a sweep period over many channels was one Redis
        // round trip per channel, twice.
        let mut refreshes = Vec::new();
        for (channel, members) in &mine {
            for batch in members.chunks(BATCH) {
                refreshes.push(self.refresh_presence(channel, batch));
            }
        }
        let mut refreshes = futures::stream::iter(refreshes).buffer_unordered(IN_FLIGHT);
        while let Some(done) = refreshes.next().await {
            done?;
        }
        drop(gate);
        // Only the channels still delivered: wherever nobody listens, a leave reaches no one,
        // and `presence` leaves expired members out anyway.
        let swept: Vec<String> = {
            let delivered = lock(&self.channels);
            let mut used = lock(&self.presence_channels);
            used.retain(|c| delivered.contains_key(c) || mine.contains_key(c));
            used.iter()
                .filter(|c| delivered.contains_key(*c))
                .cloned()
                .collect()
        };
        let sweeps: Vec<_> = swept.iter().map(|c| self.sweep_presence(c)).collect();
        let mut sweeps = futures::stream::iter(sweeps).buffer_unordered(IN_FLIGHT);
        while let Some(done) = sweeps.next().await {
            done?;
        }
        Ok(())
    }

    /// Refreshes one batch of this instance's members of `channel`.
    async fn refresh_presence(
        &self,
        channel: &str,
        batch: &[(String, String)],
    ) -> Result<(), ScalerError> {
        let mut inv = PRESENCE_REFRESH.prepare_invoke();
        inv.key(self.presence_key(channel))
            .key(self.expiry_key(channel))
            .arg(self.presence_ttl_ms())
            .arg(self.pub_channel(channel))
            .arg(self.publish_command());
        for (socket, json) in batch {
            inv.arg(socket).arg(json);
        }
        let mut conn = self.conn.clone();
        let rejoined: u64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        if rejoined > 0 {
            tracing::warn!(channel, rejoined, "presence members had expired (Redis was unreachable for longer than presence_ttl) and joined again");
        }
        Ok(())
    }

    /// Removes `channel`'s expired members (of any instance), announcing their leaves.
    async fn sweep_presence(&self, channel: &str) -> Result<(), ScalerError> {
        loop {
            let mut inv = PRESENCE_SWEEP.prepare_invoke();
            inv.key(self.presence_key(channel))
                .key(self.expiry_key(channel))
                .arg(self.pub_channel(channel))
                .arg(self.publish_command())
                .arg(BATCH);
            let mut conn = self.conn.clone();
            let removed: usize = self.bounded(inv.invoke_async(&mut conn)).await?;
            if removed > 0 {
                tracing::debug!(channel, removed, "expired presence members swept");
            }
            if removed < BATCH {
                return Ok(());
            }
        }
    }

    /// Runs [`maintain_presence`](Self::maintain_presence) every third of `presence_ttl` until
    /// the instance stops.
    pub(super) async fn presence_keeper(self: Arc<Self>) {
        // A zero ttl would make a zero period, which `interval` refuses.
        let period = (self.opts.presence_ttl / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.maintain_presence().await {
                tracing::warn!(error = %e, "presence refresh failed");
            }
        }
    }

    /// Removes every member of this instance (it stops), announcing their leaves.
    pub(super) async fn leave_presence(&self) {
        let mine: Vec<(String, String)> = lock(&self.members).keys().cloned().collect();
        let mut by_channel: HashMap<String, Vec<Arc<Member>>> = HashMap::new();
        for (channel, socket) in mine {
            by_channel
                .entry(channel)
                .or_default()
                .push(Arc::new(Member {
                    socket,
                    user: None,
                    session: None,
                    info: None,
                }));
        }
        for (channel, left) in by_channel {
            if let Err(e) = self.presence_update(&channel, &[], &left).await {
                tracing::warn!(channel, error = %e, "presence leave on stop failed; the members expire");
            }
        }
    }
}
