//! The embedded, in-memory scaler.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use sss_core::Position;
use tokio::sync::mpsc;

use super::{Control, History, Record, Scaler, ScalerError, ScalerEvent};

const SHARDS: usize = 64;

/// Bounds of the in-memory history.
#[derive(Clone, Debug)]
pub struct MemoryOptions {
    /// Publications kept per channel (default 1000). Older ones are dropped; a client whose last
    /// position is older is told its channel is unrecoverable.
    pub history_size: usize,
    /// How long a publication is kept (default 5 minutes).
    pub history_ttl: Duration,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self {
            history_size: 1000,
            history_ttl: Duration::from_secs(300),
        }
    }
}

struct Stored {
    record: Arc<Record>,
    at: Instant,
}

struct ChannelState {
    epoch: String,
    seq: u64,
    history: VecDeque<Stored>,
    nodes: HashSet<u64>,
}

impl ChannelState {
    fn trim(&mut self, opts: &MemoryOptions, now: Instant) {
        while self.history.len() > opts.history_size {
            self.history.pop_front();
        }
        while self
            .history
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > opts.history_ttl)
        {
            self.history.pop_front();
        }
    }

    fn head(&self) -> Position {
        Position::new(self.epoch.clone(), self.seq)
    }
}

struct Hub {
    opts: MemoryOptions,
    shards: Vec<Mutex<HashMap<String, ChannelState>>>,
    nodes: RwLock<HashMap<u64, mpsc::UnboundedSender<ScalerEvent>>>,
    next_node: AtomicU64,
    hasher: RandomState,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a channel half-updated in a way that matters
    // more than losing the process, so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    fn shard(&self, channel: &str) -> &Mutex<HashMap<String, ChannelState>> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    fn with_channel<R>(&self, channel: &str, f: impl FnOnce(&mut ChannelState) -> R) -> R {
        let mut shard = lock(self.shard(channel));
        let state = shard
            .entry(channel.to_owned())
            .or_insert_with(|| ChannelState {
                epoch: new_epoch(&self.hasher),
                seq: 0,
                history: VecDeque::new(),
                nodes: HashSet::new(),
            });
        f(state)
    }

    fn send(&self, node: u64, event: ScalerEvent) {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = nodes.get(&node) {
            // A stopped instance's receiver is gone; nothing to deliver.
            let _ = tx.send(event);
        }
    }
}

fn new_epoch(hasher: &RandomState) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = hasher.build_hasher();
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    format!("{:x}", h.finish())
}

/// The embedded scaler: history and fan-out in this process's memory.
///
/// [`MemoryScaler::new`] makes a new cluster of one instance; [`MemoryScaler::instance`] adds
/// another instance to the same cluster, so tests can run several servers in one process.
/// Channels are sharded over 64 locks; a publication holds only its channel's shard.
pub struct MemoryScaler {
    hub: Arc<Hub>,
    node: u64,
}

impl MemoryScaler {
    /// A new in-memory cluster, and this instance's link to it.
    pub fn new(opts: MemoryOptions) -> Self {
        let hub = Arc::new(Hub {
            opts,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            nodes: RwLock::new(HashMap::new()),
            next_node: AtomicU64::new(1),
            hasher: RandomState::new(),
        });
        Self { hub, node: 0 }
    }

    /// Another instance's link to the same in-memory cluster.
    pub fn instance(&self) -> Self {
        Self {
            hub: self.hub.clone(),
            node: self.hub.next_node.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Forgets a channel's history and gives it a new epoch, as a scaler that lost its data
    /// would. Clients resyncing from an old position are told the channel is unrecoverable.
    pub fn reset_channel(&self, channel: &str) {
        self.hub.with_channel(channel, |state| {
            state.epoch = new_epoch(&self.hub.hasher);
            state.seq = 0;
            state.history.clear();
        });
    }
}

impl Default for MemoryScaler {
    fn default() -> Self {
        Self::new(MemoryOptions::default())
    }
}

#[async_trait::async_trait]
impl Scaler for MemoryScaler {
    async fn start(&self, events: mpsc::UnboundedSender<ScalerEvent>) -> Result<(), ScalerError> {
        self.hub
            .nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.node, events);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        topic: &str,
        msg: &RawValue,
    ) -> Result<Position, ScalerError> {
        let now = Instant::now();
        let hub = &self.hub;
        let shared: Arc<str> = Arc::from(channel);
        Ok(hub.with_channel(channel, |state| {
            state.seq += 1;
            let record = Arc::new(Record {
                position: state.head(),
                topic: topic.to_owned(),
                msg: msg.to_owned(),
            });
            state.history.push_back(Stored {
                record: record.clone(),
                at: now,
            });
            state.trim(&hub.opts, now);
            // Delivering under the channel's lock keeps every instance's stream in seq order.
            for &node in &state.nodes {
                hub.send(
                    node,
                    ScalerEvent::Publication {
                        channel: shared.clone(),
                        record: record.clone(),
                    },
                );
            }
            record.position.clone()
        }))
    }

    async fn subscribe(&self, channel: &str) -> Result<(), ScalerError> {
        self.hub
            .with_channel(channel, |s| s.nodes.insert(self.node));
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), ScalerError> {
        self.hub
            .with_channel(channel, |s| s.nodes.remove(&self.node));
        Ok(())
    }

    async fn history(&self, channel: &str, since: &Position) -> Result<History, ScalerError> {
        let now = Instant::now();
        Ok(self.hub.with_channel(channel, |state| {
            state.trim(&self.hub.opts, now);
            if since.epoch != state.epoch || since.seq > state.seq {
                return History::Unrecoverable { head: state.head() };
            }
            let oldest = state
                .history
                .front()
                .map_or(state.seq + 1, |s| s.record.position.seq);
            if since.seq + 1 < oldest {
                return History::Unrecoverable { head: state.head() };
            }
            let skip = (since.seq + 1 - oldest) as usize;
            History::Recovered(
                state
                    .history
                    .iter()
                    .skip(skip)
                    .map(|s| s.record.clone())
                    .collect(),
            )
        }))
    }

    async fn position(&self, channel: &str) -> Result<Position, ScalerError> {
        Ok(self.hub.with_channel(channel, |s| s.head()))
    }

    async fn control(&self, msg: Control) -> Result<(), ScalerError> {
        let nodes: Vec<u64> = {
            let nodes = self.hub.nodes.read().unwrap_or_else(|e| e.into_inner());
            nodes.keys().copied().collect()
        };
        for node in nodes {
            self.hub.send(node, ScalerEvent::Control(msg.clone()));
        }
        Ok(())
    }

    async fn stop(&self) {
        self.hub
            .nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u64) -> Box<RawValue> {
        sss_core::protocol::to_raw(&n).expect("json")
    }

    async fn recovered(s: &MemoryScaler, ch: &str, since: &Position) -> Vec<u64> {
        match s.history(ch, since).await.expect("history") {
            History::Recovered(r) => r.iter().map(|r| r.position.seq).collect(),
            History::Unrecoverable { head } => panic!("unrecoverable at {head}"),
        }
    }

    #[tokio::test]
    async fn positions_and_history() {
        let s = MemoryScaler::new(MemoryOptions {
            history_size: 3,
            ..MemoryOptions::default()
        });
        let p0 = s.position("c").await.expect("pos");
        assert_eq!(p0.seq, 0);
        for n in 1..=5 {
            let p = s.publish("c", "t", &msg(n)).await.expect("publish");
            assert_eq!(p, Position::new(p0.epoch.clone(), n));
        }
        assert_eq!(
            recovered(&s, "c", &Position::new(p0.epoch.clone(), 2)).await,
            [3, 4, 5]
        );
        assert_eq!(
            recovered(&s, "c", &Position::new(p0.epoch.clone(), 5)).await,
            Vec::<u64>::new()
        );
        // Trimmed past seq 2, from the future, and from another epoch: unrecoverable.
        for since in [
            Position::new(p0.epoch.clone(), 1),
            Position::new(p0.epoch.clone(), 6),
            Position::new("other", 4),
        ] {
            assert!(matches!(
                s.history("c", &since).await.expect("history"),
                History::Unrecoverable { head } if head.seq == 5
            ));
        }
    }

    #[tokio::test]
    async fn history_expires_by_age() {
        let s = MemoryScaler::new(MemoryOptions {
            history_size: 100,
            history_ttl: Duration::ZERO,
        });
        let p = s.publish("c", "t", &msg(1)).await.expect("publish");
        s.publish("c", "t", &msg(2)).await.expect("publish");
        assert!(matches!(
            s.history("c", &p).await.expect("history"),
            History::Unrecoverable { .. }
        ));
    }

    #[tokio::test]
    async fn fans_out_to_interested_instances_only() {
        let a = MemoryScaler::default();
        let b = a.instance();
        let (ta, mut ra) = mpsc::unbounded_channel();
        let (tb, mut rb) = mpsc::unbounded_channel();
        a.start(ta).await.expect("start");
        b.start(tb).await.expect("start");
        b.subscribe("c").await.expect("sub");
        a.publish("c", "t", &msg(1)).await.expect("publish");
        match rb.recv().await {
            Some(ScalerEvent::Publication { channel, record }) => {
                assert_eq!(&*channel, "c");
                assert_eq!(record.position.seq, 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(ra.try_recv().is_err(), "a did not subscribe");
        b.unsubscribe("c").await.expect("unsub");
        a.publish("c", "t", &msg(2)).await.expect("publish");
        assert!(rb.try_recv().is_err(), "b unsubscribed");
        a.control(Control::BootUser { user: "u".into() })
            .await
            .expect("control");
        assert!(matches!(
            ra.recv().await,
            Some(ScalerEvent::Control(Control::BootUser { .. }))
        ));
        assert!(matches!(
            rb.recv().await,
            Some(ScalerEvent::Control(Control::BootUser { .. }))
        ));
    }

    #[tokio::test]
    async fn reset_changes_epoch() {
        let s = MemoryScaler::default();
        let p = s.publish("c", "t", &msg(1)).await.expect("publish");
        s.reset_channel("c");
        let head = s.position("c").await.expect("pos");
        assert_ne!(head.epoch, p.epoch);
        assert!(matches!(
            s.history("c", &p).await.expect("history"),
            History::Unrecoverable { .. }
        ));
    }
}
