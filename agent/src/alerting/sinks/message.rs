//! What a person reads about an alert in a chat or paging tool: a title and
//! the lines after the summary. Shared by the sink kinds that render text.

use crate::alert::Alert;

/// "CRITICAL respawn_in_window on db-3".
pub fn title(alert: &Alert) -> String {
    format!(
        "{} {} on {}",
        alert.severity.as_str().to_uppercase(),
        alert.kind.as_str(),
        alert.host
    )
}

/// A number as the record's JSON shows it: `null` when absent.
fn or_null(n: Option<u32>) -> String {
    n.map_or_else(|| "null".to_string(), |n| n.to_string())
}

/// The lines a person reads after the summary: who stopped it, what
/// restarted it, what was done, how to undo it.
pub fn details(alert: &Alert) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(stop) = &alert.stopped_by {
        let who = match (&stop.user, stop.loginuid) {
            (Some(user), Some(uid)) => format!("{user} (uid {uid})"),
            (None, Some(uid)) => format!("uid {uid}"),
            _ => "someone".into(),
        };
        let via = stop
            .via
            .as_ref()
            .map_or_else(|| stop.comm.clone(), |v| format!("`{v}`"));
        lines.push(format!("Stopped by: {who}, {} via {via}", stop.signal));
    }
    if let Some(by) = &alert.respawned_by {
        let chain: Vec<&str> = by.chain.iter().map(|l| l.comm.as_str()).collect();
        lines.push(format!(
            "Restarted by: {} (pid {}), chain {}",
            by.supervisor.as_deref().unwrap_or("unknown"),
            or_null(by.supervisor_pid),
            chain.join(" <- ")
        ));
    }
    if let Some(process) = &alert.process {
        lines.push(format!("Process: pid {} {}", process.pid, process.exe));
    }
    lines.push(format!("Action: {}", alert.action));
    if let Some(w) = &alert.window {
        lines.push(format!(
            "Window: {} '{}', opened by {}",
            w.id, w.reason, w.opened_by
        ));
    }
    if alert.action.starts_with("frozen") {
        lines.push(format!(
            "To let it run: stopguard thaw {} (on {})",
            or_null(alert.process.as_ref().map(|p| p.pid)),
            alert.host
        ));
    }
    lines
}
