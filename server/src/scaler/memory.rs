//! The embedded, in-memory scaler.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use sss_core::protocol::Member;
use sss_core::Position;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::{Control, History, Record, Scaler, ScalerError, ScalerEvent};

const SHARDS: usize = 64;

/// A shard's map is shrunk once it is this many times larger than its channels need (and
/// holds room for at least [`SHRINK_MIN`] channels): a map never gives its table back on its
/// own, and 100 000 channels spread over the shards keep ~18 MB of tables after they leave
/// (64 tables of 2048 buckets of ~140 B). Shrinking to twice the channels left means at least
/// as many removals again before the next shrink, so the rehashing is amortised O(1) per
/// removal.
const SHRINK_FACTOR: usize = 4;
/// See [`SHRINK_FACTOR`]: small maps are not worth rehashing.
const SHRINK_MIN: usize = 64;

/// Bounds of the in-memory history.
///
/// # What the cluster forgets
///
/// A channel's state (epoch, seq, history) is kept while an instance subscribes to it or while
/// its history holds a publication (until `history_ttl` or `history_size` drops the last one);
/// then it is freed, so channels that come and go do not grow memory. Subscribing frees nothing
/// early: a subscribed channel keeps its epoch even after its history has expired.
///
/// A channel with no state has seq 0 and an epoch derived from its name and a generation: a
/// count of freed channels that had been published to, kept for each of 4096 groups of
/// channels. Asking its position twice gives the same answer and its first publication
/// continues that position, without anything stored (the scaler conformance suite requires
/// this of every scaler). Freeing a channel that had been published to moves its group to the
/// next generation, so its next life never reuses an epoch whose publications are gone: a
/// client resyncing from a position of the old life (`{E, n}`, `n > 0`) is told
/// [`History::Unrecoverable`]. A client at `{E, 0}` whose `E` is still the derived epoch
/// recovers (with nothing to replay): no publication can have been made under that epoch,
/// since a life that reaches seq 1 and is then freed moves the generation on. The price: when a
/// published channel is freed, the channels of its group that have no state get new derived
/// epochs, so a client at `{E, 0}` of one of them is told `Unrecoverable` although it missed
/// nothing (and reloads its state).
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
    /// Presence, by socket id: each member with the instance that holds its socket.
    members: HashMap<String, (u64, Arc<Member>)>,
}

impl ChannelState {
    fn new(epoch: String) -> Self {
        Self {
            epoch,
            seq: 0,
            history: VecDeque::new(),
            nodes: HashSet::new(),
            members: HashMap::new(),
        }
    }

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

    /// Nothing here is worth keeping: no instance subscribed, no member, no publication left to
    /// recover.
    fn idle(&self) -> bool {
        self.nodes.is_empty() && self.history.is_empty() && self.members.is_empty()
    }
}

/// Groups of channels per shard, each with its own generation (see [`MemoryOptions`]): 4096 in
/// all, so freeing a published channel renews the derived epoch of 1/4096 of the others only.
const GROUPS: usize = 64;

/// The channels of one lock.
struct Shard {
    channels: HashMap<String, ChannelState>,
    /// Per group: how many channels that had been published to were freed (or reset). Part of
    /// the epoch of a channel that has no state.
    generations: [u64; GROUPS],
}

impl Shard {
    /// Frees a channel's state.
    fn remove(&mut self, channel: &str, group: usize) {
        if let Some(state) = self.channels.remove(channel) {
            self.ended(&state, group);
        }
        self.shrink();
    }

    /// A channel's life ends: if anything was published in it, the group's next derived epoch
    /// must differ from every epoch used so far.
    fn ended(&mut self, state: &ChannelState, group: usize) {
        if state.seq > 0 {
            self.generations[group] += 1;
        }
    }

    fn shrink(&mut self) {
        let capacity = self.channels.capacity();
        if capacity > SHRINK_MIN && self.channels.len() * SHRINK_FACTOR < capacity {
            self.channels.shrink_to(self.channels.len() * 2);
        }
    }
}

struct Hub {
    opts: MemoryOptions,
    shards: Vec<Mutex<Shard>>,
    nodes: RwLock<HashMap<u64, mpsc::UnboundedSender<ScalerEvent>>>,
    next_node: AtomicU64,
    hasher: RandomState,
    /// The sweeper task while at least one instance is started. Only changed under the `nodes`
    /// write lock, so a start and a stop cannot leave a started instance without a sweeper.
    sweeper: Mutex<Option<AbortHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a channel half-updated in a way that matters
    // more than losing the process, so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// The channel's shard, and its group in the shard.
    fn locate(&self, channel: &str) -> (usize, usize) {
        let h = self.hasher.hash_one(channel) as usize;
        (h % SHARDS, (h / SHARDS) % GROUPS)
    }

    /// The epoch of a channel that has no state, in its group's `generation`.
    fn derived_epoch(&self, channel: &str, generation: u64) -> String {
        let mut h = self.hasher.build_hasher();
        "derived".hash(&mut h);
        channel.hash(&mut h);
        generation.hash(&mut h);
        format!("{:x}", h.finish())
    }

    /// Runs `f` on the channel's state, or on a fresh one (seq 0, the derived epoch) if the
    /// channel has none; frees or drops the state if `f` leaves it idle, so reading a channel
    /// stores nothing. (The key is allocated only when a new state is stored.)
    fn with_channel<R>(&self, channel: &str, f: impl FnOnce(&mut ChannelState) -> R) -> R {
        let (s, group) = self.locate(channel);
        let mut guard = lock(&self.shards[s]);
        let shard = &mut *guard;
        if let Some(state) = shard.channels.get_mut(channel) {
            let r = f(state);
            if state.idle() {
                shard.remove(channel, group);
            }
            return r;
        }
        let mut state = ChannelState::new(self.derived_epoch(channel, shard.generations[group]));
        let r = f(&mut state);
        if state.idle() {
            shard.ended(&state, group);
        } else {
            shard.channels.insert(channel.to_owned(), state);
        }
        r
    }

    /// Runs `f` on the channel's state if it has one (`None` otherwise); frees the state if
    /// `f` leaves it idle.
    fn with_existing<R>(&self, channel: &str, f: impl FnOnce(&mut ChannelState) -> R) -> Option<R> {
        let (s, group) = self.locate(channel);
        let mut guard = lock(&self.shards[s]);
        let shard = &mut *guard;
        let state = shard.channels.get_mut(channel)?;
        let r = f(state);
        if state.idle() {
            shard.remove(channel, group);
        }
        Some(r)
    }

    /// Trims the expired history of every channel of shard `i` and frees the idle ones; with
    /// `gone`, first drops that instance's subscriptions.
    fn sweep_shard(&self, i: usize, now: Instant, gone: Option<u64>) {
        let mut guard = lock(&self.shards[i]);
        let Shard {
            channels,
            generations,
        } = &mut *guard;
        channels.retain(|channel, state| {
            if let Some(node) = gone {
                state.nodes.remove(&node);
                // A stopped instance's sockets are gone: their members leave.
                let mut left = Vec::new();
                state.members.retain(|_, (n, m)| {
                    let keep = *n != node;
                    if !keep {
                        left.push(m.clone());
                    }
                    keep
                });
                self.announce(channel, state, false, &left);
            }
            state.trim(&self.opts, now);
            if !state.idle() {
                return true;
            }
            if state.seq > 0 {
                generations[self.locate(channel).1] += 1;
            }
            false
        });
        guard.shrink();
    }

    /// [`sweep_shard`](Self::sweep_shard) over every shard, one lock at a time.
    fn sweep(&self, now: Instant, gone: Option<u64>) {
        for i in 0..SHARDS {
            self.sweep_shard(i, now, gone);
        }
    }

    fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).channels.len()).sum()
    }

    /// Delivers presence changes to every instance subscribed to the channel. Called under the
    /// channel's lock, like publications, so each instance sees one order.
    fn announce(&self, channel: &str, state: &ChannelState, joined: bool, members: &[Arc<Member>]) {
        if members.is_empty() {
            return;
        }
        let channel: Arc<str> = Arc::from(channel);
        for &node in &state.nodes {
            for member in members {
                let event = ScalerEvent::Presence {
                    channel: channel.clone(),
                    joined,
                    member: member.clone(),
                };
                self.send(node, event);
            }
        }
    }

    fn send(&self, node: u64, event: ScalerEvent) {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = nodes.get(&node) {
            // A stopped instance's receiver is gone; nothing to deliver.
            let _ = tx.send(event);
        }
    }
}

/// How often the sweeper passes over every channel: a quarter of `history_ttl`, so an
/// abandoned channel is freed at most a quarter of its history's lifetime after its last
/// publication expired, within [1 s, 60 s] (no busy wake-ups for a short TTL, no hour-long
/// wait for a long one).
fn sweep_period(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Frees channels whose history expired while no instance subscribed to them (every other way
/// to become idle frees the channel on the spot). One pass over all the shards per period
/// rather than a timer per channel or an expiry queue: no memory per channel, and a pass
/// costs one `retain` per shard. It takes one shard lock at a time and yields to the runtime
/// between shards, so publications wait for at most one shard's scan. It holds the hub only
/// while sweeping: it ends when the hub is dropped, and is aborted by the last `stop`.
async fn sweeper(hub: Weak<Hub>, period: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for i in 0..SHARDS {
            let Some(hub) = hub.upgrade() else {
                return;
            };
            hub.sweep_shard(i, Instant::now(), None);
            drop(hub);
            tokio::task::yield_now().await;
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
/// Channels are sharded over 64 locks; a publication holds only its channel's shard. A
/// channel's state is freed once nothing needs it (see [`MemoryOptions`]); a task started by
/// the first [`start`](Scaler::start) frees channels whose history expired unattended.
pub struct MemoryScaler {
    hub: Arc<Hub>,
    node: u64,
}

impl MemoryScaler {
    /// A new in-memory cluster, and this instance's link to it.
    pub fn new(opts: MemoryOptions) -> Self {
        let hub = Arc::new(Hub {
            opts,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        channels: HashMap::new(),
                        generations: [0; GROUPS],
                    })
                })
                .collect(),
            nodes: RwLock::new(HashMap::new()),
            next_node: AtomicU64::new(1),
            hasher: RandomState::new(),
            sweeper: Mutex::new(None),
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
        let (s, group) = self.hub.locate(channel);
        let mut guard = lock(&self.hub.shards[s]);
        let shard = &mut *guard;
        // Whatever epoch the channel had (stored or derived) is never used again.
        shard.generations[group] += 1;
        let Some(state) = shard.channels.get_mut(channel) else {
            return;
        };
        state.epoch = new_epoch(&self.hub.hasher);
        state.seq = 0;
        state.history.clear();
        if state.idle() {
            shard.remove(channel, group);
        }
    }

    /// The number of channels whose state this cluster holds: channels an instance subscribes
    /// to, or whose history still holds a publication (until the sweeper frees them). Shared by
    /// every instance of the cluster; for tests and metrics.
    pub fn channel_count(&self) -> usize {
        self.hub.channel_count()
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
        let mut nodes = self.hub.nodes.write().unwrap_or_else(|e| e.into_inner());
        nodes.insert(self.node, events);
        let mut sweeper = lock(&self.hub.sweeper);
        if sweeper.as_ref().is_none_or(AbortHandle::is_finished) {
            let task = tokio::spawn(sweeper_task(&self.hub));
            *sweeper = Some(task.abort_handle());
        }
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
        let now = Instant::now();
        self.hub.with_existing(channel, |s| {
            s.nodes.remove(&self.node);
            // Expired history must not keep the channel: that would leave it to the sweeper.
            s.trim(&self.hub.opts, now);
        });
        Ok(())
    }

    async fn history(&self, channel: &str, since: &Position) -> Result<History, ScalerError> {
        let now = Instant::now();
        // A channel with no state reads as a fresh one in its derived epoch, which is dropped
        // again: `{E, 0}` in that epoch recovers nothing, anything else is unrecoverable (see
        // `MemoryOptions`).
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

    async fn presence_update(
        &self,
        channel: &str,
        joined: &[Arc<Member>],
        left: &[Arc<Member>],
    ) -> Result<(), ScalerError> {
        let hub = &self.hub;
        hub.with_channel(channel, |state| {
            let left: Vec<Arc<Member>> = left
                .iter()
                .filter_map(|m| state.members.remove(&m.socket).map(|(_, m)| m))
                .collect();
            hub.announce(channel, state, false, &left);
            for m in joined {
                state
                    .members
                    .insert(m.socket.clone(), (self.node, m.clone()));
            }
            hub.announce(channel, state, true, joined);
        });
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<Vec<Member>, ScalerError> {
        Ok(self
            .hub
            .with_existing(channel, |state| {
                state
                    .members
                    .values()
                    .map(|(_, m)| Member::clone(m))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn stop(&self) {
        {
            let mut nodes = self.hub.nodes.write().unwrap_or_else(|e| e.into_inner());
            nodes.remove(&self.node);
            if nodes.is_empty() {
                if let Some(task) = lock(&self.hub.sweeper).take() {
                    task.abort();
                }
            }
        }
        // A stopped instance subscribes to nothing: its channels may now be idle.
        self.hub.sweep(Instant::now(), Some(self.node));
    }
}

/// The sweeper of `hub`, holding it weakly.
fn sweeper_task(hub: &Arc<Hub>) -> impl std::future::Future<Output = ()> + Send + 'static {
    sweeper(Arc::downgrade(hub), sweep_period(hub.opts.history_ttl))
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

    /// Runs the sweeper's pass as if the clock read `now`.
    fn sweep_at(s: &MemoryScaler, now: Instant) {
        s.hub.sweep(now, None);
    }

    fn table_capacity(s: &MemoryScaler) -> usize {
        s.hub
            .shards
            .iter()
            .map(|s| lock(s).channels.capacity())
            .sum()
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
        // A channel with no state gets a new epoch too.
        let before = s.position("never").await.expect("pos");
        s.reset_channel("never");
        assert_ne!(s.position("never").await.expect("pos").epoch, before.epoch);
    }

    #[tokio::test]
    async fn channels_left_by_every_instance_are_freed() {
        let a = MemoryScaler::default();
        let b = a.instance();
        let names: Vec<String> = (0..100_000).map(|n| format!("ch:{n}")).collect();
        for name in &names {
            a.subscribe(name).await.expect("sub");
        }
        b.subscribe(&names[0]).await.expect("sub");
        assert_eq!(a.channel_count(), names.len());
        let full = table_capacity(&a);
        for name in &names {
            a.unsubscribe(name).await.expect("unsub");
        }
        assert_eq!(a.channel_count(), 1, "b still subscribes to one");
        b.unsubscribe(&names[0]).await.expect("unsub");
        assert_eq!(a.channel_count(), 0);
        // The tables shrank with the channels: at most 64 small maps are left.
        let left = table_capacity(&a);
        assert!(
            left <= SHARDS * SHRINK_MIN,
            "{left} slots kept of {full} for 100 000 channels"
        );
        // Reading positions and history stores nothing.
        for name in &names[..1000] {
            let head = a.position(name).await.expect("pos");
            a.history(name, &head).await.expect("history");
            a.unsubscribe(name).await.expect("unsub");
        }
        assert_eq!(a.channel_count(), 0);
    }

    #[tokio::test]
    async fn abandoned_channels_are_freed_once_their_history_expired() {
        let s = MemoryScaler::new(MemoryOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
        });
        let start = Instant::now();
        for n in 0..1000 {
            s.publish(&format!("ch:{n}"), "t", &msg(n))
                .await
                .expect("publish");
        }
        assert_eq!(s.channel_count(), 1000);
        sweep_at(&s, start);
        assert_eq!(s.channel_count(), 1000, "history still live");
        sweep_at(&s, Instant::now() + Duration::from_secs(61));
        assert_eq!(s.channel_count(), 0);
        // Trimmed to nothing by size: freed by the publication itself.
        let tiny = MemoryScaler::new(MemoryOptions {
            history_size: 0,
            ..MemoryOptions::default()
        });
        tiny.publish("c", "t", &msg(1)).await.expect("publish");
        assert_eq!(tiny.channel_count(), 0);
    }

    #[tokio::test]
    async fn subscribed_channels_keep_their_epoch_across_sweeps() {
        let s = MemoryScaler::new(MemoryOptions {
            history_size: 10,
            history_ttl: Duration::ZERO,
        });
        s.subscribe("quiet").await.expect("sub");
        s.subscribe("busy").await.expect("sub");
        let quiet = s.position("quiet").await.expect("pos");
        let p0 = s.position("busy").await.expect("pos");
        s.publish("busy", "t", &msg(1)).await.expect("publish");
        let p2 = s.publish("busy", "t", &msg(2)).await.expect("publish");
        // Expires everything, and frees whatever any other channel would.
        for _ in 0..3 {
            s.publish("other", "t", &msg(0)).await.expect("publish");
            sweep_at(&s, Instant::now() + Duration::from_secs(3600));
        }
        assert_eq!(s.channel_count(), 2);
        assert_eq!(s.position("quiet").await.expect("pos"), quiet);
        assert_eq!(p2, Position::new(p0.epoch.clone(), 2));
        assert_eq!(s.position("busy").await.expect("pos"), p2);
        // A client at the head misses nothing; one further back is told so.
        assert!(recovered(&s, "busy", &p2).await.is_empty());
        assert!(matches!(
            s.history("busy", &p0).await.expect("history"),
            History::Unrecoverable { head } if head == p2
        ));
    }

    #[tokio::test]
    async fn unattended_live_history_keeps_its_epoch() {
        let s = MemoryScaler::default();
        let p1 = s.publish("h", "t", &msg(1)).await.expect("publish");
        s.publish("h", "t", &msg(2)).await.expect("publish");
        s.publish("h", "t", &msg(3)).await.expect("publish");
        sweep_at(&s, Instant::now());
        assert_eq!(s.channel_count(), 1);
        // The client that saw seq 1 comes back: it subscribes, then reads what it missed.
        s.subscribe("h").await.expect("sub");
        assert_eq!(recovered(&s, "h", &p1).await, [2, 3]);
        assert_eq!(
            s.position("h").await.expect("pos"),
            Position::new(p1.epoch, 3)
        );
    }

    #[tokio::test]
    async fn a_freed_channel_never_reuses_a_published_epoch() {
        let s = MemoryScaler::new(MemoryOptions {
            history_size: 10,
            history_ttl: Duration::ZERO,
        });
        // Never published: the epoch holds while nothing is stored, through a subscription.
        let quiet = s.position("quiet").await.expect("pos");
        assert_eq!(s.position("quiet").await.expect("pos"), quiet);
        s.subscribe("quiet").await.expect("sub");
        assert_eq!(s.position("quiet").await.expect("pos"), quiet);
        s.unsubscribe("quiet").await.expect("unsub");
        assert_eq!(s.channel_count(), 0);
        assert_eq!(s.position("quiet").await.expect("pos"), quiet);
        assert!(recovered(&s, "quiet", &quiet).await.is_empty());

        let p = s.publish("x", "t", &msg(1)).await.expect("publish");
        sweep_at(&s, Instant::now() + Duration::from_secs(1));
        assert_eq!(s.channel_count(), 0);
        let head = s.position("x").await.expect("pos");
        assert_eq!(head.seq, 0);
        assert_ne!(head.epoch, p.epoch, "publications of that epoch are gone");
        for since in [p.clone(), Position::new(p.epoch.clone(), 0)] {
            assert!(matches!(
                s.history("x", &since).await.expect("history"),
                History::Unrecoverable { head: h } if h == head
            ));
        }
        let again = s.publish("x", "t", &msg(2)).await.expect("publish");
        assert_eq!(again, Position::new(head.epoch, 1));
    }

    #[tokio::test]
    async fn stopping_drops_subscriptions_and_the_last_stop_ends_the_sweeper() {
        let a = MemoryScaler::default();
        let b = a.instance();
        let (ta, _ra) = mpsc::unbounded_channel();
        let (tb, _rb) = mpsc::unbounded_channel();
        a.start(ta).await.expect("start");
        b.start(tb).await.expect("start");
        let sweeping = || {
            lock(&a.hub.sweeper)
                .as_ref()
                .is_some_and(|t| !t.is_finished())
        };
        assert!(sweeping());
        a.subscribe("c").await.expect("sub");
        b.subscribe("d").await.expect("sub");
        a.stop().await;
        assert_eq!(a.channel_count(), 1, "b's subscription stays");
        assert!(sweeping(), "b is still started");
        b.stop().await;
        assert_eq!(a.channel_count(), 0);
        assert!(!sweeping());
    }

    #[tokio::test]
    async fn the_sweeper_ends_with_its_hub() {
        let hub = Arc::downgrade(&MemoryScaler::default().hub);
        tokio::time::timeout(
            Duration::from_secs(10),
            sweeper(hub, Duration::from_millis(1)),
        )
        .await
        .expect("the sweeper returns once the hub is gone");
    }

    #[test]
    fn sweep_period_is_clamped() {
        assert_eq!(sweep_period(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            sweep_period(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
        assert_eq!(
            sweep_period(Duration::from_secs(300)),
            Duration::from_secs(60)
        );
    }
}
