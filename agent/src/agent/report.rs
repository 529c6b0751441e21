//! What the agent reports of itself: its log's summary and finding lines,
//! and its Prometheus counters and gauges.

use super::Agent;
use crate::{detect::Finding, events::RecordKind, monitor::Monitor};

/// "N events (...), M lost; P processes tracked (Q alive)"
pub(super) fn log_summary(monitor: &Monitor) {
    tracing::info!(
        "{}; {} processes tracked ({} alive)",
        monitor.counts(),
        monitor.table().len(),
        monitor.table().len_live()
    );
}

impl Agent {
    /// Brings the counters and gauges up to date with the monitor and state.
    pub(super) fn update_metrics(&mut self, monitor: &Monitor) {
        let now = monitor.counts();
        let before = std::mem::replace(&mut self.counted, now);
        // The reader also wakes to nothing (its poll); each kind's series
        // is there from the start all the same.
        if now.by_kind != before.by_kind || now.events() == 0 {
            for kind in RecordKind::ALL {
                self.metrics
                    .events
                    .get_or_create(&vec![("kind", kind.name().to_string())])
                    .inc_by(now.by_kind[kind] - before.by_kind[kind]);
            }
        }
        self.metrics.lost.inc_by(now.lost - before.lost);
        self.metrics.processes.set(monitor.table().len() as i64);
        self.metrics
            .windows_open
            .set(self.detector.windows().len() as i64);
        self.metrics
            .frozen
            .set(self.custody.held_pids().len() as i64);
    }
}

/// The agent's log line for a finding a person wants to see there.
pub(super) fn log_finding(finding: &Finding) {
    match finding {
        Finding::OperatorStop(stop) => tracing::warn!(
            "{} stopped by {} ({} from {} pid {})",
            stop.service,
            stop.loginuid.map_or("?".into(), |u| format!("uid {u}")),
            stop.signal_name,
            stop.sender.comm,
            stop.sender.pid
        ),
        Finding::OperatorStart { started, loginuid } => tracing::info!(
            "{} started by uid {loginuid} (pid {})",
            started.service,
            started.pid
        ),
        Finding::CrashRestart { started } => tracing::info!(
            "{} restarted by {} after a crash (pid {})",
            started.service,
            started.supervisor.as_ref().map_or("?", |s| s.comm.as_str()),
            started.pid
        ),
        Finding::Respawn { .. }
        | Finding::EventsLost { .. }
        | Finding::Start { .. }
        | Finding::Exited { .. } => {}
    }
}
