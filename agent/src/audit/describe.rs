//! The audit log for people: one line per entry, "<time>  <service>  <what>".

use serde_json::{Value, value::RawValue};

use super::{AgentEvent, AuditEvent};
use crate::{
    detect::{Finding, Started},
    events::signal_name,
    sys::identity::person,
};

/// One audit entry (a line of the log, as written) in words.
pub fn describe(entry: &RawValue) -> String {
    let value: Value = serde_json::from_str(entry.get()).unwrap_or_default();
    let at = value["at"].as_str().unwrap_or("?").to_string();
    let (service, what) = match serde_json::from_value::<AuditEvent>(value.clone()) {
        Ok(event) => words(&event),
        // Written by another version, or torn: say what kind it was.
        Err(_) => (
            "-".to_string(),
            value["event"]
                .as_str()
                .or(value["finding"].as_str())
                .unwrap_or("unreadable entry")
                .replace('_', " "),
        ),
    };
    format!("{at}  {service:<12} {what}")
}

/// The service an entry is about ("-" when none) and what happened.
fn words(event: &AuditEvent) -> (String, String) {
    match event {
        AuditEvent::Finding(finding) => finding_words(finding),
        AuditEvent::Alert { alert } => (
            alert.service.clone(),
            format!("ALERT {}: {}", alert.kind.as_str(), alert.summary),
        ),
        AuditEvent::Agent(event) => agent_words(event),
    }
}

fn by(started: &Started) -> String {
    started.supervisor.as_ref().map_or_else(
        || "with no supervisor known".into(),
        |s| format!("by {}", s.comm),
    )
}

fn finding_words(finding: &Finding) -> (String, String) {
    match finding {
        Finding::OperatorStop(stop) => (
            stop.service.clone(),
            format!(
                "stopped by {} ({} from {} pid {}{})",
                person(stop.loginuid),
                stop.signal_name,
                stop.sender.comm,
                stop.sender.pid,
                stop.via
                    .as_ref()
                    .map(|c| format!(", via `{}`", c.args.join(" ")))
                    .unwrap_or_default()
            ),
        ),
        Finding::Respawn { started, .. } => (
            started.service.clone(),
            format!("respawned as pid {} {}", started.pid, by(started)),
        ),
        Finding::OperatorStart { started, loginuid } => (
            started.service.clone(),
            format!(
                "started by {} as pid {}",
                person(Some(*loginuid)),
                started.pid
            ),
        ),
        Finding::CrashRestart { started } => (
            started.service.clone(),
            format!(
                "restarted {} after a crash, pid {}",
                by(started),
                started.pid
            ),
        ),
        Finding::Start { started } => (
            started.service.clone(),
            format!("started {}, pid {}", by(started), started.pid),
        ),
        Finding::Exited {
            service,
            pid,
            exit_code,
            signal,
            ..
        } => (
            service.clone(),
            format!(
                "pid {pid} exited ({})",
                match (exit_code, signal) {
                    (Some(code), _) => format!("status {code}"),
                    (_, Some(sig)) => signal_name(u32::from(*sig)),
                    _ => "?".into(),
                }
            ),
        ),
        Finding::EventsLost { count, .. } => (
            "-".into(),
            format!("{count} kernel records lost; state resynchronised"),
        ),
    }
}

fn agent_words(event: &AgentEvent) -> (String, String) {
    let none = || "-".to_string();
    match event {
        AgentEvent::Control { request, peer } => {
            let (command, subject) = (request.command(), request.subject());
            (
                subject.map_or_else(none, str::to_string),
                format!(
                    "{command} by {}",
                    person(Some(peer.loginuid.unwrap_or(peer.uid)))
                ),
            )
        }
        AgentEvent::PermissionDenied { request, peer } => {
            let (command, subject) = (request.command(), request.subject());
            (
                subject.map_or_else(none, str::to_string),
                format!("refused {command} from uid {}: permission denied", peer.uid),
            )
        }
        AgentEvent::WindowExpired { window } => (
            window.service.clone(),
            format!("window {} '{}' expired", window.id, window.reason),
        ),
        AgentEvent::Thawed { service, pid } => (service.clone(), format!("pid {pid} thawed")),
        AgentEvent::Killed { service, pid } => (service.clone(), format!("pid {pid} killed")),
        AgentEvent::FrozenEnded { service, pid } => {
            (service.clone(), format!("pid {pid}, held frozen, ended"))
        }
        AgentEvent::UnitThawedForSystemd {
            service,
            pid,
            unit,
            error,
        } => (
            service.clone(),
            match error {
                None => format!("{unit} thawed for systemd's job on it; pid {pid} stays stopped"),
                Some(error) => format!("{unit} not thawed for systemd's job on it: {error}"),
            },
        ),
        AgentEvent::RespawnRetryKilled {
            service,
            pid,
            retries,
            frozen_pid,
            ..
        } => (
            service.clone(),
            format!(
                "respawned again as pid {pid}, killed ({retries} retries; pid {frozen_pid} stays frozen)"
            ),
        ),
        AgentEvent::SupervisorSwitched {
            service,
            window,
            supervisor,
            on,
            command,
            loginuid,
            error,
            uid,
            cluster,
        } => (
            service.clone(),
            format!(
                "{supervisor} switched {} for {}window {window} by {}{}: `{command}`{}",
                if *on { "back on" } else { "off" },
                cluster
                    .as_ref()
                    .map(|c| format!("cluster {c} "))
                    .unwrap_or_default(),
                person(*loginuid),
                uid.map(|u| format!(" as {}", person(Some(u))))
                    .unwrap_or_default(),
                error
                    .as_ref()
                    .map(|e| format!(" FAILED: {e}"))
                    .unwrap_or_default()
            ),
        ),
        AgentEvent::GuardReleased { pid } => {
            (none(), format!("pid {pid} released from the exec guard"))
        }
        AgentEvent::EventsLost { count } => (none(), format!("{count} kernel records lost")),
        AgentEvent::ConfigReloaded { source, services } => (
            none(),
            format!(
                "configuration reloaded from {source}: watching {}",
                services.join(", ")
            ),
        ),
        AgentEvent::ConfigRefused { error } => (
            none(),
            format!("configuration not reloaded (the running one stays): {error}"),
        ),
        AgentEvent::StateRestored { windows, frozen } => (
            none(),
            format!(
                "agent restarted: {} windows, frozen {}",
                windows.len(),
                serde_json::to_string(frozen).unwrap_or_default()
            ),
        ),
        AgentEvent::AlertGrouped {
            service,
            id,
            group_of,
        } => (
            service.clone(),
            format!("alert {id} held back: one follow-up will follow alert {group_of}"),
        ),
        AgentEvent::AlertDelivered {
            service,
            sink,
            id,
            attempts,
            status,
        } => (
            service.clone(),
            format!("alert {id} delivered to {sink} (HTTP {status}, attempt {attempts})"),
        ),
        AgentEvent::AlertUndeliverable {
            service,
            sink,
            id,
            attempts,
        } => (
            service.clone(),
            format!("alert {id} undeliverable to {sink}: given up after {attempts} attempts"),
        ),
        AgentEvent::SpoolFailed { service, id, error } => (
            service.clone(),
            format!("alert {id} not spooled ({error}): held in memory, delivered from there"),
        ),
        AgentEvent::SpoolWritten { count } => (
            none(),
            format!("{count} alerts held in memory written to the spool"),
        ),
        AgentEvent::StateSaveFailed { error } => (
            none(),
            format!("state not saved ({error}): retrying every second"),
        ),
        AgentEvent::StateSaved => (none(), "state saved again".to_string()),
        AgentEvent::FrozenAdopted {
            service,
            pid,
            cgroup,
        } => (
            service.clone(),
            format!(
                "pid {pid} found frozen in {cgroup}: held again; thaw with: stopguard thaw {pid}"
            ),
        ),
        AgentEvent::SavedHoldRefused {
            service,
            pid,
            reason,
        } => (
            service.clone(),
            format!(
                "the saved state says pid {pid} is held, but {reason}: not held, nothing done to it"
            ),
        ),
        AgentEvent::ClusterWindowApplied {
            cluster,
            id,
            service,
            window,
            error,
            by,
            reason,
        } => (
            service.clone(),
            match (window, error) {
                (Some(window), _) => format!(
                    "cluster {cluster} window {id} applied as {window} (opened on {} by {}: {reason})",
                    by.host,
                    by.user.as_deref().unwrap_or("uid ?"),
                ),
                (None, error) => format!(
                    "cluster {cluster} window {id} NOT applied: {}",
                    error.as_deref().unwrap_or("?")
                ),
            },
        ),
        AgentEvent::ClusterWindowClosed {
            cluster,
            id,
            window,
            service,
            by,
            why,
        } => (
            service.clone(),
            format!(
                "cluster {cluster} window {id} (here {window}) closed: {why}{}",
                by.as_ref().map_or(String::new(), |by| format!(
                    " by {} on {}",
                    by.user.as_deref().unwrap_or("?"),
                    by.host
                ))
            ),
        ),
        AgentEvent::ClusterWindowRefused { cluster, id, why } => (
            "-".to_string(),
            format!("cluster {cluster} window record {id} refused: {why}"),
        ),
        AgentEvent::FleetReachable {
            cluster,
            reachable,
            since,
        } => (
            "-".to_string(),
            if *reachable {
                format!("etcd of cluster {cluster} answers again")
            } else {
                format!("etcd of cluster {cluster} does not answer (since unix time {since})")
            },
        ),
    }
}
