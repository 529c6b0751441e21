//! Alert records: what a person reads about a respawn. The schema is the
//! contract with every sink.

use std::time::SystemTime;

use serde::Serialize;

use crate::{
    clock::Clock,
    detect::{AtRisk, OperatorStop, Started, Window},
    identity::{person, user_name},
    process::Link,
};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub version: u32,
    pub id: String,
    pub kind: &'static str,
    pub severity: &'static str,
    pub host: String,
    pub service: String,
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
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
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

#[derive(Clone, Debug, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub exe: String,
    pub cmdline: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RespawnedBy {
    /// The nearest supervisor in the chain, and its pid.
    pub supervisor: Option<String>,
    pub supervisor_pid: Option<u32>,
    /// The process that started it (its parent at the exec).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub chain: Vec<Link>,
}

#[derive(Clone, Debug, Serialize)]
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

/// A respawn after an operator stop, outside any window.
pub fn respawn(
    host: &str,
    started: &Started,
    stop: &OperatorStop,
    window: Option<&Window>,
    action: &str,
    clock: &Clock,
    now_boot_ns: u64,
) -> Alert {
    let now: SystemTime = clock.wall(now_boot_ns);
    let supervisor = started
        .supervisor
        .as_ref()
        .map_or_else(|| "an unknown starter".to_string(), |s| s.comm.clone());
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
            "respawn_in_window"
        } else {
            "respawn_after_operator_stop"
        },
        severity: "critical",
        host: host.to_string(),
        service: started.service.clone(),
        summary,
        action: action.to_string(),
        process: Some(ProcessInfo {
            pid: started.pid,
            exe: started.exe.clone(),
            cmdline: started.args.clone(),
        }),
        respawned_by: Some(RespawnedBy {
            supervisor: started.supervisor.as_ref().map(|s| s.comm.clone()),
            supervisor_pid: started.supervisor.as_ref().map(|s| s.pid),
            pid: started.chain.first().map(|l| l.pid),
            comm: started.chain.first().map(|l| l.comm.clone()),
            chain: started.chain.clone(),
        }),
        stopped_by: Some(StoppedBy::new(stop)),
        window: window.map(|w| WindowInfo::new(w, clock)),
        at: humantime::format_rfc3339_millis(now).to_string(),
        detected_after_ms: now_boot_ns.saturating_sub(started.time_ns) as f64 / 1e6,
    }
}

/// Kernel records lost while `risk.service` was under maintenance or an
/// operator stop: a respawn may have gone unseen. `held` is what custody
/// did with the one found, when it holds it.
pub fn events_lost(
    host: &str,
    count: u64,
    risk: &AtRisk,
    process: Option<ProcessInfo>,
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
        (None, _) => "state unknown, resynchronised from /proc; it is not running".to_string(),
    };
    Alert {
        version: SCHEMA_VERSION,
        id: format!("{host}-{}-lost-{now_boot_ns}", risk.service),
        kind: "events_lost",
        severity: if process.is_some() {
            "critical"
        } else {
            "warning"
        },
        host: host.to_string(),
        service: risk.service.clone(),
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
    }
}

/// The alert `stopguard alert test` sends: marked as a test everywhere a
/// person looks.
pub fn test(host: &str, clock: &Clock, now_boot_ns: u64) -> serde_json::Value {
    let at = humantime::format_rfc3339_millis(clock.wall(now_boot_ns)).to_string();
    serde_json::json!({
        "version": SCHEMA_VERSION,
        "id": format!("{host}-test-{now_boot_ns}"),
        "kind": "test",
        "severity": "info",
        "host": host,
        "service": "stopguard",
        "summary": format!("TEST from stopguard on {host}: this sink receives stopguard's alerts"),
        "action": "none",
        "process": null,
        "respawned_by": null,
        "stopped_by": null,
        "window": null,
        "at": at,
        "detected_after_ms": 0.0,
    })
}
