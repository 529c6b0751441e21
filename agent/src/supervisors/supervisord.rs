//! supervisord: restarts its programs with `autorestart`;
//! `supervisorctl stop|start|restart NAME`.

use super::{Control, Supervisor, verb};

pub const SUPERVISORD: Supervisor = Supervisor {
    name: "supervisord",
    comms: &["supervisord"],
    control: &[Control {
        comm: "supervisorctl",
        intent: verb,
        units: None,
    }],
};

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
