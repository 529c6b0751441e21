//! This host's link to the cluster, on two threads of its own (every store
//! call blocks up to its deadline; the agent's loop never waits on etcd):
//!
//! - the lease thread keeps this host's lease alive and, under it, its
//!   presence (written on change, at most every `MIN_GAP`) and its
//!   acknowledgements; it tells the agent when etcd stops and starts
//!   answering, and lists the windows again on reconnect;
//! - the watch thread lists the cluster's windows, then watches them from
//!   that revision on, so no change falls between the two.
//!
//! Both send `News` to the agent, which applies it (`agent::cluster`).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::sync::mpsc as tokio_mpsc;

use super::{
    Cluster, decode,
    records::{Ack, Keys, Member, Presence, Verdict, WindowRecord},
    store::{Change, Store, WatchEnd},
    unix_now,
};

/// The least time between two writes of the presence record.
const MIN_GAP: Duration = Duration::from_secs(2);
/// A change is written once the presence has been still this long (so
/// acknowledgements, which people wait for, go first), or after `MIN_GAP`
/// of changes.
const SETTLE: Duration = Duration::from_millis(500);
/// How often the membership record says the host is still seen: how
/// close "down since" is to the truth (one write in 15 s a host).
const MEMBER_EVERY: Duration = Duration::from_secs(15);
/// How long one watch lasts before it is made again from its revision.
const WATCH_LENGTH: Duration = Duration::from_secs(30);

/// A window record as this host received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub id: String,
    pub revision: i64,
    /// The record, unless it could not be read.
    pub record: Option<WindowRecord>,
    pub verdict: Verdict,
}

/// What the link tells the agent.
#[derive(Debug)]
pub enum News {
    /// Every cluster window at `revision`: what is not among them is gone.
    Sync {
        windows: Vec<Received>,
        revision: i64,
    },
    Put(Box<Received>),
    Delete {
        id: String,
        revision: i64,
    },
    /// etcd answers again (`true`), or stopped answering at `since` (unix s).
    Reachable {
        reachable: bool,
        since: u64,
    },
}

enum Order {
    Presence(Presence),
    Ack(String, Ack),
    Unack(String),
    Leave,
}

/// The agent's handle on the link.
pub struct Link {
    pub cluster: Cluster,
    pub host: String,
    orders: mpsc::Sender<Order>,
}

impl Link {
    /// Starts both threads; `news` reaches the agent.
    pub fn start(
        cluster: Cluster,
        host: String,
        heartbeat: Duration,
        version: String,
        news: tokio_mpsc::Sender<News>,
    ) -> Link {
        let (orders, received) = mpsc::channel();
        let lease = LeaseThread {
            cluster: cluster.clone(),
            host: host.clone(),
            heartbeat,
            version,
            news: news.clone(),
        };
        std::thread::Builder::new()
            .name("fleet-lease".into())
            .spawn(move || lease.run(received))
            .expect("spawning the fleet lease thread");
        let watch = (cluster.clone(), host.clone());
        std::thread::Builder::new()
            .name("fleet-watch".into())
            .spawn(move || watch_windows(&watch.0, &watch.1, heartbeat, &news))
            .expect("spawning the fleet watch thread");
        Link {
            cluster,
            host,
            orders,
        }
    }

    /// This host's presence changed.
    pub fn presence(&self, presence: Presence) {
        let _ = self.orders.send(Order::Presence(presence));
    }

    pub fn ack(&self, id: &str, ack: Ack) {
        let _ = self.orders.send(Order::Ack(id.to_string(), ack));
    }

    pub fn unack(&self, id: &str) {
        let _ = self.orders.send(Order::Unack(id.to_string()));
    }

    /// The agent stops: its lease goes, and with it its presence.
    pub fn leave(&self) {
        let _ = self.orders.send(Order::Leave);
    }
}

/// Reads window records under the cluster's prefix and judges each;
/// `members` is what is known of the cluster's members, asked anew for a
/// host it does not name.
fn receive(
    cluster: &Cluster,
    host: &str,
    id: &str,
    revision: i64,
    value: &[u8],
    members: &mut HashSet<String>,
) -> Received {
    match decode::<WindowRecord>(value) {
        None => Received {
            id: id.to_string(),
            revision,
            record: None,
            verdict: Verdict::Refuse("not a window record".into()),
        },
        Some(record) => {
            let member = members.contains(&record.by.host) || is_member(cluster, &record.by.host);
            if member {
                members.insert(record.by.host.clone());
            }
            Received {
                id: id.to_string(),
                revision,
                verdict: record.verdict(id, host, member),
                record: Some(record),
            }
        }
    }
}

fn is_member(cluster: &Cluster, host: &str) -> bool {
    let key = cluster.keys.member(host);
    cluster
        .store
        .list(&key)
        .is_ok_and(|l| l.kvs.iter().any(|kv| kv.key == key))
}

fn members(cluster: &Cluster) -> Result<HashSet<String>> {
    let under = cluster.keys.members();
    Ok(cluster
        .store
        .list(&under)?
        .kvs
        .iter()
        .filter_map(|kv| Keys::name_in(&kv.key, &under).map(str::to_string))
        .collect())
}

/// Every window record, judged: the news of a sync.
/// Every window record, judged: the news of a sync; and the members.
pub(super) fn sync(cluster: &Cluster, host: &str) -> Result<(News, HashSet<String>)> {
    let mut members = members(cluster)?;
    let under = cluster.keys.windows();
    let listing = cluster.store.list(&under)?;
    let windows = listing
        .kvs
        .iter()
        .filter_map(|kv| {
            let id = Keys::name_in(&kv.key, &under)?;
            Some(receive(
                cluster,
                host,
                id,
                kv.revision,
                &kv.value,
                &mut members,
            ))
        })
        .collect();
    let news = News::Sync {
        windows,
        revision: listing.revision,
    };
    Ok((news, members))
}

fn watch_windows(
    cluster: &Cluster,
    host: &str,
    heartbeat: Duration,
    news: &tokio_mpsc::Sender<News>,
) {
    let under = cluster.keys.windows();
    loop {
        let listed = sync(cluster, host);
        let (mut from, mut members) = match listed {
            Ok((sync, members)) => {
                let News::Sync { revision, .. } = &sync else {
                    unreachable!()
                };
                let from = revision + 1;
                if news.blocking_send(sync).is_err() {
                    return;
                }
                (from, members)
            }
            Err(e) => {
                tracing::debug!("fleet: listing windows: {e:#}");
                std::thread::sleep(heartbeat);
                continue;
            }
        };
        loop {
            let mut closed = false;
            let mut on = |change: Change| {
                let Some(id) = Keys::name_in(change.key(), &under).map(str::to_string) else {
                    return;
                };
                let item = match change {
                    Change::Put(kv) => News::Put(Box::new(receive(
                        cluster,
                        host,
                        &id,
                        kv.revision,
                        &kv.value,
                        &mut members,
                    ))),
                    Change::Delete { revision, .. } => News::Delete { id, revision },
                };
                closed |= news.blocking_send(item).is_err();
            };
            let end = cluster.store.watch(&under, from, WATCH_LENGTH, &mut on);
            if closed {
                return;
            }
            match end {
                Ok(WatchEnd::From(next)) => from = next,
                Ok(WatchEnd::Compacted) => break,
                Err(e) => {
                    tracing::debug!("fleet: watching windows: {e:#}");
                    std::thread::sleep(heartbeat);
                    break;
                }
            }
        }
    }
}

struct LeaseThread {
    cluster: Cluster,
    host: String,
    heartbeat: Duration,
    version: String,
    news: tokio_mpsc::Sender<News>,
}

impl LeaseThread {
    fn run(self, orders: mpsc::Receiver<Order>) {
        let store = &self.cluster.store;
        let keys = &self.cluster.keys;
        let mut lease = None;
        let mut presence: Option<Presence> = None;
        let mut presence_dirty = false;
        let mut changed_at = Instant::now();
        let mut dirty_since = Instant::now();
        let mut written_at = Instant::now() - MIN_GAP;
        let mut member_at: Option<Instant> = None;
        let mut acks: BTreeMap<String, Ack> = BTreeMap::new();
        // What could not be written or deleted yet: again once etcd answers.
        let mut unsent: BTreeSet<String> = BTreeSet::new();
        let mut undeleted: BTreeSet<String> = BTreeSet::new();
        let mut unreachable_since: Option<u64> = None;
        let mut next_beat = Instant::now();
        loop {
            let wait = next_beat.saturating_duration_since(Instant::now());
            match orders.recv_timeout(wait.min(SETTLE)) {
                Ok(Order::Presence(p)) => {
                    presence = Some(p);
                    if !presence_dirty {
                        dirty_since = Instant::now();
                    }
                    presence_dirty = true;
                    changed_at = Instant::now();
                }
                Ok(Order::Ack(id, ack)) => {
                    unsent.remove(&id);
                    let sent = lease.is_some_and(|lease| {
                        self.put(&keys.ack(&id, &self.host), &ack, Some(lease))
                            .inspect_err(|e| tracing::debug!("fleet: ack {id}: {e:#}"))
                            .is_ok()
                    });
                    if !sent {
                        unsent.insert(id.clone());
                    }
                    acks.insert(id, ack);
                }
                Ok(Order::Unack(id)) => {
                    acks.remove(&id);
                    unsent.remove(&id);
                    if store.delete(&keys.ack(&id, &self.host)).is_err() {
                        undeleted.insert(id);
                    }
                }
                Ok(Order::Leave) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if let Some(lease) = lease {
                        let _ = store.revoke(lease);
                    }
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            let beat = now >= next_beat;
            if beat {
                next_beat = now + self.heartbeat;
            }
            // The lease first: everything of this host lives under it.
            // Between beats nothing is known anew: with no lease, or cut
            // off, wait for the next.
            let alive = match lease {
                Some(id) if beat => store.keep_alive(id),
                None if beat => Ok(false),
                _ if unreachable_since.is_some() => continue,
                Some(_) => Ok(true),
                None => continue,
            };
            let renewed = match alive {
                Ok(true) => true,
                Ok(false) => match self.new_lease(&presence, &acks) {
                    Ok(id) => {
                        // Every ack went out again under it.
                        unsent.clear();
                        lease = Some(id);
                        member_at = Some(Instant::now());
                        presence_dirty = false;
                        written_at = Instant::now();
                        true
                    }
                    Err(e) => {
                        tracing::debug!("fleet: lease: {e:#}");
                        lease = None;
                        false
                    }
                },
                Err(e) => {
                    tracing::debug!("fleet: keepalive: {e:#}");
                    false
                }
            };
            if !renewed {
                if unreachable_since.is_none() {
                    let since = unix_now();
                    unreachable_since = Some(since);
                    let _ = self.news.blocking_send(News::Reachable {
                        reachable: false,
                        since,
                    });
                }
                continue;
            }
            if unreachable_since.take().is_some() {
                let _ = self.news.blocking_send(News::Reachable {
                    reachable: true,
                    since: unix_now(),
                });
                // What changed while away, before the watch catches up.
                if let Ok((sync, _)) = sync(&self.cluster, &self.host) {
                    let _ = self.news.blocking_send(sync);
                }
            }
            let lease = lease.expect("renewed");
            unsent.retain(|id| {
                acks.get(id).is_some_and(|ack| {
                    self.put(&keys.ack(id, &self.host), ack, Some(lease))
                        .is_err()
                })
            });
            undeleted.retain(|id| store.delete(&keys.ack(id, &self.host)).is_err());
            if presence_dirty
                && written_at.elapsed() >= MIN_GAP
                && (changed_at.elapsed() >= SETTLE || dirty_since.elapsed() >= MIN_GAP)
                && let Some(p) = &mut presence
            {
                p.seen_at = unix_now();
                if self.put(&keys.host(&self.host), p, Some(lease)).is_ok() {
                    presence_dirty = false;
                    written_at = Instant::now();
                }
            }
            if member_at.is_none_or(|at| at.elapsed() >= MEMBER_EVERY)
                && self.put_member(&presence).is_ok()
            {
                member_at = Some(Instant::now());
            }
        }
    }

    fn put<T: serde::Serialize>(&self, key: &str, value: &T, lease: Option<i64>) -> Result<()> {
        self.cluster
            .store
            .put(key, &serde_json::to_vec(value)?, lease)
    }

    fn put_member(&self, presence: &Option<Presence>) -> Result<()> {
        let member = Member {
            host: self.host.clone(),
            version: self.version.clone(),
            last_seen: unix_now(),
            pinned: presence.as_ref().is_some_and(|p| p.pinned),
        };
        self.put(&self.cluster.keys.member(&self.host), &member, None)
    }

    /// A new lease, and under it everything of this host again.
    fn new_lease(&self, presence: &Option<Presence>, acks: &BTreeMap<String, Ack>) -> Result<i64> {
        let store: &Arc<dyn Store> = &self.cluster.store;
        let keys = &self.cluster.keys;
        let lease = store.grant(self.heartbeat * 3)?;
        self.put_member(presence)?;
        if let Some(p) = presence {
            let mut p = p.clone();
            p.seen_at = unix_now();
            self.put(&keys.host(&self.host), &p, Some(lease))?;
        }
        for (id, ack) in acks {
            self.put(&keys.ack(id, &self.host), ack, Some(lease))?;
        }
        Ok(lease)
    }
}
