//! The command line's side of the control socket: sends one request, reads
//! the answer, and says it in words for a person.

use std::{fmt, path::Path, time::Duration};

use super::{
    AlertTested, Ask, Explanation, Request, ServiceState, Status, Stopped, Thawed, WindowClosed,
    WindowList, WindowOpened,
};
use crate::{
    kernel::Pinning,
    process::Link,
    supervisors::watch::{Watcher, shell_words},
};
use anyhow::{Context, Result, bail};

/// Sends `request` to the agent at `socket` and returns its answer as sent:
/// `{"ok": true, ...}`, or the agent's refusal as the error.
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the agent at {} (is `stopguard run` running? --socket or STOPGUARD_SOCKET picks another)",
            socket.display()
        )
    })?;
    let wait = match request {
        Request::Stop(stop) => stop.wait_secs + 30,
        Request::ClusterOpen(open) => open.wait_secs + 30,
        _ => 30,
    };
    stream.set_read_timeout(Some(Duration::from_secs(wait)))?;
    writeln!(stream, "{}", serde_json::to_string(request)?)?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        bail!("the agent closed the connection without an answer");
    }
    let answer: serde_json::Value = serde_json::from_str(&line)?;
    if answer["ok"] != true {
        bail!(
            "{}",
            answer["error"].as_str().unwrap_or("the agent refused")
        );
    }
    Ok(answer)
}

/// Asks the agent at `socket` and reads the answer as the reply `ask` is
/// answered with; also returns the answer as sent (for `--json`).
pub fn ask<A: Ask>(socket: &Path, ask: A) -> Result<(A::Reply, serde_json::Value)> {
    let answer = call(socket, &ask.into())?;
    let reply = serde_json::from_value(answer.clone())
        .context("the agent's answer is not what this version expects")?;
    Ok((reply, answer))
}

/// Text a process or a person wrote, safe on a terminal.
fn t(text: &str) -> std::borrow::Cow<'_, str> {
    crate::escape::terminal(text)
}

/// A value as the JSON answer spells it (`[1,2]`, `0.5`, `1.0`, `null`).
fn json(value: impl serde::Serialize) -> String {
    serde_json::to_string(&value).unwrap_or_default()
}

fn pids(pids: &[u32]) -> String {
    let texts: Vec<String> = pids.iter().map(u32::to_string).collect();
    texts.join(", ")
}

impl fmt::Display for WindowOpened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.window.id)
    }
}

impl fmt::Display for WindowClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "window {} on {} closed",
            self.window.id, self.window.service
        )?;
        for (done, list) in [("thawed", &self.thawed), ("killed", &self.killed)] {
            if let Some(list) = list.as_ref().filter(|l| !l.is_empty()) {
                write!(f, "\n{done}: {}", pids(list))?;
            }
        }
        if !self.still_frozen.is_empty() {
            write!(
                f,
                "\nstill frozen: {} (stopguard thaw PID lets one run)",
                pids(&self.still_frozen)
            )?;
        }
        for run in &self.resumed {
            write!(f, "\n{}", run.line("switched back on"))?;
        }
        Ok(())
    }
}

/// A creator chain in words, parent first: `python3 (pid 5001) <- patroni
/// (pid 4990)`.
fn chain(links: &[Link]) -> String {
    let words: Vec<String> = links
        .iter()
        .map(|l| format!("{} (pid {})", t(&l.comm), l.pid))
        .collect();
    words.join(" <- ")
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = self
            .unit
            .as_ref()
            .map(|u| format!(" (unit {u})"))
            .unwrap_or_default();
        match (&self.main, &self.stopped_by) {
            (Some(main), _) => {
                writeln!(f, "{}{unit}: running, pid {}", self.service, main.pid)?;
                writeln!(f, "  {}", shell_words(&main.cmdline))?;
                let by = main
                    .started_by
                    .as_ref()
                    .map(|s| format!(" by {}", t(s)))
                    .unwrap_or_default();
                let person = main
                    .started_by_person
                    .as_ref()
                    .map(|p| format!(", run by {p}"))
                    .unwrap_or_default();
                match &main.started_at {
                    Some(at) => writeln!(
                        f,
                        "  started{by} at {at}{person}; its creator chain at the exec: {}",
                        chain(&main.chain)
                    )?,
                    None => writeln!(
                        f,
                        "  started before the agent{person}; /proc shows its ancestors: {}",
                        chain(&main.chain)
                    )?,
                }
            }
            (None, Some(stop)) => writeln!(
                f,
                "{}{unit}: stopped by {} ({} of pid {} by {})",
                self.service,
                crate::sys::identity::person(stop.loginuid),
                stop.signal_name,
                stop.pid,
                t(&stop.sender.comm)
            )?,
            (None, None) => writeln!(f, "{}{unit}: not running", self.service)?,
        }
        let restarting: Vec<&Watcher> = self
            .supervisors
            .iter()
            .filter(|w| w.would_restart)
            .collect();
        match (restarting.len(), self.main.is_some()) {
            (0, true) => write!(f, "\nNothing would start it again if it stopped now.")?,
            (0, false) => write!(f, "\nNothing would start it again now.")?,
            (1, true) => write!(f, "\nIf it stopped now, 1 supervisor would start it again:")?,
            (n, true) => write!(
                f,
                "\nIf it stopped now, {n} supervisors would start it again:"
            )?,
            (1, false) => write!(f, "\n1 supervisor would start it again:")?,
            (n, false) => write!(f, "\n{n} supervisors would start it again:")?,
        }
        for w in &restarting {
            write_watcher(f, w)?;
        }
        let idle: Vec<&Watcher> = self
            .supervisors
            .iter()
            .filter(|w| !w.would_restart && w.trusted)
            .collect();
        if !idle.is_empty() {
            write!(f, "\n\nWatching it, but would not start it again now:")?;
            for w in idle {
                write_watcher(f, w)?;
            }
        }
        let untrusted: Vec<&Watcher> = self.supervisors.iter().filter(|w| !w.trusted).collect();
        if !untrusted.is_empty() {
            write!(
                f,
                "\n\nNamed like a supervisor, but not trusted (never asked, never switched off):"
            )?;
            for w in untrusted {
                write_watcher(f, w)?;
            }
        }
        if restarting.iter().any(|w| w.off.is_some()) {
            write!(
                f,
                "\n\n`stopguard stop {} --and-pause` switches these off before the stop and back on when its window closes.",
                self.service
            )?;
        }
        Ok(())
    }
}

fn write_watcher(f: &mut fmt::Formatter<'_>, w: &Watcher) -> fmt::Result {
    let pid = w.pid.map(|p| format!("pid {p}, ")).unwrap_or_default();
    let user = w
        .uid
        .map(|uid| format!(", runs as {}", crate::sys::identity::person(Some(uid))))
        .unwrap_or_default();
    write!(
        f,
        "\n  {} ({pid}{}{user}): {}",
        t(&w.supervisor),
        t(&w.name),
        t(&w.state)
    )?;
    write!(f, "\n      {}", t(&w.how))?;
    if w.would_restart {
        match &w.off {
            Some(off) => {
                let stops = if w.off_stops {
                    " (this stops it too)"
                } else {
                    ""
                };
                write!(f, "\n      switch it off:  {}{stops}", shell_words(off))?;
            }
            None => write!(f, "\n      no off switch known")?,
        }
    }
    if let Some(on) = &w.on {
        write!(f, "\n      switch it on:   {}", shell_words(on))?;
    }
    Ok(())
}

impl fmt::Display for WindowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .windows
            .iter()
            .map(|w| {
                format!(
                    "{}  {}  '{}'  opened by {} at {}{}",
                    w.id,
                    w.service,
                    t(&w.reason),
                    w.opened_by,
                    w.opened_at,
                    w.expires_at
                        .as_ref()
                        .map(|e| format!(", expires {e}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        write!(f, "{}", lines.join("\n"))?;
        if let Some(cluster) = &self.cluster {
            if !lines.is_empty() {
                writeln!(f)?;
            }
            write!(
                f,
                "cluster windows: {}",
                if cluster.is_empty() { "none" } else { "" }
            )?;
            for window in cluster {
                write!(f, "\n{window}")?;
            }
        }
        if let Some(error) = &self.cluster_error {
            write!(f, "\ncluster windows unknown: {}", t(error))?;
        }
        Ok(())
    }
}

impl fmt::Display for Thawed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "thawed {}", json(&self.thawed))
    }
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = &self.service;
        writeln!(
            f,
            "window {} open on {service} ('{}'{})",
            self.window.id,
            t(&self.window.reason),
            self.window
                .expires_at
                .as_ref()
                .map(|e| format!(", closes by itself at {e}"))
                .unwrap_or_default()
        )?;
        for run in &self.paused {
            writeln!(f, "{}", run.line("switched off"))?;
        }
        let seconds = json(self.seconds);
        match (self.held_frozen, self.pid, &self.command) {
            (Some(held), _, _) => writeln!(
                f,
                "{service} is not running: pid {held} is held frozen (stopguard thaw {service} lets it run)"
            )?,
            (None, Some(pid), command) => writeln!(
                f,
                "stopped {service} (pid {pid}, {}) in {seconds} s",
                command
                    .as_ref()
                    .map_or_else(|| "SIGTERM".to_string(), |c| format!("`{c}`")),
            )?,
            (None, None, Some(command)) => writeln!(
                f,
                "ran `{command}` in {seconds} s ({service} was not running as far as stopguard knows)"
            )?,
            (None, None, None) => writeln!(f, "{service} was not running")?,
        }
        write!(
            f,
            "a supervisor restarting it now is caught; when done: stopguard window close {service}{}",
            if self.cluster.is_some() {
                " --cluster"
            } else {
                ""
            }
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "host {}", self.host)?;
        for s in &self.services {
            let state = match s.state {
                ServiceState::Running => "running",
                ServiceState::StoppedByOperator => "stopped_by_operator",
                ServiceState::NotRunning => "not_running",
            };
            writeln!(
                f,
                "  {:<20} {:<20} pid {}  frozen {}{}",
                s.name,
                state,
                json(s.pid),
                json(&s.frozen),
                if s.watched {
                    ""
                } else {
                    "  (no longer in the configuration; stopguard thaw PID lets it run)"
                }
            )?;
            for w in &s.supervisors {
                let restarts = if w.would_restart {
                    "would restart it"
                } else {
                    "would not restart it"
                };
                writeln!(
                    f,
                    "      {} ({}): {}, {restarts}",
                    t(&w.supervisor),
                    t(&w.name),
                    t(&w.state)
                )?;
            }
        }
        write!(
            f,
            "windows open: {}; lost records: {}; alerts waiting in the spool: {}",
            self.windows.len(),
            self.lost,
            self.spool_depth
        )?;
        if let Some(failure) = &self.spool_error {
            write!(
                f,
                "\n  SPOOL FAILING: {} alerts held in memory only (a restart now loses them): {} at {}",
                self.spool_unsynced, failure.error, failure.at
            )?;
        }
        match &self.pinning {
            Some(Pinning::Pinned { dir, since, .. }) => write!(
                f,
                "\nguard pinned in {dir} since {}: it holds while the agent is down (a reboot clears it)",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(*since)
                )
            )?,
            Some(Pinning::Failed { reason }) => write!(
                f,
                "\n  GUARD NOT PINNED ({reason}): while the agent is down nothing is stopped or recorded"
            )?,
            Some(Pinning::Off) | None => {}
        }
        if let Some(failure) = &self.state_error {
            write!(
                f,
                "\n  STATE NOT SAVED (a restart now loses the latest windows and operator stops): {} at {}",
                failure.error, failure.at
            )?;
        }
        if let Some(fleet) = &self.fleet {
            let applied: Vec<String> = fleet
                .applied
                .iter()
                .map(|(id, local)| format!("{} as {local}", t(id)))
                .collect();
            let applied = if applied.is_empty() {
                "none".to_string()
            } else {
                applied.join(", ")
            };
            match fleet.unreachable_since {
                None => write!(
                    f,
                    "\nfleet: cluster {}, etcd answers; cluster windows here: {applied}",
                    t(&fleet.cluster)
                )?,
                Some(since) => write!(
                    f,
                    "\n  FLEET: etcd of cluster {} NOT ANSWERING since {}: the windows here hold until they expire, new cluster windows do not reach this host; cluster windows here: {applied}",
                    t(&fleet.cluster),
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(since)
                    )
                )?,
            }
        }
        for s in &self.sinks {
            let h = &s.health;
            write!(
                f,
                "\n  sink {:<14} {} delivered, last success {}, last error {}",
                s.name,
                h.delivered,
                h.last_success.as_deref().unwrap_or("never"),
                h.last_error.as_ref().map_or_else(
                    || "none".to_string(),
                    |e| format!("{e} at {}", h.last_error_at.as_deref().unwrap_or("?"))
                )
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for AlertTested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .results
            .iter()
            .map(|r| {
                if r.ok {
                    format!(
                        "{:<16} ok      HTTP {}  {} ms",
                        r.sink,
                        json(r.status),
                        json(r.latency_ms)
                    )
                } else {
                    format!(
                        "{:<16} FAILED  {}  {} ms",
                        r.sink,
                        r.error.as_deref().unwrap_or("?"),
                        json(r.latency_ms)
                    )
                }
            })
            .collect();
        write!(f, "{}", lines.join("\n"))
    }
}
