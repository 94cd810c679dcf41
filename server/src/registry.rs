//! This instance's sockets, and which of them are subscribed to which channel.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use sss_core::protocol::{close, encode_pub, encode_tell, Member, ServerFrame};
use tokio::sync::{mpsc, watch, Mutex as AsyncMutex};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::machine::{PresenceNote, Publication};
use crate::scaler::{Control, Record, Scaler, ScalerError};
use crate::socket::{Out, SocketShared};

const SHARDS: usize = 64;

/// A server-side subscriber's end of a channel: a bounded queue of the channel's publications.
pub(crate) struct Tap {
    pub(crate) tx: mpsc::Sender<Arc<Record>>,
    /// Set when a publication did not fit: the subscriber catches up from the history.
    pub(crate) lagged: AtomicBool,
}

type Sockets = HashMap<u64, Arc<SocketShared>>;

#[derive(Default)]
struct ChannelSubs {
    subs: Sockets,
    /// Server-side subscribers ([`Server::subscribe`](crate::Server::subscribe)), by key.
    taps: HashMap<u64, Arc<Tap>>,
    /// The subscribers that are members of the channel's presence (what it should be).
    members: HashMap<u64, Arc<Member>>,
    /// Held while this instance's interest in the channel, and its members, change at the
    /// scaler; what the scaler has been told.
    interest: Arc<AsyncMutex<Scaled>>,
    /// The epoch of the last publication fanned out, shared by the next ones while it holds:
    /// each subscriber then recognises it by pointer, without reading the string or taking a
    /// reference count (`sss-bench fanout`: 2.3 % of the server's CPU was comparing epochs).
    epoch: Mutex<Option<Arc<str>>>,
}

impl ChannelSubs {
    /// `epoch` as an `Arc`: the one the previous publication had if it is the same.
    fn epoch_of(&self, epoch: &str) -> Arc<str> {
        let mut last = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some(e) if **e == *epoch => e.clone(),
            _ => last.insert(Arc::from(epoch)).clone(),
        }
    }

    /// Whether anyone here reads the channel.
    fn wanted(&self) -> bool {
        !self.subs.is_empty() || !self.taps.is_empty()
    }
}

/// What the scaler has been told about one channel by this instance.
#[derive(Default)]
struct Scaled {
    /// The scaler delivers the channel here.
    subscribed: bool,
    /// This instance's members of the channel's presence, by socket key.
    announced: HashMap<u64, Arc<Member>>,
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Members by socket key.
type Keyed = Vec<(u64, Arc<Member>)>;

impl Scaled {
    /// The members to add (wanted, not announced or announced as another value) and to
    /// remove (announced, no longer wanted).
    fn diff(&self, wanted: &HashMap<u64, Arc<Member>>) -> (Keyed, Keyed) {
        let joined = wanted
            .iter()
            .filter(|(k, m)| !self.announced.get(k).is_some_and(|a| Arc::ptr_eq(a, m)))
            .map(|(k, m)| (*k, m.clone()))
            .collect();
        let left = self
            .announced
            .iter()
            .filter(|(k, _)| !wanted.contains_key(k))
            .map(|(k, m)| (*k, m.clone()))
            .collect();
        (joined, left)
    }
}

/// Channels are sharded over 64 locks; fan-out takes one shard's read lock.
pub(crate) struct Registry {
    channels: Vec<RwLock<HashMap<Arc<str>, ChannelSubs>>>,
    hasher: RandomState,
    sockets: RwLock<HashMap<Arc<str>, Arc<SocketShared>>>,
    users: RwLock<HashMap<String, Sockets>>,
    sessions: RwLock<HashMap<String, Sockets>>,
    count: watch::Sender<usize>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            channels: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            sockets: RwLock::default(),
            users: RwLock::default(),
            sessions: RwLock::default(),
            count: watch::Sender::new(0),
        }
    }
}

impl Registry {
    fn shard(&self, channel: &str) -> &RwLock<HashMap<Arc<str>, ChannelSubs>> {
        &self.channels[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// A new connection: reachable by its id (and closed by a shutdown) from now on.
    pub(crate) fn add_socket(&self, s: &Arc<SocketShared>) {
        let n = {
            let mut sockets = write(&self.sockets);
            sockets.insert(s.id.clone(), s.clone());
            sockets.len()
        };
        self.count.send_replace(n);
    }

    /// The session parser accepted the socket: it becomes reachable by its user and session.
    pub(crate) fn add_identity(&self, s: &Arc<SocketShared>) {
        let session = s.session();
        if let Some(u) = session.user.as_deref() {
            write(&self.users)
                .entry(u.to_owned())
                .or_default()
                .insert(s.key, s.clone());
        }
        if let Some(id) = session.session.as_deref() {
            write(&self.sessions)
                .entry(id.to_owned())
                .or_default()
                .insert(s.key, s.clone());
        }
    }

    pub(crate) fn remove_socket(&self, s: &SocketShared) {
        let n = {
            let mut sockets = write(&self.sockets);
            sockets.remove(&s.id);
            sockets.len()
        };
        let forget = |map: &RwLock<HashMap<String, Sockets>>, id: Option<&str>| {
            if let Some(id) = id {
                let mut map = write(map);
                if let Some(set) = map.get_mut(id) {
                    set.remove(&s.key);
                    if set.is_empty() {
                        map.remove(id);
                    }
                }
            }
        };
        let session = s.session();
        forget(&self.users, session.user.as_deref());
        forget(&self.sessions, session.session.as_deref());
        self.count.send_replace(n);
    }

    /// The socket with this id, if it is connected here.
    #[cfg(feature = "redis")]
    pub(crate) fn socket(&self, id: &str) -> Option<Arc<SocketShared>> {
        read(&self.sockets).get(id).cloned()
    }

    pub(crate) fn socket_count(&self) -> usize {
        *self.count.borrow()
    }

    pub(crate) fn watch_count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// Adds a subscriber now. Publications fanned out from here on reach it; call
    /// [`reconcile`](Self::reconcile) to make sure the scaler delivers the channel here.
    ///
    /// Membership changes are synchronous and made by the socket's task in the order its state
    /// machine commands them: a `sub`, `unsub`, `sub` sequence can never end with the socket
    /// out of the channel (when joins and leaves ran as spawned tasks, about 6 in 20 tries did).
    ///
    /// With `presence`, the socket also becomes a member of the channel's presence (at the
    /// scaler once reconciled): membership and presence change together, in the machine's
    /// order, so a quick leave and join again can never leave a member behind or lose one.
    ///
    /// Returns the change in this instance's presence memberships (-1, 0 or 1).
    pub(crate) fn insert(&self, channel: &str, s: &Arc<SocketShared>, presence: bool) -> i64 {
        let mut shard = write(self.shard(channel));
        let entry = shard.entry(Arc::from(channel)).or_default();
        entry.subs.insert(s.key, s.clone());
        if presence {
            i64::from(entry.members.insert(s.key, s.member()).is_none())
        } else {
            -i64::from(entry.members.remove(&s.key).is_some())
        }
    }

    /// Adds a server-side subscriber now; call [`reconcile`](Self::reconcile) next.
    pub(crate) fn insert_tap(&self, channel: &str, key: u64, tap: Arc<Tap>) {
        let mut shard = write(self.shard(channel));
        let entry = shard.entry(Arc::from(channel)).or_default();
        entry.taps.insert(key, tap);
    }

    /// Removes a server-side subscriber now; call [`reconcile`](Self::reconcile) next.
    pub(crate) fn remove_tap(&self, channel: &str, key: u64) {
        if let Some(entry) = write(self.shard(channel)).get_mut(channel) {
            entry.taps.remove(&key);
        }
    }

    /// Removes a subscriber (and its presence) now; call [`reconcile`](Self::reconcile) to
    /// tell the scaler, and to drop this instance's interest if it was the last.
    ///
    /// Returns the change in this instance's presence memberships (-1 or 0).
    pub(crate) fn remove(&self, channel: &str, key: u64) -> i64 {
        let mut shard = write(self.shard(channel));
        let Some(entry) = shard.get_mut(channel) else {
            return 0;
        };
        entry.subs.remove(&key);
        -i64::from(entry.members.remove(&key).is_some())
    }

    /// Makes this instance's interest in `channel` at the scaler match whether it has local
    /// subscribers, and the channel's presence match its local members, and frees the
    /// channel's entry once it has none. Runs concurrently with other reconciles and with
    /// membership changes: the channel's interest lock serializes them, and each one acts on
    /// the membership it finds under the lock, so the last one to run leaves the scaler
    /// agreeing with the registry whatever order they ran in. Changes that accumulated while
    /// one reconcile held the lock go to the scaler in one call (1000 sockets joining one
    /// channel's presence at once cost far fewer than 1000 round trips).
    ///
    /// Fails only when the scaler could not be told to deliver the channel or to add a
    /// member; a failed removal is forgotten (a scaler that joins processes expires the
    /// member of a silent instance on its own).
    pub(crate) async fn reconcile(
        &self,
        channel: &str,
        scaler: &dyn Scaler,
    ) -> Result<(), ScalerError> {
        loop {
            let Some(interest) = read(self.shard(channel))
                .get(channel)
                .map(|e| e.interest.clone())
            else {
                return Ok(());
            };
            let mut scaled = interest.lock().await;
            // The entry may have been freed and made anew while this waited for the lock: act
            // only under the lock of the entry that is current.
            let (wanted, joined, left) = match read(self.shard(channel)).get(channel) {
                Some(e) if Arc::ptr_eq(&e.interest, &interest) => {
                    let (joined, left) = scaled.diff(&e.members);
                    (e.wanted(), joined, left)
                }
                Some(_) => continue,
                None => return Ok(()),
            };
            if wanted && !scaled.subscribed {
                scaler.subscribe(channel).await?;
                scaled.subscribed = true;
            }
            if !joined.is_empty() || !left.is_empty() {
                let joining: Vec<Arc<Member>> = joined.iter().map(|(_, m)| m.clone()).collect();
                let leaving: Vec<Arc<Member>> = left.iter().map(|(_, m)| m.clone()).collect();
                for (key, _) in &left {
                    scaled.announced.remove(key);
                }
                scaler.presence_update(channel, &joining, &leaving).await?;
                scaled.announced.extend(joined);
            }
            if !wanted {
                if scaled.subscribed {
                    // If this fails the scaler keeps delivering a channel nobody here reads:
                    // harmless, and dropped at the next reconcile.
                    let _ = scaler.unsubscribe(channel).await;
                    scaled.subscribed = false;
                }
                let mut shard = write(self.shard(channel));
                if shard
                    .get(channel)
                    .is_some_and(|e| !e.wanted() && Arc::ptr_eq(&e.interest, &interest))
                {
                    shard.remove(channel);
                    // A map keeps its capacity after removals: give it back once it is mostly
                    // empty, so a burst of distinct channels does not stay allocated.
                    let len = shard.len();
                    if shard.capacity() > 64 && len * 4 < shard.capacity() {
                        shard.shrink_to(len * 2);
                    }
                }
            }
            return Ok(());
        }
    }

    /// Hands one presence event to every local subscriber of its channel, encoded once.
    pub(crate) fn presence(&self, channel: &Arc<str>, joined: bool, member: &Member) {
        let shard = read(self.shard(channel));
        let Some(entry) = shard.get(&**channel) else {
            return;
        };
        if entry.subs.is_empty() {
            return;
        }
        let Ok(m) = serde_json::value::to_raw_value(member) else {
            return;
        };
        let ch = channel.to_string();
        let frame = if joined {
            ServerFrame::Join { ch, m }
        } else {
            ServerFrame::Leave { ch, m }
        };
        let note = Arc::new(PresenceNote {
            channel: channel.clone(),
            socket: member.socket.clone(),
            frame: Utf8Bytes::from(frame.encode()),
        });
        for s in entry.subs.values() {
            s.push(Out::Presence(note.clone()));
        }
    }

    /// Number of channels this instance holds subscribers (or a pending change) for.
    pub(crate) fn channel_count(&self) -> usize {
        self.channels.iter().map(|s| read(s).len()).sum()
    }

    /// Hands one publication to every local subscriber of its channel, encoded once. Returns
    /// how many sockets it was handed to.
    pub(crate) fn fan_out(&self, channel: &Arc<str>, record: &Arc<Record>) -> u64 {
        let shard = read(self.shard(channel));
        let Some(entry) = shard.get(&**channel) else {
            return 0;
        };
        for tap in entry.taps.values() {
            if tap.tx.try_send(record.clone()).is_err() {
                tap.lagged.store(true, Ordering::Release);
            }
        }
        if entry.subs.is_empty() {
            return 0;
        }
        let publication = Arc::new(Publication {
            channel: channel.clone(),
            epoch: entry.epoch_of(&record.position.epoch),
            seq: record.position.seq,
            frame: Utf8Bytes::from(encode_pub(
                channel,
                &record.topic,
                &record.position,
                &record.msg,
            )),
        });
        let queued = entry
            .subs
            .values()
            .filter(|s| s.push(Out::Pub(publication.clone())))
            .count();
        queued as u64
    }

    /// Acts on a cluster-wide control message for the sockets of this instance.
    pub(crate) fn control(&self, c: Control) {
        let tell = |sockets: &mut dyn Iterator<Item = &Arc<SocketShared>>, topic: &str, msg| {
            let frame = Utf8Bytes::from(encode_tell(topic, msg));
            for s in sockets {
                s.push(Out::Frame(frame.clone()));
            }
        };
        let booted = "booted by the server";
        match c {
            Control::Broadcast { topic, msg } => {
                tell(&mut read(&self.sockets).values(), &topic, &msg);
            }
            Control::TellUser { user, topic, msg } => {
                if let Some(set) = read(&self.users).get(&user) {
                    tell(&mut set.values(), &topic, &msg);
                }
            }
            Control::TellSession {
                session,
                topic,
                msg,
            } => {
                if let Some(set) = read(&self.sessions).get(&session) {
                    tell(&mut set.values(), &topic, &msg);
                }
            }
            Control::BootSocket { socket } => {
                if let Some(s) = read(&self.sockets).get(socket.as_str()) {
                    s.kill(close::BOOTED, booted);
                }
            }
            Control::BootUser { user } => {
                for s in read(&self.users)
                    .get(&user)
                    .into_iter()
                    .flat_map(|m| m.values())
                {
                    s.kill(close::BOOTED, booted);
                }
            }
            Control::BootSession { session } => {
                for s in read(&self.sessions)
                    .get(&session)
                    .into_iter()
                    .flat_map(|m| m.values())
                {
                    s.kill(close::BOOTED, booted);
                }
            }
            Control::BootChannel { channel } => {
                let channel: Arc<str> = Arc::from(channel);
                if let Some(entry) = read(self.shard(&channel)).get(&channel) {
                    for s in entry.subs.values() {
                        s.push(Out::BootChannel(channel.clone()));
                    }
                }
            }
        }
    }

    /// Closes every socket of this instance.
    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        for s in read(&self.sockets).values() {
            s.kill(code, reason);
        }
    }
}
