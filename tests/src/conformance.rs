//! The scaler conformance suite: what every [`Scaler`] must do, checked the same way for each.
//!
//! A backend implements [`Backend`] (how to make a new, isolated cluster and how to make it
//! lose a channel's data); [`conformance_tests!`](crate::conformance_tests) then expands to one
//! `#[tokio::test]` per case:
//!
//! ```ignore
//! async fn backend() -> MyBackend { MyBackend::new().await }
//! sss_tests::conformance_tests!(backend());
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::json;
use serde_json::value::RawValue;
use sss_core::protocol::Member;
use sss_core::Position;
use sss_server::scaler::{Control, History, Record, Scaler, ScalerError, ScalerEvent};
use sss_server::{ChannelEvent, ChannelStream, Server};
use tokio::sync::mpsc;

use crate::within;

/// What the suite needs from a scaler implementation.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// A new cluster of `instances` scalers, not started, sharing nothing with any other cluster
    /// made before, keeping `history_size` publications per channel.
    async fn cluster(&self, instances: usize, history_size: usize) -> Cluster;
}

/// Makes the backend forget a channel (its history and seq), as a backend that lost its data
/// would: the channel starts a new epoch.
pub type Forget = Box<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

/// One cluster made by a [`Backend`].
pub struct Cluster {
    /// Its instances, not started.
    pub instances: Vec<Arc<dyn Scaler>>,
    /// Forgets a channel of this cluster.
    pub forget: Forget,
}

/// A started instance and what it receives.
pub struct Node {
    /// The scaler.
    pub scaler: Arc<dyn Scaler>,
    /// What it delivers.
    pub events: mpsc::UnboundedReceiver<ScalerEvent>,
}

impl Node {
    /// The next event, failing the test if none comes in time.
    pub async fn next(&mut self) -> ScalerEvent {
        within("a scaler event", self.events.recv())
            .await
            .expect("the scaler's event stream ended")
    }

    /// The next event, which must be a publication.
    pub async fn next_pub(&mut self) -> (Arc<str>, Arc<Record>) {
        match self.next().await {
            ScalerEvent::Publication { channel, record } => (channel, record),
            other => panic!("expected a publication, got {other:?}"),
        }
    }

    /// Proves nothing for `channel` was delivered before now: publishes a marker on a channel
    /// of its own from `via`, and expects the marker to be this instance's next event.
    pub async fn expect_quiet(&mut self, via: &dyn Scaler, marker: &str) {
        self.scaler
            .subscribe(marker)
            .await
            .expect("subscribe marker");
        via.publish(marker, "marker", &msg(0))
            .await
            .expect("publish marker");
        let (channel, _) = self.next_pub().await;
        assert_eq!(
            &*channel, marker,
            "expected nothing before the marker, got a publication on {channel}"
        );
        self.scaler
            .unsubscribe(marker)
            .await
            .expect("unsubscribe marker");
    }
}

/// A JSON payload carrying `n`.
pub fn msg(n: u64) -> Box<RawValue> {
    serde_json::value::to_raw_value(&serde_json::json!({ "n": n })).expect("json")
}

/// The instances of a cluster: `first`, and `n - 1` more made from it by `more` (a scaler's
/// `instance()`: the same backend and options, connections of its own).
pub fn instances<S: Scaler + 'static>(
    first: S,
    n: usize,
    more: impl Fn(&S) -> S,
) -> Vec<Arc<dyn Scaler>> {
    let mut all: Vec<Arc<dyn Scaler>> = Vec::with_capacity(n);
    for _ in 1..n {
        all.push(Arc::new(more(&first)));
    }
    all.insert(0, Arc::new(first));
    all
}

/// Makes a cluster and starts every instance.
pub async fn start(backend: &dyn Backend, instances: usize, history_size: usize) -> Started {
    let cluster = backend.cluster(instances, history_size).await;
    let mut nodes = Vec::with_capacity(instances);
    for scaler in cluster.instances {
        let (tx, events) = mpsc::unbounded_channel();
        within("scaler start", scaler.start(tx))
            .await
            .expect("scaler starts");
        nodes.push(Node { scaler, events });
    }
    Started {
        nodes,
        forget: cluster.forget,
    }
}

/// A started cluster.
pub struct Started {
    /// Its instances.
    pub nodes: Vec<Node>,
    /// Forgets a channel of this cluster.
    pub forget: Forget,
}

impl Started {
    /// Stops every instance.
    pub async fn stop(self) {
        for node in &self.nodes {
            within("scaler stop", node.scaler.stop()).await;
        }
    }
}

async fn recovered(s: &dyn Scaler, channel: &str, since: &Position) -> Vec<Arc<Record>> {
    match s.history(channel, since).await.expect("history") {
        History::Recovered(records) => records,
        History::Unrecoverable { head } => panic!("unrecoverable since {since} (head {head})"),
    }
}

async fn unrecoverable(s: &dyn Scaler, channel: &str, since: &Position) -> Position {
    match s.history(channel, since).await.expect("history") {
        History::Unrecoverable { head } => head,
        History::Recovered(r) => panic!("recovered {} records since {since}", r.len()),
    }
}

fn seqs(records: &[Arc<Record>]) -> Vec<u64> {
    records.iter().map(|r| r.position.seq).collect()
}

/// A publication on one instance reaches another instance subscribed to the channel, in full,
/// and not an instance that did not subscribe.
pub async fn pubsub_across_instances(backend: &dyn Backend) {
    let mut c = start(backend, 2, 100).await;
    c.nodes[1]
        .scaler
        .subscribe("room")
        .await
        .expect("subscribe");
    let mut published = Vec::new();
    for n in 1..=3 {
        let p = c.nodes[0]
            .scaler
            .publish("room", "said", &msg(n))
            .await
            .expect("publish");
        published.push(p);
    }
    for (n, p) in (1..=3).zip(&published) {
        let (channel, record) = c.nodes[1].next_pub().await;
        assert_eq!(&*channel, "room");
        assert_eq!(&record.position, p);
        assert_eq!(record.topic, "said");
        assert_eq!(record.msg.get(), msg(n).get());
    }
    let (publisher, others) = c.nodes.split_at_mut(1);
    publisher[0]
        .expect_quiet(others[0].scaler.as_ref(), "marker")
        .await;
    c.stop().await;
}

/// Positions are strictly increasing by one per channel, across publishing instances, and a
/// channel never published to has a stable position with seq 0 that its first publication
/// continues.
pub async fn positions_increase(backend: &dyn Backend) {
    let c = start(backend, 2, 100).await;
    let (a, b) = (&c.nodes[0].scaler, &c.nodes[1].scaler);
    let p0 = a.position("fresh").await.expect("position");
    assert_eq!(p0.seq, 0);
    assert_eq!(b.position("fresh").await.expect("position"), p0);
    assert_eq!(a.position("fresh").await.expect("position"), p0);
    for n in 1..=20u64 {
        let by = if n % 2 == 0 { a } else { b };
        let p = by.publish("fresh", "t", &msg(n)).await.expect("publish");
        assert_eq!(p, Position::new(p0.epoch.clone(), n));
    }
    assert_eq!(
        b.position("fresh").await.expect("position"),
        Position::new(p0.epoch.clone(), 20)
    );
    // Channels are independent.
    let other = a.publish("other", "t", &msg(1)).await.expect("publish");
    assert_eq!(other.seq, 1);
    c.stop().await;
}

/// History since a position returns exactly what followed it, with topics and payloads.
pub async fn history_since(backend: &dyn Backend) {
    let c = start(backend, 2, 100).await;
    let (a, b) = (&c.nodes[0].scaler, &c.nodes[1].scaler);
    let p0 = a.position("h").await.expect("position");
    for n in 1..=5 {
        a.publish("h", &format!("t{n}"), &msg(n))
            .await
            .expect("publish");
    }
    let at = |seq| Position::new(p0.epoch.clone(), seq);
    let r = recovered(b.as_ref(), "h", &at(2)).await;
    assert_eq!(seqs(&r), [3, 4, 5]);
    for (record, n) in r.iter().zip(3..) {
        assert_eq!(record.position, at(n));
        assert_eq!(record.topic, format!("t{n}"));
        assert_eq!(record.msg.get(), msg(n).get());
    }
    assert_eq!(
        seqs(&recovered(b.as_ref(), "h", &at(0)).await),
        [1, 2, 3, 4, 5]
    );
    assert!(recovered(a.as_ref(), "h", &at(5)).await.is_empty());
    // From the future, and from another epoch: unrecoverable, with the head.
    assert_eq!(unrecoverable(a.as_ref(), "h", &at(6)).await, at(5));
    assert_eq!(
        unrecoverable(a.as_ref(), "h", &Position::new("not-an-epoch", 2)).await,
        at(5)
    );
    c.stop().await;
}

/// A position older than the kept history is unrecoverable; newer ones still recover.
pub async fn trimmed_history_unrecoverable(backend: &dyn Backend) {
    let c = start(backend, 1, 3).await;
    let a = &c.nodes[0].scaler;
    let p0 = a.position("t").await.expect("position");
    for n in 1..=5 {
        a.publish("t", "t", &msg(n)).await.expect("publish");
    }
    let at = |seq| Position::new(p0.epoch.clone(), seq);
    for since in [0, 1] {
        assert_eq!(unrecoverable(a.as_ref(), "t", &at(since)).await, at(5));
    }
    assert_eq!(seqs(&recovered(a.as_ref(), "t", &at(2)).await), [3, 4, 5]);
    c.stop().await;
}

/// When the backend loses a channel's data, the channel gets a new epoch: old positions are
/// unrecoverable, seqs start again from 1, and subscribers get the new epoch's publications.
pub async fn epoch_change_unrecoverable(backend: &dyn Backend) {
    let mut c = start(backend, 2, 100).await;
    c.nodes[1].scaler.subscribe("e").await.expect("subscribe");
    let mut old = None;
    for n in 1..=3 {
        old = Some(
            c.nodes[0]
                .scaler
                .publish("e", "t", &msg(n))
                .await
                .expect("publish"),
        );
    }
    let old = old.expect("published");
    for n in 1..=3 {
        assert_eq!(c.nodes[1].next_pub().await.1.position.seq, n);
    }
    (c.forget)("e".to_owned()).await;
    let head = c.nodes[0].scaler.position("e").await.expect("position");
    assert_ne!(head.epoch, old.epoch, "a lost channel starts a new epoch");
    assert_eq!(head.seq, 0);
    assert_eq!(
        unrecoverable(c.nodes[1].scaler.as_ref(), "e", &old).await,
        head
    );
    let p = c.nodes[0]
        .scaler
        .publish("e", "t", &msg(4))
        .await
        .expect("publish");
    assert_eq!(p, Position::new(head.epoch.clone(), 1));
    let (_, record) = c.nodes[1].next_pub().await;
    assert_eq!(
        record.position, p,
        "the subscriber gets the new epoch's seq 1"
    );
    c.stop().await;
}

/// Several instances publishing on one channel at once: no seq is skipped or given twice, and
/// every subscribed instance receives every publication in seq order.
pub async fn concurrent_publishers(backend: &dyn Backend) {
    const INSTANCES: usize = 4;
    const EACH: u64 = 250;
    let total = INSTANCES as u64 * EACH;
    let mut c = start(backend, INSTANCES, total as usize).await;
    for node in &c.nodes {
        node.scaler.subscribe("busy").await.expect("subscribe");
    }
    let epoch = c.nodes[0]
        .scaler
        .position("busy")
        .await
        .expect("position")
        .epoch;
    let tasks: Vec<_> = c
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let scaler = node.scaler.clone();
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(EACH as usize);
                for n in 0..EACH {
                    let p = scaler
                        .publish("busy", &format!("from{i}"), &msg(n))
                        .await
                        .expect("publish");
                    got.push(p);
                }
                got
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for task in tasks {
        for p in within("publishers", task).await.expect("publisher task") {
            assert_eq!(p.epoch, epoch);
            assert!(seen.insert(p.seq), "seq {} given twice", p.seq);
        }
    }
    assert_eq!(seen, (1..=total).collect::<HashSet<_>>());
    for (i, node) in c.nodes.iter_mut().enumerate() {
        for seq in 1..=total {
            let (channel, record) = node.next_pub().await;
            assert_eq!(&*channel, "busy");
            assert_eq!(
                record.position,
                Position::new(epoch.clone(), seq),
                "instance {i} out of order"
            );
        }
    }
    let r = recovered(
        c.nodes[1].scaler.as_ref(),
        "busy",
        &Position::new(epoch.clone(), 0),
    )
    .await;
    assert_eq!(seqs(&r), (1..=total).collect::<Vec<_>>());
    c.stop().await;
}

/// After unsubscribing, an instance receives nothing more from the channel; subscribing again
/// delivers only what is published afterwards.
pub async fn unsubscribe_stops_delivery(backend: &dyn Backend) {
    let mut c = start(backend, 2, 100).await;
    let a = c.nodes[0].scaler.clone();
    c.nodes[1].scaler.subscribe("u").await.expect("subscribe");
    a.publish("u", "t", &msg(1)).await.expect("publish");
    assert_eq!(c.nodes[1].next_pub().await.1.position.seq, 1);
    c.nodes[1]
        .scaler
        .unsubscribe("u")
        .await
        .expect("unsubscribe");
    a.publish("u", "t", &msg(2)).await.expect("publish");
    c.nodes[1].expect_quiet(a.as_ref(), "marker").await;
    c.nodes[1].scaler.subscribe("u").await.expect("subscribe");
    a.publish("u", "t", &msg(3)).await.expect("publish");
    let (channel, record) = c.nodes[1].next_pub().await;
    assert_eq!((&*channel, record.position.seq), ("u", 3));
    c.stop().await;
}

/// A control message reaches every instance, the sender included, exactly once.
pub async fn control_reaches_every_instance(backend: &dyn Backend) {
    let mut c = start(backend, 3, 100).await;
    c.nodes[1]
        .scaler
        .control(Control::TellUser {
            user: "ann".into(),
            topic: "hi".into(),
            msg: msg(7),
        })
        .await
        .expect("control");
    c.nodes[2]
        .scaler
        .control(Control::BootChannel {
            channel: "x".into(),
        })
        .await
        .expect("control");
    for node in &mut c.nodes {
        match node.next().await {
            ScalerEvent::Control(Control::TellUser {
                user,
                topic,
                msg: m,
            }) => {
                assert_eq!((user.as_str(), topic.as_str()), ("ann", "hi"));
                assert_eq!(m.get(), msg(7).get());
            }
            other => panic!("expected TellUser, got {other:?}"),
        }
        match node.next().await {
            ScalerEvent::Control(Control::BootChannel { channel }) => assert_eq!(channel, "x"),
            other => panic!("expected BootChannel, got {other:?}"),
        }
    }
    let (a, rest) = c.nodes.split_at_mut(1);
    for node in rest {
        node.expect_quiet(a[0].scaler.as_ref(), "marker").await;
    }
    c.stop().await;
}

fn member(socket: &str, user: Option<&str>) -> Arc<Member> {
    Arc::new(Member {
        socket: socket.into(),
        user: user.map(Into::into),
        session: None,
        info: Some(msg(1)),
    })
}

impl Node {
    /// The next event, which must be a presence change: (channel, joined, member).
    pub async fn next_presence(&mut self) -> (Arc<str>, bool, Arc<Member>) {
        match self.next().await {
            ScalerEvent::Presence {
                channel,
                joined,
                member,
            } => (channel, joined, member),
            other => panic!("expected a presence change, got {other:?}"),
        }
    }
}

async fn sockets(s: &dyn Scaler, channel: &str) -> Vec<String> {
    let mut members: Vec<String> = s
        .presence(channel)
        .await
        .expect("presence")
        .into_iter()
        .map(|m| m.socket)
        .collect();
    members.sort();
    members
}

/// Members added on one instance are seen from every instance, in full; joins and leaves reach
/// the instances subscribed to the channel, in order with its publications; removing a member
/// that is not there announces nothing; a stopped instance's members leave.
pub async fn presence_across_instances(backend: &dyn Backend) {
    let mut c = start(backend, 3, 100).await;
    c.nodes[1].scaler.subscribe("p").await.expect("subscribe");
    let a = c.nodes[0].scaler.clone();
    let (ann1, ann2) = (member("s-1", Some("ann")), member("s-2", Some("ann")));
    a.presence_update("p", std::slice::from_ref(&ann1), &[])
        .await
        .expect("join");
    a.publish("p", "t", &msg(1)).await.expect("publish");
    a.presence_update("p", std::slice::from_ref(&ann2), &[])
        .await
        .expect("join");
    let (channel, joined, m) = c.nodes[1].next_presence().await;
    assert_eq!((&*channel, joined), ("p", true));
    assert_eq!(*m, *ann1, "the member arrives in full");
    assert_eq!(c.nodes[1].next_pub().await.1.position.seq, 1);
    assert_eq!(c.nodes[1].next_presence().await.2.socket, "s-2");
    for node in &c.nodes {
        assert_eq!(sockets(node.scaler.as_ref(), "p").await, ["s-1", "s-2"]);
    }
    let all = c.nodes[2].scaler.presence("p").await.expect("presence");
    assert!(all.contains(&ann1), "{all:?}");
    assert_eq!(
        sss_core::protocol::PresenceStats::of(&all),
        sss_core::protocol::PresenceStats {
            sockets: 2,
            users: 1
        }
    );
    a.presence_update("p", &[], &[ann1.clone(), member("s-9", None)])
        .await
        .expect("leave");
    let (_, joined, m) = c.nodes[1].next_presence().await;
    assert_eq!((joined, m.socket.as_str()), (false, "s-1"));
    let via = c.nodes[2].scaler.clone();
    c.nodes[1].expect_quiet(via.as_ref(), "marker").await;
    assert_eq!(sockets(via.as_ref(), "p").await, ["s-2"]);
    // A channel without members, and one never heard of.
    assert!(sockets(a.as_ref(), "empty").await.is_empty());
    within("scaler stop", a.stop()).await;
    let (_, joined, m) = c.nodes[1].next_presence().await;
    assert_eq!((joined, m.socket.as_str()), (false, "s-2"));
    assert!(sockets(c.nodes[2].scaler.as_ref(), "p").await.is_empty());
    c.stop().await;
}

/// One instance of a [`Cluster`] as a server's scaler (the cluster hands out shared
/// instances; a server takes its scaler by value).
struct Instance(Arc<dyn Scaler>);

#[async_trait::async_trait]
impl Scaler for Instance {
    async fn start(&self, events: mpsc::UnboundedSender<ScalerEvent>) -> Result<(), ScalerError> {
        self.0.start(events).await
    }
    async fn publish(&self, c: &str, t: &str, m: &RawValue) -> Result<Position, ScalerError> {
        self.0.publish(c, t, m).await
    }
    async fn subscribe(&self, c: &str) -> Result<(), ScalerError> {
        self.0.subscribe(c).await
    }
    async fn unsubscribe(&self, c: &str) -> Result<(), ScalerError> {
        self.0.unsubscribe(c).await
    }
    async fn history(&self, c: &str, since: &Position) -> Result<History, ScalerError> {
        self.0.history(c, since).await
    }
    async fn position(&self, c: &str) -> Result<Position, ScalerError> {
        self.0.position(c).await
    }
    async fn control(&self, msg: Control) -> Result<(), ScalerError> {
        self.0.control(msg).await
    }
    async fn presence_update(
        &self,
        c: &str,
        joined: &[Arc<Member>],
        left: &[Arc<Member>],
    ) -> Result<(), ScalerError> {
        self.0.presence_update(c, joined, left).await
    }
    async fn presence(&self, c: &str) -> Result<Vec<Member>, ScalerError> {
        self.0.presence(c).await
    }
    async fn ready(&self) -> Result<(), ScalerError> {
        self.0.ready().await
    }
    async fn stop(&self) {
        self.0.stop().await;
    }
}

/// The next event of a server-side subscription, which must be a publication; returns its
/// seq and `n`.
async fn next_publication(stream: &mut ChannelStream) -> (u64, u64) {
    match within("a server-side publication", stream.next()).await {
        Some(ChannelEvent::Publication(r)) => {
            let v: serde_json::Value = serde_json::from_str(r.msg.get()).expect("json");
            (r.position.seq, v["n"].as_u64().expect("n"))
        }
        other => panic!("expected a publication, got {other:?}"),
    }
}

/// `Server::subscribe` on one instance reads what another publishes, in order; a reader that
/// falls behind by more than its queue catches up from the history; a stream resumed from a
/// position gets what came after it, or is told the history no longer reaches back.
pub async fn server_side_subscriptions(backend: &dyn Backend) {
    let cluster = backend.cluster(2, 3000).await;
    let mut servers = Vec::new();
    for scaler in cluster.instances {
        let server = Server::builder(Instance(scaler)).build().await;
        servers.push(server.expect("server starts"));
    }
    let (reader, writer) = (&servers[0], &servers[1]);
    let mut stream = reader.subscribe("feed").await.expect("subscribe");
    let start = stream.start().clone();
    for n in 1..=5 {
        writer
            .publish("feed", "n", &json!({ "n": n }))
            .await
            .expect("publish");
    }
    for n in 1..=5 {
        assert_eq!(
            next_publication(&mut stream).await,
            (start.seq + n, n),
            "in order"
        );
    }

    // 2000 publications while nobody reads: twice the stream's queue.
    for n in 6..=2005 {
        writer
            .publish("feed", "n", &json!({ "n": n }))
            .await
            .expect("publish");
    }
    for n in 6..=2005 {
        assert_eq!(
            next_publication(&mut stream).await.1,
            n,
            "caught up, in order"
        );
    }
    drop(stream);

    // Resumed from the 3rd publication: the 4th onwards, from the history, then live.
    let mut resumed = reader
        .subscribe_from("feed", third_of(&start))
        .await
        .expect("resume");
    for n in 4..=2005 {
        assert_eq!(
            next_publication(&mut resumed).await.1,
            n,
            "recovered in order"
        );
    }
    writer
        .publish("feed", "n", &json!({ "n": 2006 }))
        .await
        .expect("publish");
    assert_eq!(next_publication(&mut resumed).await.1, 2006, "then live");
    drop(resumed);

    // The backend lost the channel: a resume from before is told so, then goes on live.
    (cluster.forget)("feed".to_owned()).await;
    let head = writer
        .publish("feed", "n", &json!({ "n": 1 }))
        .await
        .expect("publish");
    let mut lost = reader
        .subscribe_from("feed", third_of(&start))
        .await
        .expect("resume");
    match within("unrecoverable", lost.next()).await {
        Some(ChannelEvent::Unrecoverable { head: h }) => assert_eq!(h, head),
        other => panic!("expected unrecoverable, got {other:?}"),
    }
    writer
        .publish("feed", "n", &json!({ "n": 2 }))
        .await
        .expect("publish");
    assert_eq!(next_publication(&mut lost).await, (head.seq + 1, 2));
    for s in &servers {
        s.shutdown(std::time::Duration::from_secs(1)).await;
    }
}

fn third_of(start: &Position) -> Position {
    Position::new(start.epoch.clone(), start.seq + 3)
}

/// Expands to one `#[tokio::test]` per conformance case, each with a backend made by `$make`
/// (an expression of a future yielding a [`Backend`](crate::conformance::Backend), evaluated
/// once per test).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            pubsub_across_instances,
            positions_increase,
            history_since,
            trimmed_history_unrecoverable,
            epoch_change_unrecoverable,
            concurrent_publishers,
            unsubscribe_stops_delivery,
            control_reaches_every_instance,
            presence_across_instances,
            server_side_subscriptions,
        );
    };
    (@cases $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::init_tracing();
                let backend = $make.await;
                $crate::within(
                    stringify!($case),
                    $crate::conformance::$case(&backend),
                )
                .await;
            }
        )*
    };
}

/// Publishes, retrying while Redis is unavailable (bounded by [`WAIT`](crate::WAIT)).
pub async fn publish_retrying(s: &dyn Scaler, channel: &str, n: u64) -> Position {
    let deadline = tokio::time::Instant::now() + crate::WAIT;
    loop {
        match s.publish(channel, "t", &msg(n)).await {
            Ok(p) => return p,
            Err(sss_server::scaler::ScalerError::Unavailable(e))
                if tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(%e, "publish retried");
                // Polling until the restarted server is reachable again.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("publish failed: {e}"),
        }
    }
}
