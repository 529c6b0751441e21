//! runit: runsv restarts its service; `sv down|up|once|restart DIR`, or
//! their first letters.

use super::{Control, Subject, Supervisor, Watcher, verb, watch};

pub const RUNIT: Supervisor = Supervisor {
    name: "runit",
    comms: &["runsv"],
    control: &[Control {
        comm: "sv",
        intent: verb,
        units: None,
    }],
    watching: Some(watching),
};

/// The runsv that runs the service, and what its `supervise/stat` says:
/// runsv starts the service again unless told to keep it down.
fn watching(subject: &Subject) -> Vec<Watcher> {
    let Some(runsv) = subject.supervising(&["runsv"]) else {
        return Vec::new();
    };
    let dir = watch::cwd(runsv.pid).unwrap_or_else(|| "SERVICE_DIR".into());
    let stat = std::fs::read_to_string(format!("{dir}/supervise/stat"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|err| format!("unknown ({dir}/supervise/stat: {err})"));
    let kept_down = stat.contains("want down") || stat == "down";
    vec![Watcher {
        supervisor: RUNIT.name.into(),
        pid: Some(runsv.pid),
        name: dir.clone(),
        would_restart: !kept_down,
        state: stat,
        how: "runsv starts it again within a second of any exit".into(),
        off: Some(watch::words(&["sv", "down", &dir])),
        on: Some(watch::words(&["sv", "up", &dir])),
        off_stops: true,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisors::{Intent, args};

    #[test]
    fn sv_verbs_and_their_letters() {
        let sv = |a: &[&str]| (RUNIT.control[0].intent)(&args(a));
        assert_eq!(sv(&["down", "/etc/sv/pg"]), Intent::Stop);
        assert_eq!(sv(&["d", "pg"]), Intent::Stop);
        assert_eq!(sv(&["-w", "7", "term", "pg"]), Intent::Stop);
        assert_eq!(sv(&["up", "pg"]), Intent::Start);
        assert_eq!(sv(&["u", "pg"]), Intent::Start);
        assert_eq!(sv(&["once", "pg"]), Intent::Start);
        assert_eq!(sv(&["restart", "pg"]), Intent::Restart);
        assert_eq!(sv(&["status", "pg"]), Intent::Other);
    }
}
