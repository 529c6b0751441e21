//! Fleet mode: one maintenance window for a whole cluster, and each host's
//! presence, kept in etcd (the store Patroni clusters already run). etcd
//! holds the truth; each agent watches it and applies what concerns it.
//!
//! - `store`: the seam to the store; `etcd`: etcd v3 behind it.
//! - `records`: what is kept where, checked before it is acted on.
//! - `link`: this host's lease, presence and acknowledgements, and the
//!   watch that brings the cluster's windows.
//! - `view`: `fleet status` and `window list --cluster` in words.
//! - `sim`: simulated hosts without probes, for tests and the load driver.

pub mod etcd;
mod link;
pub mod records;
pub mod sim;
pub mod store;
pub mod view;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use self::link::{Link, News, Received};
use self::{
    records::{Ack, Closing, ClusterSwitch, Keys, Member, Presence, Who, WindowRecord},
    store::Store,
};
use crate::supervisors::bounded::SwitchRun;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One cluster window and the hosts' answers to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterWindow {
    pub window: WindowRecord,
    pub acks: Vec<Ack>,
}

/// A cluster window opened, and who acknowledged it in time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterOpened {
    pub window: WindowRecord,
    /// The live hosts its `hosts` glob matched when it was opened.
    pub expected: Vec<String>,
    pub acks: Vec<Ack>,
    /// Expected hosts with no acknowledgement within the wait.
    pub missing: Vec<String>,
    /// Members its glob matches that are down (no live presence): each
    /// applies it when it is back, and until then it does not hold there.
    #[serde(default)]
    pub down: Vec<Member>,
    /// `stop --and-pause --cluster`: the supervisor switched off once for
    /// every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<SwitchRun>,
}

impl ClusterOpened {
    /// Every expected host applied it.
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
            && self.down.is_empty()
            && self.acks.iter().all(|a| a.error.is_none())
    }
}

/// A cluster window closed for every host, and who had applied it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterClosed {
    pub window: WindowRecord,
    pub acks: Vec<Ack>,
    /// The window's switch, run back on by the closing host, or why it
    /// could not be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<SwitchRun>,
    /// The host left to switch it back on (the one that switched it off),
    /// when the closing host could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_left_to: Option<String>,
}

/// Every host of the cluster, as `fleet status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    pub cluster: String,
    pub hosts: Vec<HostView>,
    pub windows: Vec<ClusterWindow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub host: String,
    /// Its presence while its lease lives; none once it is down.
    pub presence: Option<Presence>,
    /// Its membership: when it was seen last.
    pub member: Option<Member>,
}

/// The cluster's store, for requests: each call blocks up to its deadline.
#[derive(Clone)]
pub struct Cluster {
    pub name: String,
    pub keys: Keys,
    pub store: Arc<dyn Store>,
}

fn decode<T: serde::de::DeserializeOwned>(value: &[u8]) -> Option<T> {
    serde_json::from_slice(value).ok()
}

impl Cluster {
    pub fn new(config: &crate::config::Fleet) -> Result<Cluster> {
        Ok(Cluster {
            name: config.cluster.clone(),
            keys: Keys::new(config.root()),
            store: Arc::new(etcd::Etcd::new(config)?),
        })
    }

    /// The records under `prefix` that decode as `T` (others skipped).
    fn decoded<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        let listing = self.store.list(prefix)?;
        Ok(listing
            .kvs
            .iter()
            .filter_map(|kv| decode(&kv.value))
            .collect())
    }

    /// The live hosts (their presence records).
    fn live(&self) -> Result<Vec<Presence>> {
        self.decoded(&self.keys.hosts())
    }

    /// Every host that ever joined the cluster, as it was seen last.
    fn members(&self) -> Result<Vec<Member>> {
        self.decoded(&self.keys.members())
    }

    fn acks(&self, id: &str) -> Result<Vec<Ack>> {
        let mut acks: Vec<Ack> = self.decoded(&self.keys.acks(id))?;
        acks.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(acks)
    }

    /// Every cluster window, with the acknowledgements each has.
    pub fn windows(&self) -> Result<Vec<ClusterWindow>> {
        let listing = self.store.list(&self.keys.windows())?;
        let mut windows = Vec::new();
        for kv in &listing.kvs {
            let Some(window) = decode::<WindowRecord>(&kv.value) else {
                continue;
            };
            let acks = self.acks(&window.id)?;
            windows.push(ClusterWindow { window, acks });
        }
        windows.sort_by_key(|w| w.window.opened_at);
        Ok(windows)
    }

    /// Writes a cluster window on `service` for the hosts `hosts` matches,
    /// under a lease as long as it, then waits up to `wait` for every live
    /// matching host to acknowledge it. `switch`: what the opener switches
    /// off for every host once the window is open.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &self,
        service: &str,
        hosts: &str,
        reason: &str,
        length: Duration,
        by: Who,
        wait: Duration,
        switch: Option<ClusterSwitch>,
    ) -> Result<ClusterOpened> {
        let pattern =
            glob::Pattern::new(hosts).with_context(|| format!("--hosts `{hosts}`: not a glob"))?;
        let windows = self.windows()?;
        if let Some(open) = windows.iter().find(|w| w.window.service == service) {
            bail!(
                "{service} already has cluster window {} open (for hosts `{}`)",
                open.window.id,
                open.window.hosts
            );
        }
        let mut expected: Vec<String> = self
            .live()?
            .into_iter()
            .map(|p| p.host)
            .filter(|h| pattern.matches(h))
            .collect();
        // The host asked is expected too, present yet or not.
        if pattern.matches(&by.host) {
            expected.push(by.host.clone());
        }
        expected.sort();
        expected.dedup();
        let down: Vec<Member> = self
            .members()?
            .into_iter()
            .filter(|m| pattern.matches(&m.host) && !expected.contains(&m.host))
            .collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let window = WindowRecord {
            id: records::new_id(&by.host, now.as_millis() as u64),
            service: service.to_string(),
            hosts: hosts.to_string(),
            reason: reason.to_string(),
            opened_at: now.as_secs(),
            expires_at: now.as_secs() + length.as_secs().max(1),
            by,
            closing: None,
            lease: 0,
            switch,
        };
        let lease = self.store.grant(length)?;
        let window = WindowRecord { lease, ..window };
        window.check(&window.id).map_err(anyhow::Error::msg)?;
        self.store.put(
            &self.keys.window(&window.id),
            &serde_json::to_vec(&window)?,
            Some(lease),
        )?;
        // Counted until there are enough answers, then read.
        let deadline = Instant::now() + wait;
        let acks = loop {
            let enough = self.store.count(&self.keys.acks(&window.id))? >= expected.len();
            if enough || Instant::now() >= deadline {
                let acks = self.acks(&window.id)?;
                let done = expected.iter().all(|h| acks.iter().any(|a| &a.host == h));
                if done || Instant::now() >= deadline {
                    break acks;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let missing = expected
            .iter()
            .filter(|h| !acks.iter().any(|a| &a.host == *h))
            .cloned()
            .collect();
        Ok(ClusterOpened {
            window,
            expected,
            acks,
            missing,
            down,
            paused: None,
        })
    }

    /// Takes the switch out of an open window's record: it did not switch
    /// off, so nobody is to switch it back on.
    pub fn drop_switch(&self, window: &WindowRecord) -> Result<()> {
        let window = WindowRecord {
            switch: None,
            ..window.clone()
        };
        let lease = (window.lease != 0).then_some(window.lease);
        self.store.put(
            &self.keys.window(&window.id),
            &serde_json::to_vec(&window)?,
            lease,
        )
    }

    /// The cluster window with this id, or the one on this service.
    pub fn find(&self, target: &str) -> Result<ClusterWindow> {
        self.windows()?
            .into_iter()
            .find(|w| w.window.id == target || w.window.service == target)
            .with_context(|| format!("no cluster window on or named `{target}`"))
    }

    /// Waits up to `wait` for every host that applied window `id` to have
    /// let go of it (its acknowledgement goes as it closes it; one saying
    /// it could not apply it stays); whether they did.
    pub fn wait_let_go(&self, id: &str, wait: Duration) -> Result<bool> {
        let deadline = Instant::now() + wait;
        loop {
            if self.acks(id)?.iter().all(|a| a.window.is_none()) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends the cluster window `found` on every host: says how in the
    /// record, then revokes its lease.
    pub fn close(&self, found: ClusterWindow, closing: Closing) -> Result<ClusterClosed> {
        let window = WindowRecord {
            closing: Some(closing),
            ..found.window.clone()
        };
        let lease = (window.lease != 0).then_some(window.lease);
        self.store.put(
            &self.keys.window(&window.id),
            &serde_json::to_vec(&window)?,
            lease,
        )?;
        match lease {
            Some(lease) => self.store.revoke(lease)?,
            None => self.store.delete(&self.keys.window(&window.id))?,
        }
        Ok(ClusterClosed {
            window,
            acks: found.acks,
            resumed: None,
            resume_left_to: None,
        })
    }

    /// Every member and live host, and the cluster windows.
    pub fn view(&self) -> Result<FleetView> {
        let mut hosts: BTreeMap<String, HostView> = BTreeMap::new();
        for member in self.members()? {
            hosts.insert(
                member.host.clone(),
                HostView {
                    host: member.host.clone(),
                    presence: None,
                    member: Some(member),
                },
            );
        }
        for presence in self.live()? {
            let host = presence.host.clone();
            hosts
                .entry(host.clone())
                .or_insert_with(|| HostView {
                    host,
                    presence: None,
                    member: None,
                })
                .presence = Some(presence);
        }
        Ok(FleetView {
            cluster: self.name.clone(),
            hosts: hosts.into_values().collect(),
            windows: self.windows()?,
        })
    }
}
