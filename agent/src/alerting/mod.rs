//! Alerting: an alert is announced (the agent's log, one JSON line on
//! stdout, the audit log), spooled for the sinks, grouped with the respawns
//! of the same service that follow it, and resolved when its process is
//! thawed or killed or its window closes.
//!
//! - `sinks`: delivering it: the spool, retries, one file per kind of sink.

pub mod sinks;

use std::{
    collections::HashMap,
    io::Write,
    time::{Duration, Instant},
};

use crate::{
    alert::{Alert, AlertKind},
    alerting::sinks::Delivery,
    audit::{AgentEvent, AuditLog},
    sys::metrics::Metrics,
};

/// Unresolved alerts kept for resolving later.
const MAX_FIRING: usize = 1000;

/// Respawn alerts of one service held back from the sinks after the first.
struct Group {
    until: Instant,
    first_id: String,
    held: Vec<Alert>,
}

pub struct Alerting {
    delivery: Delivery,
    metrics: Metrics,
    audit: AuditLog,
    group_interval: Duration,
    groups: HashMap<String, Group>,
    /// Alerts not yet resolved (thaw, kill, window close).
    firing: Vec<Alert>,
    /// The fleet cluster every alert names.
    cluster: Option<String>,
    /// The last alert raised: its kind, service and unix time.
    last: Option<(AlertKind, String, u64)>,
}

impl Alerting {
    pub fn new(
        delivery: Delivery,
        metrics: Metrics,
        audit: AuditLog,
        group_interval: Duration,
    ) -> Alerting {
        Alerting {
            delivery,
            metrics,
            audit,
            group_interval,
            groups: HashMap::new(),
            firing: Vec::new(),
            cluster: None,
            last: None,
        }
    }

    pub fn set_cluster(&mut self, cluster: Option<String>) {
        self.cluster = cluster;
    }

    pub fn last(&self) -> Option<&(AlertKind, String, u64)> {
        self.last.as_ref()
    }

    pub fn set_group_interval(&mut self, interval: Duration) {
        self.group_interval = interval;
    }

    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    pub fn firing(&self) -> &[Alert] {
        &self.firing
    }

    pub fn restore_firing(&mut self, firing: Vec<Alert>) {
        self.firing = firing;
    }

    /// Announces an alert: the agent's log, stdout (one JSON line), the
    /// audit log; and the sinks, through the spool, unless it is grouped.
    pub fn raise(&mut self, mut record: Alert) {
        record.cluster.clone_from(&self.cluster);
        self.last = Some((
            record.kind,
            record.service.clone(),
            crate::fleet::unix_now(),
        ));
        self.metrics
            .alerts
            .get_or_create(&vec![("kind", record.kind.as_str().to_string())])
            .inc();
        self.follow_up_groups();
        let grouped = match self.groups.get_mut(&record.service) {
            Some(group) if record.kind.is_respawn() => {
                group.held.push(record.clone());
                self.audit.write(AgentEvent::AlertGrouped {
                    service: record.service.clone(),
                    id: record.id.clone(),
                    group_of: group.first_id.clone(),
                });
                true
            }
            _ => false,
        };
        if !grouped {
            if record.kind.is_respawn() {
                self.groups.insert(
                    record.service.clone(),
                    Group {
                        until: Instant::now() + self.group_interval,
                        first_id: record.id.clone(),
                        held: Vec::new(),
                    },
                );
            }
            // In the spool, synced, before anyone hears of it.
            let spooled = self.delivery.deliver(&record);
            self.spool_failed(&record, spooled);
        }
        if record.resolves_later() {
            self.firing.push(record.clone());
            // Bounded: the oldest unresolved alerts are the least likely
            // to be resolved by a thaw now.
            if self.firing.len() > MAX_FIRING {
                self.firing.remove(0);
            }
        }
        tracing::error!("{}", record.summary);
        // Nobody may be reading stdout (a closed pipe): the audit log and
        // the spool have the alert, so a failed write here loses nothing.
        let line = serde_json::to_string(&record).expect("alerts serialize");
        let _ = writeln!(std::io::stdout().lock(), "{line}");
        self.audit.write(record);
    }

    /// Ends the groups whose interval is over: those that held alerts back
    /// send one follow-up naming how many.
    pub fn follow_up_groups(&mut self) {
        let now = Instant::now();
        let ended: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| g.until <= now)
            .map(|(s, _)| s.clone())
            .collect();
        for service in ended {
            let group = self.groups.remove(&service).expect("listed above");
            let Some(latest) = group.held.last() else {
                continue;
            };
            let n = group.held.len();
            let follow_up = Alert {
                id: format!("{}-group", group.first_id),
                summary: format!(
                    "{service} respawned {n} more time{} within {} of alert {}; latest: {}",
                    if n == 1 { "" } else { "s" },
                    humantime::format_duration(self.group_interval),
                    group.first_id,
                    latest.summary
                ),
                grouped: Some(group.held.iter().map(|a| a.id.clone()).collect()),
                ..latest.clone()
            };
            tracing::warn!("{}", follow_up.summary);
            let spooled = self.delivery.deliver(&follow_up);
            self.spool_failed(&follow_up, spooled);
        }
    }

    /// Says so, loudly, when the disk refused an alert: it is held in
    /// memory and delivered from there, but a restart now would lose it.
    fn spool_failed(&self, alert: &Alert, spooled: anyhow::Result<()>) {
        if let Err(err) = spooled {
            let error = format!("{err:#}");
            tracing::error!("{error}; held in memory, delivered from there");
            self.audit.write(AgentEvent::SpoolFailed {
                service: alert.service.clone(),
                id: alert.id.clone(),
                error,
            });
        }
    }

    /// Writes out the alerts the disk refused before, once it takes them.
    pub fn retry_spool(&self) {
        let count = self.delivery.retry_unsynced();
        if count > 0 {
            tracing::info!("{count} alerts held in memory written to the spool");
            self.audit.write(AgentEvent::SpoolWritten { count });
        }
    }

    /// Resolves the firing alerts about the process `pid`.
    pub fn resolve_process(&mut self, pid: u32) {
        self.resolve(|a| a.process.as_ref().is_some_and(|p| p.pid == pid));
    }

    /// Resolves the firing alerts about `service`.
    pub fn resolve_service(&mut self, service: &str) {
        self.resolve(|a| a.service == service);
    }

    /// Resolves the firing alerts of `kind`.
    pub fn resolve_kind(&mut self, kind: AlertKind) {
        self.resolve(|a| a.kind == kind);
    }

    fn resolve(&mut self, ended: impl Fn(&Alert) -> bool) {
        let (done, firing): (Vec<Alert>, Vec<Alert>) = std::mem::take(&mut self.firing)
            .into_iter()
            .partition(ended);
        self.firing = firing;
        for alert in done {
            let spooled = self.delivery.resolve(&alert);
            self.spool_failed(&alert, spooled);
        }
    }
}
