//! monit: restarts what it checks; `monit stop|start|restart NAME`.

use super::{Control, Supervisor, verb};

pub const MONIT: Supervisor = Supervisor {
    name: "monit",
    comms: &["monit"],
    control: &[Control {
        comm: "monit",
        intent: verb,
        units: None,
    }],
};

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
}
