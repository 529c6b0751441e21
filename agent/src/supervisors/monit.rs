//! monit: restarts what it checks; `monit stop|start|restart NAME`.

use super::{Control, Subject, Supervisor, Watcher, bounded, verb, watch};

pub const MONIT: Supervisor = Supervisor {
    name: "monit",
    comms: &["monit"],
    control: &[Control {
        comm: "monit",
        intent: verb,
        units: None,
    }],
    watching: Some(watching),
};

/// Where monit looks for its control file when not given `-c`.
const RC_FILES: [&str; 4] = [
    "/etc/monitrc",
    "/etc/monit/monitrc",
    "/usr/local/etc/monitrc",
    "/root/.monitrc",
];

/// Each running monit's check of the service, from `monit status`: the
/// process check whose pid is the main process (or, with no pid, while the
/// service is stopped or until monit's next cycle sees the pid of what it
/// started, that is named after it or started it), and whether monit
/// monitors it. Without monit's HTTP interface its state is unknown, and
/// counted as restarting.
fn watching(subject: &Subject) -> Vec<Watcher> {
    subject
        .named("monit")
        .filter_map(|monit| {
            let rc = watch::option(&monit.cmdline, "-c", "-c").or_else(|| {
                RC_FILES
                    .iter()
                    .find(|f| std::path::Path::new(f).exists())
                    .map(|f| f.to_string())
            })?;
            let credentials = bounded::Credentials::of(monit.pid);
            let checks = bounded::run_as(credentials.as_ref(), &["monit", "-c", &rc, "status"])
                .map(|out| parse_status(&out));
            let main = subject.main.as_ref().map(|m| m.pid);
            let started_it = subject.started_by(monit.pid);
            let (name, state) = match &checks {
                Ok(checks) => {
                    let check = checks
                        .iter()
                        .find(|c| c.pid.is_some() && c.pid == main)
                        // No pid: the service is stopped, or monit has not
                        // looked at it since it started it (one cycle).
                        .or_else(|| {
                            checks
                                .iter()
                                .find(|c| c.pid.is_none() && c.name == subject.service)
                        });
                    match check {
                        Some(c) => (c.name.clone(), c.monitoring.clone()),
                        None if started_it => ("CHECK".into(), "unknown: no check shows it".into()),
                        None => return None,
                    }
                }
                Err(_) if !started_it => return None,
                Err(err) => ("CHECK".into(), format!("unknown: {err}")),
            };
            let command = |verb: &str| watch::words(&["monit", "-c", &rc, verb, &name]);
            Some(Watcher {
                supervisor: MONIT.name.into(),
                pid: Some(monit.pid),
                would_restart: !state.starts_with("Not monitored"),
                state,
                how: "monit starts it again at its next cycle when its check finds it gone".into(),
                off: Some(command("unmonitor")),
                on: Some(command("monitor")),
                name,
                off_stops: false,
                uid: Some(monit.uid),
                trusted: true,
            })
        })
        .collect()
}

/// A process check as `monit status` shows it.
pub struct Check {
    name: String,
    pid: Option<u32>,
    /// `Monitored`, `Not monitored`, `Initializing`...
    monitoring: String,
}

/// The process checks in `monit status` output: blocks headed
/// `Process 'NAME'`, with `monitoring status` and `pid` lines.
pub fn parse_status(out: &str) -> Vec<Check> {
    let mut checks: Vec<Check> = Vec::new();
    for line in out.lines() {
        if let Some(name) = line
            .strip_prefix("Process '")
            .and_then(|rest| rest.strip_suffix('\''))
        {
            checks.push(Check {
                name: name.to_string(),
                pid: None,
                monitoring: String::new(),
            });
            continue;
        }
        let Some(check) = checks.last_mut() else {
            continue;
        };
        if !line.starts_with("  ") {
            if !line.trim().is_empty() {
                // Another kind of check: its lines are not this one's.
                checks.push(Check {
                    name: String::new(),
                    pid: None,
                    monitoring: String::new(),
                });
            }
            continue;
        }
        let line = line.trim();
        if let Some(value) = line.strip_prefix("monitoring status") {
            check.monitoring = value.trim().to_string();
        } else if let Some(value) = line.strip_prefix("pid ") {
            check.pid = value.trim().parse().ok();
        }
    }
    checks.retain(|c| !c.name.is_empty());
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisors::{Intent, args};

    #[test]
    fn monit_verbs() {
        let monit = |a: &[&str]| (MONIT.control[0].intent)(&args(a));
        assert_eq!(monit(&["stop", "postgres"]), Intent::Stop);
        assert_eq!(
            monit(&["-c", "/etc/monitrc", "start", "postgres"]),
            Intent::Start
        );
        assert_eq!(monit(&["restart", "x"]), Intent::Restart);
        assert_eq!(monit(&["status"]), Intent::Other);
    }

    #[test]
    fn status_blocks() {
        let out = "Monit 5.33.0 uptime: 3m\n\nProcess 'pg'\n  status                       OK\n  monitoring status            Monitored\n  pid                          4242\n\nSystem 'host'\n  status                       OK\n  monitoring status            Monitored\n\nProcess 'redis'\n  status                       Does not exist\n  monitoring status            Not monitored\n";
        let checks = parse_status(out);
        assert_eq!(checks.len(), 2);
        assert_eq!(
            (
                checks[0].name.as_str(),
                checks[0].pid,
                checks[0].monitoring.as_str()
            ),
            ("pg", Some(4242), "Monitored")
        );
        assert_eq!(
            (
                checks[1].name.as_str(),
                checks[1].pid,
                checks[1].monitoring.as_str()
            ),
            ("redis", None, "Not monitored")
        );
    }
}
