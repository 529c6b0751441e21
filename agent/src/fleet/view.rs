//! The fleet in words: `fleet status`, a cluster window opened or closed,
//! the cluster's windows in `window list`. What hosts and people wrote is
//! escaped for the terminal.

use std::fmt;

use super::{
    ClusterClosed, ClusterOpened, ClusterWindow, FleetView, HostView, records::Ack, unix_now,
};
use crate::escape::terminal as t;

fn when(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

fn ago(unix: u64) -> String {
    let secs = unix_now().saturating_sub(unix);
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

fn ack_line(ack: &Ack) -> String {
    match (&ack.window, &ack.error) {
        (Some(window), _) => format!("  {:<16} applied as {window}", t(&ack.host)),
        (None, error) => format!(
            "  {:<16} NOT applied: {}",
            t(&ack.host),
            t(error.as_deref().unwrap_or("?"))
        ),
    }
}

impl fmt::Display for ClusterOpened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.window;
        writeln!(
            f,
            "cluster window {} on {} for hosts `{}` until {} ('{}')",
            w.id,
            t(&w.service),
            t(&w.hosts),
            when(w.expires_at),
            t(&w.reason)
        )?;
        for ack in &self.acks {
            writeln!(f, "{}", ack_line(ack))?;
        }
        for host in &self.missing {
            writeln!(f, "  {:<16} no answer (not applied yet)", t(host))?;
        }
        for member in &self.down {
            writeln!(
                f,
                "  {:<16} DOWN since {}: not applied; it applies the window when it is back",
                t(&member.host),
                when(member.last_seen)
            )?;
        }
        if let Some(run) = &self.paused {
            let every = if run.error.is_none() {
                " for every host"
            } else {
                ""
            };
            writeln!(f, "{}{every}", run.line("switched off"))?;
        }
        if self.expected.is_empty() && self.down.is_empty() {
            write!(f, "no live host matches `{}`", t(&w.hosts))?;
        } else if self.complete() {
            write!(f, "applied on all {} hosts", self.expected.len())?;
        } else {
            let not: Vec<String> = self
                .missing
                .iter()
                .cloned()
                .chain(
                    self.acks
                        .iter()
                        .filter(|a| a.error.is_some())
                        .map(|a| a.host.clone()),
                )
                .chain(self.down.iter().map(|m| m.host.clone()))
                .collect();
            write!(f, "NOT applied on: {}", t(&not.join(", ")))?;
        }
        Ok(())
    }
}

impl fmt::Display for ClusterClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.window;
        let applied: Vec<String> = self
            .acks
            .iter()
            .filter_map(|a| Some(format!("{} ({})", t(&a.host), a.window.as_deref()?)))
            .collect();
        write!(
            f,
            "cluster window {} on {} closed for every host; it was applied on: {}",
            w.id,
            t(&w.service),
            if applied.is_empty() {
                "none".to_string()
            } else {
                applied.join(", ")
            }
        )?;
        match (&self.resumed, &self.resume_left_to) {
            (Some(run), Some(host)) => write!(
                f,
                "\n{} not switched back on here: {}; {}, which switched it off, does it",
                t(&run.supervisor),
                t(run.error.as_deref().unwrap_or("?")),
                t(host)
            ),
            (Some(run), None) => write!(f, "\n{}", run.line("switched back on")),
            (None, _) => Ok(()),
        }
    }
}

impl fmt::Display for ClusterWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.window;
        write!(
            f,
            "{}  {}  hosts `{}`  '{}'  opened on {} by {} at {}, expires {}{}",
            w.id,
            t(&w.service),
            t(&w.hosts),
            t(&w.reason),
            t(&w.by.host),
            t(&w.by.name()),
            when(w.opened_at),
            when(w.expires_at),
            if w.closing.is_some() {
                " (closing)"
            } else {
                ""
            }
        )?;
        for ack in &self.acks {
            write!(f, "\n{}", ack_line(ack))?;
        }
        Ok(())
    }
}

/// A service's state as `status` names it, in words.
fn state(state: &str) -> String {
    state.replace('_', " ")
}

fn host_line(host: &HostView) -> String {
    let name = t(&host.host);
    let Some(p) = &host.presence else {
        let since = host.member.as_ref().map(|m| m.last_seen);
        let pinned = host.member.as_ref().is_some_and(|m| m.pinned);
        return format!(
            "{name:<16} DOWN since {}{}",
            since.map_or("?".to_string(), when),
            if pinned {
                " (its pinned guard still holds there: respawns are stopped at exec)"
            } else {
                " (not pinned: nothing guards it)"
            }
        );
    };
    // The services not running, named once together: on a host of one
    // database most of the default ones are not there at all.
    let idle: Vec<String> = p
        .services
        .iter()
        .filter(|s| s.state == "not_running" && s.frozen.is_empty())
        .map(|s| t(&s.name).into_owned())
        .collect();
    let mut services: Vec<String> = p
        .services
        .iter()
        .filter(|s| s.state != "not_running" || !s.frozen.is_empty())
        .map(|s| {
            let mut text = format!("{} {}", t(&s.name), t(&state(&s.state)));
            if !s.frozen.is_empty() {
                let pids: Vec<String> = s.frozen.iter().map(u32::to_string).collect();
                text.push_str(&format!(" (HELD {})", pids.join(",")));
            }
            text
        })
        .collect();
    if !idle.is_empty() {
        services.push(format!("not running: {}", idle.join(" ")));
    }
    let windows: Vec<String> = p
        .windows
        .iter()
        .map(|w| match &w.cluster {
            Some(c) => format!("{} {} ({c})", w.id, t(&w.service)),
            None => format!("{} {}", w.id, t(&w.service)),
        })
        .collect();
    format!(
        "{name:<16} up    {:<8} {:<10} {}\n{:<16} windows: {}; held: {}; last alert: {}",
        t(&p.version),
        if p.pinned { "pinned" } else { "not pinned" },
        services.join(", "),
        "",
        if windows.is_empty() {
            "none".into()
        } else {
            windows.join(", ")
        },
        if p.held.is_empty() {
            "none".into()
        } else {
            p.held
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
        p.last_alert.as_ref().map_or("none".into(), |a| format!(
            "{} {} {} ago",
            t(&a.kind),
            t(a.service.as_deref().unwrap_or("")),
            ago(a.at)
        )),
    )
}

impl fmt::Display for FleetView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let up = self.hosts.iter().filter(|h| h.presence.is_some()).count();
        write!(
            f,
            "cluster {}: {} hosts, {up} up",
            t(&self.cluster),
            self.hosts.len()
        )?;
        for host in &self.hosts {
            write!(f, "\n{}", host_line(host))?;
        }
        if !self.windows.is_empty() {
            write!(f, "\ncluster windows:")?;
            for window in &self.windows {
                write!(f, "\n{window}")?;
            }
        }
        Ok(())
    }
}
