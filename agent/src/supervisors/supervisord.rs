//! supervisord: restarts its programs with `autorestart`;
//! `supervisorctl stop|start|restart NAME`.

use super::{Control, Subject, Supervisor, Watcher, bounded, verb, watch};

pub const SUPERVISORD: Supervisor = Supervisor {
    name: "supervisord",
    comms: &["supervisord"],
    control: &[Control {
        comm: "supervisorctl",
        intent: verb,
        units: None,
    }],
    watching: Some(watching),
};

/// The supervisord that runs the service, and its program's state as
/// `supervisorctl status` tells it: a running program is started again
/// when it exits unexpectedly (`autorestart`, on by default).
fn watching(subject: &Subject) -> Vec<Watcher> {
    let Some(supervisord) = subject.supervising(&["supervisord"]) else {
        return Vec::new();
    };
    let config = watch::option(&supervisord.cmdline, "-c", "--configuration");
    let mut ctl = watch::words(&["supervisorctl"]);
    if let Some(config) = &config {
        ctl.extend(watch::words(&["-c", config]));
    }
    // Its program is the child of supervisord the main process is or
    // descends from.
    let child = subject
        .ancestor(&["supervisord"])
        .and_then(|(_, below)| below.map(|b| b.pid))
        .or(subject.main.as_ref().map(|m| m.pid));
    let argv: Vec<&str> = ctl.iter().map(String::as_str).chain(["status"]).collect();
    let program = bounded::run_as(bounded::Credentials::of(supervisord.pid).as_ref(), &argv)
        .ok()
        .and_then(|out| program_of(&out, child?));
    let (name, state) = program.unwrap_or_else(|| ("PROGRAM".into(), "unknown".into()));
    let verb = |v: &str| {
        let mut argv = ctl.clone();
        argv.extend(watch::words(&[v, &name]));
        argv
    };
    vec![Watcher {
        supervisor: SUPERVISORD.name.into(),
        pid: Some(supervisord.pid),
        would_restart: state != "STOPPED",
        state,
        how: "supervisord starts it again when it exits unexpectedly (autorestart)".into(),
        off: Some(verb("stop")),
        on: Some(verb("start")),
        name,
        off_stops: true,
        uid: Some(supervisord.uid),
        trusted: true,
    }]
}

/// The program (name, state) whose pid is `pid` in `supervisorctl status`
/// output (`pg  RUNNING  pid 4242, uptime 0:01:02`).
pub fn program_of(status: &str, pid: u32) -> Option<(String, String)> {
    status.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "pid")?;
        let found: u32 = words.get(at + 1)?.trim_end_matches(',').parse().ok()?;
        (found == pid && at >= 2).then(|| (words[0].to_string(), words[1].to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisors::{Intent, args};

    #[test]
    fn supervisorctl_verbs() {
        let ctl = |a: &[&str]| (SUPERVISORD.control[0].intent)(&args(a));
        assert_eq!(ctl(&["-c", "/etc/sd.conf", "stop", "pg"]), Intent::Stop);
        assert_eq!(ctl(&["start", "pg"]), Intent::Start);
        assert_eq!(ctl(&["restart", "pg"]), Intent::Restart);
        assert_eq!(ctl(&["status"]), Intent::Other);
    }
}
