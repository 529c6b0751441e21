//! Fleet mode in the agent: cluster windows applied as local windows and
//! acknowledged, closed when etcd says so (or by their local expiry, the
//! backstop), this host's presence published, the cluster's requests
//! answered, and `fleet_unreachable` raised while etcd does not answer.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use super::Agent;
use crate::{
    alert::{self, AlertKind},
    audit::AgentEvent,
    control::{CloseWindow, FleetLinkStatus, OpenWindow, Peer, server::Answer},
    fleet::{
        Cluster, Link, News, Received,
        records::{
            Ack, AlertBrief, Presence, ServiceBrief, Verdict, Who, WindowBrief, WindowRecord,
        },
        unix_now,
    },
    monitor::Monitor,
    sys::clock::boot_ns,
};

/// This host's part in its cluster.
pub(super) struct Fleet {
    pub link: Link,
    unreachable_after: Duration,
    /// Unix seconds etcd stopped answering, while it does not.
    unreachable_since: Option<u64>,
    alerted: bool,
    /// Cluster window id → the local window applying it.
    applied: BTreeMap<String, String>,
    /// Cluster windows closed here by hand: not applied again.
    dismissed: HashSet<String>,
    /// Records refused, audited once each.
    refused: HashSet<String>,
    /// The store revision of the newest news applied.
    revision: i64,
    /// Cluster windows whose supervisor this host switched off
    /// (`stop --and-pause --cluster`), by id: switched back on here
    /// unless their closer does.
    pub(super) switched: BTreeMap<String, WindowRecord>,
    last_presence: Option<Presence>,
}

impl Fleet {
    pub fn new(link: Link, unreachable_after: Duration) -> Fleet {
        Fleet {
            link,
            unreachable_after,
            unreachable_since: None,
            alerted: false,
            applied: BTreeMap::new(),
            dismissed: HashSet::new(),
            refused: HashSet::new(),
            revision: 0,
            switched: BTreeMap::new(),
            last_presence: None,
        }
    }

    pub(super) fn cluster(&self) -> &Cluster {
        &self.link.cluster
    }
}

impl Agent {
    /// Local windows of cluster windows, known again after a restart.
    pub(super) fn adopt_cluster_windows(&mut self) {
        let Some(fleet) = &mut self.fleet else { return };
        for window in self.detector.windows() {
            if let Some(id) = &window.cluster {
                fleet.applied.insert(id.clone(), window.id.clone());
                // The last agent's acknowledgement went with its lease.
                fleet.link.ack(
                    id,
                    Ack {
                        host: self.host.clone(),
                        window: Some(window.id.clone()),
                        error: None,
                        at: unix_now(),
                    },
                );
            }
        }
    }

    pub(super) fn on_news(&mut self, monitor: &mut Monitor, news: News) {
        let Some(fleet) = &mut self.fleet else { return };
        match news {
            News::Sync { windows, revision } => {
                if revision < fleet.revision {
                    return;
                }
                fleet.revision = revision;
                let listed: HashSet<String> = windows.iter().map(|r| r.id.clone()).collect();
                let gone: Vec<String> = fleet
                    .applied
                    .keys()
                    .filter(|id| !listed.contains(*id))
                    .cloned()
                    .collect();
                for id in gone {
                    self.close_cluster_window(
                        monitor,
                        &id,
                        None,
                        "gone from etcd (closed or expired while this host was away)",
                    );
                }
                let fleet = self.fleet.as_ref().expect("fleet mode");
                let unswitched: Vec<String> = fleet
                    .switched
                    .keys()
                    .filter(|id| !listed.contains(*id))
                    .cloned()
                    .collect();
                for id in unswitched {
                    self.switch_gone(&id);
                }
                for received in windows {
                    self.receive(monitor, received);
                }
            }
            News::Put(received) => {
                if received.revision <= fleet.revision {
                    return;
                }
                fleet.revision = received.revision;
                self.receive(monitor, *received);
            }
            News::Delete { id, revision } => {
                if revision <= fleet.revision {
                    return;
                }
                fleet.revision = revision;
                self.close_cluster_window(
                    monitor,
                    &id,
                    None,
                    "its lease ended (expired or closed)",
                );
                self.switch_gone(&id);
            }
            News::Reachable { reachable, since } => {
                let cluster = fleet.cluster().name.clone();
                if reachable {
                    fleet.unreachable_since = None;
                    if std::mem::take(&mut fleet.alerted) {
                        self.alerting.resolve_kind(AlertKind::FleetUnreachable);
                    }
                    tracing::info!("fleet: etcd of cluster {cluster} answers again");
                } else {
                    fleet.unreachable_since = Some(since);
                    tracing::warn!("fleet: etcd of cluster {cluster} does not answer");
                }
                self.audit.write(AgentEvent::FleetReachable {
                    cluster,
                    reachable,
                    since,
                });
            }
        }
    }

    /// A window record: applied, closed, refused or not for this host.
    fn receive(&mut self, monitor: &mut Monitor, received: Received) {
        let Some(fleet) = &mut self.fleet else { return };
        let cluster = fleet.cluster().name.clone();
        let id = received.id;
        let Some(record) = received.record else {
            if fleet.refused.insert(id.clone()) {
                self.audit.write(AgentEvent::ClusterWindowRefused {
                    cluster,
                    id,
                    why: "not a window record".into(),
                });
            }
            return;
        };
        self.track_switch(&id, &record, &received.verdict);
        let Some(fleet) = &mut self.fleet else { return };
        if let Some(closing) = &record.closing {
            let why = if closing.kill {
                "closed for the cluster (--kill)"
            } else if closing.thaw {
                "closed for the cluster (--thaw)"
            } else {
                "closed for the cluster"
            };
            let by = closing.by.clone();
            let (thaw, kill) = (closing.thaw, closing.kill);
            if let Some(local) = fleet.applied.get(&id).cloned() {
                self.let_go_on_close(monitor, &local, thaw, kill);
            }
            self.close_cluster_window(monitor, &id, Some(by), why);
            return;
        }
        match received.verdict {
            Verdict::NotHere => {}
            Verdict::Refuse(why) => {
                if fleet.refused.insert(id.clone()) {
                    tracing::warn!("fleet: window record {id} refused: {why}");
                    self.audit
                        .write(AgentEvent::ClusterWindowRefused { cluster, id, why });
                }
            }
            Verdict::Apply => {
                if fleet.applied.contains_key(&id) || fleet.dismissed.contains(&id) {
                    return;
                }
                let left = record.expires_at.saturating_sub(unix_now());
                if left == 0 {
                    return;
                }
                let peer = Peer {
                    pid: 0,
                    uid: record.by.uid,
                    gid: 0,
                    loginuid: record.by.loginuid,
                };
                // Who opened it, as the host it was asked on knew them.
                let reason = format!(
                    "{} (cluster {cluster} window {id}, by {} on {})",
                    record.reason,
                    record.by.name(),
                    record.by.host
                );
                let open = OpenWindow {
                    service: record.service.clone(),
                    reason,
                    for_secs: Some(left),
                };
                let (window, error) = match self.open_window(monitor, &open, peer) {
                    Ok(window) => {
                        self.detector.mark_cluster(&window.id, &id);
                        (Some(window.id), None)
                    }
                    Err(why) => (None, Some(why)),
                };
                let fleet = self.fleet.as_mut().expect("fleet mode");
                if let Some(local) = &window {
                    fleet.applied.insert(id.clone(), local.clone());
                }
                fleet.link.ack(
                    &id,
                    Ack {
                        host: self.host.clone(),
                        window: window.clone(),
                        error: error.clone(),
                        at: unix_now(),
                    },
                );
                self.audit.write(AgentEvent::ClusterWindowApplied {
                    cluster,
                    id,
                    service: record.service,
                    window,
                    error,
                    by: record.by,
                    reason: record.reason,
                });
            }
        }
    }

    /// `--thaw` or `--kill` of a cluster close, on this host's window.
    fn let_go_on_close(&mut self, monitor: &mut Monitor, local: &str, thaw: bool, kill: bool) {
        if !(thaw || kill) {
            return;
        }
        let Some(service) = self
            .detector
            .windows()
            .iter()
            .find(|w| w.id == local)
            .map(|w| w.service.clone())
        else {
            return;
        };
        self.perform(
            monitor,
            vec![crate::decide::Effect::LetGo {
                target: service,
                kill,
            }],
        );
    }

    /// Closes the local window applying cluster window `id`, if any.
    fn close_cluster_window(
        &mut self,
        monitor: &mut Monitor,
        id: &str,
        by: Option<Who>,
        why: &str,
    ) {
        let Some(fleet) = &mut self.fleet else { return };
        let Some(local) = fleet.applied.remove(id) else {
            return;
        };
        fleet.link.unack(id);
        let cluster = fleet.cluster().name.clone();
        let service = self
            .detector
            .windows()
            .iter()
            .find(|w| w.id == local)
            .map(|w| w.service.clone());
        let Some(service) = service else {
            // Its local expiry, the backstop, closed it already.
            return;
        };
        let answer = self.close_window(
            monitor,
            CloseWindow {
                target: local.clone(),
                thaw: false,
                kill: false,
            },
        );
        if let Answer::Later(resumed) = answer {
            tokio::spawn(resumed);
        }
        tracing::info!("fleet: cluster window {id} (here {local}) closed: {why}");
        self.audit.write(AgentEvent::ClusterWindowClosed {
            cluster,
            id: id.to_string(),
            window: local,
            service,
            by,
            why: why.to_string(),
        });
    }

    /// A local window closed by hand: the cluster window it applied is not
    /// applied again here.
    pub(super) fn dismiss_cluster_window(&mut self, local: &str) {
        let Some(fleet) = &mut self.fleet else { return };
        if let Some((id, _)) = fleet.applied.iter().find(|(_, l)| *l == local) {
            let id = id.clone();
            fleet.applied.remove(&id);
            fleet.link.unack(&id);
            fleet.dismissed.insert(id);
        }
    }

    /// Each second: this host's presence when it changed, and the
    /// `fleet_unreachable` alert once etcd has been silent long enough.
    pub(super) fn fleet_tick(&mut self, monitor: &Monitor) {
        if self.fleet.is_none() {
            return;
        }
        let presence = self.presence(monitor);
        let fleet = self.fleet.as_mut().expect("fleet mode");
        if fleet.last_presence.as_ref() != Some(&presence) {
            fleet.last_presence = Some(presence.clone());
            fleet.link.presence(presence);
        }
        if let Some(since) = fleet.unreachable_since
            && !fleet.alerted
            && unix_now().saturating_sub(since) >= fleet.unreachable_after.as_secs()
        {
            fleet.alerted = true;
            let record = alert::fleet_unreachable(
                &self.host,
                &fleet.cluster().name,
                since,
                &self.clock,
                boot_ns(),
            );
            self.alerting.raise(record);
        }
    }

    fn presence(&self, monitor: &Monitor) -> Presence {
        let status = self.status(monitor);
        Presence {
            host: self.host.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pinned: matches!(
                monitor.probes_ref().pinning(),
                crate::kernel::Pinning::Pinned { .. }
            ),
            services: status
                .services
                .iter()
                .map(|s| ServiceBrief {
                    name: s.name.clone(),
                    state: serde_json::to_value(s.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    pid: s.pid,
                    frozen: s.frozen.clone(),
                })
                .collect(),
            windows: self
                .detector
                .windows()
                .iter()
                .map(WindowBrief::of)
                .collect(),
            held: self.custody.held_pids(),
            last_alert: self.alerting.last().map(|(kind, service, at)| AlertBrief {
                kind: kind.as_str().to_string(),
                service: Some(service.clone()),
                at: *at,
            }),
            seen_at: 0,
        }
    }

    pub(super) fn fleet_link_status(&self) -> Option<FleetLinkStatus> {
        let fleet = self.fleet.as_ref()?;
        Some(FleetLinkStatus {
            cluster: fleet.cluster().name.clone(),
            reachable: fleet.unreachable_since.is_none(),
            unreachable_since: fleet.unreachable_since,
            applied: fleet
                .applied
                .iter()
                .map(|(id, local)| (id.clone(), local.clone()))
                .collect(),
        })
    }
}
