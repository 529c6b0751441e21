//! systemd: PID 1 restarts units with `Restart=`; `systemctl stop UNIT`,
//! and the sysvinit `service NAME stop` that ends up there.

use super::{Control, Supervisor, verb};

pub const SYSTEMD: Supervisor = Supervisor {
    name: "systemd",
    comms: &["systemd"],
    control: &[
        Control {
            comm: "systemctl",
            intent: verb,
        },
        Control {
            comm: "service",
            intent: verb,
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisors::{Intent, args};

    #[test]
    fn systemctl_and_service_verbs() {
        let [systemctl, service] = SYSTEMD.control else {
            panic!("systemctl and service");
        };
        let of = |c: &Control, a: &[&str]| (c.intent)(&args(a));
        assert_eq!(of(systemctl, &["stop", "postgresql"]), Intent::Stop);
        assert_eq!(of(systemctl, &["--no-block", "start", "pg"]), Intent::Start);
        assert_eq!(of(systemctl, &["try-restart", "pg"]), Intent::Restart);
        assert_eq!(of(systemctl, &["status", "pg"]), Intent::Other);
        assert_eq!(of(service, &["postgresql", "stop"]), Intent::Stop);
        assert_eq!(of(service, &["postgresql", "restart"]), Intent::Restart);
    }
}
