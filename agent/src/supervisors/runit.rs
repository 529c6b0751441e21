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

/// The runsv that runs the service, and what `sv status` says of it.
fn watching(subject: &Subject) -> Vec<Watcher> {
    watch::Supervise {
        supervisor: RUNIT.name,
        comm: "runsv",
        status: &["sv", "status"],
        control: "sv",
        down: "down",
        up: "up",
    }
    .watching(subject)
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
