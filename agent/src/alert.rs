//! Alert records: what a person reads about a respawn. The schema is the
//! contract with every sink.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{
    config::Severity,
    detect::{AtRisk, OperatorStop, Started, Window},
    process::Link,
    sys::clock::Clock,
    sys::identity::{person, user_name},
};

pub const SCHEMA_VERSION: u32 = 1;

/// An alert record: what stdout, the audit log and the sinks receive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub version: u32,
    pub id: String,
    pub kind: AlertKind,
    pub severity: Severity,
    pub host: String,
    pub service: String,
    /// The systemd unit the respawned process runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub summary: String,
    pub action: String,
    /// The respawned process; for `events_lost`, one nobody saw start.
    pub process: Option<ProcessInfo>,
    pub respawned_by: Option<RespawnedBy>,
    pub stopped_by: Option<StoppedBy>,
    /// The maintenance window the respawn broke; null when none was open.
    pub window: Option<WindowInfo>,
    pub at: String,
    /// From the respawn's exec (kernel time) to this record.
    pub detected_after_ms: f64,
    /// It happened while no agent ran: the pinned probes stopped it at
    /// exec and kept its record until an agent read it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub while_agent_down: bool,
    /// A resolution: the id of the alert it ends, and when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolves: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// A group's follow-up: the ids of the alerts it stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grouped: Option<Vec<String>>,
    /// The fleet cluster the host belongs to (`[fleet] cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Respawned after an operator stop, with no window open.
    RespawnAfterOperatorStop,
    /// Respawned inside a maintenance window.
    RespawnInWindow,
    /// Kernel records lost while a service was at risk.
    EventsLost,
    /// `stopguard alert test`.
    Test,
    /// The saved state could not be read at start: windows, operator stops
    /// and frozen processes from before are unknown.
    StateLost,
    /// etcd silent for `[fleet] unreachable_after` (cluster windows wait).
    FleetUnreachable,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::RespawnAfterOperatorStop => "respawn_after_operator_stop",
            AlertKind::RespawnInWindow => "respawn_in_window",
            AlertKind::EventsLost => "events_lost",
            AlertKind::Test => "test",
            AlertKind::StateLost => "state_lost",
            AlertKind::FleetUnreachable => "fleet_unreachable",
        }
    }

    /// A respawn: grouped with the respawns of its service that follow.
    pub fn is_respawn(self) -> bool {
        matches!(
            self,
            AlertKind::RespawnAfterOperatorStop | AlertKind::RespawnInWindow
        )
    }

    /// Whether an alert of this kind ends when its process is thawed or
    /// killed or its window closes; lost records only when they name a
    /// process held (`Alert::resolves_later`).
    fn resolves_later(self) -> bool {
        match self {
            AlertKind::RespawnAfterOperatorStop
            | AlertKind::RespawnInWindow
            | AlertKind::Test
            | AlertKind::FleetUnreachable => true,
            AlertKind::EventsLost | AlertKind::StateLost => false,
        }
    }
}

impl Alert {
    /// Whether the alert ends when its process is thawed or killed or its
    /// window closes: respawns, and a start nobody saw that custody holds.
    pub fn resolves_later(&self) -> bool {
        match self.kind {
            AlertKind::EventsLost => self.process.is_some() && self.action != "none",
            kind => kind.resolves_later(),
        }
    }

    /// The same alert, ended at `at`: sinks that track alerts close it.
    pub fn resolution(&self, at: String) -> Alert {
        Alert {
            id: format!("{}-resolved", self.id),
            resolves: Some(self.id.clone()),
            resolved_at: Some(at),
            ..self.clone()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowInfo {
    pub id: String,
    pub service: String,
    pub reason: String,
    pub opened_by: String,
    pub opened_at: String,
    pub expires_at: Option<String>,
}

impl WindowInfo {
    pub fn new(window: &Window, clock: &Clock) -> WindowInfo {
        let at = |ns: u64| humantime::format_rfc3339_millis(clock.wall(ns)).to_string();
        WindowInfo {
            id: window.id.clone(),
            service: window.service.clone(),
            reason: window.reason.clone(),
            // The person behind the client: its login, else its uid.
            opened_by: person(Some(
                window.opened_by_loginuid.unwrap_or(window.opened_by_uid),
            )),
            opened_at: at(window.opened_at_ns),
            expires_at: window.expires_at_ns.map(at),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub exe: String,
    pub cmdline: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RespawnedBy {
    /// The nearest supervisor in the chain, and its pid.
    pub supervisor: Option<String>,
    pub supervisor_pid: Option<u32>,
    /// The process that started it (its parent at the exec); when PID 1
    /// started it on a request (`systemctl start`), what ran that request.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub chain: Vec<Link>,
    /// The systemd unit it was started in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The request to systemd that had PID 1 start it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The unit's `Restart=` when systemd started it again by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// The supervisor's state when it was switched off and started it all
    /// the same (Patroni paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
}

impl RespawnedBy {
    fn new(started: &Started, restart: Option<&str>) -> RespawnedBy {
        let (pid, comm, chain, via) = match &started.requested {
            Some(request) => (
                request.chain.first().map(|l| l.pid),
                request.chain.first().map(|l| l.comm.clone()),
                request.chain.clone(),
                Some(request.args.join(" ")),
            ),
            None => (
                started.chain.first().map(|l| l.pid),
                started.chain.first().map(|l| l.comm.clone()),
                started.chain.clone(),
                None,
            ),
        };
        RespawnedBy {
            supervisor: started.supervisor.as_ref().map(|s| s.comm.clone()),
            supervisor_pid: started.supervisor.as_ref().map(|s| s.pid),
            pid,
            comm,
            chain,
            unit: started.unit.clone(),
            via,
            restart: restart
                .filter(|_| started.requested.is_none() && started.unit.is_some())
                .map(str::to_string),
            paused: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoppedBy {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    pub loginuid: Option<u32>,
    pub user: Option<String>,
    pub signal: String,
    pub via: Option<String>,
}

impl StoppedBy {
    fn new(stop: &OperatorStop) -> StoppedBy {
        StoppedBy {
            pid: stop.sender.pid,
            comm: stop.sender.comm.clone(),
            uid: stop.sender.uid,
            loginuid: stop.loginuid,
            user: stop.loginuid.and_then(user_name),
            signal: stop.signal_name.clone(),
            via: stop.via.as_ref().map(|c| c.args.join(" ")),
        }
    }
}

/// Marks `alert` as about something that happened while no agent ran,
/// in its record and its summary.
pub fn while_agent_down(alert: &mut Alert) {
    alert.while_agent_down = true;
    alert.summary.push_str(&format!(
        "; it happened while the agent was down, seen {:.1} s later",
        alert.detected_after_ms / 1e3
    ));
}

/// Marks `alert` as about a supervisor that started the service while it
/// was switched off (`state`: Patroni's "paused (maintenance mode)").
pub fn while_paused(alert: &mut Alert, supervisor: &str, state: &str) {
    if let Some(by) = alert.respawned_by.as_mut() {
        by.paused = Some(state.to_string());
    }
    alert.summary.push_str(&format!(
        "; {supervisor} was {state} and started it all the same"
    ));
}

/// A respawn after an operator stop, outside any window.
#[allow(clippy::too_many_arguments)] // each is one fact the record states
pub fn respawn(
    host: &str,
    started: &Started,
    stop: &OperatorStop,
    window: Option<&Window>,
    action: &str,
    restart: Option<&str>,
    clock: &Clock,
    now_boot_ns: u64,
) -> Alert {
    let now: SystemTime = clock.wall(now_boot_ns);
    let respawned_by = RespawnedBy::new(started, restart);
    let mut supervisor = started
        .supervisor
        .as_ref()
        .map_or_else(|| "an unknown starter".to_string(), |s| s.comm.clone());
    match (&started.requested, &started.unit) {
        (Some(request), _) => supervisor.push_str(&format!(" (`{}`)", request.args.join(" "))),
        (None, Some(unit)) => match &respawned_by.restart {
            Some(restart) => supervisor.push_str(&format!(" (unit {unit}, Restart={restart})")),
            None => supervisor.push_str(&format!(" (unit {unit})")),
        },
        (None, None) => {}
    }
    let after = started.time_ns.saturating_sub(stop.time_ns) as f64 / 1e9;
    let via = stop.via.as_ref().map(|c| c.args.join(" "));
    let how = match &via {
        Some(cmd) => format!("{} via `{cmd}`", stop.signal_name),
        None => format!("{} via {}", stop.signal_name, stop.sender.comm),
    };
    let mut summary = format!(
        "{} respawned by {supervisor} {after:.1} s after {} stopped it ({how}); {action}",
        started.service,
        person(stop.loginuid),
    );
    if let Some(window) = window {
        summary.push_str(&format!("; window {} '{}'", window.id, window.reason));
    }
    Alert {
        version: SCHEMA_VERSION,
        id: format!(
            "{host}-{}-{}-{}",
            started.service, started.pid, started.time_ns
        ),
        kind: if window.is_some() {
            AlertKind::RespawnInWindow
        } else {
            AlertKind::RespawnAfterOperatorStop
        },
        severity: Severity::Critical,
        host: host.to_string(),
        service: started.service.clone(),
        unit: started.unit.clone(),
        summary,
        action: action.to_string(),
        process: Some(ProcessInfo {
            pid: started.pid,
            exe: started.exe.clone(),
            cmdline: started.args.clone(),
        }),
        respawned_by: Some(respawned_by),
        stopped_by: Some(StoppedBy::new(stop)),
        window: window.map(|w| WindowInfo::new(w, clock)),
        at: humantime::format_rfc3339_millis(now).to_string(),
        detected_after_ms: now_boot_ns.saturating_sub(started.time_ns) as f64 / 1e6,
        while_agent_down: false,
        resolves: None,
        resolved_at: None,
        grouped: None,
        cluster: None,
    }
}

/// Kernel records lost while `risk.service` was under maintenance or an
/// operator stop: a respawn may have gone unseen. `frozen` is what custody
/// held for the service already; `held` is what it did with the one found,
/// when it holds it.
#[allow(clippy::too_many_arguments)]
pub fn events_lost(
    host: &str,
    count: u64,
    risk: &AtRisk,
    process: Option<ProcessInfo>,
    frozen: &[u32],
    held: Option<&str>,
    clock: &Clock,
    now_boot_ns: u64,
) -> Alert {
    let under = match (&risk.window, &risk.stopped_by) {
        (Some(w), _) => format!("in window {} '{}'", w.id, w.reason),
        (None, Some(stop)) => format!("stopped by {}", person(stop.loginuid)),
        (None, None) => "watched".to_string(),
    };
    let state = match (&process, held) {
        (Some(p), Some(held)) => format!(
            "it was started again as pid {} and nobody saw it start; {held}",
            p.pid
        ),
        (Some(p), None) => format!(
            "it is running again as pid {} and nobody saw it start; check it",
            p.pid
        ),
        (None, _) if !frozen.is_empty() => {
            let pids: Vec<String> = frozen.iter().map(u32::to_string).collect();
            format!(
                "resynchronised from /proc; it is not running: its respawn (pid {}) is held frozen",
                pids.join(", ")
            )
        }
        (None, _) => "state unknown, resynchronised from /proc; it is not running".to_string(),
    };
    Alert {
        version: SCHEMA_VERSION,
        id: format!("{host}-{}-lost-{now_boot_ns}", risk.service),
        kind: AlertKind::EventsLost,
        severity: if process.is_some() {
            Severity::Critical
        } else {
            Severity::Warning
        },
        host: host.to_string(),
        service: risk.service.clone(),
        unit: None,
        summary: format!(
            "{} kernel records lost while {} was {under}: {state}",
            count, risk.service
        ),
        action: held.unwrap_or("none").to_string(),
        process,
        respawned_by: None,
        stopped_by: risk.stopped_by.as_ref().map(StoppedBy::new),
        window: risk.window.as_ref().map(|w| WindowInfo::new(w, clock)),
        at: humantime::format_rfc3339_millis(clock.wall(now_boot_ns)).to_string(),
        detected_after_ms: 0.0,
        while_agent_down: false,
        resolves: None,
        resolved_at: None,
        grouped: None,
        cluster: None,
    }
}

/// An alert about the agent itself (service `stopguard`, no process).
fn about_agent(
    host: &str,
    id: String,
    kind: AlertKind,
    severity: Severity,
    summary: String,
    action: &str,
    at: String,
) -> Alert {
    Alert {
        version: SCHEMA_VERSION,
        id,
        kind,
        severity,
        host: host.to_string(),
        service: "stopguard".to_string(),
        unit: None,
        summary,
        action: action.to_string(),
        process: None,
        respawned_by: None,
        stopped_by: None,
        window: None,
        at,
        detected_after_ms: 0.0,
        while_agent_down: false,
        resolves: None,
        resolved_at: None,
        grouped: None,
        cluster: None,
    }
}

/// The saved state was unreadable at start and was kept aside as `kept`:
/// what was guarded or frozen before is unknown until a person looks.
pub fn state_lost(host: &str, kept: &str, error: &str, clock: &Clock, now_boot_ns: u64) -> Alert {
    about_agent(
        host,
        format!("{host}-state-lost-{now_boot_ns}"),
        AlertKind::StateLost,
        Severity::Critical,
        format!(
            "stopguard on {host} could not read its saved state ({error}); open windows, operator stops and frozen processes from before are unknown: check `stopguard status` and the services under maintenance. The file is kept as {kept}"
        ),
        "started without the saved state",
        humantime::format_rfc3339_millis(clock.wall(now_boot_ns)).to_string(),
    )
}

/// etcd has not answered since `since` (unix s): windows kept, none heard.
pub fn fleet_unreachable(
    host: &str,
    cluster: &str,
    since: u64,
    clock: &Clock,
    now_boot_ns: u64,
) -> Alert {
    let since_text = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(since),
    );
    about_agent(
        host,
        format!("{host}-fleet-unreachable-{since}"),
        AlertKind::FleetUnreachable,
        Severity::Warning,
        format!(
            "stopguard on {host} has not reached etcd of cluster {cluster} since {since_text}: it keeps enforcing the windows it has until they expire; cluster windows opened or closed meanwhile reach it when etcd answers again"
        ),
        "none",
        humantime::format_rfc3339_millis(clock.wall(now_boot_ns)).to_string(),
    )
}

/// The alert `stopguard alert test` sends: marked as a test everywhere a
/// person looks.
pub fn test(host: &str, clock: &Clock, now_boot_ns: u64) -> Alert {
    about_agent(
        host,
        format!("{host}-test-{now_boot_ns}"),
        AlertKind::Test,
        Severity::Info,
        format!("TEST from stopguard on {host}: this sink receives stopguard's alerts"),
        "none",
        humantime::format_rfc3339_millis(clock.wall(now_boot_ns)).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_named_as_serialized() {
        for kind in [
            AlertKind::RespawnAfterOperatorStop,
            AlertKind::RespawnInWindow,
            AlertKind::EventsLost,
            AlertKind::Test,
            AlertKind::StateLost,
            AlertKind::FleetUnreachable,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for severity in [Severity::Info, Severity::Warning, Severity::Critical] {
            assert_eq!(serde_json::to_value(severity).unwrap(), severity.as_str());
        }
    }

    #[test]
    fn a_record_reads_back_and_adds_nothing_unset() {
        let alert = test("db-3", &Clock::now(), 5);
        let text = serde_json::to_string(&alert).unwrap();
        assert!(
            !text.contains("resolves") && !text.contains("grouped"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Alert>(&text).unwrap(), alert);
        let resolved = alert.resolution("2026-11-28T19:20:00.000Z".into());
        let text = serde_json::to_string(&resolved).unwrap();
        assert!(
            text.ends_with(
                ",\"resolves\":\"db-3-test-5\",\"resolved_at\":\"2026-11-28T19:20:00.000Z\"}"
            ),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Alert>(&text).unwrap(), resolved);
    }

    #[test]
    fn a_respawn_pid_1_made_on_request_names_what_asked() {
        let link = |pid, comm: &str| Link {
            pid,
            comm: comm.into(),
        };
        let request = crate::detect::UnitRequest {
            pid: 500,
            comm: "systemctl".into(),
            args: vec![
                "/usr/bin/systemctl".into(),
                "start".into(),
                "postgresql@15-main".into(),
            ],
            intent: crate::detect::Intent::Start,
            units: vec!["postgresql@15-main.service".into()],
            loginuid: None,
            chain: vec![link(100, "monit"), link(1, "systemd")],
            supervisor: Some(link(100, "monit")),
            time_ns: 5,
        };
        let started = Started {
            service: "postgres".into(),
            pid: 512,
            exe: "/usr/lib/postgresql/15/bin/postgres".into(),
            args: vec!["postgres".into()],
            chain: vec![link(511, "pg_ctl"), link(1, "systemd")],
            supervisor: Some(link(100, "monit")),
            unit: Some("postgresql@15-main.service".into()),
            requested: Some(Box::new(request)),
            time_ns: 6,
        };
        let stop = OperatorStop::example("postgres");
        let alert = respawn(
            "db-3",
            &started,
            &stop,
            None,
            "frozen",
            Some("no"),
            &Clock::now(),
            7,
        );
        assert_eq!(alert.unit.as_deref(), Some("postgresql@15-main.service"));
        let by = alert.respawned_by.unwrap();
        assert_eq!(
            (by.supervisor.as_deref(), by.pid, by.comm.as_deref()),
            (Some("monit"), Some(100), Some("monit"))
        );
        assert_eq!(by.unit.as_deref(), Some("postgresql@15-main.service"));
        assert_eq!(
            by.via.as_deref(),
            Some("/usr/bin/systemctl start postgresql@15-main")
        );
        assert!(
            alert.summary.starts_with(
                "postgres respawned by monit (`/usr/bin/systemctl start postgresql@15-main`)"
            ),
            "{}",
            alert.summary
        );
    }

    #[test]
    fn a_restart_by_systemd_itself_names_the_units_policy() {
        let started = Started {
            service: "redis".into(),
            pid: 900,
            exe: "/usr/bin/redis-server".into(),
            args: vec!["redis-server".into()],
            chain: vec![Link {
                pid: 1,
                comm: "systemd".into(),
            }],
            supervisor: Some(Link {
                pid: 1,
                comm: "systemd".into(),
            }),
            unit: Some("redis-server.service".into()),
            requested: None,
            time_ns: 6,
        };
        let stop = OperatorStop::example("redis");
        let alert = respawn(
            "db-3",
            &started,
            &stop,
            None,
            "alerted",
            Some("always"),
            &Clock::now(),
            7,
        );
        assert_eq!(
            alert.respawned_by.unwrap().restart.as_deref(),
            Some("always")
        );
        assert!(
            alert.summary.starts_with(
                "redis respawned by systemd (unit redis-server.service, Restart=always)"
            ),
            "{}",
            alert.summary
        );
        let unknown = respawn(
            "db-3",
            &started,
            &stop,
            None,
            "alerted",
            None,
            &Clock::now(),
            7,
        );
        assert_eq!(unknown.respawned_by.unwrap().restart, None);
    }
}
